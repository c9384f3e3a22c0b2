//! Swapping plugins on a live server, mostly by SIGHUP (a re-read config file): new
//! connections get the new version, open ones finish on theirs or drain, a bad
//! version never takes over, a faulting one is rolled back, listeners come and go,
//! nothing leaks, and a load that checks every byte notices none of it. Also the
//! shutdown grace.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandport_test_artifacts::{
    CHAT, ECHO, FIXTURE_BURN, FIXTURE_CHAT_NEXT as CHAT_NEXT, FIXTURE_MIGRATE_FAULTS, FIXTURE_PROBE,
    FIXTURE_WRONG_WORLD, HTTP_HELLO,
};

use crate::admin::{Admin, admin_table};
use crate::harness::{Client, PATIENCE, Server, listener, totals};
use crate::load::{Kind, Load};
use crate::neighbour::conn_id;

/// One keep-alive HTTP request on `client`; the status line.
fn http_get(client: &mut Client) -> String {
    client.write(b"GET / HTTP/1.1\r\nHost: sandport\r\n\r\n");
    let status = client.line();
    while client.line() != "\r" {}
    client.bytes("hello from sandport\n".len());
    status
}

/// `n` bytes through an echo connection, checked.
pub(crate) fn echoes(client: &mut Client, n: usize) {
    let sent: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    client.write(&sent);
    assert_eq!(client.bytes(n), sent, "the echo changed the bytes");
}

#[test]
fn new_connections_get_the_new_version_and_open_ones_finish_on_theirs() {
    let server = Server::start(&format!("workers = 2\n{}", listener("svc", ECHO, "")));
    let mut old = server.connect("svc");
    echoes(&mut old, 1000);

    server.reload(&format!("workers = 2\n{}", listener("svc", HTTP_HELLO, "")));
    let log = server.wait_for_log(&["version 2 took over"]);
    assert!(log.contains("draining=1"), "the open echo connection stays on version 1:\n{log}");

    let mut new = server.connect("svc");
    assert_eq!(http_get(&mut new), "HTTP/1.1 200 OK\r", "a new connection gets version 2");
    echoes(&mut old, 5000);
    drop(old);
    assert_eq!(http_get(&mut new), "HTTP/1.1 200 OK\r");
    let (status, log) = server.terminate();
    assert!(status.success());
    let svc = totals(&log, "svc");
    assert!(svc.contains("faults=0") && svc.contains("drained=0"), "{svc}");
}

#[test]
fn a_bad_version_is_refused_and_the_old_one_goes_on() {
    let echo = listener("svc", ECHO, "");
    let server = Server::start(&echo);
    let mut client = server.connect("svc");
    echoes(&mut client, 100);

    server.reload(&listener("svc", FIXTURE_WRONG_WORLD, ""));
    let log = server.wait_for_log(&["new version refused"]);
    assert!(log.contains("does not implement the sandport:handler/plugin world"), "{log}");

    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"not a component at all").unwrap();
    server.reload(&listener("svc", garbage.path().to_str().unwrap(), ""));
    server.wait_for_count("new version refused", 2);
    assert!(server.log().contains("not a WebAssembly component"), "{}", server.log());

    // Links fine, then burns far past its CPU budget on the pre-flight's message.
    let burner = listener(
        "svc",
        FIXTURE_BURN,
        "[listener.limits]\nevent-timeout-ms = 20\n[listener.config]\nburn-iterations = 100000000000\n",
    );
    server.reload(&burner);
    server.wait_for_count("new version refused", 3);
    let log = server.log();
    assert!(log.contains("pre-flight") && log.contains("event-timeout-ms"), "{log}");
    assert!(!log.contains("took over"), "no bad version took over:\n{log}");

    echoes(&mut client, 1000);
    let mut fresh = server.connect("svc");
    echoes(&mut fresh, 1000);
}

#[test]
fn a_version_that_faults_too_often_is_rolled_back() {
    let rules = "rollback-faults = 3\nrollback-window-ms = 60000\n";
    let server = Server::start(&listener("svc", ECHO, rules));
    server.reload(&listener("svc", FIXTURE_PROBE, rules));
    server.wait_for_log(&["version 2 took over"]);
    for n in 0..4 {
        let mut client = server.connect("svc");
        client.send_line("trap");
        let _ = client.until_end();
        if n < 3 {
            assert!(!server.log().contains("rolling back"), "rolled back after {} faults", n + 1);
        }
    }
    server.wait_for_log(&["version 3 took over", "route=AutoRollback"]);
    let log = server.log();
    assert!(log.contains("version 2 faulted 4 times") && log.contains("rolling back"), "{log}");
    let mut client = server.connect("svc");
    echoes(&mut client, 2000);
}

