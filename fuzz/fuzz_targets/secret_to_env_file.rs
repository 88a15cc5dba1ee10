//! A secret's JSON text (Secrets Manager hands over whatever was stored) through parsing and the
//! env file's rendering. Property: what systemd's reader (the model in envfile.rs, itself checked
//! against real systemd) reads back from the file is exactly the variables the secret defined.
#![no_main]

use bootagent::config::EnvFileFormat;
use bootagent::envfile::{self, Environment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(vars) = bootagent::secrets::parse_object("fuzz", text) else {
        return;
    };
    let environment: Environment = vars.into_iter().collect();
    if let Ok(rendered) = envfile::render(&environment, EnvFileFormat::Systemd) {
        let read = envfile::parse_systemd(&rendered);
        let expected: Vec<(String, String)> = environment
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();
        assert_eq!(read, expected);
    } else {
        // Refused only for what no environment can carry.
        assert!(environment.values().any(|value| value.contains('\0')));
    }
    let _ = envfile::render(&environment, EnvFileFormat::Dotenv);
});
