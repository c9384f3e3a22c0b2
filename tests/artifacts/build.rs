//! Builds every plugin package of the workspace as a wasm component and writes
//! `$OUT_DIR/gen.rs`, which names each artifact by absolute path.
//!
//! The nested build is an ordinary `cargo build --profile plugin --target
//! wasm32-wasip2` of the workspace, run with its own target directory: sharing the
//! outer build's would block forever on the lock the outer cargo holds while this
//! script runs.

use std::env;
use std::ffi::OsStr;
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

/// The plugin packages, in the order `ALL` lists them.
const PLUGINS: &[&str] = &[
    "echo",
    "chat",
    "http-hello",
    "tcp-proxy",
    "kv",
    "fixture-probe",
    "fixture-wrong-world",
    "fixture-wants-wasi",
    "fixture-adversary",
    "fixture-hostile",
    "fixture-chaos",
    "fixture-burn",
    "fixture-chat-next",
    "fixture-migrate-faults",
    "fixture-foreign-import",
    "fixture-other-wit",
    "fixture-old-wit",
    "fixture-wit-0-2",
    "fixture-wit-0-3",
];

/// Directories whose contents feed the plugin builds.
const SOURCE_DIRS: &[&str] = &["plugins", "guest-sdk", "wit"];

/// Workspace files that change how the plugins build (profile, dependency versions,
/// toolchain, cargo config).
const WORKSPACE_FILES: &[&str] = &["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", ".cargo/config.toml"];

const WASM_TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// Variables a build script inherits that would make the nested build differ from a
/// plain `cargo build` of the plugins: host-only flags (`-C target-cpu=native`,
/// sanitizers, coverage), wrappers (`cargo clippy` sets `RUSTC_WORKSPACE_WRAPPER`,
/// which would also change the plugins' fingerprints and force a rebuild after every
/// clippy run), and the outer target/build directory.
const REMOVED_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTC_LINKER",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OUT_DIR",
];

/// Prefixes of variables cargo sets for *this* package's build script; nested build
/// scripts get their own, but a stale one cargo does not overwrite (say
/// `CARGO_CFG_UNIX`, which a wasm target never sets) would leak into them.
const REMOVED_PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_", "DEP_"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/artifacts lives two levels below the workspace root")
        .to_path_buf();

    let mut inputs = Vec::new();
    for dir in SOURCE_DIRS {
        list_files(&workspace.join(dir), &mut inputs);
    }
    // A missing path would make cargo rerun this script on every build.
    inputs.extend(WORKSPACE_FILES.iter().map(|f| workspace.join(f)).filter(|p| p.exists()));

    let target_dir = outer_target_dir(&out_dir).unwrap_or_else(|| workspace.join("target")).join("plugin-artifacts");
    build_plugins(&workspace, &target_dir);
    // Only after a successful build: cargo reruns a failed script anyway, and the
    // list would bury the compiler errors in cargo's report of the failure.
    for path in &inputs {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let artifact_dir = target_dir.join(WASM_TARGET).join(PROFILE);
    let mut generated = String::new();
    for package in PLUGINS {
        let path = artifact_dir.join(format!("{}.wasm", package.replace('-', "_")));
        if !path.is_file() {
            fail(&format!(
                "the plugin build succeeded but did not produce {}; is `{package}` still a cdylib?",
                path.display()
            ));
        }
        let path = path.to_str().unwrap_or_else(|| fail(&format!("plugin path {} is not UTF-8", path.display())));
        // Writing to a String cannot fail.
        let name = const_name(package);
        writeln!(generated, "/// Absolute path of the `{package}` plugin component.").unwrap();
        writeln!(generated, "pub const {name}: &str = {path:?};").unwrap();
    }
    generated += "/// Every plugin as `(package name, path of its component)`.\n";
    generated += "pub const ALL: &[(&str, &str)] = &[\n";
    for package in PLUGINS {
        writeln!(generated, "    ({package:?}, {}),", const_name(package)).unwrap();
    }
    generated += "];\n";

    let gen_path = out_dir.join("gen.rs");
    fs::write(&gen_path, generated).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", gen_path.display())));
}

/// Runs the nested cargo build, exiting with its output if it fails.
fn build_plugins(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "--profile", PROFILE, "--target", WASM_TARGET];
    args.extend(PLUGINS.iter().flat_map(|p| ["-p", p]));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(&args)
        .env("CARGO_TARGET_DIR", target_dir)
        // A configured build-dir would otherwise be shared with the outer build.
        .env("CARGO_BUILD_BUILD_DIR", target_dir);
    for var in REMOVED_VARS {
        cmd.env_remove(var);
    }
    for (var, _) in env::vars_os() {
        let removed = var.to_str().is_some_and(|v| REMOVED_PREFIXES.iter().any(|p| v.starts_with(p)));
        if removed {
            cmd.env_remove(&var);
        }
    }
    // CARGO_MAKEFLAGS stays: the nested cargo then draws from the outer jobserver
    // instead of starting as many jobs again on top of it.

    let shown =
        format!("cargo {} (in {}, CARGO_TARGET_DIR={})", args.join(" "), workspace.display(), target_dir.display());
    let output = cmd.output().unwrap_or_else(|e| fail(&format!("cannot run {shown}: {e}")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Cargo shows a build script's stderr only when it fails or with `-vv`.
    eprint!("{stderr}");
    if !output.status.success() {
        fail(&format!(
            "building the plugins failed ({}):\n  {shown}\n\
             If the error says the `{WASM_TARGET}` target may not be installed, run:\n  \
             rustup target add {WASM_TARGET}",
            output.status
        ));
    }
}

/// Appends every file below `dir`, skipping `target/` directories, to `files`.
///
/// The files rather than the directory are watched because cargo scans a watched
/// directory recursively, including any `target/` left by building a plugin on its own.
fn list_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())));
        let path = entry.path();
        if !path.is_dir() {
            files.push(path);
        } else if entry.file_name() != OsStr::new("target") {
            list_files(&path, files);
        }
    }
}

/// The target (or build) directory of the outer build: the nearest ancestor of
/// `OUT_DIR` that cargo tagged with `CACHEDIR.TAG`. Found this way it honours
/// `CARGO_TARGET_DIR` and `build.target-dir` without asking cargo.
///
/// With `--target`, cargo also tags `<target-dir>/<triple>/`; that one is skipped so
/// builds with and without `--target` share one set of plugins.
fn outer_target_dir(out_dir: &Path) -> Option<PathBuf> {
    let triple = env::var_os("TARGET");
    out_dir
        .ancestors()
        .filter(|dir| dir.file_name() != triple.as_deref())
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

/// `http-hello` -> `HTTP_HELLO`.
fn const_name(package: &str) -> String {
    package.replace('-', "_").to_uppercase()
}

/// Fails the build with `message` on stderr, which cargo shows under the error.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1);
}
