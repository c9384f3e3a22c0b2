//! Every route of the operator's that reads a plugin or config file, given what is not
//! a regular file (`/dev/zero`, which never ends, and a FIFO nobody writes, which
//! never opens): start-up, SIGHUP, the watcher, `check`, `compile` and `serve
//! --config` each refuse it promptly, read at most the cap, and a running server
//! goes on serving. Every wait is bounded and the server's memory is watched, so a
//! route that hangs or reads without end fails its test instead of the suite.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandport_test_artifacts::{ECHO, FIXTURE_PROBE};

use crate::bounded::{MemoryGuard, assert_refused, fifo, run_bounded, text};
use crate::harness::{Server, config_file, listener, sandport};

/// How long a refusal may take.
const PROMPT: Duration = Duration::from_secs(10);

/// A few bytes through a fresh connection to the echo `svc`, checked.
fn serves(server: &Server) {
    let mut client = server.connect("svc");
    client.write(b"still the echo\n");
    assert_eq!(client.line(), "still the echo");
}

#[test]
fn check_and_compile_refuse_what_is_not_a_regular_file() {
    let (_dir, pipe) = fifo();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("out.cwasm");
    for target in ["/dev/zero", text(&pipe)] {
        let ran = run_bounded(sandport().args(["check", target]), PROMPT);
        assert_refused(ran, &format!("sandport check {target}"), &[target]);
        let ran = run_bounded(sandport().args(["compile", target, "-o"]).arg(&out), PROMPT);
        assert_refused(ran, &format!("sandport compile {target}"), &[target]);
        assert!(!out.exists(), "nothing written for {target}");
    }
}

#[test]
fn serve_refuses_a_config_that_is_not_a_regular_file() {
    let (_dir, pipe) = fifo();
    for config in ["/dev/zero", text(&pipe)] {
        let ran = run_bounded(sandport().args(["serve", "--config", config]), PROMPT);
        assert_refused(ran, &format!("serve --config {config}"), &[config]);
    }
}

#[test]
fn start_up_refuses_a_plugin_that_is_not_a_regular_file() {
    let (_dir, pipe) = fifo();
    for plugin in ["/dev/zero", text(&pipe)] {
        let (_config_dir, config) = config_file(&listener("svc", plugin, ""));
        let ran = run_bounded(sandport().arg("serve").arg("--config").arg(&config), PROMPT);
        assert_refused(ran, &format!("a listener on {plugin}"), &["svc", plugin]);
        let ran = run_bounded(sandport().args(["serve", "--listen", "127.0.0.1:0", "--plugin", plugin]), PROMPT);
        assert_refused(ran, &format!("--plugin {plugin}"), &[plugin]);
    }
}

/// Rewrite the server's config to `config` and send SIGHUP; wait (at most [`PROMPT`])
/// for the reload to be done. Fails if it takes longer or the server grows past the
/// bound.
fn reload_within(server: &Server, guard: &MemoryGuard, config: &str) {
    let before = server.log().matches("config reloaded").count();
    std::fs::write(server.config_path(), format!("shutdown-grace-ms = 0\n{config}")).unwrap();
    server.signal(Signal::SIGHUP);
    let started = Instant::now();
    while server.log().matches("config reloaded").count() == before {
        assert!(!guard.killed(), "the reload read without end (killed):\n{}", server.log());
        assert!(started.elapsed() < PROMPT, "the reload did not end within {PROMPT:?}:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_with_a_plugin_that_is_not_a_regular_file_changes_nothing() {
    let (_dir, pipe) = fifo();
    let server = Server::start(&listener("svc", ECHO, ""));
    let guard = MemoryGuard::watch(&server);
    for (n, plugin) in ["/dev/zero", text(&pipe)].into_iter().enumerate() {
        reload_within(&server, &guard, &listener("svc", plugin, ""));
        server.wait_for_count("new version refused", n + 1);
        let line = server.wait_for_log(&["new version refused", plugin]);
        assert!(line.contains("listener=svc"), "{line}");
        serves(&server);
    }
    assert!(!server.log().contains("took over"), "{}", server.log());
}

#[test]
fn the_watcher_passes_over_a_fifo_in_place_of_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("svc.wasm");
    std::fs::copy(ECHO, &plugin).unwrap();
    let server = Server::start(&listener("svc", text(&plugin), "watch = true\n"));
    let guard = MemoryGuard::watch(&server);

    // A FIFO renamed over the plugin: nothing to load, nothing to wait for.
    let (_fifo_dir, pipe) = fifo();
    std::fs::rename(&pipe, &plugin).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    serves(&server);
    // The watcher is not stuck on it: a real new version that follows takes over.
    replace(&plugin, FIXTURE_PROBE);
    let started = Instant::now();
    while !server.log().contains("version 2 took over") {
        assert!(!guard.killed(), "the watcher read without end (killed)");
        assert!(started.elapsed() < Duration::from_secs(15), "no swap after the FIFO:\n{}", server.log());
        server.assert_alive("the swap after the FIFO");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The probe answers `echo X` with `X`; the echo would send the line back whole.
    let mut client = server.connect("svc");
    assert_eq!(client.ask("echo hi"), "hi", "new connections get the version after the FIFO");
}

/// Put `source`'s bytes at `path` by write-and-rename, as an editor does.
fn replace(path: &Path, source: &str) {
    let fresh = path.with_extension("new");
    std::fs::copy(source, &fresh).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}
