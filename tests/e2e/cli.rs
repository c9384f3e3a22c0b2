//! The command line: `check`, the `serve` shorthand, clear one-line errors for every
//! kind of bad input, and a clean stop on SIGTERM; and the harness's own promise that
//! a server which dies, or ends otherwise than expected, fails its test.

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
    assert!(stdout.contains("ok, implements sandport:handler/plugin"), "{stdout}");
    assert!(stdout.contains("sandport:handler/host@0.1.0"), "{stdout}");
    assert!(stdout.contains("sandport:handler/handler@0.1.0"), "{stdout}");
}

#[test]
fn check_rejects_bad_components_with_reasons() {
    let wrong = fails(&["check", plugins::FIXTURE_WRONG_WORLD]);
    assert!(
        wrong.contains("fixture_wrong_world.wasm: does not implement the sandport:handler/plugin world"),
        "{wrong}"
    );

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

#[test]
fn filesystem_and_sockets_are_not_granted() {
    let error = fails(&["check", plugins::FIXTURE_WANTS_WASI]);
    assert!(error.contains("fixture_wants_wasi.wasm: does not implement"), "{error}");
    assert!(error.contains("wasi:filesystem") || error.contains("wasi:sockets"), "names the refused import: {error}");
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

    let (_dir, path) = config_file(&listener("wrong", plugins::FIXTURE_WRONG_WORLD, ""));
    let error = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(error.contains("does not implement the sandport:handler/plugin world"), "{error}");
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
