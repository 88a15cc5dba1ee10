//! ASG lifecycle hooks: complete a launch or termination action (CONTINUE or ABANDON) and
//! record heartbeats while work goes on.

use aws_config::SdkConfig;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::aws::NoTrustRoots;
use crate::config::LifecycleConfig;

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
        "Auto Scaling's answer to {action} for hook {hook} of group {group} exceeded {limit} and \
         was cut off: something else answers in its place; check AWS_ENDPOINT_URL and any proxy \
         between this instance and the endpoint"
    )]
    TooLarge {
        action: &'static str,
        hook: String,
        group: String,
        limit: String,
    },
    #[error(
        "Auto Scaling did not answer {action} for hook {hook} of group {group} ({tries}): {detail}"
    )]
    Unreachable {
        action: &'static str,
        hook: String,
        group: String,
        detail: String,
        /// How many attempts over how long, once the retries gave up.
        tries: String,
        /// How long the server asked to wait before the next try.
        retry_after: Option<crate::retry::Asked>,
    },
}

impl crate::retry::Retryable for LifecycleError {
    fn is_transient(&self) -> bool {
        LifecycleError::is_transient(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            LifecycleError::Unreachable { retry_after, .. } => {
                retry_after.map(crate::retry::Asked::duration)
            }
            _ => None,
        }
    }

    fn after(self, attempts: u32, waited: std::time::Duration) -> LifecycleError {
        match self {
            LifecycleError::Unreachable {
                action,
                hook,
                group,
                detail,
                retry_after,
                ..
            } => LifecycleError::Unreachable {
                action,
                hook,
                group,
                detail,
                tries: crate::retry::tries(attempts, waited),
                retry_after,
            },
            other => other,
        }
    }
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

/// The one place that says which group an instance's lifecycle calls name: `lifecycle.group`,
/// or else the group its `aws:autoscaling:groupName` tag names.
fn group_of(
    config: &LifecycleConfig,
    tagged_group: Option<String>,
) -> Result<String, LifecycleError> {
    config
        .group
        .clone()
        .or(tagged_group)
        .ok_or(LifecycleError::NoGroup)
}

/// The outcome of a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    backoff: crate::retry::Backoff,
    retry_for: std::time::Duration,
}

impl Lifecycle {
    /// The lifecycle of `instance_id` in its group: `lifecycle.group`, or else the group its
    /// `aws:autoscaling:groupName` tag names (`tagged_group`).
    pub async fn connect(
        config: &LifecycleConfig,
        region: &str,
        instance_id: &str,
        tagged_group: Option<String>,
    ) -> Result<Lifecycle, LifecycleError> {
        let group = group_of(config, tagged_group)?;
        let sdk_config = crate::aws::load(region, config.timeout).await?;
        Ok(Lifecycle::with_sdk(
            &sdk_config,
            group,
            instance_id,
            crate::retry::AWS_BACKOFF,
            config.timeout,
        ))
    }

    /// A client over `sdk_config`, which decides endpoint, credentials and HTTP client (and must
    /// have the SDK's retries off): throttling and 5xx answers are tried again with `backoff`
    /// for as long as `retry_for` allows.
    pub fn with_sdk(
        sdk_config: &SdkConfig,
        group: String,
        instance_id: &str,
        backoff: crate::retry::Backoff,
        retry_for: std::time::Duration,
    ) -> Lifecycle {
        Lifecycle {
            client: aws_sdk_autoscaling::Client::from_conf(
                aws_sdk_autoscaling::config::Builder::from(sdk_config)
                    .interceptor(crate::aws::BoundedAnswers)
                    .build(),
            ),
            group,
            instance_id: instance_id.to_string(),
            backoff,
            retry_for,
        }
    }

    /// `call` until it answers, fails for good, or `within` leaves no room for another try.
    async fn retried<F, Fut>(
        &self,
        within: std::time::Duration,
        call: F,
    ) -> Result<Answer, LifecycleError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Answer, LifecycleError>>,
    {
        crate::retry::retry_call(self.backoff, within, call).await
    }

