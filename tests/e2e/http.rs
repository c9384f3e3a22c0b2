//! The http-hello plugin: a real HTTP client with keep-alive, and raw sockets for
//! pipelining, partial requests and garbage.

use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::harness::{Server, listener, plugins};

const BODY: &str = "hello from sandport\n";

fn http_server() -> Server {
    Server::start(&listener("http", plugins::HTTP_HELLO, ""))
}

/// Split raw bytes into responses: (status line, body), using Content-Length.
fn responses(mut raw: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = std::str::from_utf8(&raw[..end]).unwrap();
        let status = head.lines().next().unwrap().to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap();
        let body = String::from_utf8(raw[end + 4..end + 4 + length].to_vec()).unwrap();
        out.push((status, body));
        raw = &raw[end + 4 + length..];
    }
    assert!(raw.is_empty(), "trailing bytes: {raw:?}");
    out
}

#[test]
fn curl_reuses_one_connection_for_several_requests() {
    let server = http_server();
    let url = format!("http://{}/", server.addr("http"));
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--http1.1", "--max-time", "20"])
        .args(["--write-out", "[%{http_code} %{num_connects}]\n"])
        .args([&url, &url, &url])
        .output()
        .expect("curl must be installed to run this test");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let expected = format!("{BODY}[200 1]\n{BODY}[200 0]\n{BODY}[200 0]\n");
    assert_eq!(text, expected, "three 200s over one connection (num_connects 1, 0, 0)");
}

#[test]
fn answers_pipelined_requests_in_order() {
    let server = http_server();
    let mut client = server.connect("http");
    let request = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    client.write(format!("{request}{request}{last}").as_bytes());
    let all = client.until_eof();
    let got = responses(&all);
    assert_eq!(got.len(), 3, "{}", String::from_utf8_lossy(&all));
    for (status, body) in got {
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, BODY);
    }
}

#[test]
fn waits_for_a_request_split_across_reads() {
    let server = http_server();
    let mut client = server.connect("http");
    let request = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    for chunk in request.chunks(3) {
        client.write(chunk);
        thread::sleep(Duration::from_millis(5));
    }
    client.write(b"GET / HTTP/1.0\r\n\r\n");
    let got = responses(&client.until_eof());
    assert_eq!(got, vec![("HTTP/1.1 200 OK".into(), BODY.into()); 2]);
}

#[test]
fn garbage_gets_400_and_a_close() {
    let server = http_server();
    let mut client = server.connect("http");
    client.write(b"\x00\x01 this is not HTTP\r\n\r\n");
    let got = responses(&client.until_eof());
    assert_eq!(got, vec![("HTTP/1.1 400 Bad Request".into(), String::new())]);
}

#[test]
fn endless_headers_get_400() {
    let server = http_server();
    let mut client = server.connect("http");
    // 20 KB of headers, past the 16 KiB limit, in one write: the server reads it all
    // before it answers and closes. Written piecemeal, the pieces still in flight when
    // it closes would make the close a reset, failing the client's next write.
    let header = format!("X-Filler: {}\r\n", "y".repeat(1000));
    client.write(format!("GET / HTTP/1.1\r\n{}", header.repeat(20)).as_bytes());
    let got = responses(&client.until_eof());
    assert_eq!(got, vec![("HTTP/1.1 400 Bad Request".into(), String::new())]);
}

/// Writes `bytes` from another thread (a flood the server answers while it arrives
/// would otherwise deadlock with a client that only reads afterwards), optionally
/// half-closing after them, and reads everything until EOF.
fn flood(server: &Server, bytes: Vec<u8>, half_close: bool) -> Vec<(String, String)> {
    let mut client = server.connect("http");
    let mut writer = client.stream().try_clone().unwrap();
    let sender = thread::spawn(move || {
        std::io::Write::write_all(&mut writer, &bytes).unwrap();
        if half_close {
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        }
    });
    let all = client.until_eof();
    sender.join().unwrap();
    responses(&all)
}

#[test]
fn a_flood_of_pipelined_requests_through_a_small_send_buffer_gets_every_reply() {
    const REQUESTS: usize = 5000;
    let server = Server::start(&listener("http", plugins::HTTP_HELLO, "[listener.limits]\nsend-buffer = 1024"));
    let mut bytes = "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS - 1);
    bytes.push_str("GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let got = flood(&server, bytes.into_bytes(), false);
    assert_eq!(got.len(), REQUESTS);
    assert!(got.iter().all(|r| *r == ("HTTP/1.1 200 OK".to_owned(), BODY.to_owned())));
}

#[test]
fn a_client_that_half_closes_after_a_flood_gets_every_reply_then_eof() {
    const REQUESTS: usize = 3000;
    let server = Server::start(&listener("http", plugins::HTTP_HELLO, "[listener.limits]\nsend-buffer = 2048"));
    let bytes = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
    let got = flood(&server, bytes.into_bytes(), true);
    assert_eq!(got.len(), REQUESTS);
}

#[test]
fn bodies_are_skipped_whatever_their_size() {
    let server = http_server();
    let mut bytes = Vec::new();
    for length in [0, 1, 5000, 16 * 1024, 100_000, 1 << 20] {
        bytes.extend_from_slice(format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n").as_bytes());
        // Bodies that look like requests must not be answered.
        bytes.extend("GET / HTTP/1.1\r\n\r\n".bytes().cycle().take(length));
    }
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let got = flood(&server, bytes, false);
    assert_eq!(got, vec![("HTTP/1.1 200 OK".into(), BODY.into()); 7]);
}

#[test]
fn http_1_0_keeps_the_connection_only_when_asked() {
    let server = http_server();
    let mut client = server.connect("http");
    client.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let kept = client.bytes(OK_KEEP_ALIVE_LEN);
    assert!(
        String::from_utf8_lossy(&kept).contains("Connection: keep-alive\r\n"),
        "{}",
        String::from_utf8_lossy(&kept)
    );
    client.write(b"GET / HTTP/1.0\r\n\r\n");
    let last = client.until_eof();
    let text = String::from_utf8_lossy(&last);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Connection: close\r\n"), "{text}");
}

/// The length of the reply to an HTTP/1.0 request that asks to keep the connection.
const OK_KEEP_ALIVE_LEN: usize =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello from sandport\n"
        .len();

#[test]
fn pipelined_requests_with_big_headers_are_all_answered() {
    // Each read of the buffer holds a few requests whose replies fit at once: nothing
    // refuses them, so no `send` event comes, and the rest must be read right away.
    const REQUESTS: usize = 200;
    let server = http_server();
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "z".repeat(3000));
    let mut bytes = request.repeat(REQUESTS);
    bytes.push_str("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let got = flood(&server, bytes.into_bytes(), false);
    assert_eq!(got.len(), REQUESTS + 1);
}
