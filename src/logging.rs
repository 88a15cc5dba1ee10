//! Structured logs: to the journal when systemd connected our stderr to it (`JOURNAL_STREAM`),
//! so fields stay queryable; to stderr otherwise.

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
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
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
