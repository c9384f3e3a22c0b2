//! Paths of the workspace's plugins, built as wasm components for the tests.
//!
//! The build script of this crate runs `cargo build --profile plugin --target
//! wasm32-wasip2` for every plugin package, so a test crate that lists this one as a
//! dev-dependency always sees plugins built from the current sources: editing a file
//! under `plugins/`, `guest-sdk/` or `wit/` rebuilds them on the next `cargo test`.
//!
//! Each constant is the absolute path of a component (`.wasm`) in
//! `<target-dir>/plugin-artifacts/wasm32-wasip2/plugin/`:
//!
//! ```
//! let wasm = std::fs::read(sandport_test_artifacts::ECHO).unwrap();
//! assert!(wasm.starts_with(b"\0asm"));
//! ```
//!
//! The files are shared by every build of the workspace and rewritten when a plugin
//! changes; copy one first if a test needs to modify it.
//!
//! The plugins of other languages build with their own `make`: see [`make`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

include!(concat!(env!("OUT_DIR"), "/gen.rs"));

/// The workspace's root folder.
pub const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Builds the plugin in `folder` with `make`, the one command every plugin in a language
/// other than Rust builds with (see `plugins/CONFORMANCE.md`), and returns the path of
/// its component, `folder/target/NAME.wasm`.
///
/// Those plugins are built at test time rather than by this crate's build script: a
/// missing toolchain then fails the tests of that language, with the way to install it,
/// instead of every build. `make` itself skips what is up to date; within one process
/// each folder is built once, and one build runs at a time (the toolchains are heavy).
///
/// ```no_run
/// let folder = std::path::Path::new(sandport_test_artifacts::WORKSPACE).join("plugins/c/echo");
/// let wasm = sandport_test_artifacts::make(&folder, "echo").unwrap();
/// assert!(wasm.ends_with("target/echo.wasm"));
/// ```
pub fn make(folder: &Path, name: &str) -> Result<PathBuf, String> {
    static BUILT: Mutex<BTreeMap<PathBuf, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    // A test that panicked while building poisoned nothing that matters: the map only
    // ever holds finished results.
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    built.entry(folder.to_path_buf()).or_insert_with(|| run_make(folder, name)).clone()
}

fn run_make(folder: &Path, name: &str) -> Result<PathBuf, String> {
    let shown = format!("make -C {}", folder.display());
    let output = Command::new("make")
        .arg("-C")
        .arg(folder)
        // A Rust plugin built by `make` (a `sandport new` scaffold) builds with cargo:
        // one target folder for all of them, kept between runs, spares compiling
        // wit-bindgen for each.
        .env("CARGO_TARGET_DIR", Path::new(WORKSPACE).join("target").join("make"))
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}; install the toolchains with plugins/toolchains.sh"))?;
    if !output.status.success() {
        return Err(format!(
            "`{shown}` failed ({}); are the toolchains installed (plugins/toolchains.sh)?\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let wasm = folder.join("target").join(format!("{name}.wasm"));
    if !wasm.is_file() {
        return Err(format!("`{shown}` succeeded but did not produce {}", wasm.display()));
    }
    Ok(wasm)
}
