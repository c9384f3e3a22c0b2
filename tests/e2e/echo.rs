//! The echo plugin: payloads of every size come back intact, with partial reads and
//! writes on both sides, for many clients at once, over IPv4 and IPv6.

use std::io::{Read, Write};
use std::thread;

use crate::harness::{Client, Server, listener, listener_at, plugins};

/// A payload that shows misplaced bytes: position-dependent, not periodic in 256.
pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

/// Write `payload` in uneven chunks from one thread while reading it back in uneven
/// chunks from another; returns what came back.
pub(crate) fn round_trip(client: &Client, payload: &[u8]) -> Vec<u8> {
    let mut writer = client.stream().try_clone().unwrap();
    let mut reader = client.stream().try_clone().unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            let mut sizes = [1usize, 7, 1500, 65536, 3, 100_000].iter().cycle();
            let mut rest = payload;
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).min(rest.len());
                writer.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
        });
        let mut back = vec![0u8; payload.len()];
        let mut got = 0;
        let mut sizes = [5usize, 4096, 1, 70_000].iter().cycle();
        while got < back.len() {
            let end = (got + *sizes.next().unwrap()).min(back.len());
            let n = reader.read(&mut back[got..end]).unwrap();
            assert!(n > 0, "server closed after {got} of {} bytes", payload.len());
            got += n;
        }
        back
    })
}

fn echo_server() -> Server {
    Server::start(&listener("echo", plugins::ECHO, ""))
}

#[test]
fn echoes_one_byte() {
    let server = echo_server();
    let mut client = server.connect("echo");
    client.write(b"x");
    assert_eq!(client.bytes(1), b"x");
}

#[test]
fn echoes_64_kib_with_partial_reads() {
    let server = echo_server();
    let client = server.connect("echo");
    let payload = pattern(64 * 1024, 1);
    assert!(round_trip(&client, &payload) == payload, "64 KiB came back altered");
}

#[test]
fn echoes_8_mib_through_bounded_buffers() {
    // Buffers far smaller than the payload: the plugin must pump with backpressure.
    let limits = "[listener.limits]\nrecv-buffer = \"64 KiB\"\nsend-buffer = \"128 KiB\"";
    let server = Server::start(&listener("echo", plugins::ECHO, limits));
    let client = server.connect("echo");
    let payload = pattern(8 << 20, 2);
    assert!(round_trip(&client, &payload) == payload, "8 MiB came back altered");
}

#[test]
fn echoes_through_a_send_buffer_smaller_than_its_chunks() {
    let server = Server::start(&listener("echo", plugins::ECHO, "[listener.limits]\nsend-buffer = 1000"));
    let client = server.connect("echo");
    let payload = pattern(1 << 20, 3);
    assert!(round_trip(&client, &payload) == payload, "1 MiB through a 1000-byte send buffer came back altered");
}

#[test]
fn serves_many_concurrent_clients() {
    let server = echo_server();
    let addr = server.addr("echo");
    thread::scope(|s| {
        for c in 0..64u32 {
            s.spawn(move || {
                let mut client = Client::connect(addr);
                for round in 0..50u32 {
                    let message = pattern(1 + (c * 31 + round * 17) as usize % 3000, c * 1000 + round);
                    client.write(&message);
                    assert_eq!(client.bytes(message.len()), message, "client {c} round {round}");
                }
            });
        }
    });
}

#[test]
fn listens_on_ipv6() {
    let server = Server::start(&listener_at("echo6", "[::1]:0", plugins::ECHO, ""));
    assert!(server.addr("echo6").is_ipv6());
    let mut client = server.connect("echo6");
    client.write(b"over six");
    assert_eq!(client.bytes(8), b"over six");
}
