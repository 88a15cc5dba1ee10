//! A remote's URL as bootagent shows it: in logs, messages, status.json and the plan.

/// The URL schemes libgit2 hands to its ssh transport.
pub const SSH_SCHEMES: [&str; 3] = ["ssh://", "ssh+git://", "git+ssh://"];

/// The URL without any password or token, fit for logs and messages. An ssh user name stays
/// (`git@`, `deploy@` tell which account is used; ssh URLs carry no password), while over HTTP
/// the user part itself is often the token.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let ssh = SSH_SCHEMES.iter().any(|ssh| url.starts_with(ssh));
    if ssh && !rest[..at].contains(':') {
        return url.to_string();
    }
    format!("{scheme}://***@{}", &rest[at + 1..])
}

/// Serializes an optional URL [`redact`]ed: for what is written to files and printed.
pub fn serialize_redacted<S: serde::Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&url.as_deref().map(redact), serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact("https://user:tok3n@git.example/a/b.git"),
            "https://***@git.example/a/b.git"
        );
        assert_eq!(redact("git://git.example/a.git"), "git://git.example/a.git");
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(
            redact("ssh://git@git.example/a.git"),
            "ssh://git@git.example/a.git"
        );
        assert_eq!(
            redact("ssh://git:pw@git.example/a.git"),
            "ssh://***@git.example/a.git"
        );
        assert_eq!(
            redact("https://tok3n@git.example/a.git"),
            "https://***@git.example/a.git"
        );
        assert_eq!(
            redact("https://git.example/a@b.git"),
            "https://git.example/a@b.git"
        );
    }
}
