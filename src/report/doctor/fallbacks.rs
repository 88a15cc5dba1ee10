//! What stands in when a service does not answer a boot: the snapshot of the last good secrets,
//! the replica regions (`secrets.regions`) and the git mirrors (`git.mirrors`). Each is looked
//! at as a boot would use it, so that an outage is not the first time it is tried; no value is
//! shown. A fallback that would not serve is a warning: the boot itself does not need it today.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::services::{git_credentials, secrets_client};
use super::{fail, ok, skip, warn, Finding};
use crate::config::Config;
use crate::deadline::Deadline;
use crate::git;
use crate::plan::Plan;
use crate::secrets::{self, snapshot};

pub(super) async fn check_snapshot(config: Arc<Config>, plan: Arc<Plan>) -> Finding {
    let max_age = config.secrets.snapshot_max_age;
    let shown_max = humantime::format_duration(max_age);
    let snapshot = match snapshot::open(&config.paths.state_dir, max_age).await {
        Ok(snapshot) => snapshot,
        Err(snapshot::Unusable::Off) => {
            return skip("no snapshot is kept (secrets.snapshot_max_age = \"0s\")")
        }
        Err(unusable @ snapshot::Unusable::Missing { .. }) => {
            return warn(
                format!("{unusable}: a boot while Secrets Manager does not answer fails"),
                "a boot that succeeds keeps one; if boots succeed and none appears, look for \
                 \"could not keep a snapshot\" in the journal (systemd-creds must be installed)",
            )
        }
        Err(unusable) => {
            return warn(
                unusable.to_string(),
                "boot (or `bootagent refresh --now`) while Secrets Manager answers: that \
                 replaces it",
            )
        }
    };
    let age = humantime::format_duration(Duration::from_secs(snapshot.age().as_secs()));
    let taken = humantime::format_rfc3339_seconds(snapshot.taken_at);
    match secrets::mismatch(&snapshot.read, &plan.secrets) {
        None => ok(format!(
            "taken {taken} ({age} old), decrypts on this host, holds the {} secret(s) a boot \
             reads; used when Secrets Manager does not answer, for up to {shown_max}",
            snapshot.read.secrets.len()
        )),
        Some(detail) => warn(
            format!(
                "taken {taken} ({age} old), but it does not hold what a boot reads now ({detail})"
            ),
            "boot while Secrets Manager answers: that replaces it",
        ),
    }
}

/// Each replica region, read as a boot would read it there: every secret, values unshown.
pub(super) async fn check_replicas(
    config: Arc<Config>,
    plan: Arc<Plan>,
    timeout: Duration,
) -> Finding {
    let regions = &config.secrets.regions;
    if regions.is_empty() {
        return skip("no replica regions (secrets.regions)");
    }
    let mut serving = Vec::new();
    let mut problems = Vec::new();
    for region in regions {
        let date = Arc::new(Mutex::new(None));
        let Some(client) = secrets_client(&config.secrets, region, timeout, date).await else {
            return fail(
                "no CA certificates to verify AWS endpoints with",
                "install the ca-certificates package",
            );
        };
        match secrets::read(&client, region, &plan.secrets).await {
            Ok(read) => serving.push(format!("{region} ({} secret(s))", read.secrets.len())),
            Err(e) => problems.push((region.as_str(), e)),
        }
    }
    if problems.is_empty() {
        return ok(format!("replicas serve: {}", serving.join(", ")));
    }
    let refused = problems.iter().any(|(_, e)| e.is_refusal());
    let detail = (problems.iter())
        .map(|(region, e)| format!("{region}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let hint = match refused {
        // A "no" from a replica is as final as one from the instance's region.
        true => {
            "replicate the secrets to these regions (aws secretsmanager \
             replicate-secret-to-regions) and allow the instance role to read them there: a \
             boot that meets this answer while its own region is down fails"
        }
        false => "check network access to Secrets Manager in these regions",
    };
    warn(detail, hint)
}

/// Each git mirror, listed as a boot would list it: the ref's commit, with the remote's trust.
pub(super) async fn check_mirrors(
    config: Arc<Config>,
    plan: Arc<Plan>,
    client: Option<secrets::Client>,
    deadline: Deadline,
) -> Finding {
    if plan.git.mirrors.is_empty() {
        return skip("no git mirrors (git.mirrors)");
    }
    let credentials = match git_credentials(&config, &plan, client, deadline).await {
        Ok(credentials) => credentials,
        Err(finding) => return finding,
    };
    // One blocking thread lists them in turn, each within what doctor's time leaves.
    let listing_plan = plan.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let (mut answers, mut problems) = (Vec::new(), Vec::new());
        let git = &listing_plan.git;
        for mirror in &git.mirrors {
            let limits =
                git::Limits::new(deadline.left(), "doctor --timeout", git::Cancel::default());
            match git::remote_ref(mirror, &git.reference, &git.dir, &credentials, &limits) {
                Ok(commit) => answers.push(format!("{mirror} {} is at {commit}", git.reference)),
                Err(e) => problems.push(format!("{mirror}: {e}")),
            }
        }
        (answers, problems)
    })
    .await;
    let (answers, problems) = match listed {
        Ok(listed) => listed,
        Err(e) => {
            return fail(
                format!("the mirrors check failed: {e}"),
                "report this as a bug",
            )
        }
    };
    match problems.is_empty() {
        true => ok(answers.join("; ")),
        false => warn(
            problems.join("; "),
            "check each mirror, its host key and the credentials the remote uses: a boot uses \
             them when the remote does not answer",
        ),
    }
}
