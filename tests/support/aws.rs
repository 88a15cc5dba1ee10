//! moto for Secrets Manager and EC2 tags, and the fakes for what moto does not do: AWS's error
//! answers (tests/world/aws_error_endpoint.py), the Auto Scaling lifecycle API
//! (tests/world/autoscaling_fake.py), and one endpoint for several regions, each a moto of its
//! own (tests/world/region_front.py).

use crate::*;

/// The region the IMDS fake gives the instance, which bootagent's requests are signed for.
const INSTANCE_REGION: &str = "us-east-1";

/// Calls a Secrets Manager action on the shared moto (JSON protocol); returns the JSON answer.
pub fn secretsmanager(action: &str, body: serde_json::Value) -> serde_json::Value {
    secretsmanager_at(&world("MOTO"), INSTANCE_REGION, action, body)
}

/// Calls a Secrets Manager action at `url` signed for `region` (moto keeps each region's secrets
/// apart, and a [`RegionFront`] routes by it); returns the JSON answer.
fn secretsmanager_at(
    url: &str,
    region: &str,
    action: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let out = curl(&[
        "-sS",
        "-X",
        "POST",
        "-H",
        &format!("X-Amz-Target: secretsmanager.{action}"),
        "-H",
        "Content-Type: application/x-amz-json-1.1",
        "-H",
        &format!(
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/secretsmanager/\
             aws4_request, SignedHeaders=host, Signature=0"
        ),
        "--data-binary",
        &body.to_string(),
        &format!("{url}/"),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("moto {action} answered {out}"))
}

/// Calls a Query-protocol action (EC2, IAM) on moto at `url` with form `params`; returns the XML.
fn query_at(url: &str, service: &str, params: &[(&str, &str)]) -> String {
    let mut args = vec![
        "-sS".to_string(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        format!(
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/\
             aws4_request, SignedHeaders=host, Signature=0"
        ),
    ];
    for (key, value) in params {
        args.extend(["--data-urlencode".into(), format!("{key}={value}")]);
    }
    args.push(format!("{url}/"));
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Tags `instance_id` in the shared moto's EC2, as the launch template would.
pub fn ec2_create_tags(instance_id: &str, tags: &[(&str, &str)]) {
    ec2_create_tags_at(&world("MOTO"), instance_id, tags);
}

fn ec2_create_tags_at(url: &str, instance_id: &str, tags: &[(&str, &str)]) {
    let mut params = vec![
        ("Action".to_string(), "CreateTags".to_string()),
        ("Version".into(), "2016-11-15".into()),
        ("ResourceId.1".into(), instance_id.into()),
    ];
    for (n, (key, value)) in tags.iter().enumerate() {
        params.push((format!("Tag.{}.Key", n + 1), key.to_string()));
        params.push((format!("Tag.{}.Value", n + 1), value.to_string()));
    }
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let answer = query_at(url, "ec2", &params);
    assert!(answer.contains("CreateTagsResponse"), "{answer}");
}

/// The text of the first `<name>` element in `xml`.
fn xml_text<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + open.len();
    let end = xml[start..].find('<').unwrap() + start;
    &xml[start..end]
}

pub fn create_secret(name: &str, value: &str) -> String {
    let answer = secretsmanager(
        "CreateSecret",
        serde_json::json!({ "Name": name, "SecretString": value }),
    );
    answer["VersionId"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateSecret {name}: {answer}"))
        .to_string()
}

pub fn put_secret_value(name: &str, value: &str) -> String {
    let answer = secretsmanager(
        "PutSecretValue",
        serde_json::json!({ "SecretId": name, "SecretString": value }),
    );
    answer["VersionId"]
        .as_str()
        .unwrap_or_else(|| panic!("PutSecretValue {name}: {answer}"))
        .to_string()
}

/// An AWS endpoint that answers every call with one error (tests/world/aws_error_endpoint.py).
pub struct AwsError {
    _process: Reaped,
    pub url: String,
}

impl AwsError {
    pub fn start(code: &str, status: u16, message: &str) -> AwsError {
        Self::start_with(code, status, message, &[])
    }

    /// The same error in the EC2 Query protocol's XML shape.
    pub fn start_ec2(code: &str, status: u16, message: &str) -> AwsError {
        Self::start_with(code, status, message, &["--ec2"])
    }

    /// Its Date header runs `offset_seconds` ahead of this machine's clock.
    pub fn start_skewed(code: &str, status: u16, message: &str, offset_seconds: i64) -> AwsError {
        let offset = offset_seconds.to_string();
        Self::start_with(code, status, message, &["--date-offset", &offset])
    }

    fn start_with(code: &str, status: u16, message: &str, extra: &[&str]) -> AwsError {
        let status = status.to_string();
        let args = [
            &["--code", code, "--status", &status, "--message", message][..],
            extra,
        ]
        .concat();
        let (child, url) = start_fake("AWS_ERROR", &args);
        AwsError {
            _process: Reaped(child),
            url,
        }
    }

    pub fn calls(&self) -> usize {
        curl(&["-sf", &format!("{}/fake/requests", self.url)])
            .trim()
            .parse()
            .unwrap()
    }
}

/// The Auto Scaling lifecycle fake (tests/world/autoscaling_fake.py).
pub struct AsgFake {
    _process: Reaped,
    pub url: String,
}

impl AsgFake {
    pub fn start() -> AsgFake {
        let (child, url) = start_fake("ASG_FAKE", &[]);
        AsgFake {
            _process: Reaped(child),
            url,
        }
    }

    /// A lifecycle action for this instance and hook becomes active, as at a launch.
    pub fn activate(&self, group: &str, hook: &str, instance: &str) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &serde_json::json!({"group": group, "hook": hook, "instance": instance}).to_string(),
            &format!("{}/fake/actions", self.url),
        ]);
    }

    /// The next `count` calls are answered with Throttling.
    pub fn throttle(&self, count: u32) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &serde_json::json!({ "count": count }).to_string(),
            &format!("{}/fake/throttle", self.url),
        ]);
    }

    /// The calls received so far: (Action, LifecycleActionResult if any).
    pub fn calls(&self) -> Vec<(String, Option<String>)> {
        let out = curl(&["-sSf", &format!("{}/fake/calls", self.url)]);
        let calls: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        calls
            .iter()
            .map(|c| {
                (
                    c["Action"].as_str().unwrap().to_string(),
                    c["LifecycleActionResult"].as_str().map(str::to_string),
                )
            })
            .collect()
    }
}

