//! Instance tags (from instance metadata or DescribeTags: anyone who may tag the instance writes
//! them) through identity validation and the plan's templates. Input: `KEY=VALUE` lines.
//! Properties: an accepted identity yields a plan whose paths stay where the config puts them —
//! no tag value climbs out with `..` or a `/`.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::OnceLock;
use std::time::Duration;

use bootagent::config::Config;
use libfuzzer_sys::fuzz_target;

/// Defaults, with templates that read instance tags too.
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        bootagent::config::from_text(
            Path::new("fuzz.toml"),
            "[git]\nref = \"{tag:Release}\"\ndir = \"/srv/{service}-{tag:Slot}\"\n",
        )
        .expect("the fuzz config loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tags: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let config = config();
    let Ok(identity) = bootagent::plan::identity::resolve(
        config,
        &tags,
        "i-0123456789abcdef0",
        "us-east-1",
        Duration::ZERO,
    ) else {
        return;
    };
    assert!(bootagent::config::names::is_valid_name(&identity.service));
    let Ok(plan) = bootagent::plan::build(config, &identity) else {
        return;
    };
    for path in [&plan.git.dir, &plan.env_file] {
        assert!(path.is_absolute(), "{}", path.display());
        assert!(
            path.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
            "{} climbs out",
            path.display()
        );
    }
    assert!(plan.git.dir.starts_with("/srv"));
    assert!(plan.env_file.starts_with(&config.paths.run_dir));
    assert!(!plan.git.reference.contains(".."));
});
