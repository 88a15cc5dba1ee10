//! ASG lifecycle hooks: complete a launch or termination action (CONTINUE or ABANDON) and
//! record heartbeats while work goes on.

use std::time::Duration;

use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::aws::NoTrustRoots;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    NoTrustRoots(#[from] NoTrustRoots),
    #[error(
        "this instance's Auto Scaling group is unknown: it has no aws:autoscaling:groupName tag \
         in instance metadata; set lifecycle.group"
    )]
    NoGroup,
    #[error("Auto Scaling refused {action} for hook {hook} of group {group}: {code}: {message}")]
    Refused {
        action: &'static str,
        hook: String,
        group: String,
        code: String,
        message: String,
    },
    #[error(
        "Auto Scaling did not answer {action} for hook {hook} of group {group}, retries \
         included: {detail}"
    )]
    Unreachable {
        action: &'static str,
        hook: String,
        group: String,
        detail: String,
    },
}

impl LifecycleError {
    pub fn is_transient(&self) -> bool {
        matches!(self, LifecycleError::Unreachable { .. })
    }
}

/// What a lifecycle call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Done,
    /// Auto Scaling has no action in progress for this instance and hook: it already timed out,
    /// was completed, or the instance was not launched through the hook. Reported, not fatal.
    NoActiveAction,
}

/// The outcome of a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionResult {
    Continue,
    Abandon,
}

impl ActionResult {
    fn as_str(self) -> &'static str {
        match self {
            ActionResult::Continue => "CONTINUE",
            ActionResult::Abandon => "ABANDON",
        }
    }
}

pub struct Lifecycle {
    client: aws_sdk_autoscaling::Client,
    group: String,
    instance_id: String,
}

impl Lifecycle {
    pub async fn new(
        region: &str,
        timeout: Duration,
        group: Option<String>,
        instance_id: &str,
    ) -> Result<Lifecycle, LifecycleError> {
        let group = group.ok_or(LifecycleError::NoGroup)?;
        let sdk_config = crate::aws::load(region, timeout).await?;
        Ok(Lifecycle {
            client: aws_sdk_autoscaling::Client::new(&sdk_config),
            group,
            instance_id: instance_id.to_string(),
        })
    }

    pub async fn complete(
        &self,
        hook: &str,
        result: ActionResult,
    ) -> Result<Answer, LifecycleError> {
        tracing::info!(hook, group = %self.group, result = result.as_str(), "completing the lifecycle action");
        let sent = self
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await;
        self.answer("CompleteLifecycleAction", hook, sent.map(drop))
    }

    pub async fn heartbeat(&self, hook: &str) -> Result<Answer, LifecycleError> {
        tracing::debug!(hook, group = %self.group, "recording a lifecycle heartbeat");
        let sent = self
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .send()
            .await;
        self.answer("RecordLifecycleActionHeartbeat", hook, sent.map(drop))
    }

    /// One place decides what an answer means; throttling was already retried by the SDK.
    fn answer<E>(
        &self,
        action: &'static str,
        hook: &str,
        sent: Result<(), SdkError<E>>,
    ) -> Result<Answer, LifecycleError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let error = match sent {
            Ok(()) => return Ok(Answer::Done),
            Err(error) => error,
        };
        let (hook, group) = (hook.to_string(), self.group.clone());
        match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default().to_string();
                let message = service.err().message().unwrap_or_default().to_string();
                if code == "ValidationError" && message.contains("No active Lifecycle Action") {
                    tracing::warn!(hook, %group, "{message}: nothing to complete");
                    return Ok(Answer::NoActiveAction);
                }
                if code == "Throttling" || service.raw().status().as_u16() >= 500 {
                    return Err(LifecycleError::Unreachable {
                        action,
                        hook,
                        group,
                        detail: format!("{code}: {message}"),
                    });
                }
                Err(LifecycleError::Refused {
                    action,
                    hook,
                    group,
                    code,
                    message,
                })
            }
            _ => Err(LifecycleError::Unreachable {
                action,
                hook,
                group,
                detail: DisplayErrorContext(&error).to_string(),
            }),
        }
    }
}
