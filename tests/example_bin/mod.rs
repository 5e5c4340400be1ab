//! Finds the example binaries the tests start.

use std::path::PathBuf;

/// `target/<profile>/examples/NAME`, found from the test's own path
/// (`target/<profile>/deps/TEST-HASH`); `None` (with a SKIPPED line) when
/// the examples were not built.
pub fn example_path(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is missing; build the examples first \
             (`cargo build --examples`, or run plain `cargo test`)",
            path.display()
        );
        None
    }
}
