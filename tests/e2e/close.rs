//! Closing: the two close modes, a peer that half-closes, a peer that vanishes, and
//! who may name which connection.

use std::time::Duration;

use crate::harness::{Client, Server, listener, plugins};

fn probe() -> Server {
    Server::start(&(listener("probe", plugins::FIXTURE_PROBE, "") + &listener("other", plugins::FIXTURE_PROBE, "")))
}

/// The connection id the probe knows `client` by.
fn id_of(client: &mut Client) -> String {
    client.ask("id").strip_prefix("id ").unwrap().to_owned()
}

#[test]
fn close_after_send_delivers_the_last_words() {
    let server = probe();
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    c.send_line("close-after goodbye");
    assert_eq!(c.until_eof(), b"goodbye\n");
    server.wait_for_log(&["listener=probe", &format!("closed {id}")]);
}

#[test]
fn close_after_send_flushes_a_large_buffer() {
    let server = probe();
    let mut c = server.connect("probe");
    c.send_line("big 600000");
    c.send_line("close-after done");
    let rest = c.until_eof();
    assert!(rest.len() > 600_000, "{} bytes arrived\n{}", rest.len(), server.log());
    assert!(rest[..600_000].iter().all(|&b| b == b'x'));
    let tail = String::from_utf8_lossy(&rest[600_000..]);
    assert_eq!(tail, format!("ok {}\ndone\n", (1 << 20) - 600_000));
}

#[test]
fn close_now_closes_at_once() {
    let server = probe();
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    c.send_line("close-now ignored");
    let rest = c.until_eof();
    assert!(rest.is_empty() || rest == b"ignored\n", "{rest:?}");
    server.wait_for_log(&["listener=probe", &format!("closed {id}")]);
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
    let mut c = server.connect("probe");
    let id = id_of(&mut c);
    drop(c);
    server.wait_for_log(&["listener=probe", &format!("closed {id}")]);
}

#[test]
fn handlers_reach_their_own_listeners_connections_only() {
    let server = probe();
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
    server.wait_for_log(&["listener=probe", &format!("closed {b_id}")]);
    assert_eq!(a.ask(&format!("send {b_id} psst")), "err closed", "a stale id");
}
