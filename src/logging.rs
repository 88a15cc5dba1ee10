//! Structured logs: to the journal when systemd connected our stderr to it (`JOURNAL_STREAM`),
//! so fields stay queryable; to stderr otherwise — also when a parent's stderr went to the
//! journal but ours was redirected (cloud-init's runcmd writing to its log file, `2>file`).

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub fn init(verbose: bool) {
    let level = if verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let journald = stderr_is_the_journal()
        .then(tracing_journald::layer)
        .and_then(Result::ok)
        .map(|layer| layer.with_syslog_identifier("bootagent".into()));
    let registry = tracing_subscriber::registry();
    match journald {
        Some(layer) => registry.with(layer.with_filter(level)).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // SSM Run Command and log collectors capture stderr: colour only on a TTY.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false)
                    .with_filter(level),
            )
            .init(),
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` names its
/// device and inode, and children inherit the variable even when their stderr goes elsewhere.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    is_stream(&stream.to_string_lossy(), stderr.st_dev, stderr.st_ino)
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, in decimal) names this device and inode.
fn is_stream(journal_stream: &str, device: u64, inode: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((device, inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_matches_only_its_own_device_and_inode() {
        assert!(is_stream("8:12345", 8, 12345));
        assert!(!is_stream("8:12345", 8, 12346));
        assert!(!is_stream("9:12345", 8, 12345));
        assert!(!is_stream("", 8, 12345));
        assert!(!is_stream("8-12345", 8, 12345));
    }
}
