//! The admin API fed what it must refuse: bodies that are not JSON, of the wrong
//! shape or huge, a missing file, an endless file, a FIFO nobody writes and an upload
//! over the cap; and swaps racing each other and a SIGHUP. Each refusal comes
//! promptly, says why, leaves the old version serving and never stops `/healthz`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandport_test_artifacts::{ECHO, FIXTURE_MIGRATE_FAULTS};

use crate::admin::admin_table;
use crate::bounded::{MemoryGuard, Reply, admin_address, fifo, healthy, put_json, put_path, read_reply, request, text};
use crate::harness::{Server, listener};

/// How long a refusal may take: reading a small file and answering no, on a busy
/// machine.
const PROMPT: Duration = Duration::from_secs(10);

/// The admin API's upload cap (`MAX_UPLOAD` in `host/src/admin.rs`).
const MAX_UPLOAD: usize = 256 << 20;

/// A server with an admin API and an echo listener `svc`.
fn echo_with_admin() -> (Server, SocketAddr) {
    let server = Server::start(&(admin_table("127.0.0.1:0", None) + &listener("svc", ECHO, "")));
    let admin = admin_address(&server);
    (server, admin)
}

/// A few bytes through a fresh echo connection, checked.
fn serves(server: &Server) {
    let mut client = server.connect("svc");
    client.write(b"still the echo\n");
    assert_eq!(client.line(), "still the echo");
}

/// A refusal: answered within [`PROMPT`], a 4xx status, a reason in the body.
fn refused(what: &str, reply: Option<Reply>, status: u16) -> Reply {
    let reply = reply.unwrap_or_else(|| panic!("{what}: no answer within {PROMPT:?}"));
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert!(!reply.body.trim().is_empty(), "{what}: the refusal says why");
    reply
}

#[test]
fn bad_bodies_are_refused_and_the_old_version_serves() {
    let (server, admin) = echo_with_admin();
    let mut open = server.connect("svc");
    for (body, what) in
        [("not json at all", "not JSON"), ("{\"file\": 3}", "wrong key"), ("{\"path\": 3}", "a number for a path")]
    {
        refused(what, put_json(admin, "svc", body, PROMPT), 400);
        assert!(healthy(admin), "{what}: /healthz answers");
    }
    let head = "PUT /listeners/svc/plugin HTTP/1.1\r\nContent-Type: text/plain";
    refused("another content type", request(admin, head, b"x", PROMPT), 415);
    let head = "PUT /listeners/svc/plugin HTTP/1.1\r\nContent-Type: application/wasm";
    refused("an empty component", request(admin, head, b"", PROMPT), 400);
    let zeros = vec![0u8; 64 << 20];
    let reply = refused("64 MiB of zeros", request(admin, head, &zeros, PROMPT), 422);
    assert!(reply.body.contains("not a WebAssembly component"), "{}", reply.body);
    let long_path = format!("/{}", "a".repeat(32 << 20));
    let reply = refused("a 32 MiB path", put_path(admin, "svc", &long_path, PROMPT), 413);
    assert!(reply.body.contains("over 65536 bytes"), "a path body has a cap of its own: {}", reply.body);
    let reply = refused("a missing file", put_path(admin, "svc", "/nonexistent/plugin.wasm", PROMPT), 422);
    assert!(reply.body.contains("/nonexistent/plugin.wasm"), "the refusal names the file: {}", reply.body);
    refused("no such listener", put_path(admin, "nobody", ECHO, PROMPT), 404);

    assert!(healthy(admin));
    open.write(b"open connection\n");
    assert_eq!(open.line(), "open connection");
    serves(&server);
    assert!(!server.log().contains("took over"), "no refused body took over:\n{}", server.log());
}

