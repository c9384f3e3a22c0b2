//! Outbound connections and plugin settings: a handler dials only what its listener's
//! `allow-connect` lists, hears CONNECT with the outcome, and talks to the dialed
//! connection like any other, and gets nothing out through WASI (no file, no socket,
//! no name lookup); `[listener.config]` reaches it through `config`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::close::watcher;
use crate::harness::{Client, PATIENCE, Server, free_address, listener, plugins};

/// A probe listener allowed to dial `allowed`, with extra TOML lines.
fn probe(allowed: &[SocketAddr], extra: &str) -> Server {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Server::start(&listener(
        "probe",
        plugins::FIXTURE_PROBE,
        &format!("allow-connect = [{}]\n{extra}", list.join(", ")),
    ))
}

/// Have the probe behind `client` dial `address`; returns the new connection's id.
fn dial(client: &mut Client, address: SocketAddr) -> String {
    let answer = client.ask(&format!("connect {address}"));
    answer.strip_prefix("connecting ").unwrap_or_else(|| panic!("{answer}")).to_owned()
}

/// A probe client whose probe dialed an upstream the test holds: the server, the
/// client, the dialed connection's id and the upstream's end of it.
fn dialed_upstream() -> (Server, Client, String, TcpStream) {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let server = probe(&[address], "");
    let mut c = server.connect("probe");
    let id = dial(&mut c, address);
    let (accepted, _) = upstream.accept().unwrap();
    assert_eq!(c.line(), format!("connected {id}"));
    (server, c, id, accepted)
}

#[test]
fn dialed_connections_carry_bytes_both_ways() {
    let (server, mut c, id, accepted) = dialed_upstream();
    let mut w = watcher(&server, "probe");

    let mut far = BufReader::new(accepted);
    far.get_mut().write_all(b"hello from upstream\n").unwrap();
    assert_eq!(c.line(), format!("from {id} hello from upstream"));
    assert_eq!(c.ask(&format!("send {id} hello from the plugin")), "ok");
    let mut line = String::new();
    far.read_line(&mut line).unwrap();
    assert_eq!(line, "hello from the plugin\n");

    // A partial line waits in the dialed connection's buffer, where any event of the
    // instance can read it.
    far.get_mut().write_all(b"bye").unwrap();
    let peek = format!("peek {id}");
    let deadline = Instant::now() + PATIENCE;
    while c.ask(&peek) != "peek bye" {
        assert!(Instant::now() < deadline, "the partial line never showed");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The far side hangs up: the dialed connection ends with its CLOSE.
    drop(far);
    assert_eq!(c.line(), format!("from {id} bye"));
    assert_eq!(w.line(), format!("closed {id}"));
    assert_eq!(c.ask(&format!("send {id} anyone?")), "err closed");
    assert_eq!(c.ask(&peek), "err closed");

    let (_, log) = server.terminate();
    assert!(log.contains("dialed=1"), "{log}");
}

#[test]
fn only_allowed_addresses_may_be_dialed() {
    let allowed = free_address();
    let server = probe(&[allowed], "");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("connect 127.0.0.1:1"), "err not-allowed");
    let other_port = SocketAddr::new(allowed.ip(), allowed.port().wrapping_add(1).max(1));
    assert_eq!(c.ask(&format!("connect {other_port}")), "err not-allowed");
    assert_eq!(c.ask("connect example.com:80"), "err invalid");

    // With no list at all, nothing may be dialed.
    let closed = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut c = closed.connect("probe");
    assert_eq!(c.ask(&format!("connect {allowed}")), "err not-allowed");
}

#[test]
fn a_refused_dial_reports_the_failure_then_closes() {
    let address = free_address();
    let server = probe(&[address], "");
    let mut w = watcher(&server, "probe");
    let mut c = server.connect("probe");
    let id = dial(&mut c, address);
    assert_eq!(c.line(), format!("connect-failed {id} failed"));
    assert_eq!(w.line(), format!("closed {id}"));
    assert_eq!(c.ask("echo the dialer lives on"), "the dialer lives on");
}

