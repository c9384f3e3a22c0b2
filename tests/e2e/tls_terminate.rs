//! TLS termination end to end (issue 17, points 1 and 8): ECDSA and RSA certificates,
//! TLS 1.2 and 1.3, a listener's ALPN list, resumption by ticket and by session id,
//! client certificates required and optional, the handler contract over TLS (plaintext
//! counted, buffers bounded in plaintext, close_notify on close and shutdown), and every
//! example plugin served over TLS unchanged. Clients nobody here wrote (`openssl
//! s_client`, `curl`) stand beside the rustls one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::admin::admin_table;
use crate::bounded::{admin_address, request};
use crate::harness::{PATIENCE, Server, listener, plugins, sandport, stalls_at, totals};
use crate::tls_kit::{Hello, Pair, Pki, TlsClient, client_config, s_client, tls_table};

/// The listener every test here serves: `plugin` behind `pair`, with `tls` lines in
/// `[listener.tls]` and `extra` lines (keys, then tables) before it.
fn tls_listener(plugin: &str, pair: &Pair, tls: &str, extra: &str) -> String {
    listener("tls", plugin, &format!("{extra}\n{}", tls_table(pair, tls)))
}

/// A server with one TLS listener, `tls`, serving `plugin` for `name`.
fn serve(pki: &mut Pki, name: &str, plugin: &str, tls: &str, extra: &str) -> Server {
    let pair = pki.server(&[name]);
    Server::start(&tls_listener(plugin, &pair, tls, extra))
}

/// A hello that asks for `name` and offers nothing else.
fn hello(name: &str) -> Hello<'_> {
    Hello { name, ..Hello::default() }
}

/// `openssl s_client` against `addr` asking for `name`, trusting `ca`, with `args`.
///
/// What the server sends back is in its output, but not always at the start of a line:
/// s_client writes it at once, between pieces of its own buffered report (a session
/// ticket's dump may be cut mid-line), so tests look for `text\n`, not `\ntext\n`.
/// Without `-quiet` it closes at the end of its input; with it, it would wait for the
/// server's idle timeout.
fn openssl(addr: SocketAddr, ca: &Path, name: &str, args: &[&str], input: &[u8]) -> String {
    let mut all = vec!["-servername", name, "-CAfile", ca.to_str().unwrap()];
    all.extend_from_slice(args);
    s_client(addr, &all, input)
}

/// `count` bytes of a pattern that a shifted or dropped byte would change.
fn pattern(count: usize, seed: usize) -> Vec<u8> {
    (0..count).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Write `payload` through an echo in pieces, reading each back before the next.
fn echo_round_trip(client: &mut TlsClient, payload: &[u8]) {
    for (n, piece) in payload.chunks(16 << 10).enumerate() {
        client.write(piece);
        assert!(client.bytes(piece.len()) == piece, "piece {n} came back altered");
    }
}

/// One exchange with an echo: connect, wait a moment for the server's verdict on the
/// handshake (with TLS 1.3 a refused client certificate is told after the client has
/// finished its side), then send a line and read it back. The line, or why the
/// session ended.
fn echo_once(addr: SocketAddr, ca: &Path, hello: Hello) -> Result<String, String> {
    let config = Arc::new(client_config(ca, &hello));
    let name = ServerName::try_from(hello.name.to_owned()).unwrap();
    let socket = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    socket.set_write_timeout(Some(PATIENCE)).unwrap();
    let mut stream = StreamOwned::new(ClientConnection::new(config, name).unwrap(), socket);
    let verdict = |err: std::io::Error| {
        assert!(!matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
        err.to_string()
    };
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(verdict)?;
    }
    // Bytes sent into a refusal would turn the server's alert into a reset.
    stream.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(0) => return Err("closed".to_owned()),
        Ok(_) => panic!("the echo spoke first"),
        Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        Err(err) => return Err(err.to_string()),
    }
    stream.sock.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"ping\n").map_err(verdict)?;
    let mut line = String::new();
    match BufReader::new(&mut stream).read_line(&mut line) {
        Ok(0) => Err("closed".to_owned()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(err) => Err(verdict(err)),
    }
}

