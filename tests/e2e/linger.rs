//! The lingering close: a handler that answers and closes after send while its peer is
//! still sending. The host writes the answer out, shuts its write side (the peer reads
//! EOF after the last byte), and reads and discards the rest of the upload until the
//! peer's EOF or `linger-ms`, so unread input never turns the close into a reset that
//! destroys the answer. http-hello answers a malformed request with a 400 and closes
//! after send, ignoring whatever follows.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{PATIENCE, Server, listener, plugins, totals};
use crate::neighbour::{conn_id, hits, number, wait_until};

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What http-hello cannot parse: it answers 400 to the first bytes.
const GARBAGE: &[u8] = b"\x00\x01 this is not HTTP\r\n\r\n";

/// Upload chunk size; the body is a run of these.
const CHUNK: usize = 64 * 1024;

fn http_server(limits: &str) -> Server {
    Server::start(&listener("http", plugins::HTTP_HELLO, &format!("[listener.limits]\n{limits}")))
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr("http")).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Read until EOF; a reset fails the test (it would have destroyed the answer).
fn read_to_clean_eof(stream: &mut TcpStream, server: &Server) -> Vec<u8> {
    let mut got = Vec::new();
    if let Err(err) = stream.read_to_end(&mut got) {
        panic!("expected the answer and a clean EOF, got {err} after {} bytes\n{}", got.len(), server.log());
    }
    got
}

/// Upload `head`, then a body of `chunks` chunks (endless if `None`) unless `stop` is
/// raised first, then half-close. Returns how the upload ended: the body bytes written
/// and the error that cut it short, with when it came.
fn upload(
    mut stream: TcpStream,
    head: &'static [u8],
    chunks: Option<usize>,
    stop: &'static AtomicBool,
) -> JoinHandle<(usize, Option<(std::io::Error, Instant)>)> {
    std::thread::spawn(move || {
        let body = vec![b'b'; CHUNK];
        let mut written = 0;
        if let Err(err) = stream.write_all(head) {
            return (written, Some((err, Instant::now())));
        }
        while chunks.is_none_or(|n| written < n * CHUNK) && !stop.load(Ordering::SeqCst) {
            if let Err(err) = stream.write_all(&body) {
                return (written, Some((err, Instant::now())));
            }
            written += CHUNK;
        }
        let _ = stream.shutdown(Shutdown::Write);
        (written, None)
    })
}

/// A flag that is never raised: uploads that stop by themselves.
static NEVER: AtomicBool = AtomicBool::new(false);

#[test]
fn an_upload_answered_early_gets_the_whole_answer_and_a_clean_eof() {
    const ROUNDS: usize = 20;
    const CHUNKS: usize = 64; // 4 MiB, four times the receive buffer
    let server = http_server("linger-ms = 60000");
    for round in 0..ROUNDS {
        let mut stream = connect(&server);
        let uploader = upload(stream.try_clone().unwrap(), GARBAGE, Some(CHUNKS), &NEVER);
        let answer = read_to_clean_eof(&mut stream, &server);
        assert_eq!(answer, BAD_REQUEST, "round {round}: {:?}", String::from_utf8_lossy(&answer));
        let (written, error) = uploader.join().unwrap();
        // The host went on reading: the whole upload went through, with no reset.
        assert!(error.is_none(), "round {round}: the upload failed after {written} bytes: {error:?}");
        assert_eq!(written, CHUNKS * CHUNK);
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "http");
    assert_eq!(number(line, "accepted"), ROUNDS as u64, "{line}");
    assert_eq!(number(line, "closed"), ROUNDS as u64, "{line}");
    assert_eq!(hits(line, "linger-ms"), 0, "{line}");
}

/// How much later than `linger-ms` the cut-off may come on a busy machine.
const LINGER_SLACK: Duration = Duration::from_millis(1500);

#[test]
fn a_peer_that_never_stops_sending_is_cut_off_at_linger_ms() {
    let linger = Duration::from_millis(500);
    let server = http_server(&format!("linger-ms = {}", linger.as_millis()));
    let mut stream = connect(&server);
    let started = Instant::now();
    let uploader = upload(stream.try_clone().unwrap(), GARBAGE, None, &NEVER);
    let answer = read_to_clean_eof(&mut stream, &server);
    assert_eq!(answer, BAD_REQUEST);
    let (written, error) = uploader.join().unwrap();
    let (error, cut_at) = error.expect("an endless upload ends only when the host cuts it off");
    assert!(
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the upload should end in a reset, not {error} ({written} bytes written)"
    );
    // The host lingered (it took bytes after its EOF) rather than resetting at once:
    // the linger began after the upload did, so the cut came linger-ms later at least.
    let lasted = cut_at - started;
    assert!(lasted >= linger, "the upload was cut off after {lasted:?}, linger-ms is {linger:?}");
    // And it cut the peer off at linger-ms, not at some longer time of its own: the
    // answer and the cut take milliseconds; the slack is for a busy machine.
    assert!(lasted < linger + LINGER_SLACK, "the upload was cut off after {lasted:?}, linger-ms is {linger:?}");
    server.wait_for_log(&["limit hit", "listener=http", "limit=linger-ms"]);
    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    assert_eq!(hits(totals(&log, "http"), "linger-ms"), 1, "{log}");
}

