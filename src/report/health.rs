//! Is this instance healthy? The last boot succeeded, the service is up, the app's own health URL
//! (if configured) answers, and the instance is not draining. Read by `health-report`, one-shot
//! or served to the ALB.

use std::path::Path;
use std::time::Duration;

use crate::retry::{Look, Unready};

use serde::Serialize;

use crate::config::{HealthConfig, Manager, PathsConfig};
use crate::state::status::{self, Outcome, ServiceState, ServiceStatus, StatusError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub state: State,
    /// Why it is not healthy; short, and nothing an ALB's neighbours should not see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The state the health report names, as its JSON spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    /// Healthy, running the last good release.
    Degraded,
    /// Healthy, running the release a failed change was rolled back to.
    RolledBack,
    Draining,
    Booting,
    BootFailed,
    Warmed,
    ServiceDown,
    AppUnhealthy,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::RolledBack => "rolled-back",
            State::Draining => "draining",
            State::Booting => "booting",
            State::BootFailed => "boot-failed",
            State::Warmed => "warmed",
            State::ServiceDown => "service-down",
            State::AppUnhealthy => "app-unhealthy",
        }
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Health {
    fn ok() -> Health {
        Health {
            healthy: true,
            state: State::Healthy,
            reason: None,
        }
    }

    fn not(state: State, reason: impl Into<String>) -> Health {
        Health {
            healthy: false,
            state,
            reason: Some(reason.into()),
        }
    }
}

/// What [`Checker::wait_until_healthy`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole health report, as the load balancer sees it.
    Instance,
    /// The app's own health URL alone (the deploy gate: the boot is still running).
    App,
}

pub struct Checker {
    paths: PathsConfig,
    app_url: Option<String>,
    http: reqwest::Client,
}

