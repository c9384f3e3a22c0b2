//! What stands between a client and its tenant (issue 17, points 6, 3 and 5): the
//! PROXY protocol header of a load balancer (v1 and v2, plaintext and TLS listeners;
//! the real client address reaches ACCEPT; a malformed header, or one from an address
//! not named, is closed and counted), TLS passthrough (the tcp-proxy forwards the raw
//! TLS of a routed name to an upstream that holds the key, beside a terminating tenant
//! on the same port), and outbound TLS (the tcp-proxy re-encrypts to its upstream, and
//! an upstream whose certificate does not check out fails the dial).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

use crate::admin::admin_table;
use crate::bounded::admin_address;
use crate::harness::{Client, Server, free_address, listener_at, plugins, totals};
use crate::neighbour::{lines, number};
use crate::tls_hostile::{handshakes_key, metric, raw, refused_key, rest, wait_for_metric};
use crate::tls_kit::{Hello, Pki, TlsClient, client_config, s_client, tls_table};

/// The v2 header's signature.
const V2_SIGNATURE: [u8; 12] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/// The v1 header of a client at 203.0.113.7:5555.
const V1: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n";

/// Connections that each land on either worker: all on the listener's own worker,
/// with no hand-over, about once in a thousand runs.
const HANDED_OVER_OR_NOT: usize = 10;

/// A v2 header (`PROXY`, TCP over IPv4) of a client at `source`.
fn v2(source: ([u8; 4], u16)) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source.0);
    header.extend([127, 0, 0, 1]);
    header.extend(source.1.to_be_bytes());
    header.extend(443u16.to_be_bytes());
    header
}

/// A v2 `LOCAL` header (a load balancer's own connection, a health check).
fn v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x20, 0x00, 0, 0]);
    header
}

/// A server of two workers behind a load balancer at 127.0.0.1: "lb", a plaintext
/// echo; "who", a tcp-proxy with no upstream, which logs the address its ACCEPT
/// carried and closes; "tls-lb", a TLS echo for `lb.test`; and "far", a plaintext echo
/// that trusts only 10.0.0.0/8. Each listener's shared instance lives on one worker,
/// and either worker may accept: a connection is handed over after its header about
/// half the time. Returns it, its CA and its admin API's address.
fn behind_a_load_balancer() -> (Server, Pki, SocketAddr) {
    let mut pki = Pki::new("sandport test CA");
    let pair = pki.server(&["lb.test"]);
    let trusted = "proxy-protocol = [\"127.0.0.1/32\"]\n";
    let any = "127.0.0.1:0";
    let config = "workers = 2\n".to_owned()
        + &listener_at("lb", any, plugins::ECHO, trusted)
        + &listener_at("who", any, plugins::TCP_PROXY, trusted)
        + &listener_at("tls-lb", any, plugins::ECHO, &format!("{trusted}{}", tls_table(&pair, "")))
        + &listener_at("far", any, plugins::ECHO, "proxy-protocol = [\"10.0.0.0/8\"]")
        + &admin_table("127.0.0.1:0", None);
    let server = Server::start(&config);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_address(&server).port()));
    (server, pki, admin)
}

/// A plaintext connection that sends `header` and then a line, and reads it echoed;
/// returns the client's own address.
fn echo_behind(addr: SocketAddr, header: &[u8], line: &str) -> SocketAddr {
    let mut client = Client::connect(addr);
    client.write(header);
    assert_eq!(client.ask(line), line);
    client.stream().local_addr().unwrap()
}

/// Wait for the `accepted` line of listener `name` with `peer=PEER`.
fn accepted_from(server: &Server, name: &str, peer: &str) {
    server.wait_for_log(&["accepted", &format!("listener={name} "), &format!("peer={peer}")]);
}

