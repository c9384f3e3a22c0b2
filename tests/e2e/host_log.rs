//! The host's own lines about a listener's connections (refusals, limit hits, faults)
//! are rate-limited per listener: a flood costs kilobytes of log, the lines left out
//! are reported (`suppressed=N`), and the listener's totals still count every event.
//!
//! Byte counts leave out DEBUG lines: the harness runs the server at debug level, and
//! the per-connection debug lines (accepted, closed) do not exist at the default level.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::harness::{Client, PATIENCE, Server, free_address, listener, listener_at, plugins, totals};
use crate::neighbour::{hits, lines, number};

/// What a flood may cost in log: a few hundred lines of about 200 bytes. Written
/// line for line, either flood below would take megabytes.
const LOG_BUDGET: usize = 64 << 10;

/// Bytes of the lines that are not DEBUG.
fn info_bytes(log: &str) -> usize {
    log.lines().filter(|l| !l.contains(" DEBUG ")).map(|l| l.len() + 1).sum()
}

/// Check what the stopped server `log` said about listener `name`: at most
/// [`LOG_BUDGET`] bytes in all, lines suppressed and reported, and every one of
/// `events` (the lines with `needle`) either logged or counted as suppressed.
fn check_bounded(log: &str, name: &str, needle: &str, events: u64) {
    let bytes = info_bytes(log);
    assert!(bytes < LOG_BUDGET, "{bytes} bytes of log:\n{}", &log[..log.len().min(20_000)]);
    let line = totals(log, name);
    let suppressed = number(line, "suppressed");
    let logged = lines(log, name, &[needle]).len() as u64;
    assert!(suppressed > 0, "{line}");
    assert_eq!(logged + suppressed, events, "{logged} lines logged, {line}");
    let reported: u64 =
        lines(log, name, &["suppressed by the rate limit"]).iter().map(|l| number(l, "suppressed")).sum();
    assert_eq!(reported, suppressed, "every suppressed line is reported once\n{log}");
}

#[test]
fn a_flood_of_refused_connections_costs_kilobytes_of_log() {
    const FLOOD: u64 = 5000;
    let server = Server::start(&listener("flood", plugins::ECHO, "[listener.limits]\nmax-connections = 1"));
    let mut holder = server.connect("flood");
    holder.write(b"hold");
    assert_eq!(holder.bytes(4), b"hold");
    for i in 0..FLOOD {
        let mut refused = TcpStream::connect(server.addr("flood")).unwrap();
        refused.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        match refused.read_to_end(&mut rest) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("connection {i}: expected a refusal, got {other:?}\n{}", server.log()),
        }
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "flood");
    assert_eq!(number(line, "refused"), FLOOD, "{line}");
    assert_eq!(hits(line, "max-connections"), FLOOD, "{line}");
    check_bounded(&log, "flood", "limit=max-connections", FLOOD);
}

#[test]
fn a_guest_dialing_its_own_listener_costs_kilobytes_of_log() {
    const DIALS: u64 = 3000;
    let address = free_address();
    let table = listener_at(
        "dialer",
        &address.to_string(),
        plugins::FIXTURE_ADVERSARY,
        &format!(
            "allow-connect = [\"{address}\"]\n[listener.limits]\nmax-connections = 2\n[listener.config]\nmode = \"dial\""
        ),
    );
    let server = Server::start(&table);
    // The dialer holds one slot and each dial the other, so every dial's arrival at
    // the listener is refused; that ends the dial, and the next one can go.
    let mut dialer = server.connect("dialer");
    let deadline = Instant::now() + PATIENCE * 3;
    let mut last = None;
    let mut dialed = 0;
    while dialed < DIALS {
        assert!(Instant::now() < deadline, "{dialed} dials in time\n{}", server.log());
        if let Some(id) = dial(&mut dialer, address) {
            last = Some(id);
            dialed += 1;
        }
    }
    // Its refusal closed the last dial: every refusal is in.
    let last = last.unwrap();
    server.wait_for_log(&["closed", "listener=dialer", &format!("conn=#{last} ")]);
    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "dialer");
    assert_eq!(number(line, "dialed"), DIALS, "{line}");
    assert_eq!(number(line, "refused"), DIALS, "{line}");
    // The hits are the refusals at accept, and perhaps one more: the dialer's own
    // `connect` refused while a dial was still open (a hit of its connection, once).
    let refusals = hits(line, "max-connections");
    assert!(refusals == DIALS || refusals == DIALS + 1, "{line}");
    check_bounded(&log, "dialer", "limit=max-connections", refusals);
}

/// Ask the dialer to dial `address`; the id of the dial if it went out (`None` while
/// the previous one is still open). Skips the dials' own news (`connected <id>`).
fn dial(dialer: &mut Client, address: SocketAddr) -> Option<String> {
    dialer.send_line(&address.to_string());
    let prefix = format!("dial {address} ");
    let answer = loop {
        let line = dialer.line();
        if let Some(answer) = line.strip_prefix(&prefix) {
            break answer.to_owned();
        }
        assert!(line.starts_with("connected ") || line.starts_with("connect-failed "), "{line}");
    };
    match answer.strip_prefix("ok ") {
        Some(id) => Some(id.to_owned()),
        None => {
            assert_eq!(answer, "limit-exceeded");
            None
        }
    }
}
