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

include!(concat!(env!("OUT_DIR"), "/gen.rs"));
