//! What the config must satisfy beyond its types: names, environments, variables, durations
//! and the templates' placeholders.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, ConfigError, Manager, MAX_DURATION};
use crate::config::names::{is_normal_path, is_valid_name, is_variable_name};

impl Config {
    /// Every template's placeholders are ones a plan fills, checked before any instance is
    /// known.
    pub(super) fn check_templates(&self) -> Result<(), crate::config::template::TemplateError> {
        for (key, template) in self.templates() {
            crate::config::template::check(&key, template)?;
        }
        Ok(())
    }

    /// Every value that is a template, by key.
    pub(super) fn templates(&self) -> Vec<(String, &str)> {
        let mut all: Vec<(String, &str)> = vec![
            ("git.url".into(), &self.git.url),
            ("git.ref".into(), &self.git.reference),
            ("git.dir".into(), &self.git.dir),
            ("service.unit".into(), &self.service.unit),
            ("service.user".into(), &self.service.user),
        ];
        all.extend(
            self.secrets
                .main
                .as_deref()
                .map(|t| ("secrets.main".into(), t)),
        );
        all.extend(
            self.service
                .endpoint
                .as_deref()
                .map(|t| ("service.endpoint".into(), t)),
        );
        fn keyed<'a>(prefix: &str, (name, template): (&String, &'a String)) -> (String, &'a str) {
            (format!("{prefix}.{name}"), template.as_str())
        }
        all.extend(
            self.secrets
                .vars
                .iter()
                .map(|var| keyed("secrets.vars", var)),
        );
        for (section, vars) in &self.env {
            all.extend(vars.iter().map(|var| keyed(&format!("env.{section}"), var)));
        }
        let mirrors = self.git.mirrors.iter().enumerate();
        all.extend(mirrors.map(|(i, url)| (format!("git.mirrors[{i}]"), url.as_str())));
        let command = self.service.command.iter().enumerate();
        all.extend(command.map(|(i, arg)| (format!("service.command[{i}]"), arg.as_str())));
        let endpoints = self.service.endpoints.iter();
        all.extend(endpoints.map(|endpoint| keyed("service.endpoints", endpoint)));
        for (i, file) in self.files.iter().enumerate() {
            let values = [
                ("path", Some(&file.path)),
                ("secret", file.secret.as_ref()),
                ("owner", Some(&file.owner)),
                ("group", Some(&file.group)),
            ];
            for (name, value) in values {
                all.extend(value.map(|value| (format!("files[{i}].{name}"), value.as_str())));
            }
        }
        all
    }

    /// The instance tags templates read with `{tag:NAME}`.
    pub fn referenced_tags(&self) -> std::collections::BTreeSet<String> {
        self.templates()
            .into_iter()
            .flat_map(|(_, template)| crate::config::template::tag_placeholders(template))
            .map(str::to_string)
            .collect()
    }

    /// Every duration in the config, by key.
    fn durations(&self) -> [(&'static str, Duration); 17] {
        [
            ("identity.tag_wait", self.identity.tag_wait),
            ("identity.imds_deadline", self.identity.imds_deadline),
            ("secrets.timeout", self.secrets.timeout),
            ("git.timeout", self.git.timeout),
            ("git.deadline", self.git.deadline),
            ("service.start_timeout", self.service.start_timeout),
            ("service.settle", self.service.settle),
            ("health.app_timeout", self.health.app_timeout),
            ("health.header_timeout", self.health.header_timeout),
            ("lifecycle.heartbeat", self.lifecycle.heartbeat),
            ("lifecycle.drain", self.lifecycle.drain),
            ("lifecycle.health_wait", self.lifecycle.health_wait),
            ("lifecycle.timeout", self.lifecycle.timeout),
            ("refresh.window", self.refresh.window),
            ("deploy.health_wait", self.deploy.health_wait),
            ("deploy.hook_timeout", self.deploy.hook_timeout),
            ("boot.deadline", self.boot.deadline),
        ]
    }

    /// `[[files]]`: each entry on its own, no two with one path, and roots a path can be
    /// compared with.
    fn validate_files(&self) -> Result<(), ConfigError> {
        let mut paths: BTreeMap<&str, String> = BTreeMap::new();
        for (i, file) in self.files.iter().enumerate() {
            let key = format!("files[{i}]");
            file.check(&key).map_err(ConfigError::Invalid)?;
            if let Some(first) = paths.insert(&file.path, key.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "{key}.path is {:?}, as {first}.path is: two entries cannot write one file",
                    file.path
                )));
            }
        }
        for (i, root) in self.paths.file_roots.iter().enumerate() {
            let text = root.to_string_lossy();
            if !is_normal_path(&text) && text != "/" {
                return Err(ConfigError::Invalid(format!(
                    "paths.file_roots[{i}] is {text:?}: it must be an absolute path without \
                     \".\", \"..\", \"//\" or a trailing slash"
                )));
            }
        }
        Ok(())
    }

    /// A region ends up in an endpoint's host name: `us-west-2`, never a URL or a path.
    fn validate_regions(&self) -> Result<(), ConfigError> {
        let regions = &self.secrets.regions;
        for (i, region) in regions.iter().enumerate() {
            let well_formed = !region.is_empty()
                && region.len() <= 32
                && !region.starts_with('-')
                && (region.bytes())
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !well_formed {
                return Err(ConfigError::Invalid(format!(
                    "secrets.regions[{i}] is {region:?}: name a region such as \"us-west-2\""
                )));
            }
            if regions[..i].contains(region) {
                return Err(ConfigError::Invalid(format!(
                    "secrets.regions lists {region:?} twice"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (canonical, aliases) in &self.environments {
            if !is_valid_name(canonical) {
                return Err(ConfigError::Invalid(format!(
                    "environment name {canonical:?} must match [a-z0-9][a-z0-9_-]*"
                )));
            }
            for alias in std::iter::once(canonical).chain(aliases) {
                if let Some(other) = seen.insert(alias, canonical) {
                    if other != canonical {
                        return Err(ConfigError::Invalid(format!(
                            "tag value {alias:?} is listed under both environments.{other} and environments.{canonical}"
                        )));
                    }
                }
            }
        }
        for section in self.env.keys() {
            if section != "all" && !self.environments.contains_key(section) {
                return Err(ConfigError::Invalid(format!(
                    "[env.{section}] names no environment; use [env.all] or one of: {}",
                    self.environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for (section, vars) in &self.env {
            if let Some(name) = vars.keys().find(|name| !is_variable_name(name)) {
                return Err(ConfigError::Invalid(format!(
                    "env.{section}: {name:?} is not a valid variable name (letters, digits and \
                     '_', not starting with a digit)"
                )));
            }
        }
        for (key, argv) in [
            ("deploy.pre_start", &self.deploy.pre_start),
            ("deploy.post", &self.deploy.post),
        ] {
            if argv.first().is_some_and(|program| program.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} starts with an empty program name"
                )));
            }
        }
        for (key, dir) in [
            ("paths.run_dir", &self.paths.run_dir),
            ("paths.state_dir", &self.paths.state_dir),
        ] {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be an absolute path, not {:?}: bootagent runs from systemd, \
                     cloud-init or a shell, each in another directory",
                    dir.display().to_string()
                )));
            }
        }
        self.validate_files()?;
        self.validate_regions()?;
        for env in &self.deploy.follow {
            if !self.environments.contains_key(env) {
                return Err(ConfigError::Invalid(format!(
                    "deploy.follow names {env:?}, which is no environment"
                )));
            }
        }
        for env in self.service.endpoints.keys() {
            if !self.environments.contains_key(env) {
                return Err(ConfigError::Invalid(format!(
                    "service.endpoints.{env} names no environment"
                )));
            }
        }
        for name in self.secrets.vars.keys() {
            if !is_variable_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "secrets.vars.{name}: not a valid variable name (letters, digits and '_', not \
                     starting with a digit)"
                )));
            }
        }
        // A zero here would spin (heartbeat) or give up before the first try (the timeouts).
        let may_be_zero = [
            "identity.tag_wait",
            "lifecycle.drain",
            "lifecycle.health_wait",
            "refresh.window",
            "service.settle",
        ];
        let durations = self.durations();
        if let Some((key, _)) = durations
            .iter()
            .find(|(key, value)| value.is_zero() && !may_be_zero.contains(key))
        {
            return Err(ConfigError::Invalid(format!(
                "{key} must be longer than 0s"
            )));
        }
        if let Some((key, value)) = durations.iter().find(|(_, value)| *value > MAX_DURATION) {
            return Err(ConfigError::Invalid(format!(
                "{key} = \"{}\" is longer than bootagent accepts for any duration ({} at \
                 most): set a shorter one",
                humantime::format_duration(*value),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        if self.git.keep == 0 {
            return Err(ConfigError::Invalid(
                "git.keep must be at least 1 (the release in service)".into(),
            ));
        }
        if self.git.depth == 0 {
            return Err(ConfigError::Invalid(
                "git.depth must be at least 1 (1 is a shallow clone)".into(),
            ));
        }
        if self.service.manager == Manager::Exec && self.lifecycle.launch_hook.is_some() {
            return Err(ConfigError::Invalid(
                "lifecycle.launch_hook needs service.manager = \"systemd\": in exec mode bootagent \
                 becomes the service and cannot complete the hook after it starts; leave it unset \
                 and have the service run `bootagent lifecycle complete --hook NAME --result \
                 continue` once it is ready"
                    .into(),
            ));
        }
        if self.service.manager == Manager::Exec && self.service.command.is_empty() {
            return Err(ConfigError::Invalid(
                "service.manager = \"exec\" needs service.command (the argv to run)".into(),
            ));
        }
        Ok(())
    }
}
