# Sourced by scripts/build-static and scripts/package.

# Where cargo puts what it builds, as an absolute path: target/ here, or wherever
# CARGO_TARGET_DIR (or a cargo config's build.target-dir) moves it.
cargo_target_dir() {
    cargo metadata --no-deps --format-version 1 --locked |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
