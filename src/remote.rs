//! The git remote's URL, parsed once when the plan is built: which of the transports libgit2
//! hands it to, what that transport needs from it, and how it is shown — without credentials —
//! in logs, messages, status.json and the plan.

use std::fmt;

/// The URL schemes libgit2 hands to its ssh transport.
const SSH_SCHEMES: [&str; 3] = ["ssh://", "ssh+git://", "git+ssh://"];

/// The port git daemon listens on unless the URL names another.
const DEFAULT_DAEMON_PORT: u16 = 9418;

/// The repository, as `git.url` (or the tag it names) renders for this instance.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    url: String,
    kind: Kind,
}

/// Which transport libgit2 hands a URL to, with what that transport needs. A URL that names no
/// usable place keeps why, for the transport to say when it is used, as git would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ssh://…` (or `ssh+git://`, `git+ssh://`) and scp-like `[user@]host:path`.
    Ssh(Result<SshAddress, String>),
    /// `http://` or `https://`, as reqwest reads it; `None` when it does not, and the request
    /// then says why.
    Http(Option<reqwest::Url>),
    /// `git://`: git daemon.
    Daemon(Result<DaemonAddress, String>),
    /// `file://` or a path: a repository on this machine, read by libgit2's own transport.
    Local,
}

impl Remote {
    pub fn parse(url: &str) -> Remote {
        let url = &lower_case_scheme(url);
        let kind = if url.starts_with("file://") {
            Kind::Local
        } else if url.starts_with("git://") {
            Kind::Daemon(DaemonAddress::parse(url))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            Kind::Http(reqwest::Url::parse(url).ok())
        } else if url.contains("://") || is_scp_like(url) {
            // libgit2 hands a scheme it has no transport for to the ssh transport, which refuses it.
            Kind::Ssh(SshAddress::parse(url))
        } else {
            Kind::Local
        };
        Remote {
            url: url.to_string(),
            kind,
        }
    }

    /// The URL as configured, credentials included: for libgit2 and the transports only.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    pub fn is_local(&self) -> bool {
        self.kind == Kind::Local
    }

    /// Where ssh connects; why not, for a URL that is not a usable ssh one.
    pub fn ssh_address(&self) -> Result<&SshAddress, String> {
        match &self.kind {
            Kind::Ssh(address) => address.as_ref().map_err(Clone::clone),
            _ => Err("not an ssh URL".into()),
        }
    }

    /// Where git daemon listens; why not, for a URL that is not a usable git:// one.
    pub fn daemon_address(&self) -> Result<&DaemonAddress, String> {
        match &self.kind {
            Kind::Daemon(address) => address.as_ref().map_err(Clone::clone),
            _ => Err("not a git:// URL".into()),
        }
    }

    /// The origin (`https://host:port`) of an HTTP remote.
    pub fn http_origin(&self) -> Option<String> {
        match &self.kind {
            Kind::Http(Some(url)) => Some(url.origin().ascii_serialization()),
            _ => None,
        }
    }

    /// Whether an HTTP remote's URL carries a user or password of its own.
    pub fn has_http_credentials(&self) -> bool {
        matches!(&self.kind, Kind::Http(Some(url)) if !url.username().is_empty() || url.password().is_some())
    }

    /// The user and password an HTTP remote's URL carries, percent-decoded (a missing password
    /// is empty, as git sends it); an error names which one is not UTF-8, without quoting it.
    pub fn http_credentials(&self) -> Result<Option<(String, String)>, String> {
        let Kind::Http(Some(url)) = &self.kind else {
            return Ok(None);
        };
        if !self.has_http_credentials() {
            return Ok(None);
        }
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| format!("the {what} in the repository URL is not UTF-8"))
        };
        Ok(Some((
            decode(url.username(), "user")?,
            decode(url.password().unwrap_or(""), "password")?,
        )))
    }
}

/// `[user@]host:path`: a colon before any slash.
/// libgit2 picks a transport by the scheme whatever its case (`HTTPS://` is https): the scheme is
/// written in lower case before anything reads it, so that every check bootagent makes (the
/// token's hosts, the pinned host keys) sees the transport libgit2 will use.
fn lower_case_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            format!("{}://{rest}", scheme.to_ascii_lowercase())
        }
        _ => url.to_string(),
    }
}