#[test]
fn a_lingering_connection_counts_toward_max_connections_but_blocks_nobody() {
    static STOP: AtomicBool = AtomicBool::new(false);
    let server = http_server("linger-ms = 120000\nmax-connections = 2");
    let get = |stream: &mut TcpStream| {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        read_to_clean_eof(stream, &server)
    };

    let mut lingering = connect(&server);
    let id = conn_id(&server, "http", &lingering);
    let uploader = upload(lingering.try_clone().unwrap(), GARBAGE, None, &STOP);
    assert_eq!(read_to_clean_eof(&mut lingering, &server), BAD_REQUEST);

    // While it lingers, a newcomer is served...
    let mut served = connect(&server);
    let served_id = conn_id(&server, "http", &served);
    let answer = get(&mut served);
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&answer));
    drop(served);
    wait_for_close(&server, "http", &served_id);

    // ...but the lingering socket still holds a slot: with the newcomer still open, a
    // third connection is refused at once.
    let mut held = connect(&server);
    wait_until_served(&server, &mut held);
    let mut refused = connect(&server);
    assert_eq!(read_to_clean_eof(&mut refused, &server), b"", "{}", server.log());
    drop(held);

    // Once the peer finishes its upload, the lingering connection closes by itself.
    STOP.store(true, Ordering::SeqCst);
    let (written, error) = uploader.join().unwrap();
    assert!(error.is_none(), "the upload failed after {written} bytes: {error:?}");
    wait_for_close(&server, "http", &id);

    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "http");
    assert_eq!(number(line, "refused"), 1, "{line}");
    assert_eq!(hits(line, "linger-ms"), 0, "{line}");
}

/// What the host's line for the close of connection `id` of listener `name` holds.
fn closed(name: &str, id: &str) -> [String; 2] {
    [format!("closed listener={name} "), format!(" conn={id} ")]
}

/// Wait until the server logs the close of connection `id` of listener `name`.
fn wait_for_close(server: &Server, name: &str, id: &str) {
    let [what, which] = closed(name, id);
    server.wait_for_log(&[&what, &which]);
}

/// The handler is done with a connection once its answer is out and the write side
/// shut: its CLOSE comes then, while the socket goes on lingering.
#[test]
fn the_handler_gets_its_close_when_the_write_side_is_shut() {
    static STOP: AtomicBool = AtomicBool::new(false);
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, "[listener.limits]\nlinger-ms = 120000"));
    let mut stream = TcpStream::connect(server.addr("probe")).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let id = conn_id(&server, "probe", &stream);
    let uploader = upload(stream.try_clone().unwrap(), b"close-after bye\n", None, &STOP);
    assert_eq!(read_to_clean_eof(&mut stream, &server), b"bye\n");

    // The probe logs `closed <id>` when it gets its CLOSE.
    server.wait_for_log(&["listener=probe", &format!("closed {}", id.trim_start_matches('#'))]);
    let [what, which] = closed("probe", &id);
    let lingering = !server.log().lines().any(|l| l.contains(&what) && l.contains(&which));
    assert!(lingering, "the upload still goes on, yet the socket was closed\n{}", server.log());

    STOP.store(true, Ordering::SeqCst);
    let (written, error) = uploader.join().unwrap();
    assert!(error.is_none(), "the upload failed after {written} bytes: {error:?}");
    wait_for_close(&server, "probe", &id);
    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
}

/// Wait until `stream` is accepted and served: an HTTP/1.1 request on it is answered
/// (the connection stays open).
fn wait_until_served(server: &Server, stream: &mut TcpStream) {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    wait_until("an answer on a held connection", || {
        let n = stream.read(&mut buf).unwrap_or_else(|err| panic!("{err}\n{}", server.log()));
        assert!(n > 0, "the held connection was closed\n{}", server.log());
        got.extend_from_slice(&buf[..n]);
        got.ends_with(b"hello from sandport\n")
    });
}
