//! Is this instance healthy? The last boot succeeded, the service is up, the app's own health URL
//! (if configured) answers, and the instance is not draining. Read by `health-report`, one-shot
//! or served to the ALB.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, Manager};
use crate::status::{self, Outcome, StatusError};

/// Present while the instance drains before termination: health answers 503 from then on.
pub const DRAINING_MARKER: &str = "draining";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    /// `healthy`, `degraded` (healthy, running the last good release), `draining`, `booting`,
    /// `boot-failed`, `warmed`, `service-down`, `app-unhealthy`.
    pub state: &'static str,
    /// Why it is not healthy; short, and nothing an ALB's neighbours should not see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    fn ok() -> Health {
        Health {
            healthy: true,
            state: "healthy",
            reason: None,
        }
    }

    fn not(state: &'static str, reason: impl Into<String>) -> Health {
        Health {
            healthy: false,
            state,
            reason: Some(reason.into()),
        }
    }
}

pub struct Checker {
    run_dir: PathBuf,
    app_url: Option<String>,
    http: reqwest::Client,
}

impl Checker {
    pub fn new(config: &Config) -> Checker {
        let http = crate::imds::local_http_client()
            .timeout(config.health.app_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        Checker {
            run_dir: config.paths.run_dir.clone(),
            app_url: Some(config.health.app_url.clone()).filter(|url| !url.is_empty()),
            http,
        }
    }

    pub async fn check(&self) -> Health {
        if self.run_dir.join(DRAINING_MARKER).exists() {
            return Health::not("draining", "the instance is draining before termination");
        }
        let status = match status::read(&self.run_dir.join("status.json")) {
            Ok(status) => status,
            Err(StatusError::Missing { .. }) => {
                return Health::not("booting", "no boot has run yet")
            }
            Err(_) => return Health::not("boot-failed", "the boot status cannot be read"),
        };
        match (&status.outcome, &status.error) {
            (Outcome::Running, _) => return Health::not("booting", "the boot is still running"),
            (Outcome::Failed, error) => {
                let code = error.as_ref().map_or(0, |e| e.exit_code);
                return Health::not(
                    "boot-failed",
                    format!("the last boot failed (exit code {code})"),
                );
            }
            (Outcome::Succeeded | Outcome::Degraded, _) => {}
        }
        if let Some(down) = service_down(&status).await {
            return down;
        }
        let health = match &self.app_url {
            Some(url) => self.check_app(url).await,
            None => Health::ok(),
        };
        // The service runs and answers, so it serves (an ALB keeps it); the state says that it
        // is the last good release rather than the one asked for.
        match status.degraded {
            Some(why) if health.healthy => Health {
                healthy: true,
                state: "degraded",
                reason: Some(why),
            },
            _ => health,
        }
    }

    async fn check_app(&self, url: &str) -> Health {
        match self.http.get(url).send().await {
            Ok(response) if response.status().is_success() => Health::ok(),
            Ok(response) => Health::not(
                "app-unhealthy",
                format!(
                    "the app's health URL answered HTTP {}",
                    response.status().as_u16()
                ),
            ),
            Err(e) if e.is_timeout() => Health::not(
                "app-unhealthy",
                "the app's health URL did not answer in time",
            ),
            Err(_) => Health::not("app-unhealthy", "the app's health URL could not be reached"),
        }
    }
}

/// The service as the last boot left it: a systemd unit's state, or in exec mode the process
/// bootagent became.
async fn service_down(status: &status::Status) -> Option<Health> {
    let service = status.service.as_ref()?;
    if service.state == status::WARMED {
        return Some(Health::not(
            "warmed",
            "the instance waits in a warm pool; the service starts when it goes in service",
        ));
    }
    match service.manager {
        Manager::Systemd => match crate::service::unit_state(&service.unit).await {
            Ok(state) if state.active == "active" => None,
            Ok(state) => Some(Health::not(
                "service-down",
                format!("{} is {}", service.unit, state.active),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "reading the unit's state failed");
                Some(Health::not(
                    "service-down",
                    format!("the state of {} cannot be read", service.unit),
                ))
            }
        },
        Manager::Exec => {
            let alive = Path::new(&format!("/proc/{}", status.pid)).exists();
            (!alive).then(|| Health::not("service-down", "the service process has exited"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Recorder, ServiceStatus};

    /// A finished exec-mode boot whose service is this very process (so it lives).
    fn checker_after(degraded: Option<&str>) -> (tempfile::TempDir, Checker) {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("config.toml");
        std::fs::write(
            &config_file,
            format!("[paths]\nrun_dir = \"{}\"\n", dir.path().display()),
        )
        .unwrap();
        let config = crate::config::load(Some(&config_file)).unwrap();
        let mut recorder = Recorder::start(&dir.path().join("status.json"));
        recorder.status.service = Some(ServiceStatus {
            manager: Manager::Exec,
            unit: "app.service".into(),
            state: "exec".into(),
            restarted: true,
        });
        if let Some(why) = degraded {
            recorder.degrade(why.to_string());
        }
        recorder.finish(None).unwrap();
        (dir, Checker::new(&config))
    }

    #[tokio::test]
    async fn a_degraded_boot_serves_and_says_why() {
        let (_dir, checker) = checker_after(Some("running last good commit abc because x"));
        assert_eq!(
            checker.check().await,
            Health {
                healthy: true,
                state: "degraded",
                reason: Some("running last good commit abc because x".into()),
            }
        );
        let (_dir, checker) = checker_after(None);
        assert_eq!(checker.check().await, Health::ok());
    }
}
