//! Bounded buffers: a client that floods without reading is paused, not buffered
//! without end, and gets every byte once it reads; a send past the cap is refused;
//! `send` events come after every write, or only to a handler waiting for room; and
//! `pipe-to` moves what fits between buffers and owes a `send` event for the rest.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{Server, listener, plugins, stalls_at};
use crate::neighbour::wait_until;

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

#[test]
fn send_events_come_after_every_write_by_default() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("sends"), "sends 0");
    // The answer `sends 0` was written: one event.
    assert_eq!(c.ask("echo a"), "a");
    assert_eq!(c.ask("sends"), "sends 2");
}

#[test]
fn when_blocked_send_events_come_only_to_a_handler_told_there_is_no_room() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, "[listener.limits]\nsend-buffer = 4096"));
    let mut c = server.connect("probe");
    let mut other = server.connect("probe");
    assert_eq!(c.ask("send-events when-blocked"), "send-events when-blocked");
    assert_eq!(c.ask("echo a"), "a");
    assert_eq!(c.ask("sends"), "sends 0");
    // The mode is the instance's: another connection of it gets none either.
    assert_eq!(other.ask("echo b"), "b");
    assert_eq!(other.ask("sends"), "sends 0");

    // A refused send: the next write brings one event, and only that write.
    assert_eq!(c.ask("big 5000"), "err limit-exceeded");
    assert_eq!(c.ask("sends"), "sends 1");
    assert_eq!(c.ask("echo c"), "c");
    assert_eq!(c.ask("sends"), "sends 1");

    // A send that leaves no room: its answer does not fit (and is lost), the bytes go
    // out, and that write brings the event.
    assert_eq!(c.ask("room"), "room 4096");
    c.send_line("big 4096");
    assert_eq!(c.bytes(4096), vec![b'x'; 4096]);
    assert_eq!(c.ask("sends"), "sends 2");

    // Back to every write: each answer's write is an event again.
    assert_eq!(c.ask("send-events every-write"), "send-events every-write");
    assert_eq!(c.ask("echo d"), "d");
    assert_eq!(c.ask("sends"), "sends 4");
}

#[test]
fn pipe_to_moves_what_fits_and_owes_a_send_event_for_the_rest() {
    const HELD: usize = 10_000;
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, "[listener.limits]\nsend-buffer = 4096"));
    let mut held = server.connect("probe");
    let mut c = server.connect("probe");
    let h = held.ask("id").strip_prefix("id ").unwrap().to_owned();
    let me = c.ask("id").strip_prefix("id ").unwrap().to_owned();
    assert_eq!(c.ask("send-events when-blocked"), "send-events when-blocked");
    assert_eq!(held.ask("hold"), "holding");
    held.write(&[b'a'; HELD]);
    wait_until("the held bytes", || c.ask(&format!("pipe {h} {me} 0")) == format!("piped 0 left {HELD}"));

    // At most `max`, ahead of the answer.
    c.send_line(&format!("pipe {h} {me} 100"));
    assert_eq!(c.line(), format!("{}piped 100 left {}", "a".repeat(100), HELD - 100));
    // To a connection that is not the instance's: refused, nothing moved.
    assert_eq!(c.ask(&format!("pipe {h} 999999 10")), "err closed");
    assert_eq!(c.ask(&format!("pipe {h} {me} 0")), format!("piped 0 left {}", HELD - 100));

    // More than the room: exactly the room moves (the answer no longer fits and is
    // lost), the rest stays, and a `when-blocked` handler is owed a `send` event (the
    // answer to `id` came before `when-blocked`, in every-write mode: one event).
    assert_eq!(c.ask("sends"), "sends 1");
    c.send_line(&format!("pipe {h} {me} 100000"));
    assert_eq!(c.bytes(4096), vec![b'a'; 4096]);
    assert_eq!(c.ask("sends"), "sends 2");
    assert_eq!(c.ask(&format!("pipe {h} {me} 0")), format!("piped 0 left {}", HELD - 100 - 4096));

    // A closed source holds nothing; its view cannot even be had.
    drop(held);
    server.wait_for_log(&[&format!("closed {h}")]);
    assert_eq!(c.ask(&format!("pipe {h} {me} 10")), "err closed");
    assert_eq!(c.ask("echo still fine"), "still fine");
}
