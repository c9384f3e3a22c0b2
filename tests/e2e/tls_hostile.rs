//! Hostile TLS clients beside a loaded neighbour (issue 17, point 7): garbage where a
//! ClientHello belongs, a hello cut short, a hello of tens of KiB, a client that stops
//! halfway through its handshake, a flood of handshakes, a renegotiation, a client
//! that never reads, a name nobody serves, a client certificate from a stranger's CA.
//!
//! Each runs against the tenant "victim" on a port it shares with the tenant "echo",
//! on a server of one worker (one event loop for both), while clients of "echo" do TLS
//! round trips. Each test asserts what the hostile client got and what the host
//! counted, that the neighbour's round trips went on while the offence ran, and that
//! the neighbour's books stay clean. The helpers for `/metrics` and raw sockets are
//! shared with `tls_proxying.rs`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::admin::admin_table;
use crate::bounded::{admin_address, request};
use crate::harness::{PATIENCE, Server, free_address, listener_at, plugins, totals};
use crate::neighbour::{StopOnDrop, hits, is_warning, names, number, wait_until};
use crate::tls_kit::{Hello, Pair, Pki, TlsClient, client_config, s_client, tls_table};

/// The attacked tenant's server name.
const VICTIM: &str = "victim.test";

/// The neighbour's server name.
const NEIGHBOUR: &str = "echo.test";

/// Neighbour clients doing round trips, each on its own connection.
const NEIGHBOURS: usize = 2;

/// Message sizes the neighbours cycle through: a byte to four full TLS records.
const SIZES: [usize; 6] = [1, 100, 1460, 4096, 16384, 65536];

/// The handshake timeout of the tests that wait for it: short, so they wait little.
const HANDSHAKE_TIMEOUT_MS: u64 = 1000;

/// A server of one worker with two TLS tenants on one port: "victim", which a test
/// attacks, and "echo", the neighbour. Both run the echo plugin.
struct Neighbourhood {
    server: Server,
    pki: Pki,
    /// The port both tenants share.
    port: SocketAddr,
    admin: SocketAddr,
}

impl Neighbourhood {
    /// Start it; `victim_tls` and `victim_limits` are extra lines of the victim's
    /// `[listener.tls]` and `[listener.limits]` tables.
    fn start(victim_tls: impl FnOnce(&mut Pki) -> String, victim_limits: &str) -> Neighbourhood {
        let mut pki = Pki::new("sandport test CA");
        let victim = pki.server(&[VICTIM]);
        let echo = pki.server(&[NEIGHBOUR]);
        let victim_tls = victim_tls(&mut pki);
        let port = free_address().to_string();
        let victim_extra = format!(
            "server-names = [\"{VICTIM}\"]\n{}[listener.limits]\n{victim_limits}",
            tls_table(&victim, &victim_tls)
        );
        let echo_extra = format!("server-names = [\"{NEIGHBOUR}\"]\n{}", tls_table(&echo, ""));
        let config = "workers = 1\n".to_owned()
            + &listener_at("victim", &port, plugins::ECHO, &victim_extra)
            + &listener_at("echo", &port, plugins::ECHO, &echo_extra)
            + &admin_table("127.0.0.1:0", None);
        let server = Server::start(&config);
        let port = server.addr("victim");
        assert_eq!(port, server.addr("echo"), "the tenants share a port");
        let admin = admin_address(&server);
        let admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
        Neighbourhood { server, pki, port, admin }
    }

    /// A TLS client of the victim that finished its handshake.
    fn victim(&self) -> TlsClient {
        TlsClient::connect(self.port, &self.pki.ca, Hello { name: VICTIM, ..Hello::default() })
    }