    pub async fn complete(
        &self,
        hook: &str,
        result: ActionResult,
    ) -> Result<Answer, LifecycleError> {
        self.complete_within(hook, result, self.retry_for).await
    }

    /// [`Lifecycle::complete`], retried for as long as `within` allows rather than `retry_for`:
    /// a boot gives its launch hook what its deadline leaves.
    pub async fn complete_within(
        &self,
        hook: &str,
        result: ActionResult,
        within: std::time::Duration,
    ) -> Result<Answer, LifecycleError> {
        tracing::info!(hook, group = %self.group, result = result.as_str(), "completing the lifecycle action");
        self.retried(within, || async {
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
        })
        .await
    }

    pub async fn heartbeat(&self, hook: &str) -> Result<Answer, LifecycleError> {
        tracing::debug!(hook, group = %self.group, "recording a lifecycle heartbeat");
        self.retried(self.retry_for, || async {
            let sent = self
                .client
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&self.group)
                .lifecycle_hook_name(hook)
                .instance_id(&self.instance_id)
                .send()
                .await;
            self.answer("RecordLifecycleActionHeartbeat", hook, sent.map(drop))
        })
        .await
    }

    /// One place decides what an answer means (of one attempt: [`Lifecycle::retried`] tries
    /// the transient ones again).
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
        if crate::aws::answer_too_large(&error) {
            let limit = crate::aws::max_answer();
            return Err(LifecycleError::TooLarge {
                action,
                hook,
                group,
                limit,
            });
        }
        match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default().to_string();
                let message = service.err().message().unwrap_or_default().to_string();
                if code == "ValidationError" && message.contains("No active Lifecycle Action") {
                    tracing::warn!(hook, %group, "{message}: nothing to complete");
                    return Ok(Answer::NoActiveAction);
                }
                let status = service.raw().status().as_u16();
                let headers = service.raw().headers();
                let retry_after = crate::retry::server_asked(
                    headers.get("x-amz-retry-after"),
                    headers.get("retry-after"),
                );
                if code.is_empty() {
                    // Not an answer of Auto Scaling's: a proxy's page, a truncated body.
                    return Err(LifecycleError::Unreachable {
                        action,
                        hook,
                        group,
                        detail: format!("unreadable response with HTTP {status}"),
                        tries: crate::retry::ONE_ATTEMPT.into(),
                        retry_after,
                    });
                }
                if code == "Throttling" || status >= 500 {
                    return Err(LifecycleError::Unreachable {
                        action,
                        hook,
                        group,
                        detail: format!("{code}: {message}"),
                        tries: crate::retry::ONE_ATTEMPT.into(),
                        retry_after,
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
                tries: crate::retry::ONE_ATTEMPT.into(),
                retry_after: None,
            }),
        }
    }
}

/// The calls answered in process, as Auto Scaling answers them (the Query protocol).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SdkAnswers;

    const COMPLETED: &str = r#"<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <CompleteLifecycleActionResult/>
  <ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata>
