//! Closing: the two close modes, a peer that half-closes, a peer that vanishes, who
//! may name which connection, and the contract's promises about the end of a
//! connection (no event after close but CLOSE; finished both ways, it closes by
//! itself). CLOSE is seen from the guest: a probe connection that `watch`es hears of
//! every CLOSE its instance gets.

use std::time::{Duration, Instant};

use crate::harness::{
    BIG_SEND_BUFFER, Client, MORE_THAN_THE_KERNEL_HOLDS, PATIENCE, Server, big_send_limits, listener, plugins,
};

fn probe() -> Server {
    Server::start(&(listener("probe", plugins::FIXTURE_PROBE, "") + &listener("other", plugins::FIXTURE_PROBE, "")))
}

/// The connection id the probe knows `client` by.
fn id_of(client: &mut Client) -> String {
    client.ask("id").strip_prefix("id ").unwrap().to_owned()
}

/// A connection to listener `name` that hears `closed <id>` for every CLOSE event its
/// instance gets from then on.
pub fn watcher(server: &Server, name: &str) -> Client {
    let mut w = server.connect(name);
    assert_eq!(w.ask("watch"), "watching");
    w
}

/// Send both commands in one write, so that the probe runs them in one event, before
/// the host writes any of the answer: 600 000 bytes, then a close in `mode`.
fn big_then_close(server: &Server, mode: &str) -> Vec<u8> {
    let mut c = server.connect("probe");
    c.write(format!("big 600000\n{mode} done\n").as_bytes());
    c.until_eof()
}

#[test]
fn close_after_send_delivers_the_last_words() {
    let server = probe();
    let mut w = watcher(&server, "probe");
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    c.send_line("close-after goodbye");
    assert_eq!(c.until_eof(), b"goodbye\n");
    assert_eq!(w.line(), format!("closed {id}"), "the guest got the CLOSE");
}

#[test]
fn close_after_send_flushes_a_large_buffer() {
    let server = probe();
    let rest = big_then_close(&server, "close-after");
    assert_eq!(rest.len(), 600_000 + format!("ok {}\ndone\n", (1 << 20) - 600_000).len(), "{}", server.log());
    assert!(rest[..600_000].iter().all(|&b| b == b'x'));
    let tail = String::from_utf8_lossy(&rest[600_000..]);
    assert_eq!(tail, format!("ok {}\ndone\n", (1 << 20) - 600_000));
}

#[test]
fn close_now_discards_what_close_after_send_delivers() {
    let server = probe();
    let mut w = watcher(&server, "probe");
    let after = big_then_close(&server, "close-after");
    assert!(after.len() > 600_000 && after.ends_with(b"done\n"), "close-after delivered {} bytes", after.len());
    assert!(w.line().starts_with("closed "));

    // The same 600 000 bytes, the same last words, closed now: the send buffer is
    // discarded, and the peer gets an end of stream, not a reset.
    let now = big_then_close(&server, "close-now");
    assert!(now.len() < 600_000, "close-now still delivered {} bytes", now.len());
    assert!(!now.ends_with(b"done\n"), "close-now delivered the last words");
    assert!(w.line().starts_with("closed "), "the guest got the CLOSE");
}

#[test]
fn half_closed_peer_still_gets_its_answers() {
    let server = probe();
    let mut c = server.connect("probe");
    c.write(b"echo one\necho two\n");
    c.shutdown_write();
    assert_eq!(c.until_eof(), b"one\ntwo\n");
}

#[test]
fn vanished_peer_gets_its_close_event() {
    let server = probe();
    let mut w = watcher(&server, "probe");
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    drop(c);
    assert_eq!(w.line(), format!("closed {id}"));
}