impl Checker {
    pub fn new(settings: &HealthConfig, paths: &PathsConfig) -> Checker {
        // An https:// app URL is verified as any HTTPS peer is: against the system's CA store.
        let https = settings
            .app_url
            .as_deref()
            .and_then(|url| reqwest::Url::parse(url).ok())
            .is_some_and(|url| url.scheme() == "https");
        let http = match https {
            true => crate::ca::https_client().no_proxy(),
            false => crate::aws::imds::local_http_client(),
        }
        .timeout(settings.app_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds");
        Checker {
            paths: paths.clone(),
            app_url: settings.app_url.clone(),
            http,
        }
    }

    pub async fn check(&self) -> Health {
        if self.paths.draining_marker().exists() {
            return Health::not(
                State::Draining,
                "the instance is draining before termination",
            );
        }
        let mut status = match status::read(&self.paths) {
            Ok(status) => status,
            Err(StatusError::Missing { .. }) => {
                return Health::not(State::Booting, "no boot has run yet")
            }
            Err(_) => return Health::not(State::BootFailed, "the boot status cannot be read"),
        };
        match (&status.outcome, &status.error) {
            (Outcome::Running, _) => {
                return Health::not(State::Booting, "the boot is still running")
            }
            (Outcome::Failed, error) if status.serving_unchanged.is_none() => {
                let code = error.as_ref().map_or(0, |e| e.exit_code);
                return Health::not(
                    State::BootFailed,
                    format!("the last boot failed (exit code {code})"),
                );
            }
            (Outcome::Failed, error) => {
                // It failed before it changed anything: what served before still does, if the
                // unit and the app say so below.
                let code = error.as_ref().map_or(0, |e| e.exit_code);
                let serving = status.serving_unchanged.clone().unwrap_or_default();
                status.degraded = Some(format!(
                    "the last boot failed (exit code {code}) before it changed anything; {} \
                     serves as before",
                    serving.commit
                ));
                status.service.get_or_insert(ServiceStatus {
                    manager: Manager::Systemd,
                    unit: serving.unit,
                    state: ServiceState::Unit(String::new()),
                    restarted: false,
                    applied: Vec::new(),
                });
            }
            (Outcome::Succeeded | Outcome::Degraded | Outcome::RolledBack, _) => {}
        }
        if let Some(down) = service_down(&status).await {
            return down;
        }
        let health = self.check_app().await;
        // The service runs and answers, so it serves (an ALB keeps it); the state says that it
        // is the last good release rather than the one asked for.
        match status.degraded {
            Some(why) if health.healthy => Health {
                healthy: true,
                state: match status.outcome {
                    Outcome::RolledBack => State::RolledBack,
                    _ => State::Degraded,
                },
                reason: Some(why),
            },
            _ => health,
        }
    }

    /// Looks every second until `scope` is healthy or `limit` has passed; the last health seen
    /// when it did not turn healthy in time.
    pub async fn wait_until_healthy(&self, scope: Scope, limit: Duration) -> Result<(), Health> {
        let waited = crate::retry::poll(Duration::from_secs(1), limit, || async {
            let health = match scope {
                Scope::Instance => self.check().await,
                Scope::App => self.check_app().await,
            };
            match health {
                health if health.healthy => Look::<(), _, std::convert::Infallible>::Ready(()),
                health => Look::Pending(health),
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(Unready::TimedOut(health)) => Err(health),
            Err(Unready::Failed(never)) => match never {},
        }
    }

    /// The app's own health URL alone; healthy when none is configured.
    pub async fn check_app(&self) -> Health {
        let Some(url) = &self.app_url else {
            return Health::ok();
        };
        match self.http.get(url).send().await {
            Ok(response) if response.status().is_success() => Health::ok(),
            Ok(response) => Health::not(
                State::AppUnhealthy,
                format!(
                    "the app's health URL answered HTTP {}",
                    response.status().as_u16()
                ),
            ),
            Err(e) if e.is_timeout() => Health::not(
                State::AppUnhealthy,
                "the app's health URL did not answer in time",
            ),
            Err(e) if crate::ca::refused_certificate(&e).is_some() => Health::not(
                State::AppUnhealthy,
                "the app's health URL presented a certificate this instance does not trust (for \
                 another name, or from a CA not in the system's store as this process read it \
                 when it started)",
            ),
            Err(_) => Health::not(
                State::AppUnhealthy,
                "the app's health URL could not be reached",
            ),
        }
    }
}

/// The service as the last boot left it: a systemd unit's state, or in exec mode the process
/// bootagent became.
async fn service_down(status: &status::Status) -> Option<Health> {
    let service = status.service.as_ref()?;
    if service.state == ServiceState::Warmed {
        return Some(Health::not(
            State::Warmed,
            "the instance waits in a warm pool; the service starts when it goes in service",
        ));
    }
    match service.manager {
        Manager::Systemd => match crate::service::unit_state(&service.unit).await {
            Ok(state) if state.active == "active" => None,
            Ok(state) => Some(Health::not(
                State::ServiceDown,
                format!("{} is {}", service.unit, state.active),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "reading the unit's state failed");
                Some(Health::not(
                    State::ServiceDown,
                    format!("the state of {} cannot be read", service.unit),
                ))
            }
        },
        Manager::Exec => {
            let alive = Path::new(&format!("/proc/{}", status.pid)).exists();
            (!alive).then(|| Health::not(State::ServiceDown, "the service process has exited"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::status::{ErrorReport, ServiceState, ServiceStatus, Status};
    use crate::testing::{HttpStub, Reply};

    /// A run dir of its own, and the app's health URL when there is one.
    fn instance(app_url: Option<&str>) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("[paths]\nrun_dir = \"{}\"\n", dir.path().display());
        if let Some(url) = app_url {
            text.push_str(&format!(
                "[health]\napp_url = \"{url}\"\napp_timeout = \"300ms\"\n"
            ));
        }
        let config = crate::config::from_text(&dir.path().join("config.toml"), &text).unwrap();
        (dir, config)
    }

    /// A finished exec-mode boot whose service is this very process (so it lives).
    fn booted(config: &Config, outcome: Outcome, change: impl FnOnce(&mut Status)) {
        let mut status = Status::starting();
        status.service = Some(ServiceStatus {
            manager: Manager::Exec,
            unit: "app.service".into(),
            state: ServiceState::Exec,
            restarted: true,
            applied: Vec::new(),
        });
        status.outcome = outcome;
        change(&mut status);
        let json = serde_json::to_string(&status).unwrap();
        std::fs::write(config.paths.status_file(), json).unwrap();
    }

    async fn health_of(config: &Config) -> (bool, &'static str, String) {
        let health = Checker::new(&config.health, &config.paths).check().await;
        (
            health.healthy,
            health.state.as_str(),
            health.reason.unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn a_degraded_boot_serves_and_says_why() {
        let (_dir, config) = instance(None);
        booted(&config, Outcome::Degraded, |status| {
            status.degraded = Some("running last good commit abc because x".into())
        });
        assert_eq!(
            Checker::new(&config.health, &config.paths).check().await,
            Health {
                healthy: true,
                state: State::Degraded,
                reason: Some("running last good commit abc because x".into()),
            }
        );
        booted(&config, Outcome::Succeeded, |_| {});
        assert_eq!(
            Checker::new(&config.health, &config.paths).check().await,
            Health::ok()
        );
    }

    #[tokio::test]
    async fn before_the_first_boot_and_after_a_failed_one_it_is_not_healthy() {
        let (_dir, config) = instance(None);
        assert_eq!(
            health_of(&config).await,
            (false, "booting", "no boot has run yet".into())
        );
        booted(&config, Outcome::Failed, |status| {
            status.error = Some(ErrorReport {
                message: "secret calendar_env_prod was not found".into(),
                exit_code: crate::exit::SECRET_UNAVAILABLE,
            })
        });
        assert_eq!(
            health_of(&config).await,
            (
                false,
                "boot-failed",
                "the last boot failed (exit code 5)".into()
            )
        );
        // `running` with no boot holding the lock: that boot was killed.
        booted(&config, Outcome::Running, |_| {});
        assert_eq!(
            health_of(&config).await,
            (
                false,
                "boot-failed",
                "the last boot failed (exit code 75)".into()
            )
        );
        std::fs::write(config.paths.status_file(), "{not json").unwrap();
        assert_eq!(health_of(&config).await.1, "boot-failed");
    }

    #[tokio::test]
    async fn warmed_draining_and_a_gone_process_are_each_named() {
        let (_dir, config) = instance(None);
        booted(&config, Outcome::Succeeded, |status| {
            status.service.as_mut().unwrap().state = ServiceState::Warmed
        });
        assert_eq!(health_of(&config).await.1, "warmed");
        booted(&config, Outcome::Succeeded, |status| status.pid = u32::MAX);
        assert_eq!(
            health_of(&config).await,
            (
                false,
                "service-down",
                "the service process has exited".into()
            )
        );
        std::fs::write(config.paths.draining_marker(), "").unwrap();
        assert_eq!(health_of(&config).await.1, "draining");
    }

    #[tokio::test]
    async fn the_apps_own_answer_decides_once_the_boot_is_good() {
        let app = HttpStub::start(|seen| match seen.path.as_str() {
            "/ok" => Reply::new(200, "fine"),
            "/moved" => Reply::new(302, ""),
            "/slow" => Reply::new(200, "late").after(std::time::Duration::from_secs(3)),
            _ => Reply::new(500, "broken"),
        })
        .await;
        for (path, healthy, reason) in [
            ("/ok", true, ""),
            ("/broken", false, "the app's health URL answered HTTP 500"),
            ("/moved", false, "the app's health URL answered HTTP 302"),
            (
                "/slow",
                false,
                "the app's health URL did not answer in time",
            ),
        ] {
            let (_dir, config) = instance(Some(&format!("{}{path}", app.url)));
            booted(&config, Outcome::Succeeded, |_| {});
            let (is, state, why) = health_of(&config).await;
            assert_eq!((is, why.as_str()), (healthy, reason), "{path}");
            let expected = if healthy { "healthy" } else { "app-unhealthy" };
            assert_eq!(state, expected, "{path}");
        }
        let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", refusing.local_addr().unwrap());
        drop(refusing);
        let (_dir, config) = instance(Some(&url));
        booted(&config, Outcome::Succeeded, |_| {});
        assert_eq!(
            health_of(&config).await.2,
            "the app's health URL could not be reached"
        );
    }
}