    /// Run `offend` while the neighbour's clients do round trips, each echo checked
    /// byte for byte; returns how many round trips they completed while it ran. Each of
    /// them must complete another after it, and a new client of the neighbour is served.
    fn beside(&self, offend: impl FnOnce()) -> u64 {
        let stop = AtomicBool::new(false);
        let rounds: Vec<AtomicU64> = (0..NEIGHBOURS).map(|_| AtomicU64::new(0)).collect();
        let total = || rounds.iter().map(|r| r.load(Ordering::SeqCst)).sum::<u64>();
        std::thread::scope(|s| {
            let _stop_on_unwind = StopOnDrop(&stop);
            let threads: Vec<_> = rounds
                .iter()
                .enumerate()
                .map(|(seed, rounds)| {
                    let (stop, ca, port) = (&stop, &self.pki.ca, self.port);
                    s.spawn(move || keep_echoing(port, ca, seed, stop, rounds))
                })
                .collect();
            let running = || !threads.iter().any(|t| t.is_finished());
            wait_until("every neighbour to finish a round", || {
                !running() || rounds.iter().all(|r| r.load(Ordering::SeqCst) > 0)
            });
            let before = total();
            offend();
            let during = total() - before;
            let seen: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::SeqCst)).collect();
            wait_until("every neighbour to finish a round after the offence", || {
                !running() || rounds.iter().zip(&seen).all(|(r, seen)| r.load(Ordering::SeqCst) > *seen)
            });
            let mut fresh = TlsClient::connect(self.port, &self.pki.ca, Hello { name: NEIGHBOUR, ..Hello::default() });
            assert_eq!(fresh.ask("still there?"), "still there?");
            stop.store(true, Ordering::SeqCst);
            for thread in threads {
                thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            }
            during
        })
    }

    /// The value of `/metrics` sample `key`.
    fn metric(&self, key: &str) -> u64 {
        metric(self.admin, key)
    }

    /// Wait until `/metrics` sample `key` reaches `value`; returns it.
    fn wait_for_metric(&self, key: &str, value: u64) -> u64 {
        wait_for_metric(self.admin, key, value)
    }

    /// The `/metrics` key of connections to the shared port refused for `reason`.
    fn refused(&self, reason: &str) -> String {
        refused_key(self.port, reason)
    }

    /// Stop the server and check the neighbour's books: no fault, no failed
    /// handshake, no limit hit, no warning about it. Returns the log.
    fn finish(self) -> String {
        let (_, log) = self.server.terminate();
        let line = totals(&log, "echo");
        assert!(line.contains(" faults=0 ") && line.ends_with("limit_hits="), "{line}");
        assert_eq!((number(line, "handshakes_failed"), number(line, "refused")), (0, 0), "{line}");
        let alarms: Vec<&str> = log.lines().filter(|l| names(l, "echo") && is_warning(l)).collect();
        assert!(alarms.is_empty(), "the neighbour's listener logged warnings:\n{}", alarms.join("\n"));
        log
    }
}

/// One neighbour client: echo round trips of varied sizes until `stop`, each checked;
/// then close_notify, after which nothing more may arrive.
fn keep_echoing(port: SocketAddr, ca: &std::path::Path, seed: usize, stop: &AtomicBool, rounds: &AtomicU64) {
    let mut client = TlsClient::connect(port, ca, Hello { name: NEIGHBOUR, ..Hello::default() });
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let len = SIZES[(round + seed) % SIZES.len()];
        let message: Vec<u8> = (0..len).map(|i| ((i * 7 + round * 13 + seed * 101) % 251) as u8).collect();
        client.write(&message);
        let back = client.bytes(len);
        if let Some(at) = back.iter().zip(&message).position(|(a, b)| a != b) {
            panic!("neighbour {seed}, round {round}: byte {at} of {len} differs in the echo");
        }
        round += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    client.close_notify();
    let (extra, _) = client.until_end();
    assert!(extra.is_empty(), "neighbour {seed} received {} bytes it never sent", extra.len());
}

/// The value of sample `key` (`name{labels}`) of the `/metrics` of the admin API at
/// `admin`.
pub(crate) fn metric(admin: SocketAddr, key: &str) -> u64 {
    let reply = request(admin, "GET /metrics HTTP/1.1", b"", PATIENCE).expect("the admin API answers /metrics");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sample = reply.body.lines().find_map(|line| line.rsplit_once(' ').filter(|(name, _)| *name == key));
    let (_, value) = sample.unwrap_or_else(|| panic!("no sample {key} in:\n{}", reply.body));
    value.parse().unwrap_or_else(|_| panic!("{key} is not a count: {value}"))
}