fn is_scp_like(url: &str) -> bool {
    url.split_once(':')
        .is_some_and(|(authority, _)| !authority.contains('/'))
}

/// Shown without any password or token: see [`redact`].
impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// Debug output ends up in logs too: only the redacted URL.
impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Remote({self})")
    }
}

impl serde::Serialize for Remote {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// No repository URL: the URL template uses a value this instance does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no git repository is configured: set git.url in the config or tag the instance with \
     {tag}=<url>"
)]
pub struct NoRemote {
    /// The instance tag that names the repository (`identity.repository_tag`).
    pub tag: String,
}

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

/// Where an ssh remote is: `ssh://[user@]host[:port]/path` or `[user@]host:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshAddress {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshAddress {
    fn parse(url: &str) -> Result<SshAddress, String> {
        let scheme_rest = SSH_SCHEMES
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        let remote = match scheme_rest {
            None if url.contains("://") => return Err("not an ssh URL".into()),
            Some(rest) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let (user, host_port) = split_user(authority);
                let (host, port) = split_port(host_port)?;
                // `ssh://host/~/repo` names a path in the home directory, as with git.
                let path = match path.strip_prefix("/~") {
                    Some(home) => format!("~{home}"),
                    None => path.to_string(),
                };
                SshAddress {
                    user,
                    host,
                    port,
                    path,
                }
            }
            None => {
                let (authority, path) = url
                    .split_once(':')
                    .filter(|(authority, _)| !authority.contains('/'))
                    .ok_or("not an ssh URL")?;
                let (user, host) = split_user(authority);
                SshAddress {
                    user,
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port: None,
                    path: path.to_string(),
                }
            }
        };
        // What would read as an option to ssh, or break the remote command's quoting, is refused.
        let parts = [
            remote.user.as_deref().unwrap_or(""),
            &remote.host,
            &remote.path,
        ];
        if remote.host.is_empty() || remote.path.is_empty() {
            return Err("an ssh URL needs a host and a path".into());
        }
        if parts.iter().any(|part| part.starts_with('-')) {
            return Err("a user, host or path starting with '-' is refused".into());
        }
        if parts.iter().any(|part| part.chars().any(char::is_control)) {
            return Err("control characters in an ssh URL are refused".into());
        }
        Ok(remote)
    }
}

fn split_user(authority: &str) -> (Option<String>, &str) {
    match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user.to_string()), host),
        None => (None, authority),
    }
}

fn split_port(host_port: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an unclosed '[' in the host")?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port = port
        .filter(|port| !port.is_empty())
        .map(|port| port.parse().map_err(|_| format!("bad port {port:?}")))
        .transpose()?;
    Ok((host.to_string(), port))
}

