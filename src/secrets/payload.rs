//! A secret's text to variables: a JSON object of strings, numbers and booleans, read without
//! ever quoting the input, which is secret.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::error::SecretsError;
use crate::config::names::is_variable_name;

/// Variable values hold secret bytes: they are wiped when dropped.
pub type SecretVars = BTreeMap<String, Zeroizing<String>>;

/// A JSON object of strings, numbers and booleans to variables. Errors name keys and JSON kinds
/// but never quote the input, which is secret.
pub fn parse_object(id: &str, text: &str) -> Result<SecretVars, SecretsError> {
    let members = json_members(id, text)?;
    let count = members.len();
    if let Some(position) = members.iter().position(|(key, _)| !is_variable_name(key)) {
        return Err(SecretsError::BadKey {
            id: id.to_string(),
            position: position + 1,
            count,
        });
    }
    let mut vars = SecretVars::new();
    for (key, value) in members {
        let value = scalar(id, &key, &value)?;
        if vars.insert(key.clone(), value).is_some() {
            return Err(SecretsError::DuplicateKey {
                id: id.to_string(),
                key,
            });
        }
    }
    Ok(vars)
}

/// One field of a JSON-object secret, as a variable value.
pub(super) fn json_field(
    id: &str,
    text: &str,
    field: &str,
) -> Result<Zeroizing<String>, SecretsError> {
    let members = json_members(id, text)?;
    let mut matching = members.iter().filter(|(key, _)| key == field);
    let (_, value) = matching.next().ok_or_else(|| SecretsError::MissingField {
        id: id.to_string(),
        field: field.to_string(),
    })?;
    if matching.next().is_some() {
        return Err(SecretsError::DuplicateKey {
            id: id.to_string(),
            key: field.to_string(),
        });
    }
    scalar(id, field, value)
}

/// The members of a JSON object in the order written, each value as its JSON text, a key given
/// twice included (serde_json's own maps keep the last silently).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The secret's text as a JSON object's members; errors give positions and kinds, never content.
fn json_members(id: &str, text: &str) -> Result<Vec<(String, Box<RawValue>)>, SecretsError> {
    let not_json = |e: serde_json::Error| SecretsError::NotJson {
        id: id.to_string(),
        line: e.line(),
        column: e.column(),
    };
    if text.starts_with('\u{feff}') {
        return Err(SecretsError::ByteOrderMark { id: id.to_string() });
    }
    let whole: Box<RawValue> = serde_json::from_str(text).map_err(not_json)?;
    if !whole.get().starts_with('{') {
        return Err(SecretsError::NotObject {
            id: id.to_string(),
            found: kind(whole.get()),
        });
    }
    let Members(members) = serde_json::from_str(whole.get()).map_err(not_json)?;
    Ok(members)
}

/// Strings as they are, numbers and booleans as their JSON text (as written: `1e3` stays
/// `1e3`); anything else is refused.
fn scalar(id: &str, key: &str, value: &RawValue) -> Result<Zeroizing<String>, SecretsError> {
    let text = value.get();
    match kind(text) {
        // Valid JSON text, yet no string: a lone surrogate escape (`\ud800`) names no character.
        "a JSON string" => {
            serde_json::from_str(text)
                .map(Zeroizing::new)
                .map_err(|_| SecretsError::BadString {
                    id: id.to_string(),
                    key: key.to_string(),
                })
        }
        "a number" | "a boolean" => Ok(Zeroizing::new(text.to_string())),
        found => Err(SecretsError::BadValue {
            id: id.to_string(),
            key: key.to_string(),
            found,
        }),
    }
}

/// The JSON kind of a valid JSON value's text, told by its first character.
fn kind(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a JSON string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-7f3a9";

    #[test]
    fn scalars_become_strings() {
        let vars = parse_object(
            "s",
            r#"{"A": "x", "PORT": 8080, "RATIO": 0.5, "ON": true, "EMPTY": ""}"#,
        )
        .unwrap();
        let plain: BTreeMap<_, _> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            plain,
            BTreeMap::from([
                ("A", "x"),
                ("EMPTY", ""),
                ("ON", "true"),
                ("PORT", "8080"),
                ("RATIO", "0.5")
            ])
        );
    }

    #[test]
    fn a_byte_order_mark_is_named_as_the_cause() {
        let err = parse_object("s", "\u{feff}{\"A\": \"x\"}").unwrap_err();
        assert!(matches!(err, SecretsError::ByteOrderMark { .. }), "{err}");
        assert!(err.is_malformed());
        assert!(err.to_string().contains("byte order mark"), "{err}");
    }

    #[test]
    fn nested_values_are_refused_by_key() {
        for (json, found) in [
            (r#"{"DB": {"user": "x"}}"#, "an object"),
            (r#"{"DB": [1]}"#, "an array"),
            (r#"{"DB": null}"#, "null"),
        ] {
            let err = parse_object("s", json).unwrap_err().to_string();
            assert!(err.contains("\"DB\"") && err.contains(found), "{err}");
        }
    }

    #[test]
    fn errors_never_quote_the_secret() {
        let inputs = [
            format!("\"{CANARY}\""),
            format!("{{\"A\": \"{CANARY}\""),
            format!("[\"{CANARY}\"]"),
            format!("{{\"A\": [\"{CANARY}\"]}}"),
            CANARY.to_string(),
            format!("{{\"A\": \"{CANARY}\"}} trailing"),
            format!("{{\"{CANARY}\": \"x\"}}"),
        ];
        for input in inputs {
            let err = parse_object("s", &input).unwrap_err().to_string();
            assert!(!err.contains(CANARY), "{input} gave {err}");
        }
    }

    #[test]
    fn numbers_keep_their_json_text_and_strings_are_unescaped() {
        let vars = parse_object(
            "s",
            r#" {"A": 1e3, "B": 12345678901234567890123, "C": -0, "D": true, "E": "x\"\u00e9"} "#,
        )
        .unwrap();
        let text: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            text,
            [
                ("A", "1e3"),
                ("B", "12345678901234567890123"),
                ("C", "-0"),
                ("D", "true"),
                ("E", "x\"\u{e9}")
            ]
        );
    }

    #[test]
    fn a_lone_surrogate_escape_is_refused_by_key_not_a_crash() {
        // Found by fuzzing (secret_to_env_file): valid JSON text, but no string.
        let err =
            parse_object("s", &format!(r#"{{"OK": "{CANARY}", "BAD": "x\ud800y"}}"#)).unwrap_err();
        assert!(matches!(err, SecretsError::BadString { .. }), "{err}");
        assert!(err.is_malformed());
        let text = err.to_string();
        assert!(
            text.contains("key \"BAD\" holds a string with a \\u escape"),
            "{text}"
        );
        assert!(!text.contains(CANARY), "{text}");
    }

    #[test]
    fn a_key_given_twice_is_refused_by_name() {
        let err = parse_object("s", &format!(r#"{{"A": "{CANARY}", "A": "x"}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key \"A\" is given twice"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
        let err = json_field("s", r#"{"F": 1, "F": 2}"#, "F").unwrap_err();
        assert!(matches!(err, SecretsError::DuplicateKey { .. }), "{err}");
    }

    #[test]
    fn keys_must_be_variable_names() {
        let err = parse_object("s", r#"{"A": "x", "DB-URL": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key 2 of 2 (in the order written) is not a valid"),
            "{err}"
        );
        assert!(!err.contains("DB-URL"), "{err}");
    }
}