/// Wait until sample `key` of `/metrics` is at least `value` (the host counts just
/// after it closes a socket, so a client may see the close first); returns it.
pub(crate) fn wait_for_metric(admin: SocketAddr, key: &str, value: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = metric(admin, key);
        if now >= value {
            return now;
        }
        assert!(Instant::now() < deadline, "{key} stayed at {now}, below {value}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `/metrics` key of connections to `address` closed before a listener took them,
/// for `reason`.
pub(crate) fn refused_key(address: SocketAddr, reason: &str) -> String {
    format!("sandport_address_refused_total{{address=\"{address}\",reason=\"{reason}\"}}")
}

/// The `/metrics` key of listener `listener`'s TLS handshakes that ended with `result`.
pub(crate) fn handshakes_key(listener: &str, result: &str) -> String {
    format!("sandport_tls_handshakes_total{{listener=\"{listener}\",result=\"{result}\"}}")
}

/// A plain TCP connection to `addr`, with the harness's patience for each read and
/// write.
pub(crate) fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// What the server sends until it ends the connection, by a close or a reset (a
/// server that closes with bytes of ours unread resets). Fails on a timeout.
pub(crate) fn rest(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return bytes,
            Err(e) => panic!("expected the server to end the connection: {e} (after {} bytes)", bytes.len()),
        }
    }
}

/// Whether `bytes`, what a server sent before it closed, hold nothing but TLS alerts
/// (a refusal may say why, and must say nothing else).
fn only_alerts(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest[0] != 0x15 || rest.len() < 5 + len {
            return false;
        }
        rest = &rest[5 + len..];
    }
    rest.is_empty()
}

/// A client connection for `hello` trusting `ca`, and the ClientHello it would send.
fn client_hello(ca: &std::path::Path, hello: Hello) -> (ClientConnection, Vec<u8>) {
    let name = ServerName::try_from(hello.name.to_owned()).unwrap();
    let mut conn = ClientConnection::new(Arc::new(client_config(ca, &hello)), name).unwrap();
    let mut bytes = Vec::new();
    conn.write_tls(&mut bytes).unwrap();
    (conn, bytes)
}

/// A client that sent its ClientHello and read the server's answer until it has its
/// own answer ready, and then says nothing more: a handshake left halfway. The
/// server's side of it stays open while this lives.
struct Stalled {
    socket: TcpStream,
}

impl Stalled {
    fn new(addr: SocketAddr, ca: &std::path::Path, name: &str) -> Stalled {
        let (mut conn, hello) = client_hello(ca, Hello { name, ..Hello::default() });
        let mut socket = raw(addr);
        socket.write_all(&hello).unwrap();
        while !conn.wants_write() {
            let n = conn.read_tls(&mut socket).expect("the server answers the hello");
            assert!(n > 0, "the server closed instead of answering the hello");
            conn.process_new_packets().unwrap();
        }
        Stalled { socket }
    }
}

/// One exchange over TLS that may fail anywhere, handshake or data: connect with
/// `hello`, send `line`, read the answer line.
fn try_exchange(addr: SocketAddr, ca: &std::path::Path, hello: Hello, line: &str) -> std::io::Result<String> {
    let name = ServerName::try_from(hello.name.to_owned()).unwrap();
    let conn = ClientConnection::new(Arc::new(client_config(ca, &hello)), name).unwrap();
    let mut stream = BufReader::new(StreamOwned::new(conn, raw(addr)));
    stream.get_mut().write_all(format!("{line}\n").as_bytes())?;
    stream.get_mut().flush()?;
    let mut answer = String::new();
    if stream.read_line(&mut answer)? == 0 {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed without an answer"));
    }
    Ok(answer.trim_end().to_owned())
}

