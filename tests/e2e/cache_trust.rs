//! The compiled-component cache trusts only what no one else could have written: a
//! `cache-dir` that group or others can write is not used (the server compiles in
//! memory, serves, and says so once, naming the folder and the fix), and an entry that
//! group or others can write, or that another user owns, is never loaded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{Server, listener, plugins};

/// A config with `cache-dir` at `dir`, serving the echo plugin on a shared and on a
/// per-connection listener (the two engines, each with its cache).
fn config(dir: &Path) -> String {
    format!(
        "cache-dir = {:?}\n{}{}",
        dir.display().to_string(),
        listener("echo", plugins::ECHO, ""),
        listener(
            "echo-isolated",
            plugins::ECHO,
            "instance = \"per-connection\"\n[listener.limits]\nmax-connections = 16"
        ),
    )
}

/// Start a server with a cache at `dir`, check that both listeners echo, and return
/// its log.
fn serve(dir: &Path) -> String {
    let server = Server::start(&config(dir));
    for name in ["echo", "echo-isolated"] {
        let mut client = server.connect(name);
        assert_eq!(client.ask("hello trust"), "hello trust", "listener {name}");
    }
    let (_, log) = server.terminate();
    log
}

/// The `from=` of every `plugin ready` line.
fn loaded_from(log: &str) -> Vec<&str> {
    let ready = log.lines().filter(|l| l.contains("plugin ready"));
    ready.map(|l| l.split_once("from=").unwrap().1.split_whitespace().next().unwrap()).collect()
}

/// The cache entries (`.cwasm` files) in `dir`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let files = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path());
    files.filter(|path| path.extension().is_some_and(|ext| ext == "cwasm")).collect()
}

#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o777)).unwrap();
    let log = serve(dir.path());
    let warnings: Vec<&str> =
        log.lines().filter(|l| l.contains("WARN") && l.contains("cache directory not used")).collect();
    assert_eq!(warnings.len(), 1, "one warning for the folder, whatever the engines:\n{log}");
    let folder = dir.path().display().to_string();
    assert!(warnings[0].contains(&folder) && warnings[0].contains(&format!("chmod go-w {folder}")), "{}", warnings[0]);
    assert_eq!(loaded_from(&log), ["compiled", "compiled"], "{log}");
    assert!(entries(dir.path()).is_empty(), "no entry written there");
}

/// Fill a good cache folder, make its entry untrusted with `spoil`, and check that the
/// next start compiles instead of loading it.
fn not_loaded_after(spoil: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path());
    let planted = entries(dir.path());
    assert_eq!(planted.len(), 1, "{planted:?}");
    spoil(&planted[0]);
    let log = serve(dir.path());
    let from = loaded_from(&log);
    assert_eq!(from[0], "compiled", "the untrusted entry is not loaded:\n{log}");
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("cache entry not loaded"));
    let warning = warning.unwrap_or_else(|| panic!("no warning about the entry:\n{log}"));
    assert!(warning.contains(&planted[0].display().to_string()), "{warning}");
}

#[test]
fn an_entry_others_can_write_is_not_loaded() {
    not_loaded_after(|entry| std::fs::set_permissions(entry, PermissionsExt::from_mode(0o666)).unwrap());
}

#[test]
fn an_entry_of_another_user_is_not_loaded() {
    not_loaded_after(|entry| std::os::unix::fs::chown(entry, Some(65534), None).unwrap());
}
