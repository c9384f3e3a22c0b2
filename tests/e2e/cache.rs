//! The compiled-component cache and `sandport compile`: a second start loads every
//! plugin from the cache, a bad entry is rebuilt rather than trusted, `cache-dir =
//! false` compiles every time, a `.cwasm` serves in every instance mode and a
//! damaged one is refused, and an unusable cache directory only costs a warning.

use std::path::{Path, PathBuf};

use crate::harness::{Server, config_file, listener, plugins, run_sandport};

/// Where the engine key starts in a precompiled file's header (after the 8-byte
/// magic and the 4-byte format version), and how long it is.
const ENGINE_KEY: std::ops::Range<usize> = 12..44;

/// A config whose `cache-dir` line is `cache` (TOML), serving the echo plugin from
/// `plugin` on a shared and on a per-connection listener (the two engines).
fn config(cache: &str, plugin: &str) -> String {
    format!(
        "cache-dir = {cache}\n{}{}",
        listener("echo", plugin, ""),
        listener("echo-isolated", plugin, "instance = \"per-connection\"\n[listener.limits]\nmax-connections = 16"),
    )
}

/// `cache-dir` set to this folder.
fn cache_at(dir: &Path) -> String {
    format!("{:?}", dir.display().to_string())
}

/// Start a server with `config`, check that both listeners echo, and return its log.
fn serve(config: &str) -> String {
    let server = Server::start(config);
    for name in ["echo", "echo-isolated"] {
        let mut client = server.connect(name);
        assert_eq!(client.ask("hello cache"), "hello cache", "listener {name}");
    }
    let (_, log) = server.terminate();
    log
}

/// The `from=` of the `plugin ready` line of listener `name`.
fn loaded_from<'a>(log: &'a str, name: &str) -> &'a str {
    let listener = format!("listener={name}");
    let line = log
        .lines()
        .filter(|l| l.contains("plugin ready"))
        .find(|l| l.contains(&format!("{listener}}}")) || l.contains(&format!("{listener} ")))
        .unwrap_or_else(|| panic!("no `plugin ready` line for {name}:\n{log}"));
    let from = line.split_once("from=").unwrap_or_else(|| panic!("no from= in {line}")).1;
    from.split_whitespace().next().unwrap()
}

/// The cache entries (`.cwasm` files) in `dir`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let files = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path());
    files.filter(|path| path.extension().is_some_and(|ext| ext == "cwasm")).collect()
}

/// What tells a cache entry's file apart from a rewrite of it: its bytes, its inode
/// (entries are written to a new file renamed into place) and its modification time.
/// (An inode number alone is not enough: a file system reuses the number of a file
/// replaced a moment ago.)
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    bytes: Vec<u8>,
    inode: u64,
    modified: std::time::SystemTime,
}

impl Stamp {
    fn of(entry: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(entry).unwrap();
        Stamp { bytes: std::fs::read(entry).unwrap(), inode: metadata.ino(), modified: metadata.modified().unwrap() }
    }
}

/// The one cache entry in `dir` after a first start.
fn only_entry(dir: &Path) -> PathBuf {
    let entries = entries(dir);
    assert_eq!(entries.len(), 1, "one entry (both engines share it): {entries:?}");
    entries.into_iter().next().unwrap()
}

#[test]
fn a_second_start_loads_every_plugin_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cache_at(dir.path()), plugins::ECHO);
    let first = serve(&config);
    assert_eq!(loaded_from(&first, "echo"), "compiled", "{first}");
    // The pooled engine compiles compatible code: it reads what the first one wrote,
    // or, when both listeners are prepared at once, compiles the same entry itself.
    let isolated = loaded_from(&first, "echo-isolated");
    assert!(["disk", "compiled"].contains(&isolated), "{first}");
    let entry = only_entry(dir.path());
    let written = Stamp::of(&entry);
    let second = serve(&config);
    // A hit reads the entry and leaves it as it was: not rewritten, not replaced.
    assert_eq!(only_entry(dir.path()), entry);
    assert!(Stamp::of(&entry) == written, "the second start rewrote the cache entry {}", entry.display());
    assert_eq!(loaded_from(&second, "echo"), "disk", "{second}");
    assert_eq!(loaded_from(&second, "echo-isolated"), "disk", "{second}");
    assert!(!second.contains("from=compiled"), "{second}");
    let ready = second.lines().find(|l| l.contains("plugin ready")).unwrap();
    assert!(ready.contains(plugins::ECHO) && ready.contains("hash=") && ready.contains("took="), "{ready}");
}