/// Garbage where a ClientHello belongs (an HTTP request, a bogus handshake record,
/// 64 KiB of noise) is closed at once, with at most an alert, and counted as
/// `bad_hello`; the neighbour goes on.
#[test]
fn garbage_instead_of_a_client_hello_is_refused_and_counted() {
    let hood = Neighbourhood::start(|_| String::new(), "");
    let noise: Vec<u8> = (0..64 << 10).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: victim.test\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        &noise,
    ];
    let during = hood.beside(|| {
        for bytes in garbage {
            let mut socket = raw(hood.port);
            // The server may close (and reset) before it has read all of it.
            let _ = socket.write_all(bytes);
            let answer = rest(&mut socket);
            assert!(only_alerts(&answer), "garbage got an answer other than an alert: {answer:02x?}");
        }
        hood.wait_for_metric(&hood.refused("bad_hello"), 3);
    });
    assert_eq!(hood.metric(&hood.refused("bad_hello")), 3);
    assert_eq!(hood.metric(&handshakes_key("victim", "ok")), 0, "nothing reached the victim");
    let mut victim = hood.victim();
    assert_eq!(victim.ask("served as ever"), "served as ever");
    eprintln!("the neighbour completed {during} round trips while garbage came");
    let log = hood.finish();
    assert_eq!(number(totals(&log, "victim"), "accepted"), 1, "only the good client was accepted");
}

/// A ClientHello cut short, then silence: the connection waits for the rest no longer
/// than the handshake timeout, is closed and counted as `timeout`.
#[test]
fn a_truncated_hello_is_closed_at_the_handshake_timeout() {
    let hood = Neighbourhood::start(|_| String::new(), &format!("handshake-timeout-ms = {HANDSHAKE_TIMEOUT_MS}"));
    let during = hood.beside(|| {
        let (_, hello) = client_hello(&hood.pki.ca, Hello { name: VICTIM, ..Hello::default() });
        let mut socket = raw(hood.port);
        let sent = Instant::now();
        socket.write_all(&hello[..hello.len() / 2]).unwrap();
        let answer = rest(&mut socket);
        let waited = sent.elapsed();
        assert!(only_alerts(&answer), "a half hello got an answer: {answer:02x?}");
        assert!(
            waited >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS * 9 / 10),
            "closed after {waited:?}, before the handshake timeout of {HANDSHAKE_TIMEOUT_MS} ms"
        );
        hood.wait_for_metric(&hood.refused("timeout"), 1);
    });
    assert_eq!(hood.metric(&hood.refused("timeout")), 1);
    assert!(during > 0, "the neighbour completed no round trip while a half hello waited");
    hood.finish();
}

/// A TLS 1.3 ClientHello for `name`, made by hand, with an extension of a GREASE type
/// (RFC 8701: servers ignore it) carrying `filler` bytes, in records of 16 KiB.
fn hello_with_filler(name: &str, filler: usize) -> Vec<u8> {
    let mut extensions = Vec::new();
    let mut server_name = u16_be(name.len() + 3);
    server_name.push(0);
    server_name.extend(u16_be(name.len()));
    server_name.extend_from_slice(name.as_bytes());
    extension(&mut extensions, 0x0000, &server_name);
    // supported_versions: TLS 1.3; supported_groups: x25519; signature_algorithms:
    // ECDSA P-256 SHA-256 and RSA-PSS SHA-256.
    extension(&mut extensions, 0x002b, &[2, 0x03, 0x04]);
    extension(&mut extensions, 0x000a, &[0, 2, 0x00, 0x1d]);
    extension(&mut extensions, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]);
    // key_share: an x25519 public key (the curve's base point will do).
    let mut key_share = vec![0, 36, 0x00, 0x1d, 0, 32, 9];
    key_share.extend([0; 31]);
    extension(&mut extensions, 0x0033, &key_share);
    extension(&mut extensions, 0x0a0a, &vec![0x5a; filler]);
    let mut body = vec![0x03, 0x03];
    body.extend([7; 32]);
    body.push(0);
    body.extend([0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 1, 0]);
    body.extend(u16_be(extensions.len()));
    body.extend(extensions);
    handshake_records(&body, body.len())
}