#[test]
fn handlers_reach_their_own_listeners_connections_only() {
    let server = probe();
    let mut w = watcher(&server, "probe");
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    let mut stranger = server.connect("other");
    let b_id = id_of(&mut b);
    let stranger_id = id_of(&mut stranger);

    assert_eq!(a.ask(&format!("send {b_id} psst")), "ok");
    assert_eq!(b.line(), "psst");
    assert_eq!(a.ask(&format!("send {stranger_id} psst")), "err closed", "another listener's connection");
    assert_eq!(a.ask("send 987654321 psst"), "err closed", "a forged id");
    assert!(stranger.quiet_for(Duration::from_millis(200)));

    drop(b);
    assert_eq!(w.line(), format!("closed {b_id}"));
    assert_eq!(a.ask(&format!("send {b_id} psst")), "err closed", "a stale id");
}

/// After `close`, a connection gets no event but its CLOSE: not the SEND events of
/// its send buffer draining, nor its timer, nor POLL ticks, all of which come due
/// while it drains to a client that reads slowly.
#[test]
fn no_event_after_close_but_close() {
    const BIG: usize = MORE_THAN_THE_KERNEL_HOLDS;
    let extra = format!("poll-interval-ms = 20\n[listener.limits]\n{}", big_send_limits());
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, &extra));
    let mut w = watcher(&server, "probe");
    let mut c = Client::connect_with_small_window(server.addr("probe"));
    let id = id_of(&mut c);
    // One write, one event: the probe polls, arms a timer due at once, sends more than
    // the kernel takes while the client does not read, and closes after send.
    c.write(format!("poll-on\ntimer 1 1\nbig {BIG}\nclose-after bye\n").as_bytes());

    // A later timer on another connection fires: by then c's timer and poll ticks
    // were due, while c still drained.
    assert_eq!(w.ask("timer 2 300"), "armed 2");
    assert_eq!(w.line(), "timer 2", "c closed before the client read its bytes");

    let got = c.until_eof();
    let head = b"polling\narmed 1\n";
    assert!(got.starts_with(head), "{:?}", String::from_utf8_lossy(&got[..got.len().min(64)]));
    let rest = &got[head.len()..];
    assert!(rest.len() > BIG && rest[..BIG].iter().all(|&b| b == b'x'), "{} bytes", rest.len());
    let room = BIG_SEND_BUFFER - head.len() - BIG;
    assert_eq!(String::from_utf8_lossy(&rest[BIG..]), format!("ok {room}\nbye\n"));

    assert_eq!(w.line(), format!("closed {id}"));
    assert_eq!(w.ask("late"), "late none", "events reached the guest after it closed the connection");
}

/// A connection whose peer finished sending, whose sending side the handler shut
/// down, and whose receive buffer is empty closes by itself (long before the idle
/// timeout); while its receive buffer holds bytes, it stays open.
#[test]
fn a_connection_finished_both_ways_closes_by_itself() {
    let server = probe();
    let mut w = watcher(&server, "probe");
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    assert_eq!(c.ask("keep-open"), "keeping", "its end-of-stream does not make the probe close it");
    assert_eq!(c.ask("shutdown"), "ok");
    assert!(c.until_eof().is_empty(), "the client reads end-of-stream");

    // Half a command is left in the receive buffer when the peer finishes too.
    c.write(b"echo unfinished");
    c.shutdown_write();
    let peek = format!("peek {id}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = w.ask(&peek);
        if seen == "peek echo unfinished" {
            break;
        }
        let so_far = seen.strip_prefix("peek ");
        assert!(
            so_far.is_some_and(|bytes| "echo unfinished".starts_with(bytes)),
            "{seen}: closed with bytes buffered?"
        );
        assert!(Instant::now() < deadline, "the unfinished command never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The handler consumes them: nothing can move either way any more.
    assert_eq!(w.ask(&format!("drain {id}")), "drained 15");
    assert_eq!(w.line(), format!("closed {id}"));
    assert_eq!(w.ask(&peek), "err closed");
    let (_, log) = server.terminate();
    assert!(!log.contains("limit=idle-timeout-ms"), "{log}");
}