#[test]
fn connections_left_on_an_old_version_are_closed_after_the_drain_timeout() {
    let server = Server::start(&listener("svc", ECHO, "drain-timeout-ms = 300\n"));
    let mut old = server.connect("svc");
    echoes(&mut old, 10);
    server.reload(&listener("svc", HTTP_HELLO, "drain-timeout-ms = 300\n"));
    server.wait_for_log(&["version 2 took over"]);
    assert!(old.until_eof().is_empty(), "closed cleanly, with nothing more sent");
    server.wait_for_log(&["drain-timeout-ms passed"]);
    let (_, log) = server.terminate();
    assert!(totals(&log, "svc").contains("drained=1"), "{}", totals(&log, "svc"));
}

#[test]
fn a_reload_adds_and_removes_listeners() {
    let server = Server::start(&format!("workers = 2\n{}", listener("a", ECHO, "")));
    let mut on_a = server.connect("a");
    echoes(&mut on_a, 100);
    let b = crate::harness::free_address();
    let only_b = crate::harness::listener_at("b", &b.to_string(), HTTP_HELLO, "instance = \"per-worker\"\n");
    server.reload(&format!("workers = 2\n{only_b}"));
    server.wait_for_log(&["config reloaded", "added=1", "removed=1"]);
    let log = server.log();
    assert!(log.contains("listener added") && log.contains("stopped listening"), "{log}");

    let mut on_b = Client::connect(b);
    assert_eq!(http_get(&mut on_b), "HTTP/1.1 200 OK\r");
    let refused = TcpStream::connect_timeout(&server.addr("a"), PATIENCE);
    assert!(refused.is_err(), "a no longer listens");
    // The connection a had goes on until it closes.
    echoes(&mut on_a, 3000);
}

/// Every route, 20 swaps each in a row, under a load of echo, HTTP and chat clients
/// that check every byte and keep reconnecting: SIGHUP (all three listeners), the admin
/// API (the chat alternating with `chat-next`, migrating its members each time; the
/// HTTP server), and the watched echo file replaced in place (echo alternating with
/// another echoing component).
#[test]
fn swaps_by_every_route_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let echo_file = dir.path().join("echo.wasm");
    std::fs::copy(ECHO, &echo_file).unwrap();
    let config = |generation: usize| {
        let settings = format!("[listener.config]\ngeneration = {generation}\n");
        let echo = listener(
            "echo",
            echo_file.to_str().unwrap(),
            &format!("instance = \"per-worker\"\nwatch = true\n{settings}"),
        );
        let http = listener("http", HTTP_HELLO, &format!("instance = \"per-worker\"\n{settings}"));
        let chat = listener("chat", CHAT, &settings);
        format!("workers = 2\n{}{echo}{http}{chat}", admin_table("127.0.0.1:0", None))
    };
    let server = Server::start(&config(0));
    let admin = Admin::of(&server, None);
    let targets =
        [(Kind::Echo, server.addr("echo")), (Kind::Http, server.addr("http")), (Kind::Chat, server.addr("chat"))];
    let load = Load::start(&targets, 3);
    load.wait_for(100);

    for generation in 1..=20 {
        server.reload(&config(generation));
        load.wait_for(50);
    }
    for n in 0..20 {
        for (listener, plugin) in [("chat", if n % 2 == 0 { CHAT_NEXT } else { CHAT }), ("http", HTTP_HELLO)] {
            let body = format!("{{\"path\": \"{plugin}\"}}");
            let answer = admin.put(&format!("/listeners/{listener}/plugin"), "application/json", body.as_bytes());
            assert_eq!(answer.status, 200, "{listener}: {}", answer.body);
        }
        load.wait_for(50);
    }
    for n in 0..20 {
        let before = server.log().matches("plugin file changed: version").count();
        std::fs::copy(if n % 2 == 0 { FIXTURE_MIGRATE_FAULTS } else { ECHO }, &echo_file).unwrap();
        server.wait_for_count("plugin file changed: version", before + 1);
        load.wait_for(50);
    }

    let outcome = load.stop();
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert!(outcome.connections > 100, "clients kept connecting: {outcome:?}");
    assert!(outcome.exchanges > 3000, "every swap went by under load: {outcome:?}");
    let log = server.log();
    assert_eq!(
        log.matches("sandport::control: version 41 took over").count(),
        3,
        "each listener took 40 swaps:\n{log}"
    );
    assert!(!log.contains("new version refused"), "{log}");
    let migrated = log.lines().filter(|l| l.contains("took over listener=chat") && !l.contains("migrated=0")).count();
    assert!(migrated >= 30, "the chat's members moved with (nearly) every swap: {migrated} of 40");
    let (_, log) = server.terminate();
    for name in ["echo", "http", "chat"] {
        assert!(totals(&log, name).contains("faults=0"), "{}", totals(&log, name));
    }
}

