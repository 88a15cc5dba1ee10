//! The config loader on any text: it must answer with a configuration or an error naming the
//! file, never panic; a configuration it accepts must plan for a plain identity.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match bootagent::config::from_text(Path::new("fuzz.toml"), text) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let tags = BTreeMap::from([
        ("Service".to_string(), "calendar".to_string()),
        ("Environment".to_string(), "prod".to_string()),
    ]);
    let tags: BTreeMap<String, String> = tags
        .into_iter()
        .map(|(key, value)| match key.as_str() {
            "Service" => (config.identity.service_tag.clone(), value),
            _ => (config.identity.environment_tag.clone(), value),
        })
        .collect();
    if let Ok(identity) = bootagent::plan::identity::resolve(
        &config,
        &tags,
        "i-0123456789abcdef0",
        "us-east-1",
        Duration::ZERO,
    ) {
        let _ = bootagent::plan::build(&config, &identity);
    }
});
