//! The command line: `check`, the `serve` shorthand, clear one-line errors for every
//! kind of bad input (and for a component that does not fit the world, one line per
//! import or export at fault, then the fixes, the same from `check` and `serve`), and a
//! clean stop on SIGTERM; and the harness's own promise that a server which dies, or
//! ends otherwise than expected, fails its test.

use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Ending, Server, config_file, listener, listener_at, plugins, run_sandport};

/// Run `sandport ARGS`, expect failure, and return the one `error:` line.
fn fails(args: &[&str]) -> String {
    let (status, _, stderr) = run_sandport(args);
    assert!(!status.success(), "expected failure: {args:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{stderr}");
    errors[0].to_owned()
}

fn temp_file(bytes: &[u8]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.wasm");
    std::fs::write(&path, bytes).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[test]
fn check_lists_imports_and_exports() {
    let (status, stdout, stderr) = run_sandport(&["check", plugins::ECHO]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("ok, implements sandport:handler/plugin@0.4.0\n"), "{stdout}");
    assert!(stdout.contains("sandport:handler/host@0.4.0"), "{stdout}");
    assert!(stdout.contains("sandport:handler/handler@0.4.0"), "{stdout}");
}

#[test]
fn check_rejects_bad_components_with_reasons() {
    let (_dir, corrupt) = temp_file(b"\0asm\x0d\0\x01\0 this is not a component body");
    let error = fails(&["check", &corrupt]);
    assert!(error.contains(&format!("{corrupt}: not a WebAssembly component")), "{error}");

    let (_dir, core) = temp_file(b"\0asm\x01\0\0\0");
    let error = fails(&["check", &core]);
    assert!(error.contains("core WebAssembly module"), "{error}");

    let (_dir, text) = temp_file(b"#!/bin/sh\necho hi\n");
    let error = fails(&["check", &text]);
    assert!(error.contains("magic bytes"), "{error}");

    let error = fails(&["check", "/nonexistent/plugin.wasm"]);
    assert!(error.contains("/nonexistent/plugin.wasm: cannot read"), "{error}");
}

/// Run `sandport check PLUGIN`, then `serve` a listener of it; expect both to fail
/// with the same report (the `error:` line and the lines under it), and return it
/// without the `error: ` line. Fails unless every line under it is a problem or a fix.
fn misfit(plugin: &str) -> String {
    let report = |args: &[&str]| {
        let (status, _, stderr) = run_sandport(args);
        assert!(!status.success(), "expected failure: {args:?}\n{stderr}");
        assert_eq!(stderr.matches("error: ").count(), 1, "exactly one error:\n{stderr}");
        stderr[stderr.find("error: ").unwrap()..].trim_end().to_owned()
    };
    let checked = report(&["check", plugin]);
    let (_dir, config) = config_file(&listener("misfit", plugin, ""));
    let served = report(&["serve", "--config", config.to_str().unwrap()]);
    let header = format!("error: {plugin}: does not implement the sandport:handler/plugin world:\n");
    assert_eq!(served.replacen("error: listener `misfit`: ", "error: ", 1), checked, "serve and check agree");
    let report = checked.strip_prefix(&header).unwrap_or_else(|| panic!("starts with {header:?}:\n{checked}"));
    assert!(report.lines().all(|line| line.starts_with("  - ") || line.starts_with("  fix: ")), "{report}");
    assert!(report.starts_with("  - "), "{report}");
    report.to_owned()
}

/// The problem lines of a report.
fn problems(report: &str) -> Vec<&str> {
    report.lines().filter_map(|line| line.strip_prefix("  - ")).collect()
}

/// The fix lines of a report.
fn fixes(report: &str) -> Vec<&str> {
    report.lines().filter_map(|line| line.strip_prefix("  fix: ")).collect()
}

/// The fix for imports sandport does not provide.
const IMPORTS_FIX: &str = "a sandport plugin may import only sandport:handler/host (with its types) and WASI cli, \
                           clocks, random and io (filesystem and sockets are linked but grant nothing): remove what \
                           uses the other imports, or build with the toolchain option that leaves them out";

/// The fix for a plugin built against another `handler.wit`.
const REGENERATE_FIX: &str = "regenerate the plugin's bindings from this sandport's wit/handler.wit (the file \
                              `sandport new` copies into every scaffold)";

/// The fix for a component built for another world.
const WORLD_FIX: &str = "build for world `plugin` (or `migrating-plugin`) of this sandport's wit/handler.wit (the \
                         bindings generator's `-w plugin` option, or `world = \"plugin\"`)";

#[test]
fn check_names_an_import_sandport_does_not_provide() {
    let report = misfit(plugins::FIXTURE_FOREIGN_IMPORT);
    assert_eq!(problems(&report), ["imports `acme:kv/store@0.1.0`, which sandport does not provide"], "{report}");
    // Without the componentize-js hint, which is for `wasi:http` imports.
    assert_eq!(fixes(&report), [IMPORTS_FIX], "{report}");
}

#[test]
fn check_names_each_function_of_another_handler_wit() {
    let report = misfit(plugins::FIXTURE_OTHER_WIT);
    assert_eq!(
        problems(&report),
        [
            "imports `host.send` with another type than this host's",
            "imports `host.frobnicate`, which this host's `sandport:handler/host@0.2.0` does not have",
            "exports `handler.handle` with another type than this host's",
        ],
        "{report}"
    );
    assert_eq!(fixes(&report), [REGENERATE_FIX, WORLD_FIX], "{report}");
}

#[test]
fn check_says_what_a_component_of_another_world_exports() {
    let report = misfit(plugins::FIXTURE_WRONG_WORLD);
    assert_eq!(
        problems(&report),
        [
            "does not export `sandport:handler/handler@0.4.0` or `@0.3.0` or `@0.2.0` or `@0.1.0` (it exports function `greet`)"
        ],
        "{report}"
    );
    assert_eq!(fixes(&report), [WORLD_FIX], "{report}");
}

#[test]
fn check_names_the_package_version_the_host_speaks() {
    // The echo with its sandport names moved to 0.5.0: the same length, so still a
    // valid component, built (as far as the host can tell) against a WIT to come.
    let mut bytes = std::fs::read(plugins::ECHO).unwrap();
    let mut renamed = 0;
    for interface in ["types", "host", "handler"] {
        let old = format!("sandport:handler/{interface}@0.4.0");
        let new = format!("sandport:handler/{interface}@0.5.0");
        while let Some(at) = bytes.windows(old.len()).position(|window| window == old.as_bytes()) {
            bytes[at..at + old.len()].copy_from_slice(new.as_bytes());
            renamed += 1;
        }
    }
    assert!(renamed >= 3, "renamed {renamed}");
    let (_dir, next) = temp_file(&bytes);

    let report = misfit(&next);
    let speaks = "built for sandport:handler@0.5.0, but this host speaks sandport:handler@0.4.0 (and loads 0.3.0 or 0.2.0 or 0.1.0)";
    assert_eq!(
        problems(&report),
        [
            format!("imports `sandport:handler/host@0.5.0`: {speaks}"),
            format!("exports `sandport:handler/handler@0.5.0`: {speaks}")
        ],
        "{report}"
    );
    assert_eq!(fixes(&report), [REGENERATE_FIX], "{report}");
}

#[test]
fn serve_rejects_malformed_config() {
    let (_dir, path) = config_file("[[listener]]\nname = \"a\"\nadress = \"127.0.0.1:0\"\n");
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains(&format!("{}:3:1: unknown field `adress`", path.display())), "{error}");

    let (_dir, path) = config_file("[[listener]]\nname = \"a\"\naddress = \"nowhere\"\nplugin = \"x.wasm\"\n");
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains("address `nowhere` is not IP:PORT"), "{error}");

    let error = fails(&["serve", "--config", "/nonexistent/sandport.toml"]);
    assert!(error.contains("/nonexistent/sandport.toml: cannot read"), "{error}");
}