/// Where a git:// remote is: `git://host[:port]/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonAddress {
    /// As written in the URL (`[::1]` keeps its brackets), for the request's `host=`.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl DaemonAddress {
    fn parse(url: &str) -> Result<DaemonAddress, String> {
        let rest = url.strip_prefix("git://").ok_or("not a git:// URL")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                // Not quoted: after the last `:` of `user:password@host` comes the password.
                port.parse().map_err(|_| {
                    "what follows the last ':' before the path is not a port number"
                })?,
            ),
            _ => (authority, DEFAULT_DAEMON_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.len() < 2 {
            return Err("a git:// URL needs a host and a path".into());
        }
        if path.contains('\0') || authority.contains('\0') {
            return Err("a NUL in a git:// URL is refused".into());
        }
        Ok(DaemonAddress {
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
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

    fn address(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> SshAddress {
        SshAddress {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            path: path.to_string(),
        }
    }

    #[test]
    fn ssh_urls_in_both_forms_are_understood() {
        assert_eq!(
            SshAddress::parse("ssh://git@example.com:2222/org/app.git").unwrap(),
            address(Some("git"), "example.com", Some(2222), "/org/app.git")
        );
        assert_eq!(
            SshAddress::parse("git+ssh://example.com/~/app.git").unwrap(),
            address(None, "example.com", None, "~/app.git")
        );
        assert_eq!(
            SshAddress::parse("ssh://[::1]:22/srv/app.git").unwrap(),
            address(None, "::1", Some(22), "/srv/app.git")
        );
        assert_eq!(
            SshAddress::parse("git@github.com:org/app.git").unwrap(),
            address(Some("git"), "github.com", None, "org/app.git")
        );
    }

    #[test]
    fn ssh_urls_that_could_inject_options_are_refused() {
        for url in [
            "ssh://-oProxyCommand=x/repo",
            "-oProxyCommand=x:repo",
            "ssh://host",
            "ssh://host:port/repo",
            "host:-repo",
            "file:///srv/repo.git",
            "ssh://host/re\npo",
        ] {
            assert!(SshAddress::parse(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn git_urls_name_host_port_and_path() {
        let remote = DaemonAddress::parse("git://example.com:9000/org/app.git").unwrap();
        assert_eq!(
            remote,
            DaemonAddress {
                authority: "example.com:9000".into(),
                host: "example.com".into(),
                port: 9000,
                path: "/org/app.git".into(),
            }
        );
        let v6 = DaemonAddress::parse("git://[::1]/app.git").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", DEFAULT_DAEMON_PORT));
        for bad in [
            "git://host",
            "git:///app.git",
            "git://h:x/app.git",
            "http://h/a.git",
        ] {
            assert!(DaemonAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_url_goes_to_the_transport_libgit2_hands_it_to() {
        let kind = |url: &str| match Remote::parse(url).kind() {
            Kind::Ssh(Ok(_)) => "ssh",
            Kind::Ssh(Err(_)) => "unusable ssh",
            Kind::Http(_) => "http",
            Kind::Daemon(_) => "git",
            Kind::Local => "local",
        };
        for (url, expected) in [
            ("file:///srv/app.git", "local"),
            ("/srv/app.git", "local"),
            ("app.git", "local"),
            ("git://h/app.git", "git"),
            ("https://h/app.git", "http"),
            ("http://h/app.git", "http"),
            ("ssh://git@h/app.git", "ssh"),
            ("git@h:app.git", "ssh"),
            ("ssh://-oProxyCommand=x/repo", "unusable ssh"),
            ("-oProxyCommand=x:repo", "unusable ssh"),
            ("ftp://h/app.git", "unusable ssh"),
            ("HTTPS://h/app.git", "http"),
            ("Http://h/app.git", "http"),
            ("GIT://h/app.git", "git"),
            ("SSH://git@h/app.git", "ssh"),
            ("File:///srv/app.git", "local"),
        ] {
            assert_eq!(kind(url), expected, "{url}");
        }
    }

    #[test]
    fn a_git_url_with_a_password_is_refused_without_quoting_it() {
        let Kind::Daemon(Err(why)) = Remote::parse("git://user:s3cret@host/app.git")
            .kind()
            .clone()
        else {
            panic!("a git:// URL with credentials parses as a daemon address");
        };
        assert!(!why.contains("s3cret"), "{why}");
        assert!(why.contains("not a port number"), "{why}");
    }

    #[test]
    fn a_remote_is_shown_and_debugged_without_its_credentials() {
        let remote = Remote::parse("https://user:tok3n@git.example/a.git");
        assert_eq!(remote.to_string(), "https://***@git.example/a.git");
        assert!(!format!("{remote:?}").contains("tok3n"));
        assert!(remote.has_http_credentials());
        assert_eq!(remote.http_origin().as_deref(), Some("https://git.example"));
    }

    #[test]
    fn the_credentials_of_an_http_url_are_read_percent_decoded() {
        let credentials = |url: &str| Remote::parse(url).http_credentials();
        assert_eq!(
            credentials("https://x-token-auth:t%40k%2Fn@git.example/a.git"),
            Ok(Some(("x-token-auth".into(), "t@k/n".into())))
        );
        assert_eq!(
            credentials("https://deploy@git.example/a.git"),
            Ok(Some(("deploy".into(), String::new())))
        );
        assert_eq!(credentials("https://git.example/a.git"), Ok(None));
        assert_eq!(credentials("git://git.example/a.git"), Ok(None));
        let not_utf8 = credentials("https://u:%ff%fe@git.example/a.git").unwrap_err();
        assert!(not_utf8.contains("password"), "{not_utf8}");
    }
}