/// v1 and v2 headers from a trusted load balancer: the traffic after them is served,
/// and the connection's peer, in the host's `accepted` line and in the plugin's
/// ACCEPT, is the client the header names; a v2 `LOCAL` header keeps the socket's.
#[test]
fn v1_and_v2_headers_give_accept_the_real_client_address() {
    let (server, _pki, _admin) = behind_a_load_balancer();
    let lb = server.addr("lb");
    // Whichever worker accepts them.
    for n in 0..HANDED_OVER_OR_NOT {
        echo_behind(lb, V1, &format!("after a v1 header, {n}"));
    }
    accepted_from(&server, "lb", "203.0.113.7:5555");

    // A header that comes in pieces is waited for.
    let mut client = Client::connect(lb);
    client.write(&V1[..10]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    client.write(&V1[10..]);
    assert_eq!(client.ask("after a header in two writes"), "after a header in two writes");

    echo_behind(lb, b"PROXY TCP6 2001:db8::7 ::1 5556 443\r\n", "after a v1 TCP6 header");
    accepted_from(&server, "lb", "[2001:db8::7]:5556");
    echo_behind(lb, &v2(([198, 51, 100, 9], 6666)), "after a v2 header");
    accepted_from(&server, "lb", "198.51.100.9:6666");
    let own = echo_behind(lb, &v2_local(), "after a v2 LOCAL header");
    accepted_from(&server, "lb", &own.to_string());

    // The plugin's ACCEPT carries the same address: the tcp-proxy, with no upstream to
    // dial, logs it and closes.
    let mut client = Client::connect(server.addr("who"));
    client.write(V1);
    assert!(client.until_end().0.is_empty());
    let line = server.wait_for_log(&["tcp-proxy: client", "refused: no `upstream` configured"]);
    assert!(line.contains("(203.0.113.7:5555)"), "the plugin saw another peer: {line}");

    let (_, log) = server.terminate();
    let accepted = HANDED_OVER_OR_NOT as u64 + 4;
    assert_eq!(number(totals(&log, "lb"), "accepted"), accepted, "{}", totals(&log, "lb"));
    let peers = lines(&log, "lb", &["accepted", "peer=127.0.0.1:"]);
    assert_eq!(peers.len(), 1, "only the LOCAL header keeps the socket's address: {peers:?}");
}

/// A StreamOwned TLS client over `socket` (which may have carried a PROXY header),
/// trusting `ca`, for `name`, its handshake finished.
fn tls_over(socket: TcpStream, ca: &Path, name: &str) -> BufReader<StreamOwned<ClientConnection, TcpStream>> {
    let config = client_config(ca, &Hello { name, ..Hello::default() });
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_owned()).unwrap()).unwrap();
    let mut stream = StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    BufReader::new(stream)
}

