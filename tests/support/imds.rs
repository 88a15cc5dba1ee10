//! The IMDS fake (tests/world/imds_fake.py): an instance's metadata and tags, as EC2 serves them.

use crate::*;

pub struct Imds {
    _process: Reaped,
    pub url: String,
}

impl Imds {
    /// Starts the IMDS fake with `state` (see tests/world/imds_fake.py for its keys).
    pub fn start(state: serde_json::Value) -> Imds {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        std::fs::write(&state_file, state.to_string()).unwrap();
        let (child, url) = start_fake("IMDS_FAKE", &["--state", state_file.to_str().unwrap()]);
        Imds {
            _process: Reaped(child),
            url,
        }
    }

    pub fn with_tags(tags: &[(&str, &str)]) -> Imds {
        let tags: BTreeMap<_, _> = tags.iter().copied().collect();
        Imds::start(serde_json::json!({ "tags": tags }))
    }

    /// An instance tagged for `service` in `env`, its code at `repository`.
    pub fn for_service(service: &str, env: &str, repository: &str) -> Imds {
        Imds::with_tags(&[
            ("Service", service),
            ("Environment", env),
            ("Repository", repository),
        ])
    }

    /// Merges `changes` into the fake's state, as a change on the instance would.
    pub fn set(&self, changes: serde_json::Value) {
        curl(&[
            "-sSf",
            "-X",
            "POST",
            "--data-binary",
            &changes.to_string(),
            &format!("{}/fake/state", self.url),
        ]);
    }

    /// The requests it served, as "METHOD PATH STATUS" lines.
    pub fn requests(&self) -> Vec<String> {
        let out = curl(&["-sf", &format!("{}/fake/requests", self.url)]);
        out.lines().map(str::to_string).collect()
    }
}
