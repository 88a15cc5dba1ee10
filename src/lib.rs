//! bootagent: from "just booted" to "the right service, on the right branch, with the right
//! secrets, running". `main.rs` only parses arguments and maps errors to exit codes.

mod atomic;
pub mod autoscaling;
mod aws;
mod boot;
pub mod cli;
pub mod config;
pub mod crash;
mod deploy;
mod deploys;
pub mod doctor;
mod ec2;
mod envdiff;
pub mod envfile;
mod error;
pub mod exit;
mod failpoint;
pub mod git;
pub mod health;
pub mod health_server;
pub mod history;
pub mod identity;
pub mod imds;
mod lifecycle;
pub mod logging;
pub mod names;
pub mod plan;
mod refresh;
mod remote;
mod retry;
pub mod secrets;
pub mod service;
pub mod status;
mod template;
#[cfg(test)]
mod testing;

pub use error::Error;

#[cfg(test)]
mod tests {
    /// The README's layout section names every module, so that a newcomer finds each one there.
    #[test]
    fn the_readme_layout_names_every_module() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let layout = &readme[readme.find("## Layout").expect("a layout section")..];
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(root.join("src")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if matches!(name.as_str(), "main" | "lib") {
                continue;
            }
            let ways = [
                format!("`{name}`"),
                format!("`src/{name}/`"),
                format!("`src/{name}.rs`"),
            ];
            if !ways.iter().any(|way| layout.contains(way)) {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "the README's layout omits {missing:?}");
    }
}
