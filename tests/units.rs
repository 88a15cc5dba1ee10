//! The shipped systemd units: `systemd-analyze verify` finds nothing to say, and each unit's
//! exposure (`systemd-analyze security --offline=true`) stays at or below what the README
//! reports, so hardening cannot quietly creep back.

use std::path::Path;
use std::process::Command;

use support::bin;

/// Each service unit's exposure as the README states it (0.0 best, 10.0 worst).
const EXPOSURE: [(&str, f64); 6] = [
    ("bootagent-boot.service", 2.3),
    ("bootagent-credentials@.service", 4.1),
    ("bootagent-deploy.service", 2.3),
    ("bootagent-health.service", 1.6),
    ("bootagent-lifecycle.service", 2.3),
    ("bootagent-refresh.service", 2.3),
];

fn shipped(unit: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(unit)
}

#[test]
fn each_unit_is_no_more_exposed_than_the_readme_says() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (unit, pinned) in EXPOSURE {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(shipped(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|line| line.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|score| score.split_whitespace().next())
            .and_then(|score| score.parse().ok())
            .unwrap_or_else(|| panic!("no exposure for {unit}:\n{text}"));
        assert!(
            exposure <= pinned,
            "{unit}: exposure {exposure} is above the pinned {pinned}; what was loosened?\n{text}"
        );
        assert!(
            readme.contains(&format!("| `{unit}` | {pinned:.1} |")),
            "the README's hardening table should give {unit} as {pinned:.1}"
        );
    }
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() {
    // The units as installed, with ExecStart= at the binary under test (verify checks that it
    // exists and is executable).
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(shipped("")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let path = dir.path().join(entry.file_name());
        std::fs::write(&path, text.replace("/usr/bin/bootagent", bin())).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