/// Send `line` over `stream` and read the answer line.
fn ask_over(stream: &mut BufReader<StreamOwned<ClientConnection, TcpStream>>, line: &str) -> String {
    stream.get_mut().write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.get_mut().flush().unwrap();
    let mut answer = String::new();
    stream.read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

/// On a TLS listener the header comes before the ClientHello: the handshake and the
/// traffic after it work, and the peer is the client the header names.
#[test]
fn a_proxy_header_before_a_tls_handshake() {
    let (server, pki, admin) = behind_a_load_balancer();
    let addr = server.addr("tls-lb");
    for (header, peer) in [(V1.to_vec(), "203.0.113.7:5555"), (v2(([198, 51, 100, 10], 7777)), "198.51.100.10:7777")] {
        let mut socket = raw(addr);
        socket.write_all(&header).unwrap();
        let mut stream = tls_over(socket, &pki.ca, "lb.test");
        assert_eq!(ask_over(&mut stream, "over TLS behind a load balancer"), "over TLS behind a load balancer");
        accepted_from(&server, "tls-lb", peer);
    }
    assert_eq!(metric(admin, &handshakes_key("tls-lb", "ok")), 2);
}

/// A malformed header (a bad address, a wrong v2 version, no `\r\n` within the v1
/// bound, no header at all, a ClientHello where the header belongs) closes the
/// connection unanswered, counted as `bad_proxy_header`; a header from an address the
/// listener does not name is closed, counted as `untrusted_proxy`. Nothing reached a
/// plugin.
#[test]
fn a_malformed_or_untrusted_header_is_closed_and_counted() {
    let (server, pki, admin) = behind_a_load_balancer();
    let lb = server.addr("lb");
    let mut wrong_version = v2(([198, 51, 100, 9], 6666));
    wrong_version[12] = 0x31;
    let malformed: [&[u8]; 4] = [
        b"PROXY TCP4 203.0.113.999 127.0.0.1 5555 443\r\nhello\n",
        &wrong_version,
        &[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20),
        b"hello, no header\n",
    ];
    for bytes in malformed {
        let mut socket = raw(lb);
        let _ = socket.write_all(bytes);
        assert!(rest(&mut socket).is_empty(), "a malformed header got an answer: {:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(wait_for_metric(admin, &refused_key(lb, "bad_proxy_header"), 4), 4);

    let tls = server.addr("tls-lb");
    let err = TlsClient::try_connect(tls, &pki.ca, Hello { name: "lb.test", ..Hello::default() }).err();
    assert!(err.is_some(), "a TLS client without a header was served");
    assert_eq!(wait_for_metric(admin, &refused_key(tls, "bad_proxy_header"), 1), 1);

    let far = server.addr("far");
    // Closed at accept: the writes may meet a reset, which is as good an answer.
    let mut socket = raw(far);
    let _ = socket.write_all(V1);
    let _ = socket.write_all(b"from 127.0.0.1, which far does not trust\n");
    assert!(rest(&mut socket).is_empty(), "an untrusted load balancer was answered");
    assert_eq!(wait_for_metric(admin, &refused_key(far, "untrusted_proxy"), 1), 1);

    let (_, log) = server.terminate();
    for name in ["lb", "tls-lb", "far"] {
        assert_eq!(number(totals(&log, name), "accepted"), 0, "{}", totals(&log, name));
    }
    let far_totals = log.lines().find(|l| l.contains("address totals") && l.contains(&format!("address={far} ")));
    assert!(far_totals.is_some_and(|l| l.contains("refused=untrusted_proxy:1")), "{far_totals:?}");
}

/// The DER of the first certificate in a PEM file.
fn der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
}

/// A passthrough tenant routes by server name and hands the raw TLS to its plugin: the
/// tcp-proxy forwards it to an upstream that holds the key, so clients (rustls and
/// `openssl s_client -servername`) see the upstream's certificate and get its echo;
/// a terminating tenant on the same port is served with its own certificate.
#[test]
fn passthrough_and_termination_share_a_port() {
    let mut pki = Pki::new("sandport test CA");
    let origin_pair = pki.server(&["up.test"]);
    let term_pair = pki.server(&["term.test"]);
    let origin = free_address();
    let shared = free_address().to_string();
    let pass = format!(
        "server-names = [\"up.test\"]\nallow-connect = [\"{origin}\"]\n[listener.tls]\npassthrough = true\n[listener.config]\nupstream = \"{origin}\""
    );
    let config = listener_at("origin", &origin.to_string(), plugins::ECHO, &tls_table(&origin_pair, ""))
        + &listener_at("pass", &shared, plugins::TCP_PROXY, &pass)
        + &listener_at(
            "term",
            &shared,
            plugins::ECHO,
            &format!("server-names = [\"term.test\"]\n{}", tls_table(&term_pair, "")),
        );
    let server = Server::start(&config);
    let port = server.addr("pass");
    assert_eq!(port, server.addr("term"));

    for (name, pair) in [("up.test", &origin_pair), ("term.test", &term_pair)] {
        let mut client = TlsClient::connect(port, &pki.ca, Hello { name, ..Hello::default() });
        let presented = client.session().peer_certificates().unwrap()[0].to_vec();
        assert!(presented == der(&pair.cert), "{name}: not the certificate of the one that should end its TLS");
        assert_eq!(client.ask(&format!("to {name}")), format!("to {name}"));

        let out = s_client(port, &["-servername", name, "-CAfile", pki.ca.to_str().unwrap()], b"from openssl\n");
        // OpenSSL 3.0 writes `CN = name`, later versions `CN=name`.
        let subject = [format!("subject=CN = {name}\n"), format!("subject=CN={name}\n")];
        assert!(subject.iter().any(|s| out.contains(s)), "{name}: {out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{name}: {out}");
        assert!(out.contains("\nfrom openssl\n"), "{name}: no echo in {out}");
    }

    let (_, log) = server.terminate();
    let handshakes = |name| number(totals(&log, name), "handshakes");
    assert_eq!((handshakes("origin"), handshakes("pass"), handshakes("term")), (2, 0, 2), "who ended which TLS");
    assert_eq!(number(totals(&log, "pass"), "dialed"), 2, "the tcp-proxy dialed the origin for each");
}

/// A plaintext tcp-proxy whose allow-connect entry says `tls = true` re-encrypts to a
/// TLS echo: a client's bytes come back through it. An upstream whose certificate
/// fails the check (a CA the entry does not name, a name the certificate does not
/// carry) fails the dial, and the proxy closes its client unanswered.
#[test]
fn outbound_tls_re_encrypts_and_a_wrong_certificate_fails_the_dial() {
    let mut pki = Pki::new("sandport test CA");
    let stranger = Pki::new("a stranger's CA");
    let pair = pki.server(&["up.test"]);
    let up = free_address();
    let proxy = |name: &str, server_name: &str, ca: &Path| {
        let entry =
            format!("{{ address = \"{up}\", tls = true, server-name = \"{server_name}\", ca = \"{}\" }}", ca.display());
        let extra = format!("allow-connect = [{entry}]\n[listener.config]\nupstream = \"{up}\"");
        listener_at(name, "127.0.0.1:0", plugins::TCP_PROXY, &extra)
    };
    let config = listener_at("up", &up.to_string(), plugins::ECHO, &tls_table(&pair, ""))
        + &proxy("out", "up.test", &pki.ca)
        + &proxy("wrong-ca", "up.test", &stranger.ca)
        + &proxy("wrong-name", "else.test", &pki.ca);
    let server = Server::start(&config);

    let mut client = server.connect("out");
    let block: Vec<u8> = (0..256 << 10).map(|i: usize| (i * 7 % 253) as u8).collect();
    client.write(&block);
    assert!(client.bytes(block.len()) == block, "the echo through outbound TLS came back changed");
    assert_eq!(client.ask("and a line"), "and a line");

    for name in ["wrong-ca", "wrong-name"] {
        let mut client = server.connect(name);
        client.send_line("hello?");
        let (answer, _) = client.until_end();
        assert!(answer.is_empty(), "{name}: answered through an upstream that failed the check");
        let line = server.wait_for_log(&["tcp-proxy: upstream", &format!("listener={name} ")]);
        assert!(line.contains("invalid peer certificate"), "{name}: {line}");
    }
    drop(client);

    let (_, log) = server.terminate();
    let up_totals = totals(&log, "up");
    assert_eq!(number(up_totals, "handshakes"), 1, "{up_totals}");
    assert_eq!(number(up_totals, "handshakes_failed"), 2, "{up_totals}");
    for name in ["out", "wrong-ca", "wrong-name"] {
        assert_eq!(number(totals(&log, name), "dialed"), 1, "{}", totals(&log, name));
    }
}