/// A sample of the server's `/metrics` (its admin API must be on).
fn metric(server: &Server, key: &str) -> f64 {
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_address(server).port()));
    let reply = request(admin, "GET /metrics HTTP/1.1", b"", PATIENCE).expect("/metrics answers");
    let line = reply.body.lines().find(|line| line.rsplit_once(' ').is_some_and(|(k, _)| k == key));
    let line = line.unwrap_or_else(|| panic!("no sample {key} in:\n{}", reply.body));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// Compile `wasm` into the suite's cache first: a Python or JavaScript component
/// takes longer to compile than a server is given to start.
fn warm(wasm: &Path) {
    let output = sandport().arg("check").arg(wasm).output().unwrap();
    assert!(output.status.success(), "sandport check {}: {}", wasm.display(), String::from_utf8_lossy(&output.stderr));
}

#[test]
fn ecdsa_and_rsa_certificates_serve_tls12_and_tls13() {
    let mut pki = Pki::new("test CA");
    let ecdsa = pki.server(&["ecdsa.test"]);
    let rsa = pki.rsa_server(&["rsa.test"]);
    let config = listener("ecdsa", plugins::ECHO, &tls_table(&ecdsa, ""))
        + &listener("rsa", plugins::ECHO, &tls_table(&rsa, ""));
    let server = Server::start(&config);
    for (name, key, bits) in [("ecdsa", "ECDSA", "256"), ("rsa", "RSA", "2048")] {
        let addr = server.addr(name);
        let host = format!("{name}.test");
        for (version, protocol) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
            let out = openssl(addr, &pki.ca, &host, &[version], b"over openssl\n");
            assert!(out.contains(&format!("New, {protocol}, Cipher is ")), "{name} {version}:\n{out}");
            assert!(out.contains("Verify return code: 0 (ok)"), "{name} {version}:\n{out}");
            assert!(out.contains(&format!("Server public key is {bits} bit")), "{name} {version}:\n{out}");
            assert!(out.contains("over openssl\n"), "{name} {version}: no echo:\n{out}");
            if version == "-tls1_2" {
                assert!(out.contains(&format!("Cipher is ECDHE-{key}-")), "{name}: the {key} key signs:\n{out}");
            }
        }
        let mut client = TlsClient::connect(addr, &pki.ca, hello(&host));
        assert_eq!(client.session().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(client.ask("over rustls"), "over rustls");
    }
}

#[test]
fn alpn_agrees_from_the_listener_list_and_none_without_one() {
    let mut pki = Pki::new("test CA");
    let with = pki.server(&["alpn.test"]);
    let without = pki.server(&["plain.test"]);
    let config = listener("alpn", plugins::ECHO, &tls_table(&with, "alpn = [\"h2\", \"http/1.1\"]"))
        + &listener("none", plugins::ECHO, &tls_table(&without, ""));
    let server = Server::start(&config);
    let (alpn, none) = (server.addr("alpn"), server.addr("none"));

    // The listener's order decides among the protocols a client offers.
    for (offered, agreed) in [(&["http/1.1"][..], "http/1.1"), (&["http/1.1", "h2"], "h2"), (&["h2"], "h2")] {
        let mut client = TlsClient::connect(alpn, &pki.ca, Hello { name: "alpn.test", alpn: offered, identity: None });
        assert_eq!(client.session().alpn_protocol(), Some(agreed.as_bytes()), "offered {offered:?}");
        assert_eq!(client.ask("agreed"), "agreed");
    }
    let offered = Hello { name: "alpn.test", alpn: &["spdy/3"], identity: None };
    let refused = TlsClient::try_connect(alpn, &pki.ca, offered).err().expect("no protocol in common: refused");
    assert!(refused.to_string().contains("NoApplicationProtocol"), "{refused}");
    let mut client = TlsClient::connect(alpn, &pki.ca, hello("alpn.test"));
    assert_eq!(client.session().alpn_protocol(), None, "a client that offers nothing agrees nothing");
    assert_eq!(client.ask("no ALPN"), "no ALPN");

    let mut client = TlsClient::connect(none, &pki.ca, Hello { name: "plain.test", alpn: &["h2"], identity: None });
    assert_eq!(client.session().alpn_protocol(), None, "a listener without a list agrees none");
    assert_eq!(client.ask("still served"), "still served");

    let out = openssl(alpn, &pki.ca, "alpn.test", &["-alpn", "http/1.1,h2"], b"");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let out = openssl(none, &pki.ca, "plain.test", &["-alpn", "h2,http/1.1"], b"");
    assert!(out.contains("No ALPN negotiated"), "{out}");
}

