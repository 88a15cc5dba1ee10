//! `env diff`: which variable names two environments' secrets define, and which `[[files]]`
//! each cannot fill, read with this instance's identity and credentials. Names only: values are
//! never compared or shown.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::{Config, Deliver};
use crate::deliver::files;
use crate::plan::identity;
use crate::{secrets, Error};

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub service: String,
    pub a: String,
    pub b: String,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub in_both: usize,
    /// How the variables reach the service (`secrets.deliver`), the same in both.
    pub delivered_as: Deliver,
    /// The `[[files]]` entries each environment's secrets cannot fill, each with why (names,
    /// never values).
    pub files_failing_in_a: Vec<String>,
    pub files_failing_in_b: Vec<String>,
}

impl Comparison {
    pub fn differ(&self) -> bool {
        !(self.only_in_a.is_empty()
            && self.only_in_b.is_empty()
            && self.files_failing_in_a.is_empty()
            && self.files_failing_in_b.is_empty())
    }
}

/// The variable names of environments `a` and `b` (canonical names or aliases).
pub async fn compare(config: &Config, a: &str, b: &str) -> Result<Comparison, Error> {
    // The arguments are the caller's, not the instance's tags: a usage error (exit 2).
    for env in [a, b] {
        if identity::canonical_environment(config, env).is_none() {
            return Err(Error::Usage(format!(
                "env diff: {env:?} names no environment; use one of: {}",
                identity::known_environments(config)
            )));
        }
    }
    let here = crate::plan::resolve(config).await?.identity;
    let client = secrets::client(&config.secrets, &here.region, config.secrets.timeout).await?;
    let mut names = Vec::new();
    let mut failing = Vec::new();
    for env in [a, b] {
        let identity = here.in_environment(config, env)?;
        let plan = crate::plan::build(config, &identity)?;
        let loaded = secrets::load(&client, &identity.region, &plan.secrets).await?;
        // Each file on its own, so that one that fails does not hide the others.
        failing.push(
            (plan.files.iter())
                .filter_map(|file| {
                    let one = std::slice::from_ref(file);
                    files::render(one, &identity, &loaded.vars, &loaded.files)
                        .err()
                        .map(|e| e.to_string())
                })
                .collect::<Vec<_>>(),
        );
        names.push(loaded.vars.into_keys().collect::<BTreeSet<_>>());
    }
    let files_failing_in_b = failing.pop().unwrap_or_default();
    let files_failing_in_a = failing.pop().unwrap_or_default();
    let (in_a, in_b) = (&names[0], &names[1]);
    Ok(Comparison {
        service: here.service,
        a: a.to_string(),
        b: b.to_string(),
        only_in_a: in_a.difference(in_b).cloned().collect(),
        only_in_b: in_b.difference(in_a).cloned().collect(),
        in_both: in_a.intersection(in_b).count(),
        delivered_as: config.secrets.deliver,
        files_failing_in_a,
        files_failing_in_b,
    })
}
