//! ec2:DescribeTags, for instances whose tags are not in instance metadata
//! (`identity.describe_tags_fallback`): one Query-protocol call, signed with SigV4 and the SDK's
//! credential chain. The EC2 SDK, the largest AWS crate, is not worth one call.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_xml::decode::{try_data, Document, ScopedDecoder};

const API_VERSION: &str = "2016-11-15";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// Each call; bootagent's own retries apply around it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error(
        "ec2:DescribeTags was refused ({code}: {message}); allow ec2:DescribeTags to the instance \
         role, or enable tags in instance metadata"
    )]
    Denied { code: String, message: String },
    #[error("ec2:DescribeTags failed {attempts} times within {waited}: {detail}")]
    Unavailable {
        detail: String,
        attempts: u32,
        waited: String,
    },
    #[error("ec2:DescribeTags failed: {detail}")]
    Failed { detail: String },
    #[error(transparent)]
    NoTrustRoots(#[from] crate::aws::NoTrustRoots),
}

impl Ec2Error {
    pub fn is_transient(&self) -> bool {
        matches!(self, Ec2Error::Unavailable { .. })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Ec2Error::NoTrustRoots(_))
    }
}

/// Every tag of `instance_id`, read from the EC2 API of `region`.
/// The instance's tags, throttling and 5xx retried within `deadline`.
pub async fn instance_tags(
    region: &str,
    instance_id: &str,
    deadline: Duration,
) -> Result<BTreeMap<String, String>, Ec2Error> {
    let sdk = crate::aws::load(region, CALL_TIMEOUT).await?;
    if !instance_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Ec2Error::Failed {
            detail: format!("{instance_id:?} is not an instance id"),
        });
    }
    let region = sdk.region().map(ToString::to_string).unwrap_or_default();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
        .ok()
        .or_else(|| sdk.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
    let url = format!("{}/", endpoint.trim_end_matches('/'));
    // Instances have at most 50 tags: one page of up to 1000 holds them all.
    let body = format!(
        "Action=DescribeTags&Version={API_VERSION}&Filter.1.Name=resource-id\
         &Filter.1.Value.1={instance_id}&MaxResults=1000"
    );
    let client = crate::ca::https_client()
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_TIMEOUT)
        .user_agent(concat!("bootagent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Ec2Error::Failed {
            detail: format!("cannot set up HTTPS: {e}"),
        })?;
    // DescribeTags' bucket (100, refilled at 20 requests/s per account) is shared by a fleet:
    // the SDKs' standard backoff spreads the retries of hundreds of instances.
    let tried = crate::retry::retry(crate::retry::AWS_BACKOFF, deadline, |attempt| {
        let (sdk, client, region, url, body) = (&sdk, &client, &region, &url, &body);
        async move {
            call(sdk, client, region, url, body)
                .await
                .inspect_err(|failure| {
                    if let Call::Transient(detail) | Call::TransientAfter(detail, _) = failure {
                        tracing::info!(%detail, attempt, "ec2:DescribeTags failed, retrying");
                    }
                })
        }
    })
    .await;
    match tried {
        Ok(xml) => parse_tags(&xml).map_err(|detail| Ec2Error::Failed { detail }),
        Err(crate::retry::Stopped::Permanent(error)) => Err(error),
        Err(crate::retry::Stopped::GaveUp {
            last,
            attempts,
            waited,
        }) => Err(Ec2Error::Unavailable {
            detail: last,
            attempts,
            waited: humantime::format_duration(crate::aws::imds::round_to_ms(waited)).to_string(),
        }),
    }
}

type Call = crate::retry::Failure<String, Ec2Error>;

async fn call(
    sdk: &SdkConfig,
    client: &reqwest::Client,
    region: &str,
    url: &str,
    body: &str,
) -> Result<String, Call> {
    let provider = sdk.credentials_provider().ok_or_else(|| {
        Call::Permanent(Ec2Error::Failed {
            detail: "no AWS credentials provider".into(),
        })
    })?;
    let credentials = provider.provide_credentials().await.map_err(|e| {
        Call::Permanent(Ec2Error::Failed {
            detail: format!("no AWS credentials: {e}"),
        })
    })?;
    let identity = credentials.into();
    let fatal = |detail: String| Call::Permanent(Ec2Error::Failed { detail });
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fatal(format!("cannot sign the request: {e}")))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        [("content-type", FORM)].into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| fatal(format!("cannot sign the request: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| fatal(format!("cannot sign the request: {e}")))?
        .into_parts();
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .body(body.to_string());
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Call::Transient(e.without_url().to_string()))?;
    let status = response.status();
    let header = |name: &str| {
        let value = response.headers().get(name)?;
        value.to_str().ok().map(str::to_string)
    };
    let retry_after = crate::retry::server_asked(
        header("x-amz-retry-after").as_deref(),
        header("retry-after").as_deref(),
    );
    let text = crate::aws::read_bounded(response)
        .await
        .map_err(|e| match e {
            crate::aws::Unbounded::TooLarge => fatal(format!(
                "its answer exceeded {} and was cut off: something else answers in EC2's place; \
                 check AWS_ENDPOINT_URL_EC2 and any proxy between this instance and the endpoint",
                crate::aws::max_answer()
            )),
            crate::aws::Unbounded::Read(e) => Call::Transient(e.without_url().to_string()),
        })?;
    if status.is_success() {
        return Ok(text);
    }
    let (code, message) =
        parse_error(&text).unwrap_or_else(|| (format!("HTTP {}", status.as_u16()), String::new()));
    Err(classify(status.as_u16(), code, message, retry_after))
}