#[test]
fn openssl_resumes_by_tls13_ticket_tls12_ticket_and_tls12_session_id() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "resume.test", plugins::ECHO, "", "");
    let addr = server.addr("tls");
    let dir = tempfile::tempdir().unwrap();
    let cases = [("TLSv1.3", &["-tls1_3"][..]), ("TLSv1.2", &["-tls1_2"]), ("TLSv1.2", &["-tls1_2", "-no_ticket"])];
    for (n, (protocol, flags)) in cases.into_iter().enumerate() {
        let session = dir.path().join(format!("session-{n}.pem"));
        let session = session.to_str().unwrap();
        let first = openssl(addr, &pki.ca, "resume.test", &[flags, &["-sess_out", session][..]].concat(), b"first\n");
        assert!(first.contains(&format!("New, {protocol}, ")), "{flags:?}, first:\n{first}");
        assert!(first.contains("first\n"), "{flags:?}, first:\n{first}");
        let again = openssl(addr, &pki.ca, "resume.test", &[flags, &["-sess_in", session][..]].concat(), b"again\n");
        assert!(again.contains(&format!("Reused, {protocol}, ")), "{flags:?} did not resume:\n{again}");
        assert!(again.contains("again\n"), "{flags:?}, resumed:\n{again}");
        if flags.contains(&"-no_ticket") {
            assert!(!first.contains("TLS session ticket:"), "a ticket was sent though not asked for:\n{first}");
        }
    }
    let (_, log) = server.terminate();
    let line = totals(&log, "tls");
    assert!(line.contains("handshakes=6 ") && line.contains("handshakes_failed=0 "), "{line}");
}

#[test]
fn required_client_certificates_refuse_anonymous_and_strangers() {
    let mut pki = Pki::new("test CA");
    let mut clients = Pki::new("client CA");
    let mut strangers = Pki::new("another CA");
    let (member, stranger) = (clients.client("member"), strangers.client("member"));
    let tls = format!("client-ca = \"{}\"\nclient-auth = \"required\"", clients.ca.display());
    let server = serve(&mut pki, "members.test", plugins::ECHO, &tls, "");
    let addr = server.addr("tls");
    let with = |identity| Hello { name: "members.test", alpn: &[], identity };

    assert_eq!(echo_once(addr, &pki.ca, with(Some(&member))), Ok("ping".to_owned()));
    let anonymous = echo_once(addr, &pki.ca, with(None));
    assert!(anonymous.is_err(), "served without a client certificate: {anonymous:?}");
    let foreign = echo_once(addr, &pki.ca, with(Some(&stranger)));
    assert!(foreign.is_err(), "served with a certificate of another CA: {foreign:?}");

    let cert = ["-cert", member.cert.to_str().unwrap(), "-key", member.key.to_str().unwrap()];
    let out = openssl(addr, &pki.ca, "members.test", &cert, b"with a certificate\n");
    assert!(out.contains("with a certificate\n"), "{out}");
    let out = openssl(addr, &pki.ca, "members.test", &[], b"");
    assert!(out.contains("alert certificate required"), "{out}");
    let cert = ["-cert", stranger.cert.to_str().unwrap(), "-key", stranger.key.to_str().unwrap()];
    let out = openssl(addr, &pki.ca, "members.test", &cert, b"");
    assert!(out.contains("alert unknown ca"), "{out}");

    let (_, log) = server.terminate();
    let line = totals(&log, "tls");
    assert!(line.contains("handshakes=2 ") && line.contains("handshakes_failed=4 "), "{line}");
    assert!(line.contains("accepted=2 "), "only the members reached the echo: {line}");
}

