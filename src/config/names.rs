//! The names bootagent accepts from tags and config, checked in one place: the config, the
//! identity and the secrets all use them.

/// The longest service or environment name: it goes into paths, unit names and secret ids.
pub const MAX_NAME_LEN: usize = 64;

/// `[a-z0-9][a-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes: safe in a path, a unit name and a
/// secret id.
pub fn is_valid_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// An environment variable name a shell, systemd and dotenv all read the same way:
/// letters, digits and `_`, not starting with a digit.
pub fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An absolute path written the one way: no `.` or `..` component, no empty one (`//`, a
/// trailing slash), and not `/` itself; so that comparing texts compares files.
pub fn is_normal_path(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_absolute_and_written_one_way() {
        assert!(is_normal_path("/run/tls/app.key") && is_normal_path("/run"));
        for bad in [
            "",
            "/",
            "run/x",
            "/run/",
            "/run//x",
            "/run/./x",
            "/run/../etc/x",
        ] {
            assert!(!is_normal_path(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_strict() {
        for good in ["calendar", "a", "mht-api", "svc_2", "0day"] {
            assert!(is_valid_name(good), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "Calendar", "-x", "_x", "a/b", "a.b", "a b", "ä", &long] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn variable_names_are_what_every_reader_agrees_on() {
        assert!(is_variable_name("_A1") && is_variable_name("DATABASE_URL"));
        for bad in ["1A", "", "DB-URL", "A B", "PORT=1"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }
}
