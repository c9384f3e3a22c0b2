//! Buffers belong to their worker's pool while they are empty: an idle connection holds
//! none, and the same storage passes from one connection to the next as bytes come and
//! go. What that must never change: each connection gets its own bytes, all of them,
//! whether its buffers were just handed over by another connection, held bytes while
//! others churned, or sat empty through a long silence.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use crate::harness::{Client, Server, listener, plugins};

/// A reply of http-hello to [`KEEP_ALIVE`].
const REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello from sandport\n";

/// A request that keeps the connection open.
const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";

/// The bytes connection `conn` sends in `round`: its own pattern, so that a byte of
/// another connection (or of an earlier round) in its echo shows.
fn payload(conn: usize, round: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((k / 7) as u8) ^ (conn as u8).wrapping_mul(37) ^ (round as u8).wrapping_mul(101)).collect()
}

/// Every client floods its own payload at once (a thread writes while the test reads),
/// and gets exactly that payload back.
fn flood_all(clients: &[Client], round: usize, len: usize) {
    thread::scope(|s| {
        for (conn, client) in clients.iter().enumerate() {
            s.spawn(move || {
                let sent = payload(conn, round, len);
                let mut writer = client.stream().try_clone().unwrap();
                let sending = thread::spawn({
                    let sent = sent.clone();
                    move || writer.write_all(&sent).unwrap()
                });
                let mut back = vec![0u8; len];
                client.stream().try_clone().unwrap().read_exact(&mut back).unwrap();
                sending.join().unwrap();
                assert!(back == sent, "connection {conn}, round {round}: the echo differs from what it sent");
            });
        }
    });
}

#[test]
fn floods_across_many_connections_before_and_after_a_silence_lose_nothing() {
    // Small buffers, so that receive buffers hold bytes while send buffers are full,
    // and storage is taken and given back thousands of times, by every connection.
    const CONNS: usize = 48;
    const EACH: usize = 1 << 20;
    let limits = "[listener.limits]\nrecv-buffer = \"64 KiB\"\nsend-buffer = \"64 KiB\"";
    let server = Server::start(&listener("echo", plugins::ECHO, limits));
    let mut clients: Vec<Client> = (0..CONNS).map(|_| server.connect("echo")).collect();
    flood_all(&clients, 0, EACH);
    // Every buffer drained, every connection silent: nothing arrives on any of them.
    for client in &mut clients[..4] {
        assert!(client.quiet_for(Duration::from_millis(300)), "an idle connection was sent something");
    }
    thread::sleep(Duration::from_secs(1));
    flood_all(&clients, 1, EACH);
    // And a single byte each, taken and given back one connection after another.
    for (conn, client) in clients.iter_mut().enumerate() {
        client.write(&[conn as u8]);
        assert_eq!(client.bytes(1), [conn as u8]);
    }
}

#[test]
fn a_partial_request_keeps_its_bytes_while_other_connections_churn() {
    const WAITING: usize = 32;
    const BUSY: usize = 16;
    const REQUESTS: usize = 50;
    let server = Server::start(&listener("http", plugins::HTTP_HELLO, ""));
    let (head, tail) = KEEP_ALIVE.split_at(KEEP_ALIVE.len() / 2);
    let mut waiting: Vec<Client> = (0..WAITING).map(|_| server.connect("http")).collect();
    for client in &mut waiting {
        client.write(head);
    }
    // Others fill and drain their buffers many times while the halves wait in theirs.
    thread::scope(|s| {
        for _ in 0..BUSY {
            s.spawn(|| {
                let mut client = server.connect("http");
                for _ in 0..REQUESTS {
                    client.write(KEEP_ALIVE);
                    assert_eq!(client.bytes(REPLY.len()), REPLY);
                }
            });
        }
    });
    for client in &mut waiting {
        assert!(client.quiet_for(Duration::from_millis(10)), "half a request was answered");
        client.write(tail);
        assert_eq!(client.bytes(REPLY.len()), REPLY);
    }
}
