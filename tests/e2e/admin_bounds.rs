//! What a client may cost the admin API: a bounded number of connections, each closed
//! when its request headers do not come in time, so clients that connect and say
//! nothing cannot keep the health checks (or the tenants' descriptors) for good.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::admin::{Admin, admin_table};
use crate::bounded::{admin_address, request};
use crate::harness::{PATIENCE, Server, listener, plugins};

/// `sandport::admin::connections::MAX_CONNECTIONS`.
const MAX_CONNECTIONS: usize = 64;

/// `sandport::admin::connections::HEADER_TIMEOUT`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn clients_that_never_finish_their_headers_are_closed_and_the_health_check_gets_through() {
    let server = Server::start(&(admin_table("127.0.0.1:0", None) + &listener("echo", plugins::ECHO, "")));
    let address = admin_address(&server);
    // Every slot taken by a client that starts a request and stops mid-header.
    let mut stalled: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut client = TcpStream::connect(address).unwrap();
            client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            client.set_read_timeout(Some(PATIENCE)).unwrap();
            client
        })
        .collect();
    let started = Instant::now();
    let answer = request(address, "GET /healthz HTTP/1.1", b"", PATIENCE);
    let answer = answer.expect("the health check is answered once a slot frees up");
    let waited = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(waited < HEADER_TIMEOUT + PATIENCE / 2, "the health check waited {waited:?}");
    // The stalled ones were closed without an answer (or with a timeout's 408), not kept.
    for client in &mut stalled {
        let mut rest = String::new();
        let _ = client.read_to_string(&mut rest);
        assert!(rest.is_empty() || rest.starts_with("HTTP/1.1 408"), "a stalled client got: {rest}");
    }
    assert!(started.elapsed() < HEADER_TIMEOUT + PATIENCE, "the stalled clients were held too long");
    server.assert_alive("after the stalled admin clients");
}

#[test]
fn a_swap_body_over_its_cap_is_refused_before_it_is_read() {
    let server = Server::start(&(admin_table("127.0.0.1:0", None) + &listener("echo", plugins::ECHO, "")));
    let admin = Admin::of(&server, None);
    // A path body has a small cap of its own: 64 KiB.
    let huge = format!("{{\"path\": \"{}\"}}", "x".repeat(128 << 10));
    let answer = admin.put("/listeners/echo/plugin", "application/json", huge.as_bytes());
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body.contains("over"), "{}", answer.body);
    let listeners = admin.put("/listeners/nobody/plugin", "application/json", b"{\"path\": \"/nonexistent\"}");
    assert_eq!(listeners.status, 404, "{}", listeners.body);
    server.assert_alive("after the oversized body");
}