/// A ClientHello message announcing `announced` bytes of `body`, cut into records.
fn handshake_records(body: &[u8], announced: usize) -> Vec<u8> {
    let mut message = vec![1];
    message.extend(&(announced as u32).to_be_bytes()[1..]);
    message.extend_from_slice(body);
    let mut records = Vec::new();
    for chunk in message.chunks(16 << 10) {
        records.extend([0x16, 0x03, 0x01]);
        records.extend(u16_be(chunk.len()));
        records.extend_from_slice(chunk);
    }
    records
}

fn extension(to: &mut Vec<u8>, kind: u16, data: &[u8]) {
    to.extend(kind.to_be_bytes());
    to.extend(u16_be(data.len()));
    to.extend_from_slice(data);
}

fn u16_be(n: usize) -> Vec<u8> {
    u16::try_from(n).unwrap().to_be_bytes().to_vec()
}

/// A hello of tens of KiB is served: one made by hand with a 40 KiB extension gets a
/// ServerHello, and a real client offering 30 KiB of ALPN names finishes its handshake
/// and is echoed. A hello announcing more than a handshake message may hold (64 KiB)
/// is refused cleanly, as `bad_hello`.
#[test]
fn a_hello_of_tens_of_kib_is_served_and_a_larger_one_refused() {
    let hood = Neighbourhood::start(|_| String::new(), "");
    let during = hood.beside(|| {
        let mut socket = raw(hood.port);
        let hello = hello_with_filler(VICTIM, 40 << 10);
        assert!(hello.len() > 40 << 10);
        socket.write_all(&hello).unwrap();
        let mut head = [0u8; 6];
        socket.read_exact(&mut head).expect("an answer to the 40 KiB hello");
        assert_eq!((head[0], head[5]), (0x16, 0x02), "a handshake record, a ServerHello first: {head:02x?}");

        let names: Vec<String> = (0..120).map(|i| format!("{i:03}").repeat(83)).collect();
        let alpn: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut client =
            TlsClient::connect(hood.port, &hood.pki.ca, Hello { name: VICTIM, alpn: &alpn, identity: None });
        assert_eq!(client.session().alpn_protocol(), None, "the victim speaks no ALPN protocol");
        assert_eq!(client.ask("after a 30 KiB hello"), "after a 30 KiB hello");

        let mut socket = raw(hood.port);
        let _ = socket.write_all(&handshake_records(&vec![0x5a; 70 << 10], 70 << 10));
        let answer = rest(&mut socket);
        assert!(only_alerts(&answer), "a 70 KiB hello got an answer other than an alert: {answer:02x?}");
        hood.wait_for_metric(&hood.refused("bad_hello"), 1);
    });
    assert_eq!(hood.metric(&hood.refused("bad_hello")), 1);
    assert_eq!(hood.metric(&handshakes_key("victim", "ok")), 1, "the real client's");
    eprintln!("the neighbour completed {during} round trips while big hellos came");
    hood.finish();
}

/// A client that stops halfway through its handshake is closed at the handshake
/// timeout, counted as a `handshake-timeout-ms` limit hit and a handshake that timed
/// out; the neighbour goes on meanwhile.
#[test]
fn a_client_that_stops_mid_handshake_is_closed_at_the_timeout() {
    let hood = Neighbourhood::start(|_| String::new(), &format!("handshake-timeout-ms = {HANDSHAKE_TIMEOUT_MS}"));
    let during = hood.beside(|| {
        let started = Instant::now();
        let mut stalled = Stalled::new(hood.port, &hood.pki.ca, VICTIM);
        rest(&mut stalled.socket);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS * 9 / 10),
            "closed after {waited:?}, before the handshake timeout of {HANDSHAKE_TIMEOUT_MS} ms"
        );
        hood.wait_for_metric(&handshakes_key("victim", "timeout"), 1);
    });
    assert_eq!(hood.metric(&handshakes_key("victim", "timeout")), 1);
    assert_eq!(hood.metric(&handshakes_key("victim", "failed")), 0, "a timeout is told apart");
    assert_eq!(hood.metric("sandport_limit_hits_total{listener=\"victim\",limit=\"handshake-timeout-ms\"}"), 1);
    assert!(during > 0, "the neighbour completed no round trip while a handshake stalled");
    let log = hood.finish();
    let line = totals(&log, "victim");
    assert_eq!((hits(line, "handshake-timeout-ms"), number(line, "handshakes_failed")), (1, 1), "{line}");
}