#[test]
fn dialed_connections_count_toward_max_connections() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let server = probe(&[address], "[listener.limits]\nmax-connections = 2");
    let mut c = server.connect("probe");
    assert!(c.ask(&format!("connect {address}")).starts_with("connecting "));
    let _accepted = upstream.accept().unwrap();
    assert!(c.line().starts_with("connected "));
    assert_eq!(c.ask(&format!("connect {address}")), "err limit-exceeded");
    server.wait_for_log(&["limit hit", "limit=max-connections", "listener=probe"]);
    let mut refused = server.connect("probe");
    assert!(refused.until_eof().is_empty(), "the dial took the last slot");
}

#[test]
fn a_dial_that_never_answers_ends_at_the_idle_timeout() {
    // A listener that never accepts, with its backlog full: Linux drops further SYNs,
    // so a dial to it hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<_> =
        (0..4).filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()).collect();
    assert!(!fillers.is_empty());

    // A second: the client's 100 ms pauses keep far below it, even on a starved machine.
    let server = probe(&[address], "[listener.limits]\nidle-timeout-ms = 1000");
    let mut c = server.connect("probe");
    let id = dial(&mut c, address);
    // The client keeps talking, so only the hanging dial goes idle.
    let deadline = Instant::now() + PATIENCE;
    let outcome = loop {
        assert!(Instant::now() < deadline, "the hanging dial never ended");
        std::thread::sleep(Duration::from_millis(100));
        match c.ask("echo tick").as_str() {
            "tick" => continue,
            other => break other.to_owned(),
        }
    };
    assert_eq!(outcome, format!("connect-failed {id} closed"));
    assert_eq!(c.line(), "tick");
    server.wait_for_log(&["limit hit", "limit=idle-timeout-ms", &format!("conn=#{id} ")]);
    assert_eq!(c.ask("echo the dialer lives on"), "the dialer lives on");
}

#[test]
fn plugins_read_their_listener_settings() {
    let extra = "[listener.config]\nupstream = \"127.0.0.1:9\"\nretries = 3\nverbose = true";
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, extra));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("config upstream"), "config 127.0.0.1:9");
    assert_eq!(c.ask("config retries"), "config 3");
    assert_eq!(c.ask("config verbose"), "config true");
    assert_eq!(c.ask("config missing"), "config none");
}

#[test]
fn shutdown_half_closes_and_keeps_reading() {
    let (_server, mut c, id, accepted) = dialed_upstream();
    assert_eq!(c.ask(&format!("send {id} last words")), "ok");

    // The probe's own `shutdown` ends its sending side toward this client; reading goes on.
    assert_eq!(c.ask("shutdown"), "ok");
    assert!(c.until_eof().is_empty(), "the client reads end-of-stream");
    let mut far = BufReader::new(accepted);
    let mut line = String::new();
    far.read_line(&mut line).unwrap();
    assert_eq!(line, "last words\n");
    c.send_line(&format!("send {id} still heard"));
    line.clear();
    far.read_line(&mut line).unwrap();
    assert_eq!(line, "still heard\n", "the half-closed connection still takes commands");
}

/// WASI filesystem and sockets are linked (language runtimes import them) but grant
/// nothing: the `wants-wasi` fixture's read of a real file, dial of a real listener
/// and name lookup all fail in the guest, and neither the file's content nor a
/// connection gets out.
#[test]
fn filesystem_and_sockets_are_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "the secret is 8d1f07").unwrap();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[listener.config]\nfile = \"{}\"\ndial = \"{}\"\nlookup = \"localhost\"",
        secret.display(),
        target.local_addr().unwrap()
    );
    let server = Server::start(&listener("wasi", plugins::FIXTURE_WANTS_WASI, &extra));

    let reply = String::from_utf8(server.connect("wasi").until_eof()).unwrap();
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 3, "{reply}");
    assert!(lines[0].starts_with("file: denied "), "{reply}");
    assert!(lines[1].starts_with("dial: denied "), "{reply}");
    assert!(lines[2].starts_with("lookup: denied "), "{reply}");
    assert!(!reply.contains("8d1f07"), "{reply}");
    // The guest dialed before it answered: a connection that got out is queued by now.
    target.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    match target.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the guest reached the listener through WASI: {other:?}"),
    }
}
