//! `bootagent doctor`: every link of the boot chain as a check, run in parallel, each bounded in
//! time, each failure with a hint. Read-only: it changes nothing on the instance.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::aws::imds::ImdsClient;
use crate::config::{Config, Verify};
use crate::deadline::Deadline;

mod delivered;
mod fallbacks;
mod machine;
mod seed;
mod services;

use delivered::check_delivered;
use fallbacks::{check_mirrors, check_replicas, check_snapshot};
use machine::{check_disk, check_env_file, check_last_boot, check_signing, check_unit};
use seed::check_seed;
use services::{
    check_clock, check_credentials, check_git, check_imds, check_isolation, check_secret,
    check_tags, identity_plan, secrets_client,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// What a check found, before it is timed and named.
struct Finding {
    verdict: Verdict,
    detail: String,
    hint: Option<String>,
}

fn ok(detail: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Ok,
        detail: detail.into(),
        hint: None,
    }
}

fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Fail,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn warn(detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Warn,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn skip(detail: impl Into<String>) -> Finding {
    Finding {
        verdict: Verdict::Skip,
        detail: detail.into(),
        hint: None,
    }
}

/// The checks that need to know who the instance is: skipped when identity fails.
pub const NEED_IDENTITY: [&str; 12] = [
    "credentials",
    "secret",
    "snapshot",
    "replicas",
    "mirrors",
    "isolation",
    "clock",
    "git",
    "seed",
    "env-file",
    "unit",
    "delivered",
];

/// The order checks are listed in, whatever order they finish in.
const ORDER: &[&str] = &[
    "imds",
    "tags",
    "identity",
    "credentials",
    "secret",
    "snapshot",
    "replicas",
    "isolation",
    "clock",
    "git",
    "mirrors",
    "seed",
    "signing",
    "env-file",
    "unit",
    "delivered",
    "disk",
    "last-boot",
];

/// Every check, each ended when `timeout` has passed since doctor began: the report comes
/// within `timeout` (and the moment a check takes to say it timed out), however many checks
/// wait on a stalled service.
pub async fn run(config: Arc<Config>, timeout: Duration) -> Report {
    let began = Instant::now();
    let deadline = Deadline::after(timeout);
    let mut checks = Vec::new();
    let imds = Arc::new(ImdsClient::from_env(
        config.identity.imds_deadline.min(timeout),
    ));
    let mut set: JoinSet<Vec<Check>> = JoinSet::new();
    spawn(
        &mut set,
        "last-boot",
        deadline,
        Box::pin(check_last_boot(config.clone())),
    );

    // The chain's head, looked at together: everything that needs to know who this instance is
    // waits for the identity.
    let (token, tags, identity) = tokio::join!(
        bound(deadline, check_imds(&imds)),
        bound(deadline, check_tags(&imds, &config)),
        identity_plan(deadline, &imds, &config),
    );
    checks.push(named("imds", began, token));
    checks.push(named("tags", began, tags));
    let (identity_finding, plan) = match identity {
        Ok(plan) => (
            ok(format!(
                "service {}, environment {} (tag {:?}), {} in {}",
                plan.identity.service,
                plan.identity.env,
                plan.identity.env_tag,
                plan.identity.instance_id,
                plan.identity.region
            )),
            Some(Arc::new(plan)),
        ),
        Err(finding) => (finding, None),
    };
    checks.push(named("identity", began, identity_finding));

    match &plan {
        Some(plan) => {
            let date = Arc::new(Mutex::new(None));
            let client = secrets_client(
                &config.secrets,
                &plan.identity.region,
                timeout,
                date.clone(),
            )
            .await;
            spawn(
                &mut set,
                "credentials",
                deadline,
                Box::pin(check_credentials(plan.clone(), timeout)),
            );
            // The clock is judged from the Date header of the secret check's answers.
            let (secret_plan, secret_client) = (plan.clone(), client.clone());
            set.spawn(async move {
                let started = Instant::now();
                let secret = bound(deadline, check_secret(&secret_client, &secret_plan)).await;
                let secret = named("secret", started, secret);
                vec![secret, named("clock", started, check_clock(&date))]
            });
            spawn(
                &mut set,
                "isolation",
                deadline,
                Box::pin(check_isolation(
                    config.clone(),
                    plan.clone(),
                    client.clone(),
                )),
            );
            spawn(
                &mut set,
                "snapshot",
                deadline,
                Box::pin(check_snapshot(config.clone(), plan.clone())),
            );
            spawn(
                &mut set,
                "replicas",
                deadline,
                Box::pin(check_replicas(config.clone(), plan.clone(), timeout)),
            );
            let (mirrors_config, mirrors_plan) = (config.clone(), plan.clone());
            let mirrors_client = client.clone();
            set.spawn(async move {
                let started = Instant::now();
                let mirrors = check_mirrors(mirrors_config, mirrors_plan, mirrors_client, deadline);
                vec![named("mirrors", started, mirrors.await)]
            });
            // Not cut off from outside: the listing runs on a blocking thread, which must end
            // before the runtime does (an HTTP transport on a runtime being shut down panics).
            // It ends by the deadline on its own.
            let (git_config, git_plan, git_client) = (config.clone(), plan.clone(), client.clone());
            // The seed is judged against the ref the git check lists.
            set.spawn(async move {
                let started = Instant::now();
                let (finding, listed) =
                    check_git(git_config, git_plan.clone(), git_client, deadline).await;
                let git = named("git", started, finding);
                let started = Instant::now();
                let seed = tokio::task::spawn_blocking(move || check_seed(&git_plan, listed));
                let seed = seed.await.unwrap_or_else(|e| {
                    fail(
                        format!("the seed check failed: {e}"),
                        "report this as a bug",
                    )
                });
                vec![git, named("seed", started, seed)]
            });
            spawn(
                &mut set,
                "env-file",
                deadline.at_least(LOCAL_MARGIN),
                Box::pin(check_env_file(config.clone(), plan.clone())),
            );
            spawn(
                &mut set,
                "unit",
                deadline.at_least(LOCAL_MARGIN),
                Box::pin(check_unit(plan.clone(), client)),
            );
            spawn(
                &mut set,
                "delivered",
                deadline.at_least(LOCAL_MARGIN),
                Box::pin(check_delivered(plan.clone())),
            );
        }
        None => {
            for name in NEED_IDENTITY {
                let finding = skip("needs the instance's identity, which failed");
                checks.push(named(name, Instant::now(), finding));
            }
        }
    }
    if config.git.verify != Verify::None {
        let finding = check_signing(&config);
        checks.push(named("signing", Instant::now(), finding));
    }
    spawn(
        &mut set,
        "disk",
        deadline.at_least(LOCAL_MARGIN),
        Box::pin(check_disk(config.clone(), plan.clone())),
    );
    while let Some(joined) = set.join_next().await {
        if let Ok(found) = joined {
            checks.extend(found);
        }
    }
    checks.sort_by_key(|c| ORDER.iter().position(|n| *n == c.name));
    Report {
        schema: 1,
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    }
}

/// `work`, or the finding that doctor's `--timeout` (counted from its start, the same for every
/// check) ran out first.
async fn bound(deadline: Deadline, work: impl std::future::Future<Output = Finding>) -> Finding {
    deadline
        .limit(work)
        .await
        .unwrap_or_else(|_| timed_out(deadline))
}

fn timed_out(deadline: Deadline) -> Finding {
    fail(
        format!(
            "no answer before doctor's --timeout ({}) ran out",
            deadline.length()
        ),
        "the service behind this check is slow or unreachable; rerun with a longer --timeout to \
         see more",
    )
}

/// What a check of this machine alone (a file, a statfs, systemctl) that can start only once the
/// identity is known may take past the deadline: it gets that even when the identity took all
/// the time.
const LOCAL_MARGIN: Duration = Duration::from_secs(1);

type Work = std::pin::Pin<Box<dyn std::future::Future<Output = Finding> + Send>>;

fn spawn(set: &mut JoinSet<Vec<Check>>, name: &'static str, deadline: Deadline, work: Work) {
    set.spawn(async move {
        let started = Instant::now();
        vec![named(name, started, bound(deadline, work).await)]
    });
}

fn named(name: &'static str, started: Instant, finding: Finding) -> Check {
    Check {
        name,
        verdict: finding.verdict,
        detail: finding.detail,
        hint: finding.hint,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}