/// Connection attempts of the handshake flood, per thread.
const FLOOD_ATTEMPTS: usize = 40;

/// Threads of the handshake flood.
const FLOODERS: usize = 8;

/// What one attempt of the flood came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The server answered the hello (and the client left at once or after finishing).
    Answered,
    /// The server closed without a word: `max-handshakes` was reached.
    Refused,
}

/// One attempt: send a ClientHello for the victim, wait for the server's answer or
/// its close, then (every other time) finish the handshake; hold the connection a
/// moment so that handshakes overlap, and drop it.
fn flood_once(addr: SocketAddr, ca: &std::path::Path, finish: bool) -> Attempt {
    let (mut conn, hello) = client_hello(ca, Hello { name: VICTIM, ..Hello::default() });
    let mut socket = raw(addr);
    socket.write_all(&hello).unwrap();
    match conn.read_tls(&mut socket) {
        Ok(0) => return Attempt::Refused,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Attempt::Refused,
        Ok(_) => {}
        Err(e) => panic!("the server neither answered nor closed: {e}"),
    }
    if finish {
        conn.process_new_packets().unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    Attempt::Answered
}

/// A flood of handshakes against one name: with `max-handshakes = 2`, a third
/// handshake at once is refused and counted, then [`FLOODERS`] threads open and drop
/// connections; each refusal they see is counted once, some of them are served, and
/// the neighbour's round trips go on throughout.
#[test]
fn a_handshake_flood_is_bounded_and_the_neighbour_keeps_its_round_trips() {
    let hood = Neighbourhood::start(|_| String::new(), "max-handshakes = 2");
    let hits_key = "sandport_limit_hits_total{listener=\"victim\",limit=\"max-handshakes\"}";
    // Two handshakes in flight: a third is refused without a word.
    let held = [Stalled::new(hood.port, &hood.pki.ca, VICTIM), Stalled::new(hood.port, &hood.pki.ca, VICTIM)];
    assert_eq!(flood_once(hood.port, &hood.pki.ca, false), Attempt::Refused, "a third handshake at once");
    hood.wait_for_metric(hits_key, 1);
    drop(held);

    let mut outcomes = Vec::new();
    let during = hood.beside(|| {
        outcomes = std::thread::scope(|s| {
            let threads: Vec<_> = (0..FLOODERS)
                .map(|thread| {
                    let (port, ca) = (hood.port, &hood.pki.ca);
                    s.spawn(move || {
                        (0..FLOOD_ATTEMPTS).map(|n| flood_once(port, ca, (n + thread) % 2 == 0)).collect::<Vec<_>>()
                    })
                })
                .collect();
            threads.into_iter().flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
    });
    let refused = outcomes.iter().filter(|o| **o == Attempt::Refused).count() as u64;
    let answered = outcomes.len() as u64 - refused;
    eprintln!("the flood: {answered} answered, {refused} refused; the neighbour completed {during} round trips");
    assert!(refused > 0, "{FLOODERS} threads at once never met the bound of 2 handshakes");
    assert!(answered > 0, "the flood was refused whole: the victim serves no one");
    assert_eq!(hood.wait_for_metric(hits_key, refused + 1), refused + 1, "every refusal counted once");
    assert!(during >= 10, "the neighbour completed only {during} round trips during the flood");
    let mut victim = hood.victim();
    assert_eq!(victim.ask("after the flood"), "after the flood");
    hood.finish();
}

/// A renegotiation attempt (`openssl s_client -tls1_2`, then `R`) is refused with
/// `no_renegotiation`: the session is never renegotiated (one handshake in all), and
/// the neighbour goes on.
#[test]
fn a_renegotiation_attempt_is_refused() {
    let hood = Neighbourhood::start(|_| String::new(), "");
    let mut output = String::new();
    let during = hood.beside(|| output = renegotiate(hood.port, &hood.pki.ca));
    assert!(output.contains("RENEGOTIATING"), "openssl did not try:\n{output}");
    assert!(output.contains("no renegotiation"), "the server did not say no_renegotiation:\n{output}");
    assert!(!output.contains("echoed after R"), "the session went on as renegotiated:\n{output}");
    assert_eq!(hood.metric(&handshakes_key("victim", "ok")), 1, "one handshake, none renegotiated");
    assert!(during > 0, "the neighbour completed no round trip while a client renegotiated");
    hood.finish();
}

/// Run `openssl s_client -tls1_2` against the victim: a line echoed, then `R`
/// (renegotiate), then, if it is still running, another line. Returns what it printed.
fn renegotiate(addr: SocketAddr, ca: &std::path::Path) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_2", "-servername", VICTIM])
        .args(["-CAfile", ca.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (.ci/run installs it)");
    let (lines, seen) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echoed before R\n").unwrap();
    let mut printed = String::new();
    let deadline = Instant::now() + PATIENCE;
    while !printed.contains("\nechoed before R") {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = seen.recv_timeout(wait).unwrap_or_else(|_| panic!("no echo before R:\n{printed}"));
        printed.push('\n');
        printed.push_str(&line);
    }
    stdin.write_all(b"R\n").unwrap();
    // Refused, openssl gives up on the connection; had the server renegotiated, the
    // session would go on and echo this.
    std::thread::sleep(Duration::from_secs(1));
    let _ = stdin.write_all(b"echoed after R\n");
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    crate::harness::wait_exit(&mut child);
    reader.join().unwrap();
    printed.extend(seen.try_iter().map(|line| format!("\n{line}")));
    printed + "\n" + &errors.join().unwrap()
}

/// A client that sends and never reads, over TLS: the send-buffer limit holds as over
/// plaintext (tests/e2e/backpressure.rs, the same bound): the echo stops taking its
/// bytes, the server's memory stays within 16 MiB of where it was, and once the client
/// reads, every byte comes back.
#[test]
fn a_client_that_never_reads_is_paused_and_memory_stays_bounded() {
    const TOTAL: usize = 64 << 20;
    let hood = Neighbourhood::start(|_| String::new(), "recv-buffer = \"64 KiB\"\nsend-buffer = \"64 KiB\"");
    let payload: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let during = hood.beside(|| {
        let name = ServerName::try_from(VICTIM).unwrap();
        let config = client_config(&hood.pki.ca, &Hello { name: VICTIM, ..Hello::default() });
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut socket = raw(hood.port);
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).unwrap();
        }
        let rss_before = hood.server.rss();
        let fed = push_until_stalled(&mut conn, &mut socket, &payload);
        assert!(fed < TOTAL, "the server took all {TOTAL} bytes from a client that never reads");
        let grown = hood.server.rss().saturating_sub(rss_before);
        assert!(grown < 16 << 20, "server memory grew by {grown} bytes while {fed} bytes were pushed at it");
        let back = read_back(&mut conn, &mut socket, fed);
        assert!(back == payload[..fed], "echoed bytes differ");
    });
    assert!(during > 0, "the neighbour completed no round trip beside a client that never read");
    let log = hood.finish();
    assert_eq!(number(totals(&log, "victim"), "faults"), 0);
}

/// Encrypt `payload` into the socket without ever reading, until the socket takes
/// nothing for two seconds; returns the plaintext bytes given to the session.
fn push_until_stalled(conn: &mut ClientConnection, socket: &mut TcpStream, payload: &[u8]) -> usize {
    socket.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let (mut fed, mut idle) = (0, 0);
    while idle < 4 {
        if !conn.wants_write() && fed < payload.len() {
            let end = payload.len().min(fed + (16 << 10));
            fed += conn.writer().write(&payload[fed..end]).unwrap();
        }
        if !conn.wants_write() {
            return fed;
        }
        match conn.write_tls(socket) {
            Ok(_) => idle = 0,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => idle += 1,
            Err(e) => panic!("writing to the server: {e}"),
        }
    }
    fed
}

/// Read `len` bytes of plaintext, writing out what the session still holds meanwhile.
fn read_back(conn: &mut ClientConnection, socket: &mut TcpStream, len: usize) -> Vec<u8> {
    socket.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + PATIENCE * 3;
    let mut back = Vec::with_capacity(len);
    let mut chunk = vec![0u8; 64 << 10];
    while back.len() < len {
        assert!(Instant::now() < deadline, "{} of {len} bytes came back", back.len());
        if conn.wants_write() {
            match conn.write_tls(socket) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("writing to the server: {e}"),
            }
        }
        match conn.read_tls(socket) {
            Ok(0) => panic!("the server closed after {} of {len} bytes", back.len()),
            Ok(_) => {
                conn.process_new_packets().unwrap();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading from the server: {e}"),
        }
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => panic!("close_notify after {} of {len} bytes", back.len()),
                Ok(n) => back.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading plaintext: {e}"),
            }
        }
    }
    back
}

