//! Bounded buffers: a client that floods without reading is paused, not buffered
//! without end, and gets every byte once it reads; a send past the cap is refused.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{Server, listener, plugins, stalls_at};

#[test]
fn flooding_client_is_paused_and_loses_nothing() {
    const TOTAL: usize = 96 << 20;
    let limits = "[listener.limits]\nrecv-buffer = \"64 KiB\"\nsend-buffer = \"64 KiB\"";
    let server = Server::start(&listener("echo", plugins::ECHO, limits));
    let client = server.connect("echo");
    let rss_before = server.rss();
    let payload: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let written = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let mut writer = client.stream().try_clone().unwrap();
        let (payload, written) = (&payload, &written);
        s.spawn(move || {
            for chunk in payload.chunks(64 * 1024) {
                writer.write_all(chunk).unwrap();
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        });
        // Wait until the writer is stuck: the server stopped reading.
        let last = stalls_at(written);
        assert!(last < TOTAL, "the server kept reading from a client that never reads");
        let grown = server.rss().saturating_sub(rss_before);
        assert!(grown < 16 << 20, "server memory grew by {grown} bytes while {last} bytes were pushed at it");

        let mut reader = client.stream().try_clone().unwrap();
        let mut back = vec![0u8; TOTAL];
        reader.read_exact(&mut back).unwrap();
        assert!(back == *payload, "echoed bytes differ");
    });
}

#[test]
fn send_past_the_cap_is_refused_whole() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, "[listener.limits]\nsend-buffer = 4096"));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("room"), "room 4096");
    assert_eq!(c.ask("big 5000"), "err limit-exceeded");
    c.send_line("big 1000");
    assert_eq!(c.line(), format!("{}ok {}", "x".repeat(1000), 4096 - 1000));
    assert_eq!(c.ask("echo still fine"), "still fine");
}

#[test]
fn removing_more_than_buffered_is_refused() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("remove 99999"), "err invalid");
    assert_eq!(c.ask("echo still fine"), "still fine");
}