#[test]
fn serve_rejects_unusable_plugins() {
    let (_dir, path) = config_file(&listener("broken", "missing.wasm", ""));
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains("listener `broken`") && error.contains("missing.wasm: cannot read"), "{error}");

    let (_dir, corrupt) = temp_file(&[0xde, 0xad, 0xbe, 0xef]);
    let (_dir2, path) = config_file(&(listener("echo", plugins::ECHO, "") + &listener("broken", &corrupt, "")));
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains("listener `broken`") && error.contains("not a WebAssembly component"), "{error}");
}

#[test]
fn serve_reports_a_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (_dir, path) = config_file(&listener_at("echo", &address, plugins::ECHO, ""));
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains(&format!("listener `echo`: cannot listen on {address}")), "{error}");
    assert!(error.contains("in use"), "{error}");
}

#[test]
fn serve_shorthand_pairs() {
    let server = Server::start_args(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugin",
            plugins::ECHO,
            "--listen",
            "127.0.0.1:0",
            "--plugin",
            plugins::CHAT,
        ],
        2,
    );
    let mut echo = server.connect("echo");
    echo.write(b"shorthand");
    assert_eq!(echo.bytes(9), b"shorthand");
    assert!(server.connect("chat").line().starts_with("* welcome user"));

    let error = fails(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(error.contains("1 --listen but 0 --plugin"), "{error}");
}

#[test]
fn sigterm_closes_every_connection_and_exits_zero() {
    let server = Server::start(&(listener("probe", plugins::FIXTURE_PROBE, "") + &listener("echo", plugins::ECHO, "")));
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    let mut e = server.connect("echo");
    let a_id = a.ask("id").strip_prefix("id ").unwrap().to_owned();
    let b_id = b.ask("id").strip_prefix("id ").unwrap().to_owned();
    e.write(b"hi");
    assert_eq!(e.bytes(2), b"hi");

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    for id in [a_id, b_id] {
        assert!(log.contains(&format!("closed {id}")), "CLOSE of {id} reached the guest:\n{log}");
    }
    assert!(log.contains("stopped") && log.contains("open=3"), "{log}");
    assert!(a.until_eof().is_empty() && b.until_eof().is_empty() && e.until_eof().is_empty());
}

/// The text of a caught panic.
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(text) => *text,
        Err(panic) => panic.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

#[test]
fn a_server_that_dies_fails_the_wait_at_once() {
    let mut server = Server::start(&listener("echo", plugins::ECHO, ""));
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGKILL).unwrap();
    server.expect_exit(Ending::Signal(Signal::SIGKILL as i32));
    let waited = catch_unwind(AssertUnwindSafe(|| server.wait_for_log(&["a line that never comes"])));
    let text = panic_text(waited.expect_err("the wait noticed nothing"));
    // At once, with the log: not the timeout's message.
    assert!(text.contains("sandport exited") && text.contains("signal: 9"), "{text}");
    assert!(text.contains("listening"), "the failure shows the log: {text}");
}

#[test]
fn a_server_that_ends_otherwise_than_expected_fails_its_test() {
    let mut server = Server::start(&listener("echo", plugins::ECHO, ""));
    server.expect_exit(Ending::Code(3));
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(server)));
    let text = panic_text(dropped.expect_err("an exit code 0 where 3 was expected went unnoticed"));
    assert!(text.contains("expected Code(3)") && text.contains("listener totals"), "{text}");
}