/// A name nobody on the port serves, and no name at all, get the `unrecognized_name`
/// alert (rustls and openssl see it) and are counted; the port has no default.
#[test]
fn an_unknown_name_gets_unrecognized_name() {
    let hood = Neighbourhood::start(|_| String::new(), "");
    let during = hood.beside(|| {
        let err = TlsClient::try_connect(hood.port, &hood.pki.ca, Hello { name: "nobody.test", ..Hello::default() })
            .err()
            .expect("a handshake for a name nobody serves fails");
        assert!(err.to_string().to_lowercase().contains("unrecogni"), "{err}");
        let out = s_client(hood.port, &["-servername", "nobody.test"], b"");
        assert!(out.contains("unrecognized name"), "{out}");
        // An IP address is not sent as a server name.
        let err = TlsClient::try_connect(hood.port, &hood.pki.ca, Hello { name: "127.0.0.1", ..Hello::default() })
            .err()
            .expect("a handshake without a name fails");
        assert!(err.to_string().to_lowercase().contains("unrecogni"), "{err}");
        hood.wait_for_metric(&hood.refused("unrecognized_name"), 3);
    });
    assert_eq!(hood.metric(&hood.refused("unrecognized_name")), 3);
    eprintln!("the neighbour completed {during} round trips while unknown names came");
    hood.finish();
}

