//! `/metrics`: Prometheus text made from the current health, status.json (the last boot) and
//! deploys.json (what changed and what was rolled back). The health server serves it.

use std::fmt::Write;

use crate::config::PathsConfig;
use crate::state::status::{self, Outcome, SecretsFrom};

/// Every sample: `name{labels} value`, under the family's HELP and TYPE lines.
struct Text(String);

impl Text {
    fn family(&mut self, kind: &str, name: &str, help: &str, samples: &[(String, f64)]) {
        let out = &mut self.0;
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.family("gauge", name, help, samples);
    }

    /// One unlabelled gauge that is 1 when `on`.
    fn flag(&mut self, name: &str, help: &str, on: bool) {
        self.gauge(name, help, &[(String::new(), f64::from(u8::from(on)))]);
    }
}

/// The metrics, given whether the health check passes now.
pub fn render(healthy: bool, paths: &PathsConfig) -> String {
    let mut text = Text(String::new());
    text.flag(
        "bootagent_healthy",
        "1 when the health check passes.",
        healthy,
    );
    if let Ok(status) = status::read(paths) {
        last_boot(&mut text, &status);
    }
    match crate::state::deploys::read(&paths.state_dir) {
        Ok(deploys) => deploy_record(&mut text, &deploys),
        Err(untrusted) => {
            // Counters it cannot vouch for are left out, and the damage is a metric to alert on.
            tracing::warn!("{untrusted}");
            text.flag(
                "bootagent_deploy_record_untrusted",
                "1 when deploys.json cannot be read: nothing new deploys until it is fixed.",
                true,
            );
        }
    }
    text.0
}

fn last_boot(text: &mut Text, status: &status::Status) {
    text.flag(
        "bootagent_boot_succeeded",
        "1 when the last boot succeeded.",
        status.outcome == Outcome::Succeeded,
    );
    let outcomes: Vec<(String, f64)> = [
        Outcome::Succeeded,
        Outcome::Degraded,
        Outcome::RolledBack,
        Outcome::Failed,
    ]
    .into_iter()
    .map(|outcome| {
        (
            format!("{{outcome=\"{}\"}}", outcome.as_str()),
            f64::from(u8::from(status.outcome == outcome)),
        )
    })
    .collect();
    text.gauge(
        "bootagent_boot_outcome",
        "1 for how the last boot ended: succeeded, degraded (the last good release kept, or \
         the secrets from the snapshot), rolled-back (a change failed its gate) or failed.",
        &outcomes,
    );
    if let Some(SecretsFrom::Snapshot { age_seconds, .. }) = &status.secrets_from {
        text.gauge(
            "bootagent_secrets_snapshot_age_seconds",
            "Present when Secrets Manager did not answer the last boot: how old the snapshot \
             of the last good secrets it ran on was.",
            &[(String::new(), *age_seconds as f64)],
        );
    }
    let phases: Vec<(String, f64)> = status
        .phases
        .iter()
        .map(|p| {
            (
                format!("{{phase=\"{}\"}}", p.name),
                p.duration_ms as f64 / 1000.0,
            )
        })
        .collect();
    text.gauge(
        "bootagent_boot_phase_duration_seconds",
        "How long each phase of the last boot took.",
        &phases,
    );
}

fn deploy_record(text: &mut Text, deploys: &crate::state::deploys::Deploys) {
    text.family(
        "counter",
        "bootagent_deploys_total",
        "Changes to what runs (a commit, secrets) by outcome: passed the gate, or rolled back.",
        &[
            ("{outcome=\"succeeded\"}".into(), deploys.succeeded as f64),
            (
                "{outcome=\"rolled-back\"}".into(),
                deploys.rolled_back as f64,
            ),
        ],
    );
    let last_good = deploys
        .last_good_at
        .as_deref()
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok());
    if let Some(at) = last_good {
        text.gauge(
            "bootagent_last_good_deploy_timestamp_seconds",
            "When a change last passed the gate.",
            &[(String::new(), at.as_secs() as f64)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(state_dir: &std::path::Path) -> PathsConfig {
        let text = format!(
            "[paths]\nrun_dir = \"{dir}/run\"\nstate_dir = \"{dir}\"\n",
            dir = state_dir.display()
        );
        let config = crate::config::from_text(std::path::Path::new("t.toml"), &text).unwrap();
        config.paths
    }

    #[test]
    fn a_first_boot_has_health_and_zero_deploys_and_no_boot_yet() {
        let dir = tempfile::tempdir().unwrap();
        let text = render(true, &paths(dir.path()));
        assert!(
            text.contains("# TYPE bootagent_healthy gauge\nbootagent_healthy 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bootagent_deploys_total{outcome=\"succeeded\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("bootagent_boot_outcome"), "{text}");
        assert!(!text.contains("untrusted"), "{text}");
    }

    #[test]
    fn a_damaged_deploy_record_is_a_metric_and_its_counters_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deploys.json"), "{not json").unwrap();
        let text = render(false, &paths(dir.path()));
        assert!(text.contains("bootagent_healthy 0\n"), "{text}");
        assert!(
            text.contains("\nbootagent_deploy_record_untrusted 1\n"),
            "{text}"
        );
        assert!(!text.contains("bootagent_deploys_total"), "{text}");
    }
}
