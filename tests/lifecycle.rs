//! `bootagent lifecycle complete|heartbeat` against the Auto Scaling fake, through the real SDK.

use support::*;

const INSTANCE_ID: &str = "i-0123456789abcdef0";

fn instance_in_group(group: Option<&str>) -> (Instance, Imds) {
    let mut tags = vec![("Service", "web"), ("Environment", "prod")];
    if let Some(group) = group {
        tags.push(("aws:autoscaling:groupName", group));
    }
    (Instance::exec_mode(""), Imds::with_tags(&tags))
}

fn lifecycle(instance: &Instance, imds: &Imds, asg: &AsgFake, args: &[&str]) -> Run {
    instance.run_with(
        imds,
        &[&["lifecycle"], args].concat(),
        &[("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url.as_str())],
    )
}

#[test]
fn complete_and_heartbeat_reach_auto_scaling() {
    support::needs_world!();
    let asg = AsgFake::start();
    asg.activate("web-asg", "launching", INSTANCE_ID);
    let (instance, imds) = instance_in_group(Some("web-asg"));
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["heartbeat", "--hook", "launching"],
    )
    .expect(0);
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["complete", "--hook", "launching", "--result", "continue"],
    )
    .expect(0);
    assert_eq!(
        asg.calls(),
        [
            ("RecordLifecycleActionHeartbeat".to_string(), None),
            (
                "CompleteLifecycleAction".to_string(),
                Some("CONTINUE".to_string())
            ),
        ]
    );
}

#[test]
fn no_active_action_is_reported_not_fatal() {
    support::needs_world!();
    let asg = AsgFake::start();
    let (instance, imds) = instance_in_group(Some("web-asg"));
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["complete", "--hook", "launching", "--result", "abandon"],
    )
    .expect(0)
    .stderr_has("no active lifecycle action for hook launching");
}

#[test]
fn throttled_calls_are_retried() {
    support::needs_world!();
    let asg = AsgFake::start();
    asg.activate("web-asg", "launching", INSTANCE_ID);
    asg.throttle(2);
    let (instance, imds) = instance_in_group(Some("web-asg"));
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["complete", "--hook", "launching", "--result", "continue"],
    )
    .expect(0);
    let calls = asg.calls();
    assert_eq!(calls.len(), 3, "two throttled, then done: {calls:?}");
}

#[test]
fn an_unknown_group_names_the_tag_and_the_setting() {
    support::needs_world!();
    let asg = AsgFake::start();
    let (instance, imds) = instance_in_group(None);
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["heartbeat", "--hook", "launching"],
    )
    .expect(2)
    .stderr_has("no aws:autoscaling:groupName tag")
    .stderr_has("lifecycle.group");
    instance.add_config("70-group.toml", "[lifecycle]\ngroup = \"web-asg\"\n");
    asg.activate("web-asg", "launching", INSTANCE_ID);
    lifecycle(
        &instance,
        &imds,
        &asg,
        &["heartbeat", "--hook", "launching"],
    )
    .expect(0);
}

#[test]
fn a_zero_watch_interval_is_a_usage_error_not_a_busy_loop() {
    support::needs_world!();
    let (instance, imds) = instance_in_group(Some("web-asg"));
    instance
        .run(&imds, &["lifecycle", "watch", "--interval", "0s"])
        .expect(2)
        .stderr_has("must be longer than 0s");
    assert!(
        imds.requests().is_empty(),
        "asked IMDS: {:?}",
        imds.requests()
    );
}