fn classify(
    status: u16,
    code: String,
    message: String,
    retry_after: Option<crate::retry::Asked>,
) -> Call {
    const DENIED: [&str; 5] = [
        "UnauthorizedOperation",
        "AuthFailure",
        "AccessDenied",
        "Blocked",
        "OptInRequired",
    ];
    const BUSY: [&str; 5] = [
        "RequestLimitExceeded",
        "Throttling",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
    ];
    if DENIED.contains(&code.as_str()) || status == 401 || status == 403 {
        Call::Permanent(Ec2Error::Denied { code, message })
    } else if BUSY.contains(&code.as_str()) || status >= 500 {
        let detail = format!("{code}: {message}");
        match retry_after {
            Some(asked) => Call::TransientAfter(detail, asked.duration()),
            None => Call::Transient(detail),
        }
    } else {
        Call::Permanent(Ec2Error::Failed {
            detail: format!("{code}: {message}"),
        })
    }
}

/// `key` → `value` of each item of a DescribeTagsResponse's tagSet.
fn parse_tags(xml: &str) -> Result<BTreeMap<String, String>, String> {
    let bad = |e: aws_smithy_xml::decode::XmlDecodeError| format!("unreadable answer: {e}");
    let mut document = Document::new(xml);
    let mut root = document.root_element().map_err(bad)?;
    let mut tags = BTreeMap::new();
    while let Some(mut element) = root.next_tag() {
        if !element.start_el().matches("tagSet") {
            continue;
        }
        while let Some(mut item) = element.next_tag() {
            let fields = fields(&mut item, &["key", "value"]).map_err(bad)?;
            if let [Some(key), value] = fields {
                tags.insert(key, value.unwrap_or_default());
            }
        }
    }
    Ok(tags)
}

/// The Code and Message of an EC2 error answer (`<Response><Errors><Error>…`).
fn parse_error(xml: &str) -> Option<(String, String)> {
    let mut document = Document::new(xml);
    let mut root = document.root_element().ok()?;
    while let Some(mut errors) = root.next_tag() {
        if !errors.start_el().matches("Errors") {
            continue;
        }
        let mut error = errors.next_tag()?;
        let [code, message] = fields(&mut error, &["Code", "Message"]).ok()?;
        return Some((code?, message.unwrap_or_default()));
    }
    None
}

/// The text of the child elements named in `names`, in that order.
fn fields<const N: usize>(
    parent: &mut ScopedDecoder<'_, '_>,
    names: &[&str; N],
) -> Result<[Option<String>; N], aws_smithy_xml::decode::XmlDecodeError> {
    let mut found = [const { None }; N];
    while let Some(mut child) = parent.next_tag() {
        if let Some(index) = names.iter().position(|n| child.start_el().matches(n)) {
            found[index] = Some(try_data(&mut child)?.into_owned());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_a_describe_tags_answer() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
   <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
   <tagSet>
      <item><resourceId>i-1</resourceId><resourceType>instance</resourceType>
         <key>Service</key><value>cal&amp;endar</value></item>
      <item><resourceId>i-1</resourceId><resourceType>instance</resourceType>
         <key>Empty</key><value/></item>
   </tagSet>
</DescribeTagsResponse>"#;
        let tags = parse_tags(xml).unwrap();
        assert_eq!(tags["Service"], "cal&endar");
        assert_eq!(tags["Empty"], "");
        assert_eq!(tags.len(), 2);
    }

    #[test]
    fn errors_are_classified_by_code() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>r</RequestID></Response>"#;
        let (code, message) = parse_error(xml).unwrap();
        assert_eq!(code, "UnauthorizedOperation");
        assert!(matches!(
            classify(403, code, message, None),
            Call::Permanent(Ec2Error::Denied { .. })
        ));
        assert!(matches!(
            classify(503, "RequestLimitExceeded".into(), String::new(), None),
            Call::Transient(_)
        ));
        let asked = crate::retry::server_asked(None, Some("2"));
        assert!(matches!(
            classify(503, "RequestLimitExceeded".into(), String::new(), asked),
            Call::TransientAfter(_, wait) if wait == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(
                400,
                "InvalidInstanceID.Malformed".into(),
                String::new(),
                None
            ),
            Call::Permanent(Ec2Error::Failed { .. })
        ));
    }

    #[tokio::test]
    async fn an_answer_past_a_mebibyte_is_refused_without_another_try() {
        let flood = crate::testing::HttpStub::start(|_| {
            crate::testing::Reply::new(200, &"x".repeat(crate::aws::MAX_ANSWER_BYTES + 1))
        })
        .await;
        let sdk = crate::testing::SdkAnswers::new(&[]).sdk_config().await;
        let client = reqwest::Client::new();
        let url = format!("{}/", flood.url);
        let failed = call(&sdk, &client, "eu-west-1", &url, "Action=DescribeTags").await;
        let Err(Call::Permanent(err)) = failed else {
            panic!("not refused for good: {failed:?}");
        };
        assert!(
            err.to_string()
                .contains("its answer exceeded 1 MiB and was cut off"),
            "{err}"
        );
    }
}
