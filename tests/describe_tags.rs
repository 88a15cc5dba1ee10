//! `identity.describe_tags_fallback`: with tags in instance metadata disabled, the tags come from
//! ec2:DescribeTags (moto's EC2, signatures and IAM checked where the test turns that on).

use support::*;

const FALLBACK: &str = "[identity]\ndescribe_tags_fallback = true\n";

/// An instance id of this test's own, so tests sharing moto do not see each other's tags.
/// EC2's form: 17 hex digits.
fn instance_id() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    unique("tags").hash(&mut hasher);
    format!("i-0{:016x}", hasher.finish())
}

/// The IMDS of an instance `instance_id` whose tags are not in metadata.
fn untagged_metadata(instance_id: &str) -> Imds {
    Imds::start(serde_json::json!({ "tags": null, "instance_id": instance_id }))
}

#[test]
fn tags_come_from_describe_tags_when_metadata_has_none() {
    support::needs_world!();
    let name = unique("dt");
    let repo = SampleRepo::create(&name);
    create_secret(&format!("{name}_env_stage"), r#"{"A": "1"}"#);
    let id = instance_id();
    ec2_create_tags(
        &id,
        &[
            ("Service", &name),
            ("Environment", "staging"),
            ("Repository", &repo.url),
            ("Unrelated", "x"),
        ],
    );
    let imds = untagged_metadata(&id);
    let instance = Instance::exec_mode(FALLBACK);
    instance.run(&imds, &["boot"]).expect(0);
    assert_eq!(instance.running_commit(&name), repo.commits["stage"]);
    let status = instance.status();
    assert_eq!(status["identity"]["env"], "stage");
    assert_eq!(status["identity"]["instance_id"], id.as_str());

    let (_, tags) = instance.doctor_check(&imds, "tags");
    assert_eq!(tags["verdict"], "ok", "{tags}");
    assert!(
        tags["detail"]
            .as_str()
            .unwrap()
            .contains("ec2:DescribeTags reads 4 tags"),
        "{tags}"
    );
}

#[test]
fn without_the_fallback_disabled_tags_are_named_as_such() {
    support::needs_world!();
    let id = instance_id();
    ec2_create_tags(&id, &[("Service", "calendar"), ("Environment", "test")]);
    Instance::exec_mode("")
        .run(&untagged_metadata(&id), &["boot"])
        .expect(4)
        .stderr_has("tags in metadata are disabled");
}

#[test]
fn describe_tags_is_signed_as_aws_checks_it() {
    support::needs_world!();
    let moto = Moto::start_private();
    let name = unique("signed");
    let repo = SampleRepo::create(&name);
    moto.create_secret(&format!("{name}_env_prod"), r#"{"A": "1"}"#);
    let id = instance_id();
    moto.ec2_create_tags(
        &id,
        &[
            ("Service", &name),
            ("Environment", "prod"),
            ("Repository", &repo.url),
        ],
    );
    let (key_id, secret) = moto.user_allowed(
        "booter",
        &["ec2:DescribeTags", "secretsmanager:GetSecretValue"],
    );
    moto.require_auth();
    let instance = Instance::exec_mode(FALLBACK);
    let run = instance.run_with(
        &untagged_metadata(&id),
        &["boot"],
        &[
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", &key_id),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ],
    );
    run.expect(0);
    assert_eq!(instance.running_commit(&name), repo.commits["prod"]);
    instance.assert_no_canary(&secret, &run);
}

#[test]
fn a_role_that_may_not_describe_tags_is_told_which_permission_it_lacks() {
    support::needs_world!();
    let moto = Moto::start_private();
    let id = instance_id();
    moto.ec2_create_tags(&id, &[("Service", "calendar"), ("Environment", "prod")]);
    let (key_id, secret) = moto.user_allowed("secrets-only", &["secretsmanager:GetSecretValue"]);
    moto.require_auth();
    let instance = Instance::exec_mode(FALLBACK);
    let run = instance.run_with(
        &untagged_metadata(&id),
        &["boot"],
        &[
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", &key_id),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
    );
    run.expect(4)
        // Real EC2 says UnauthorizedOperation, moto AccessDenied: both are a refusal.
        .stderr_has("ec2:DescribeTags was refused (")
        .stderr_has("not authorized to perform: ec2:DescribeTags")
        .stderr_has("allow ec2:DescribeTags to the instance role");
    instance.assert_no_canary(&secret, &run);
}

#[test]
fn a_launch_with_bad_tags_is_abandoned_with_the_group_from_describe_tags_through_throttling() {
    support::needs_world!();
    let asg = AsgFake::start();
    let id = instance_id();
    ec2_create_tags(
        &id,
        &[
            ("Service", "../etc"),
            ("Environment", "prod"),
            ("aws:autoscaling:groupName", "web-asg"),
        ],
    );
    asg.activate("web-asg", "launching", &id);
    // Three throttled answers: one second of lifecycle.timeout holds about two tries, and the
    // ABANDON keeps trying for what the boot deadline leaves.
    asg.throttle(3);
    // Hooks need systemd mode; the boot ends at the tags, before systemd would be asked.
    let instance = Instance::exec_mode(&format!(
        "{FALLBACK}[lifecycle]\nlaunch_hook = \"launching\"\ntimeout = \"1s\"\n\
         [service]\nmanager = \"systemd\"\n"
    ));
    instance
        .run_with(
            &untagged_metadata(&id),
            &["boot"],
            &[("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url.as_str())],
        )
        .expect(3);
    let abandon = (
        "CompleteLifecycleAction".to_string(),
        Some("ABANDON".to_string()),
    );
    assert_eq!(asg.calls(), vec![abandon; 4]);
}

#[test]
fn a_throttled_describe_tags_is_retried_with_backoff_until_the_deadline() {
    support::needs_world!();
    let throttling = AwsError::start_ec2("RequestLimitExceeded", 503, "Request limit exceeded.");
    // A fleet shares DescribeTags' bucket: a boot keeps trying for as long as its deadline leaves
    // (6 s here), with the SDKs' standard waits (up to 1 s, then 2 s, then 4 s).
    let instance = Instance::exec_mode(&format!("{FALLBACK}[boot]\ndeadline = \"6s\"\n"));
    let run = instance.run_with(
        &untagged_metadata(&instance_id()),
        &["boot"],
        &[("AWS_ENDPOINT_URL_EC2", throttling.url.as_str())],
    );
    run.expect(75)
        .stderr_has("ec2:DescribeTags failed ")
        .stderr_has("RequestLimitExceeded");
    let calls = throttling.calls();
    assert!(calls >= 2, "tried {calls} times");
    assert!(
        run.stderr()
            .contains(&format!("failed {calls} times within")),
        "{}",
        run.stderr()
    );
}