</CompleteLifecycleActionResponse>"#;

    fn error(code: &str, message: &str) -> String {
        format!(
            r#"<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId>
</ErrorResponse>"#
        )
    }

    async fn lifecycle(answers: &SdkAnswers) -> Lifecycle {
        Lifecycle::with_sdk(
            &answers.sdk_config().await,
            "web".into(),
            "i-0abc",
            crate::testing::FAST,
            std::time::Duration::from_millis(500),
        )
    }

    #[tokio::test]
    async fn a_completed_action_names_the_group_hook_instance_and_result() {
        let answers = SdkAnswers::new(&[(200, COMPLETED)]);
        let answer = lifecycle(&answers)
            .await
            .complete("launching", ActionResult::Abandon)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Done);
        let sent = answers.requests();
        assert_eq!(sent.len(), 1);
        for part in [
            "Action=CompleteLifecycleAction",
            "AutoScalingGroupName=web",
            "LifecycleHookName=launching",
            "InstanceId=i-0abc",
            "LifecycleActionResult=ABANDON",
        ] {
            assert!(sent[0].contains(part), "{part} in {}", sent[0]);
        }
    }

    #[tokio::test]
    async fn an_answer_past_a_mebibyte_is_cut_off_and_named() {
        let answers = SdkAnswers::new(&[(200, "")]).with_generated_body(500 << 20);
        let err = lifecycle(&answers)
            .await
            .complete("launching", ActionResult::Continue)
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "Auto Scaling's answer to CompleteLifecycleAction for hook launching of group web \
                 exceeded 1 MiB and was cut off"
            ),
            "{err}"
        );
        assert_eq!(answers.requests().len(), 1, "not tried again");
        assert!(answers.generated_read() <= (crate::aws::MAX_ANSWER_BYTES + 64 * 1024) as u64);
    }

    #[tokio::test]
    async fn no_active_action_is_an_answer_not_a_failure() {
        let none = error(
            "ValidationError",
            "No active Lifecycle Action found with instance ID i-0abc",
        );
        let answers = SdkAnswers::new(&[(400, &none)]);
        let answer = lifecycle(&answers)
            .await
            .heartbeat("launching")
            .await
            .unwrap();
        assert_eq!(answer, Answer::NoActiveAction);
        assert!(answers.requests()[0].contains("Action=RecordLifecycleActionHeartbeat"));
    }

    #[tokio::test]
    async fn another_validation_error_is_a_refusal_that_is_not_retried() {
        let unknown_hook = error(
            "ValidationError",
            "No Lifecycle Hook found for name launching in group web",
        );
        let answers = SdkAnswers::new(&[(400, &unknown_hook)]);
        let err = lifecycle(&answers)
            .await
            .complete("launching", ActionResult::Continue)
            .await
            .unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(
            err.to_string().contains(
                "Auto Scaling refused CompleteLifecycleAction for hook launching of group web: \
                 ValidationError: No Lifecycle Hook found"
            ),
            "{err}"
        );
        assert_eq!(answers.requests().len(), 1);
        assert_eq!(crate::Error::from(err).exit_code(), crate::exit::LIFECYCLE);
    }

    #[tokio::test]
    async fn throttling_that_lasts_is_transient_once_the_retries_time_is_out() {
        let throttled = error("Throttling", "Rate exceeded");
        let answers = SdkAnswers::new(&[(400, &throttled)]);
        let err = lifecycle(&answers)
            .await
            .complete("launching", ActionResult::Continue)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("Throttling: Rate exceeded"),
            "{err}"
        );
        let calls = answers.requests().len();
        assert!(calls > 3, "retried until the time ran out: {calls}");
        let attempts = format!("({calls} attempts over ");
        assert!(err.to_string().contains(&attempts), "{err}");
        assert_eq!(crate::Error::from(err).exit_code(), crate::exit::TRANSIENT);
    }

    #[tokio::test]
    async fn throttling_that_passes_is_retried_to_an_answer() {
        let throttled = error("Throttling", "Rate exceeded");
        let answers = SdkAnswers::new(&[(400, &throttled), (400, &throttled), (200, COMPLETED)]);
        let answer = lifecycle(&answers)
            .await
            .complete("launching", ActionResult::Continue)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Done);
        assert_eq!(answers.requests().len(), 3);
    }

    #[tokio::test]
    async fn an_answer_that_is_not_auto_scalings_is_transient() {
        let answers = SdkAnswers::new(&[(502, "<html>Bad Gateway</html>")]);
        let err = lifecycle(&answers)
            .await
            .heartbeat("launching")
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .contains("unreadable response with HTTP 502"),
            "{err}"
        );
    }

    #[test]
    fn the_group_comes_from_the_config_before_the_tag() {
        let mut config = crate::config::from_text(
            std::path::Path::new("test.toml"),
            "[lifecycle]\ngroup = \"from-config\"\n",
        )
        .unwrap()
        .lifecycle;
        let tagged = || Some("tagged".to_string());
        assert_eq!(group_of(&config, tagged()).unwrap(), "from-config");
        config.group = None;
        assert_eq!(group_of(&config, tagged()).unwrap(), "tagged");
        let err = group_of(&config, None).unwrap_err();
        assert!(err.to_string().contains("set lifecycle.group"), "{err}");
    }
}