/// With client certificates required, one from another CA (and none at all) ends the
/// handshake, counted as failed; one from the listener's CA is served.
#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let mut identity: Option<Pair> = None;
    let hood = Neighbourhood::start(
        |pki| {
            identity = Some(pki.client("alice"));
            format!("client-ca = \"{}\"\nclient-auth = \"required\"", pki.ca.display())
        },
        "",
    );
    let identity = identity.unwrap();
    let mut strangers = Pki::new("a stranger's CA");
    let stranger = strangers.client("mallory");
    let during = hood.beside(|| {
        let hello = |identity| Hello { name: VICTIM, alpn: &[], identity };
        let answer = try_exchange(hood.port, &hood.pki.ca, hello(Some(&identity)), "known");
        assert_eq!(answer.unwrap(), "known");
        let answer = try_exchange(hood.port, &hood.pki.ca, hello(Some(&stranger)), "stranger");
        assert!(answer.is_err(), "a certificate from another CA was served: {answer:?}");
        let answer = try_exchange(hood.port, &hood.pki.ca, hello(None), "nobody");
        assert!(answer.is_err(), "no certificate at all was served: {answer:?}");
        hood.wait_for_metric(&handshakes_key("victim", "failed"), 2);
    });
    assert_eq!(hood.metric(&handshakes_key("victim", "failed")), 2);
    assert_eq!(hood.metric(&handshakes_key("victim", "ok")), 1);
    eprintln!("the neighbour completed {during} round trips while strangers knocked");
    hood.finish();
}
