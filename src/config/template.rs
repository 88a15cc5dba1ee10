//! `{name}` placeholders in config values, rendered against the resolved identity.

use std::collections::BTreeMap;

/// A template that cannot be rendered: it names its config key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// Values a template may use. `None` is a known placeholder with no value (an absent
/// `Repository` tag): a template using it renders to "unset" rather than to a wrong string.
pub type TemplateVars = BTreeMap<String, Option<String>>;

/// The instance tags a template reads through `{tag:NAME}` placeholders.
pub fn tag_placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}')?.0.strip_prefix("tag:"))
}

/// The placeholders a plan fills for every instance; `{tag:NAME}` reads an instance tag.
pub const PLACEHOLDERS: [&str; 6] = [
    "service",
    "env",
    "env_tag",
    "region",
    "instance_id",
    "repository",
];

/// Checks `template` (the value of config key `key`) when the config loads, before any
/// instance is known: balanced braces, and only placeholders a plan fills, so that a misspelled
/// one fails the load rather than a boot, after instance metadata was asked.
pub fn check(key: &str, template: &str) -> Result<(), TemplateError> {
    for piece in pieces(key, template)? {
        let Piece::Placeholder(name) = piece else {
            continue;
        };
        let tag = name.strip_prefix("tag:").is_some_and(|tag| !tag.is_empty());
        if !tag && !PLACEHOLDERS.contains(&name) {
            let known: Vec<String> = PLACEHOLDERS.iter().map(|k| format!("{{{k}}}")).collect();
            return Err(TemplateError(format!(
                "{key} = {template:?} uses unknown placeholder {{{name}}}; known: {}, {{tag:NAME}}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Renders `template` (the value of config key `key`). Returns `Ok(None)` when it uses a
/// placeholder whose value is unset.
pub fn render(
    key: &str,
    template: &str,
    vars: &TemplateVars,
) -> Result<Option<String>, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut unset = false;
    for piece in pieces(key, template)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(name) => match vars.get(name) {
                Some(Some(value)) => out.push_str(value),
                Some(None) => unset = true,
                None => {
                    return Err(TemplateError(format!(
                        "{key} = {template:?} uses unknown placeholder {{{name}}}; known: {}",
                        vars.keys()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
        }
    }
    Ok((!unset).then_some(out))
}

enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// `template` cut into text and `{placeholders}`.
fn pieces<'a>(key: &str, template: &'a str) -> Result<Vec<Piece<'a>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        pieces.push(Piece::Text(&rest[..open]));
        if rest[open..].starts_with('}') {
            return Err(unbalanced(key, template));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| unbalanced(key, template))?;
        let name = &after[..close];
        if name.contains('{') {
            return Err(unbalanced(key, template));
        }
        pieces.push(Piece::Placeholder(name));
        rest = &after[close + 1..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Like [`render`], for keys that cannot work without a value.
pub fn render_required(
    key: &str,
    template: &str,
    vars: &TemplateVars,
) -> Result<String, TemplateError> {
    render(key, template, vars)?.ok_or_else(|| {
        TemplateError(format!(
            "{key} = {template:?} uses a placeholder that has no value on this instance"
        ))
    })
}

fn unbalanced(key: &str, template: &str) -> TemplateError {
    TemplateError(format!("{key} = {template:?} has an unbalanced brace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars {
        BTreeMap::from([
            ("service".to_string(), Some("calendar".to_string())),
            ("env".to_string(), Some("stage".to_string())),
            ("repository".to_string(), None),
            ("tag:Release".to_string(), Some("v1.2".to_string())),
        ])
    }

    #[test]
    fn instance_tags_are_placeholders_too() {
        assert_eq!(
            render("git.ref", "{tag:Release}", &vars())
                .unwrap()
                .as_deref(),
            Some("v1.2")
        );
        let found: Vec<_> = tag_placeholders("{tag:A}-{env}/{tag:B}").collect();
        assert_eq!(found, ["A", "B"]);
    }

    #[test]
    fn placeholders_are_replaced() {
        let out = render("secrets.main", "{service}_env_{env}", &vars()).unwrap();
        assert_eq!(out.as_deref(), Some("calendar_env_stage"));
    }

    #[test]
    fn unset_placeholder_makes_the_value_unset() {
        assert_eq!(render("git.url", "{repository}", &vars()).unwrap(), None);
        let err = render_required("git.url", "{repository}", &vars()).unwrap_err();
        assert!(err.to_string().contains("git.url"), "{err}");
    }

    #[test]
    fn unknown_placeholder_is_named_with_its_key() {
        let err = render("git.dir", "/srv/{servce}", &vars())
            .unwrap_err()
            .to_string();
        assert!(err.contains("git.dir") && err.contains("{servce}"), "{err}");
        assert!(err.contains("{service}"), "lists the known ones: {err}");
    }

    #[test]
    fn a_misspelled_placeholder_fails_the_check_that_needs_no_instance() {
        let err = check("git.dir", "/srv/{servce}").unwrap_err().to_string();
        assert!(err.contains("git.dir") && err.contains("{servce}"), "{err}");
        assert!(
            err.contains("{service}") && err.contains("{tag:NAME}"),
            "{err}"
        );
        assert!(check("k", "{tag:}").is_err());
        assert!(check("k", "{tag:A{b}").is_err());
        assert!(check("k", "a{service").is_err());
        for good in [
            "{service}_env_{env}",
            "/srv/{tag:Slot}",
            "{repository}",
            "plain",
            "",
        ] {
            check("k", good).unwrap();
        }
        for name in PLACEHOLDERS {
            check("k", &format!("{{{name}}}")).unwrap();
        }
    }

    #[test]
    fn unbalanced_braces_are_refused() {
        assert!(render("k", "a{service", &vars()).is_err());
        assert!(render("k", "a}b", &vars()).is_err());
    }
}