#[test]
fn optional_client_certificates_serve_either_way() {
    let mut pki = Pki::new("test CA");
    let mut clients = Pki::new("client CA");
    let member = clients.client("member");
    let mut strangers = Pki::new("another CA");
    let stranger = strangers.client("member");
    let tls = format!("client-ca = \"{}\"\nclient-auth = \"optional\"", clients.ca.display());
    let server = serve(&mut pki, "anyone.test", plugins::ECHO, &tls, "");
    let addr = server.addr("tls");
    let with = |identity| Hello { name: "anyone.test", alpn: &[], identity };

    assert_eq!(echo_once(addr, &pki.ca, with(Some(&member))), Ok("ping".to_owned()));
    assert_eq!(echo_once(addr, &pki.ca, with(None)), Ok("ping".to_owned()));
    let foreign = echo_once(addr, &pki.ca, with(Some(&stranger)));
    assert!(foreign.is_err(), "a certificate that is offered is checked, optional or not: {foreign:?}");

    let cert = ["-cert", member.cert.to_str().unwrap(), "-key", member.key.to_str().unwrap()];
    let out = openssl(addr, &pki.ca, "anyone.test", &cert, b"with\n");
    assert!(out.contains("with\n"), "{out}");
    let out = openssl(addr, &pki.ca, "anyone.test", &[], b"without\n");
    assert!(out.contains("without\n"), "{out}");
}

#[test]
fn recv_and_send_count_plaintext_bytes() {
    const TOTAL: usize = 1 << 20;
    let mut pki = Pki::new("test CA");
    let pair = pki.server(&["count.test"]);
    let server = Server::start(&(admin_table("127.0.0.1:0", None) + &tls_listener(plugins::ECHO, &pair, "", "")));
    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("count.test"));
    let payload = pattern(TOTAL, 3);
    echo_round_trip(&mut client, &payload);

    let (bytes_in, bytes_out) =
        (r#"sandport_bytes_in_total{listener="tls"}"#, r#"sandport_bytes_out_total{listener="tls"}"#);
    let deadline = Instant::now() + PATIENCE;
    while metric(&server, bytes_out) < TOTAL as f64 {
        assert!(Instant::now() < deadline, "{bytes_out} stayed at {}", metric(&server, bytes_out));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The records, their headers and tags, and the handshake are more bytes than these.
    assert_eq!(metric(&server, bytes_in), TOTAL as f64, "RECV counts plaintext");
    assert_eq!(metric(&server, bytes_out), TOTAL as f64, "sends count plaintext");
}

#[test]
fn a_full_recv_buffer_pauses_reading_and_loses_nothing() {
    const TOTAL: usize = 24 << 20;
    const LIMIT: usize = 64 << 10;
    let mut pki = Pki::new("test CA");
    let limits = format!("[listener.limits]\nrecv-buffer = {LIMIT}");
    let server = serve(&mut pki, "hold.test", plugins::FIXTURE_PROBE, "", &limits);
    let addr = server.addr("tls");
    let mut watcher = TlsClient::connect(addr, &pki.ca, hello("hold.test"));
    let mut held = TlsClient::connect(addr, &pki.ca, hello("hold.test"));
    let id = held.ask("id");
    let id = id.strip_prefix("id ").unwrap().to_owned();
    assert_eq!(held.ask("hold"), "holding");
    let rss_before = server.rss();

    let written = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let written = &written;
        // The writer hands its connection back rather than dropping it: its end of
        // stream would reach the probe, which closes at RECV 0, while the last bytes
        // may still wait in the receive buffer.
        let writer = s.spawn(move || {
            for piece in pattern(TOTAL, 5).chunks(16 << 10) {
                held.write(piece);
                written.fetch_add(piece.len(), Ordering::SeqCst);
            }
            held
        });
        let stalled = stalls_at(written);
        assert!(stalled < TOTAL, "the server read on with its receive buffer full");
        let grown = server.rss().saturating_sub(rss_before);
        assert!(grown < 16 << 20, "server memory grew by {grown} bytes while {stalled} bytes were pushed at it");

        // Each drain empties the receive buffer; the host reads and decrypts again up to
        // its limit, and every plaintext byte arrives once.
        let mut drained = 0;
        let deadline = Instant::now() + PATIENCE;
        while drained < TOTAL {
            let answer = watcher.ask(&format!("drain {id}"));
            let n: usize = answer.strip_prefix("drained ").and_then(|n| n.parse().ok()).expect(&answer);
            assert!(n <= LIMIT, "the receive buffer held {n} bytes, over its limit of {LIMIT}");
            drained += n;
            assert!(Instant::now() < deadline, "only {drained} of {TOTAL} bytes arrived");
        }
        assert_eq!(drained, TOTAL);
        drop(writer.join().unwrap());
    });
}

