//! The `tcp-proxy` plugin: each accepted connection is forwarded to the configured
//! upstream through an outbound `connect`, both ways, with backpressure on both
//! sides and half-closes passed through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{Client, Server, free_address, listener, listener_at, plugins, stalls_at};

/// A proxy listener forwarding to `upstream`, allowed to dial `allowed`.
fn proxy_listener(upstream: SocketAddr, allowed: SocketAddr, extra: &str) -> String {
    let extra = format!("allow-connect = [\"{allowed}\"]\n{extra}\n[listener.config]\nupstream = \"{upstream}\"");
    listener("proxy", plugins::TCP_PROXY, &extra)
}

/// A proxy in front of an echo listener of the same server.
fn proxied_echo(extra: &str) -> Server {
    let echo = free_address();
    Server::start(&(listener_at("echo", &echo.to_string(), plugins::ECHO, "") + &proxy_listener(echo, echo, extra)))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// Write `payload` from one thread while reading it back on this one.
fn round_trip(client: &mut Client, payload: &[u8]) {
    let mut writer = client.stream().try_clone().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || writer.write_all(payload).unwrap());
        assert!(client.bytes(payload.len()) == payload, "the echo came back changed");
    });
}

#[test]
fn forwards_8_mib_both_ways() {
    let server = proxied_echo("");
    let mut client = server.connect("proxy");
    round_trip(&mut client, &pattern(8 << 20));
    round_trip(&mut client, b"and a little more");
}

#[test]
fn a_half_close_passes_through_and_the_answer_still_arrives() {
    let server = proxied_echo("");
    let mut client = server.connect("proxy");
    let payload = pattern(3 << 20);
    client.write(&payload);
    client.shutdown_write();
    let back = client.until_eof();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
}

#[test]
fn per_connection_proxies_forward_too() {
    let server = proxied_echo("instance = \"per-connection\"");
    let mut clients: Vec<Client> = (0..20).map(|_| server.connect("proxy")).collect();
    for (n, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("client {n}").repeat(1000).as_bytes());
    }
}

/// Pushes `total` bytes into `stream` from another thread; reports progress.
fn push(stream: &TcpStream, total: usize, written: &AtomicUsize) {
    let mut stream = stream.try_clone().unwrap();
    stream.set_write_timeout(None).unwrap();
    let payload = pattern(total);
    for chunk in payload.chunks(64 * 1024) {
        if stream.write_all(chunk).is_err() {
            return;
        }
        written.fetch_add(chunk.len(), Ordering::SeqCst);
    }
}

fn read_all(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    stream.read_exact(&mut got).unwrap();
    got
}

const SMALL_BUFFERS: &str = "[listener.limits]\nrecv-buffer = \"64 KiB\"\nsend-buffer = \"64 KiB\"";
const TOTAL: usize = 64 << 20;

#[test]
fn a_slow_upstream_pauses_the_client() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let server = Server::start(&proxy_listener(address, address, SMALL_BUFFERS));
    let client = server.connect("proxy");
    let (mut far, _) = upstream.accept().unwrap();
    far.set_read_timeout(Some(crate::harness::PATIENCE)).unwrap();
    let rss_before = server.rss();
    let written = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| push(client.stream(), TOTAL, &written));
        let stuck = stalls_at(&written);
        assert!(stuck < TOTAL / 2, "the proxy kept reading a client whose upstream does not read ({stuck} bytes)");
        let grown = server.rss().saturating_sub(rss_before);
        assert!(grown < 16 << 20, "server memory grew by {grown} bytes");
        assert!(read_all(&mut far, TOTAL) == pattern(TOTAL), "the upstream got every byte in order");
    });
}

#[test]
fn a_slow_client_pauses_the_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let server = Server::start(&proxy_listener(address, address, SMALL_BUFFERS));
    let mut client = server.connect("proxy");
    let (far, _) = upstream.accept().unwrap();
    let written = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| push(&far, TOTAL, &written));
        let stuck = stalls_at(&written);
        assert!(stuck < TOTAL / 2, "the proxy kept reading an upstream whose client does not read ({stuck} bytes)");
        assert!(client.bytes(TOTAL) == pattern(TOTAL), "the client got every byte in order");
    });
}

#[test]
fn an_unreachable_upstream_closes_the_client() {
    let dead = free_address();
    let server = Server::start(&proxy_listener(dead, dead, ""));
    let mut client = server.connect("proxy");
    assert!(client.until_eof().is_empty());
    server.wait_for_log(&["listener=proxy", "failed"]);
}

#[test]
fn an_upstream_outside_allow_connect_closes_the_client() {
    let server = Server::start(&proxy_listener(free_address(), free_address(), ""));
    let mut client = server.connect("proxy");
    assert!(client.until_eof().is_empty());
    server.wait_for_log(&["listener=proxy", "not allowed"]);
}