/// How much the server's memory may grow over 80 swaps once warm: 25 KiB a swap.
/// Measured here (2 cores, release): 24-40 KiB over the 80 swaps, next to nothing; an
/// old version whose instance stayed behind would keep at least a 64 KiB page of its
/// memory and its host state, over 5 MiB in all.
const SWAPS_GROWTH: u64 = 2 << 20;

#[test]
fn repeated_swaps_leak_nothing() {
    let config = |plugin: &str, generation: usize| {
        // The first connection stays on version 1 throughout.
        let extra = format!("drain-timeout-ms = 600000\n[listener.config]\ngeneration = {generation}\n");
        listener("svc", plugin, &extra)
    };
    let server = Server::start(&config(ECHO, 0));
    let mut client = server.connect("svc");
    let mut measure = |server: &Server, from: usize, to: usize| {
        let mut visitors = Vec::new();
        for generation in from..to {
            let plugin = if generation % 2 == 0 { ECHO } else { FIXTURE_PROBE };
            server.reload(&config(plugin, generation));
            // A connection on every version, so each has instances to drop.
            let mut visitor = server.connect("svc");
            visitors.push(conn_id(server, "svc", visitor.stream()));
            visitor.write(b"x\n");
            let _ = visitor.stream().set_read_timeout(Some(Duration::from_millis(50)));
            let _ = visitor.stream().read(&mut [0; 64]);
        }
        // Every old version is gone once its last connection is: wait for each close,
        // then for a round trip on the same worker, which comes after that turn.
        for id in &visitors {
            server.wait_for_log(&["sandport::reactor::service: closed", "listener=svc ", &format!("conn={id} ")]);
        }
        echoes(&mut client, 100);
        (server.rss(), descriptors(server.pid()))
    };
    let (rss_warm, fds_warm) = measure(&server, 1, 21);
    let (rss_after, fds_after) = measure(&server, 21, 101);
    assert_eq!(fds_after, fds_warm, "open descriptors after 20 swaps and after 100");
    let grown = rss_after.saturating_sub(rss_warm);
    println!("RSS grew {} KiB from swap 20 to swap 100", grown >> 10);
    assert!(grown < SWAPS_GROWTH, "RSS grew {} KiB from swap 20 to swap 100", grown >> 10);
    assert!(server.log().contains("version 101 took over"));
}

#[test]
fn sigterm_lets_open_connections_finish_within_the_grace() {
    let server = Server::start(&format!("shutdown-grace-ms = 30000\n{}", listener("svc", ECHO, "")));
    let mut busy = server.connect("svc");
    echoes(&mut busy, 100);
    let address = server.addr("svc");
    server.signal(Signal::SIGTERM);
    server.wait_for_log(&["open connections may finish within the grace"]);
    let started = Instant::now();
    assert!(TcpStream::connect_timeout(&address, PATIENCE).is_err(), "no new connections once stopping");
    echoes(&mut busy, 5000);
    busy.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(busy.until_eof().is_empty());
    drop(busy);
    server.wait_for_exit();
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(started.elapsed() < Duration::from_secs(30), "it stopped when the last connection closed");
}

/// A connection still open when the grace runs out is closed then: not before the
/// grace the config gives, and not much after.
#[test]
fn the_grace_ends_with_every_connection_closed() {
    const GRACE: Duration = Duration::from_millis(1000);
    // Closing and the client's read take milliseconds; the rest is for a busy machine.
    const SLACK: Duration = Duration::from_millis(1500);
    let grace = format!("shutdown-grace-ms = {}\n", GRACE.as_millis());
    let server = Server::start(&(grace + &listener("svc", ECHO, "")));
    let mut idle = server.connect("svc");
    echoes(&mut idle, 10);
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    assert!(idle.until_eof().is_empty(), "closed cleanly when the grace ran out");
    let closed = signalled.elapsed();
    // The server starts counting after the signal arrives, so never before `GRACE`.
    assert!(closed >= GRACE, "closed {closed:?} after SIGTERM, before the grace of {GRACE:?}");
    assert!(closed < GRACE + SLACK, "closed {closed:?} after SIGTERM, long after the grace of {GRACE:?}");
    server.wait_for_exit();
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// Descriptors the process `pid` has open.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn a_reload_with_a_broken_file_changes_nothing() {
    let server = Server::start(&listener("svc", ECHO, ""));
    std::fs::write(server.config_path(), "[[listener]\nname = ").unwrap();
    server.signal(Signal::SIGHUP);
    let log = server.wait_for_log(&["reload refused, the running config stays"]);
    assert!(log.contains("sandport.toml:1:"), "the error names the file and line:\n{log}");
    let mut client = server.connect("svc");
    echoes(&mut client, 100);
}