#[test]
fn the_send_buffer_limit_counts_plaintext() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "send.test", plugins::FIXTURE_PROBE, "", "[listener.limits]\nsend-buffer = 4096");
    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("send.test"));
    assert_eq!(client.ask("room"), "room 4096");
    assert_eq!(client.ask("big 4097"), "err limit-exceeded");
    client.write(b"big 1000\n");
    assert_eq!(client.line(), format!("{}ok {}", "x".repeat(1000), 4096 - 1000));
    // All of the limit in plaintext, more than 4096 bytes once in records.
    client.write(b"big 4096\n");
    assert_eq!(client.bytes(4096), vec![b'x'; 4096]);
    assert_eq!(client.ask("room"), "room 4096");
}

#[test]
fn close_after_send_ends_with_close_notify_after_the_data() {
    const BIG: usize = 300_000;
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "close.test", plugins::FIXTURE_PROBE, "", "");
    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("close.test"));
    client.write(format!("big {BIG}\nclose-after bye\n").as_bytes());
    let (bytes, close_notify) = client.until_end();
    assert!(close_notify, "the stream ended without close_notify after {} bytes", bytes.len());
    assert!(bytes.len() > BIG && bytes[..BIG].iter().all(|&b| b == b'x'), "{} bytes, not the data first", bytes.len());
    let rest = String::from_utf8_lossy(&bytes[BIG..]);
    assert_eq!(rest, format!("ok {}\nbye\n", (1 << 20) - BIG), "what followed the data");
}

#[test]
fn shutdown_sends_close_notify_and_keeps_reading() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "half.test", plugins::FIXTURE_PROBE, "", "");
    let addr = server.addr("tls");
    let mut listening = TlsClient::connect(addr, &pki.ca, hello("half.test"));
    let id = listening.ask("id");
    let id = id.strip_prefix("id ").unwrap();
    let mut client = TlsClient::connect(addr, &pki.ca, hello("half.test"));
    assert_eq!(client.ask("keep-open"), "keeping");
    assert_eq!(client.ask("shutdown"), "ok");
    let (rest, close_notify) = client.until_end();
    assert!(close_notify && rest.is_empty(), "{rest:?}, close_notify: {close_notify}");

    client.write(format!("send {id} still heard\n").as_bytes());
    assert_eq!(listening.line(), "still heard", "the half-closed connection still takes commands");
    client.write(format!("send {id} and again\n").as_bytes());
    assert_eq!(listening.line(), "and again");
}

#[test]
fn chat_relays_between_two_tls_clients() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "chat.test", plugins::CHAT, "", "");
    let addr = server.addr("tls");
    let join = || {
        let mut client = TlsClient::connect(addr, &pki.ca, hello("chat.test"));
        let welcome = client.line();
        let name = welcome.strip_prefix("* welcome ").unwrap_or_else(|| panic!("not a welcome: {welcome}")).to_owned();
        (client, name)
    };
    let (mut a, name_a) = join();
    let (mut b, name_b) = join();
    assert_eq!(a.line(), format!("* {name_b} joined"));
    a.write(b"hello over TLS\n");
    assert_eq!(b.line(), format!("{name_a}: hello over TLS"));
    b.write(b"and back\r\n");
    assert_eq!(a.line(), format!("{name_b}: and back"));
    b.close_notify();
    drop(b);
    assert_eq!(a.line(), format!("* {name_b} left"));
}