/// Warm the cache, damage its entry with `damage`, and check that the next start
/// warns about that file, compiles, serves, and leaves a good entry behind.
fn rebuilt_after(damage: impl FnOnce(&mut Vec<u8>)) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cache_at(dir.path()), plugins::ECHO);
    serve(&config);
    let entry = only_entry(dir.path());
    let mut bytes = std::fs::read(&entry).unwrap();
    damage(&mut bytes);
    std::fs::write(&entry, &bytes).unwrap();
    let damaged = Stamp::of(&entry);

    let log = serve(&config);
    // A miss writes the entry again: other bytes, written after the damage.
    let rebuilt = Stamp::of(&entry);
    assert!(rebuilt.modified > damaged.modified, "the damaged entry was not written again");
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("stale or damaged"));
    let warning = warning.unwrap_or_else(|| panic!("no warning about the entry:\n{log}"));
    assert!(warning.contains(&entry.display().to_string()), "the warning names the file: {warning}");
    assert_eq!(loaded_from(&log, "echo"), "compiled", "{log}");
    assert_ne!(std::fs::read(&entry).unwrap(), bytes, "the entry was rewritten");

    let healed = serve(&config);
    assert!(Stamp::of(&entry) == rebuilt, "the rebuilt entry was rewritten again: not a hit");
    assert_eq!(loaded_from(&healed, "echo"), "disk", "{healed}");
    assert!(!healed.contains("stale or damaged"), "{healed}");
}

#[test]
fn a_corrupted_entry_is_rebuilt() {
    rebuilt_after(|bytes| {
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle..middle + 64] {
            *byte ^= 0xa5;
        }
    });
}

#[test]
fn an_entry_of_an_incompatible_engine_is_rebuilt() {
    rebuilt_after(|bytes| bytes[ENGINE_KEY].iter_mut().for_each(|byte| *byte = !*byte));
}

#[test]
fn a_truncated_entry_is_rebuilt() {
    rebuilt_after(|bytes| bytes.truncate(bytes.len() * 2 / 3));
}

#[test]
fn an_entry_cut_inside_its_header_is_rebuilt() {
    rebuilt_after(|bytes| bytes.truncate(20));
}

#[test]
fn without_a_cache_dir_every_start_compiles() {
    let config = config("false", plugins::ECHO);
    for _ in 0..2 {
        let log = serve(&config);
        assert_eq!(loaded_from(&log, "echo"), "compiled", "{log}");
        assert_eq!(loaded_from(&log, "echo-isolated"), "compiled", "{log}");
    }
}

#[test]
fn an_unusable_cache_dir_warns_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be made under a file, whoever runs the test (even root).
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").unwrap();
    let cache = file.join("cache");
    let log = serve(&config(&cache_at(&cache), plugins::ECHO));
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("cannot create the cache directory"));
    let warning = warning.unwrap_or_else(|| panic!("no warning about the cache dir:\n{log}"));
    assert!(warning.contains(&cache.display().to_string()), "{warning}");
    assert_eq!(loaded_from(&log, "echo"), "compiled", "{log}");
}

/// `sandport compile` the echo into `dir`; the path of the `.cwasm`.
fn compile_echo(dir: &Path) -> PathBuf {
    let output = dir.join("echo.cwasm");
    let (status, stdout, stderr) = run_sandport(&["compile", plugins::ECHO, "-o", output.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("compiled to"), "{stdout}");
    output
}

#[test]
fn a_compiled_plugin_serves_in_every_instance_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cwasm = compile_echo(dir.path());
    let (status, stdout, stderr) = run_sandport(&["check", cwasm.to_str().unwrap()]);
    assert!(status.success() && stdout.contains("ok, implements sandport:handler/plugin"), "{stdout}{stderr}");

    let log = serve(&config("false", cwasm.to_str().unwrap()));
    assert_eq!(loaded_from(&log, "echo"), "precompiled", "{log}");
    assert_eq!(loaded_from(&log, "echo-isolated"), "precompiled", "{log}");
    assert!(!log.contains("from=compiled"), "{log}");
}

/// Damage a fresh `.cwasm` with `damage`; the error `serve` and `check` stop with.
fn refused_after(damage: impl FnOnce(&mut Vec<u8>)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cwasm = compile_echo(dir.path());
    let mut bytes = std::fs::read(&cwasm).unwrap();
    damage(&mut bytes);
    std::fs::write(&cwasm, &bytes).unwrap();
    let cwasm = cwasm.to_str().unwrap();

    let (_config_dir, path) = config_file(&config("false", cwasm));
    let (status, _, stderr) = run_sandport(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!status.success(), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{stderr}"));
    // Both listeners load the file, at once: the first to fail is the one named.
    let named = error.contains("listener `echo`") || error.contains("listener `echo-isolated`");
    assert!(named && error.contains(cwasm), "{error}");
    assert!(error.contains("run `sandport compile` again"), "{error}");
    assert!(!stderr.contains("listening"), "{stderr}");

    let (status, _, stderr) = run_sandport(&["check", cwasm]);
    assert!(!status.success(), "{stderr}");
    error.to_owned()
}

#[test]
fn a_damaged_cwasm_is_refused_with_a_clear_error() {
    let error = refused_after(|bytes| {
        let last = bytes.len() - 100;
        bytes[last] ^= 1;
    });
    assert!(error.contains("damaged precompiled component"), "{error}");
    let error = refused_after(|bytes| bytes.truncate(bytes.len() - 1));
    assert!(error.contains("damaged precompiled component"), "{error}");
}

#[test]
fn a_cwasm_of_another_build_is_refused_with_a_clear_error() {
    let error = refused_after(|bytes| bytes[ENGINE_KEY].iter_mut().for_each(|byte| *byte = !*byte));
    assert!(error.contains("compiled by an incompatible sandport: run `sandport compile` again"), "{error}");
}