/// Swap `svc` to `path`, which is not a regular file, while checking `/healthz`:
/// refused promptly (422, naming the file), health answering throughout, the old
/// version serving after.
fn refuses_a_special_file(path: &str) {
    let (server, admin) = echo_with_admin();
    let guard = MemoryGuard::watch(&server);
    let started = Instant::now();
    let swap = {
        let path = path.to_owned();
        std::thread::spawn(move || put_path(admin, "svc", &path, PROMPT))
    };
    while !swap.is_finished() && started.elapsed() < PROMPT {
        assert!(guard.killed() || healthy(admin), "/healthz stopped answering while the swap ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = swap.join().unwrap();
    assert!(!guard.killed(), "the server read {path} past {} bytes (killed)", crate::bounded::MEMORY_BOUND);
    let reply = refused(path, reply, 422);
    assert!(reply.body.contains(path), "the refusal names the file: {}", reply.body);
    assert!(healthy(admin));
    serves(&server);
}

#[test]
fn an_endless_file_is_refused_promptly() {
    refuses_a_special_file("/dev/zero");
}

#[test]
fn a_fifo_nobody_writes_is_refused_promptly() {
    let (_dir, path) = fifo();
    refuses_a_special_file(text(&path));
}

#[test]
fn an_upload_over_the_cap_is_refused() {
    let (server, admin) = echo_with_admin();
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let started = Instant::now();
    let head = format!(
        "PUT /listeners/svc/plugin HTTP/1.1\r\nHost: sandport\r\nContent-Type: application/wasm\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        MAX_UPLOAD + 1
    );
    stream.write_all(head.as_bytes()).unwrap();
    // Zeros streamed from one buffer: the body is never held whole on this side. The
    // server may refuse (and close) before it has all of it.
    let mut writer = stream.try_clone().unwrap();
    let streamer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut left = MAX_UPLOAD + 1;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let reply = read_reply(&mut stream, started, Duration::from_secs(30));
    let _ = stream.shutdown(std::net::Shutdown::Both);
    streamer.join().unwrap();
    let reply = reply.expect("an answer to the upload over the cap");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(healthy(admin));
    serves(&server);
}

#[test]
fn racing_swaps_and_a_sighup_are_numbered_in_order() {
    const SWAPS: usize = 6;
    let config = |generation: usize| {
        let extra = format!("instance = \"per-worker\"\n[listener.config]\ngeneration = {generation}\n");
        format!("workers = 2\n{}{}", admin_table("127.0.0.1:0", None), listener("svc", ECHO, &extra))
    };
    let server = Server::start(&config(0));
    let admin = admin_address(&server);
    let mut open = server.connect("svc");

    std::fs::write(server.config_path(), format!("shutdown-grace-ms = 0\n{}", config(1))).unwrap();
    let swaps: Vec<_> = (0..SWAPS)
        .map(|n| {
            let plugin = if n % 2 == 0 { ECHO } else { FIXTURE_MIGRATE_FAULTS };
            std::thread::spawn(move || put_path(admin, "svc", plugin, Duration::from_secs(60)))
        })
        .collect();
    server.signal(Signal::SIGHUP);
    let mut numbers: Vec<u64> = swaps
        .into_iter()
        .enumerate()
        .map(|(n, swap)| {
            let reply = swap.join().unwrap().unwrap_or_else(|| panic!("swap {n} got no answer"));
            assert_eq!(reply.status, 200, "swap {n}: {}", reply.body);
            let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            answer["serving"]["number"].as_u64().unwrap_or_else(|| panic!("{}", reply.body))
        })
        .collect();
    server.wait_for_log(&["config reloaded", "swapped=1"]);
    // A swap's answer can come before its log line has been read from the server.
    server.wait_for_count("took over listener=svc", SWAPS + 1);

    // Versions 2 to 2 + SWAPS, one each: the swaps' and the reload's.
    let log = server.log();
    let took_over: Vec<u64> = log
        .lines()
        .filter(|line| {
            line.contains("sandport::control:") && line.contains("took over") && line.contains("listener=svc")
        })
        .filter_map(|line| line.split_whitespace().find_map(|word| word.strip_prefix("version="))?.parse().ok())
        .collect();
    let expected: Vec<u64> = (2..=(SWAPS as u64 + 2)).collect();
    assert_eq!(took_over, expected, "versions take over in order, each once:\n{log}");
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), SWAPS, "every swap got its own version: {numbers:?}");
    assert!(numbers.iter().all(|n| expected.contains(n)), "{numbers:?}");

    // The listener ends on one of them and serves, the open connection too (it
    // stayed on version 1 or moved with a migrating pair).
    serves(&server);
    open.write(b"open\n");
    let mut echoed = open.line();
    while echoed.starts_with("* ") {
        echoed = open.line();
    }
    assert_eq!(echoed, "open");
}