#[test]
fn http_hello_serves_curl_with_keep_alive() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "hello.test", plugins::HTTP_HELLO, "alpn = [\"http/1.1\"]", "");
    let port = server.addr("tls").port();
    let url = format!("https://hello.test:{port}/");
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--resolve", &format!("hello.test:{port}:127.0.0.1"), "--cacert", pki.ca.to_str().unwrap()])
        .args(["--write-out", "[%{http_code} %{num_connects} %{http_version}]\n", &url, &url, &url])
        .output()
        .expect("curl is installed");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let body = "hello from sandport\n";
    let expected = format!("{body}[200 1 1.1]\n{body}[200 0 1.1]\n{body}[200 0 1.1]\n");
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "three 200s over one TLS connection");

    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("hello.test"));
    client.write(b"GET / HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n");
    let (reply, close_notify) = client.until_end();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with(body), "{reply}");
    assert!(close_notify, "the closing reply ended without close_notify");
}

#[test]
fn tcp_proxy_forwards_plaintext_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let mut pki = Pki::new("test CA");
    let extra = format!("allow-connect = [\"{upstream_addr}\"]\n[listener.config]\nupstream = \"{upstream_addr}\"");
    let server = serve(&mut pki, "proxy.test", plugins::TCP_PROXY, "", &extra);
    let payload = pattern(256 << 10, 11);
    std::thread::scope(|s| {
        let heard = s.spawn(|| {
            // The upstream echoes, and keeps what it heard.
            let (stream, _) = upstream.accept().unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut heard = vec![0; payload.len()];
            let mut reader = stream.try_clone().unwrap();
            let mut writer = stream;
            for piece in heard.chunks_mut(16 << 10) {
                reader.read_exact(piece).unwrap();
                writer.write_all(piece).unwrap();
            }
            heard
        });
        let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("proxy.test"));
        echo_round_trip(&mut client, &payload);
        assert!(heard.join().unwrap() == payload, "the upstream heard something other than the plaintext");
    });
}

#[test]
fn the_echo_serves_over_tls() {
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "echo.test", plugins::ECHO, "", "");
    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("echo.test"));
    echo_round_trip(&mut client, &pattern(2 << 20, 1));
    let out = openssl(server.addr("tls"), &pki.ca, "echo.test", &[], b"from openssl\n");
    assert!(out.contains("from openssl\n"), "{out}");
}

/// The echo of `lang` (`plugins/LANG/echo`, built with its `make`) over TLS.
fn language_echo(lang: &str) {
    let folder = Path::new(plugins::WORKSPACE).join("plugins").join(lang).join("echo");
    let wasm = plugins::make(&folder, "echo").unwrap_or_else(|e| panic!("{lang} echo: {e}"));
    warm(&wasm);
    let mut pki = Pki::new("test CA");
    let server = serve(&mut pki, "echo.test", wasm.to_str().unwrap(), "", "");
    let mut client = TlsClient::connect(server.addr("tls"), &pki.ca, hello("echo.test"));
    assert_eq!(client.ask(&format!("{lang} over TLS")), format!("{lang} over TLS"));
    echo_round_trip(&mut client, &pattern(256 << 10, 2));
    let out = openssl(server.addr("tls"), &pki.ca, "echo.test", &[], b"from openssl\n");
    assert!(out.contains("from openssl\n"), "{lang}: {out}");
}

#[test]
fn the_c_echo_serves_over_tls() {
    language_echo("c");
}

#[test]
fn the_zig_echo_serves_over_tls() {
    language_echo("zig");
}

#[test]
fn the_python_echo_serves_over_tls() {
    language_echo("python");
}

#[test]
fn the_js_echo_serves_over_tls() {
    language_echo("js");
}
