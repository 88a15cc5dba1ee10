//! bootagent: from "just booted" to "the right service, on the right branch, with the right
//! secrets, running". `main.rs` only parses arguments and maps errors to exit codes.

mod atomic;
pub mod aws;
mod boot;
mod ca;
pub mod cli;
pub mod config;
pub mod crash;
mod deadline;
mod deliver;
pub mod envfile;
mod error;
pub mod exit;
mod failpoint;
pub mod git;
pub mod logging;
pub mod plan;
mod remote;
pub mod report;
mod retry;
pub mod secrets;
pub mod service;
pub mod state;
#[cfg(test)]
mod testing;

pub use error::Error;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The README's layout section shows every folder of `src/` as `src/PATH/` and names every
    /// module in it, so that a newcomer finds each one there.
    #[test]
    fn the_readme_layout_names_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let start = readme.find("## Layout").expect("a layout section");
        let layout = &readme[start..];
        let end = layout[3..]
            .find("\n## ")
            .map_or(layout.len(), |end| end + 3);
        let mut missing = Vec::new();
        unnamed(&layout[..end], &root.join("src"), "", &mut missing);
        assert!(missing.is_empty(), "the README's layout omits {missing:?}");
    }

    /// The modules in `dir` (`src/` + `folder`) that `layout` does not name, into `missing`.
    fn unnamed(layout: &str, dir: &Path, folder: &str, missing: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if matches!(name.as_str(), "main" | "lib" | "mod" | "tests") {
                continue;
            }
            let inside = format!("{folder}{name}");
            let ways = match (folder.is_empty(), path.is_dir()) {
                (_, true) => vec![format!("`src/{inside}/`"), format!("src/{inside}/ ")],
                (true, false) => vec![format!("`{name}`"), format!("`src/{name}.rs`")],
                (false, false) => vec![format!("`{name}.rs`")],
            };
            if !ways.iter().any(|way| layout.contains(way)) {
                missing.push(inside.clone());
            }
            if path.is_dir() {
                unnamed(layout, &path, &format!("{inside}/"), missing);
            }
        }
    }
}