/// A moto of one test's own, for what would disturb the shared one (switching auth on, stopping
/// it to stand for a region that is down).
pub struct Moto {
    process: Reaped,
    pub url: String,
}

impl Moto {
    pub fn start_private() -> Moto {
        let mut command = Command::new(world("PYTHON"));
        command.arg(world("MOTO_SERVER")).stderr(Stdio::null());
        let (child, url) = start_listening(command);
        Moto {
            process: Reaped(child),
            url,
        }
    }

    /// Stops it for good: from then on its port refuses connections, and a [`RegionFront`]
    /// routing to it gives no answer.
    pub fn stop(&mut self) {
        let _ = self.process.0.kill();
        self.process.0.wait().unwrap();
    }

    pub fn create_secret(&self, name: &str, value: &str) {
        self.create_secret_in(INSTANCE_REGION, name, value);
    }

    /// Creates a secret for `region` (a region of its own in this moto).
    pub fn create_secret_in(&self, region: &str, name: &str, value: &str) {
        let answer = secretsmanager_at(
            &self.url,
            region,
            "CreateSecret",
            serde_json::json!({ "Name": name, "SecretString": value }),
        );
        assert!(answer["VersionId"].is_string(), "{answer}");
    }

    /// An IAM user allowed `actions` (and nothing else); returns its access key id and secret.
    pub fn user_allowed(&self, name: &str, actions: &[&str]) -> (String, String) {
        let iam = |params: &[(&str, &str)]| {
            query_at(
                &self.url,
                "iam",
                &[&[("Version", "2010-05-08")][..], params].concat(),
            )
        };
        iam(&[("Action", "CreateUser"), ("UserName", name)]);
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{ "Effect": "Allow", "Action": actions, "Resource": "*" }],
        })
        .to_string();
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "bootagent"),
            ("PolicyDocument", &policy),
        ]);
        let key = iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        (
            xml_text(&key, "AccessKeyId").to_string(),
            xml_text(&key, "SecretAccessKey").to_string(),
        )
    }

    /// Tags `instance_id` in this moto's EC2.
    pub fn ec2_create_tags(&self, instance_id: &str, tags: &[(&str, &str)]) {
        ec2_create_tags_at(&self.url, instance_id, tags);
    }

    /// From now on moto checks signatures and IAM: the test credentials have no permissions.
    pub fn require_auth(&self) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "0",
            &format!("{}/moto-api/reset-auth", self.url),
        ]);
    }
}

/// One endpoint for several regions (tests/world/region_front.py), as bootagent's SDK has one
/// endpoint URL whatever the region: each request goes to the URL routed for the region it is
/// signed for. A region whose URL does not answer (a stopped [`Moto`]), or that has no route,
/// is a dead endpoint: the connection is closed without an answer.
pub struct RegionFront {
    _process: Reaped,
    pub url: String,
}

impl RegionFront {
    /// `routes`: (region, URL), e.g. `[("us-east-1", &primary.url), ("us-west-2", &replica.url)]`.
    pub fn start(routes: &[(&str, &str)]) -> RegionFront {
        let args: Vec<String> = routes
            .iter()
            .flat_map(|(region, url)| ["--route".to_string(), format!("{region}={url}")])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, url) = start_fake("REGION_FRONT", &args);
        RegionFront {
            _process: Reaped(child),
            url,
        }
    }

    /// The requests signed for each region so far, those that got no answer included; each
    /// routed region is there, with 0 when it was never asked.
    pub fn requests(&self) -> BTreeMap<String, usize> {
        let out = curl(&["-sSf", &format!("{}/fake/requests", self.url)]);
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("region front answered {out}"))
    }
}
