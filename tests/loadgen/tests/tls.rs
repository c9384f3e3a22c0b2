//! TLS targets and held connections against small servers started inside the test:
//! rustls echo and HTTP servers, thread per connection, that record what each
//! handshake was (version, server name, full or resumed).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use sandport_loadgen::{LoadSpec, Mode, Report, Target, TlsVersion};

/// What a server's handshakes were.
#[derive(Default, Debug)]
struct Seen {
    full: u64,
    resumed: u64,
    names: HashSet<String>,
    versions: HashSet<String>,
    groups: HashSet<String>,
}

type Handler = fn(&mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()>;

/// One self-signed ECDSA P-256 certificate for every server of the test binary.
fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        config.session_storage = ServerSessionMemoryCache::new(1024);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        Arc::new(config)
    }))
}

/// Serves every connection of a fresh listener over TLS on its own thread, with
/// `handle` once the handshake is done.
fn serve_tls(handle: Handler) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            let record = Arc::clone(&record);
            thread::spawn(move || -> io::Result<()> {
                // Handshake messages and responses go out in small writes, which Nagle's
                // algorithm would hold back for the client's delayed ACK.
                socket.set_nodelay(true)?;
                let session = ServerConnection::new(server_config()).map_err(io::Error::other)?;
                let mut tls = StreamOwned::new(session, socket);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                {
                    let mut seen = record.lock().unwrap();
                    match tls.conn.handshake_kind() {
                        Some(HandshakeKind::Resumed) => seen.resumed += 1,
                        _ => seen.full += 1,
                    }
                    seen.names.extend(tls.conn.server_name().map(str::to_owned));
                    seen.versions.insert(format!("{:?}", tls.conn.protocol_version().unwrap()));
                    if let Some(group) = tls.conn.negotiated_key_exchange_group() {
                        seen.groups.insert(format!("{:?}", group.name()));
                    }
                }
                handle(&mut tls)
            });
        }
    });
    (addr, seen)
}

fn echo(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    let mut buf = [0; 16 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => tls.write_all(&buf[..n])?,
            Err(e) => return Err(e),
        }
    }
}

/// Answers each `GET` with a small response, keeping the connection.
fn hello(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    let mut pending = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")?;
        }
    }
}

fn plain_echo(addr: SocketAddr) -> Target {
    Target::new("plain", addr)
}

fn tls_target(name: &str, addr: SocketAddr) -> Target {
    Target { tls: true, ..Target::new(name, addr) }
}

/// Serves plaintext echo on a fresh listener, a thread per connection.
fn serve_plain_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || io::copy(&mut &stream, &mut &stream));
        }
    });
    addr
}

fn quick(mode: Mode, targets: Vec<Target>) -> LoadSpec {
    LoadSpec {
        connections: 4,
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        rounds: 1,
        ..LoadSpec::new(mode, targets)
    }
}

fn assert_clean(report: &Report) {
    for t in &report.targets {
        assert!(t.requests > 0, "{report}");
        assert_eq!(t.errors, 0, "{report}");
    }
}

#[test]
fn large_echo_over_tls_beside_plaintext() {
    let (addr, seen) = serve_tls(echo);
    let targets = vec![plain_echo(serve_plain_echo()), tls_target("tls", addr)];
    let spec = LoadSpec { size: 16 * 1024, pipeline: 4, ..quick(Mode::Echo, targets) };
    let report = sandport_loadgen::run(&spec).unwrap();
    assert_clean(&report);
    let t = &report.targets[1];
    assert_eq!(t.rounds[0].bytes, t.rounds[0].requests * 16 * 1024);
    assert!(t.tls && !report.targets[0].tls);
    let seen = seen.lock().unwrap();
    // One handshake per connection, kept: none sent a server name, and 1.3 won.
    assert_eq!((seen.full, seen.resumed), (4, 0), "{seen:?}");
    assert!(seen.names.is_empty(), "{seen:?}");
    assert_eq!(seen.versions, HashSet::from(["TLSv1_3".to_owned()]));
    // OpenSSL 3.0's first choice, not the provider's (the post-quantum hybrid).
    assert_eq!(seen.groups, HashSet::from(["X25519".to_owned()]));
    assert!(report.to_string().contains("tls://"), "{report}");
}

#[test]
fn a_handshake_per_request_full_or_resumed() {
    for (version, resume) in [(TlsVersion::Tls13, false), (TlsVersion::Tls12, true), (TlsVersion::Tls13, true)] {
        let (addr, seen) = serve_tls(hello);
        let spec = LoadSpec {
            reconnect: true,
            tls_version: Some(version),
            resume,
            ..quick(Mode::Http, vec![tls_target("tls", addr)])
        };
        let report = sandport_loadgen::run(&spec).unwrap();
        assert_clean(&report);
        let seen = seen.lock().unwrap();
        let expected = match version {
            TlsVersion::Tls12 => "TLSv1_2",
            TlsVersion::Tls13 => "TLSv1_3",
        };
        assert_eq!(seen.versions, HashSet::from([expected.to_owned()]), "{seen:?}");
        assert!(seen.full + seen.resumed > report.targets[0].requests, "{seen:?}\n{report}");
        if resume {
            // Only a connection's first handshakes (before a session was stored) are full.
            assert!(seen.resumed > 10 * seen.full, "{version:?}: {seen:?}");
        } else {
            assert_eq!(seen.resumed, 0, "{seen:?}");
        }
    }
}

#[test]
fn handshakes_take_the_server_names_in_turn() {
    let (addr, seen) = serve_tls(hello);
    let target = Target { server_names: Some("t{0..5}.example".parse().unwrap()), ..tls_target("many", addr) };
    let spec = LoadSpec { reconnect: true, threads: Some(2), ..quick(Mode::Http, vec![target]) };
    let report = sandport_loadgen::run(&spec).unwrap();
    assert_clean(&report);
    let names: HashSet<String> = (0..6).map(|i| format!("t{i}.example")).collect();
    assert_eq!(seen.lock().unwrap().names, names);
    assert!(report.to_string().contains("many: server names t{0..5}.example"), "{report}");
}

#[test]
fn tls_against_a_plaintext_server_is_an_error_not_a_hang() {
    let target = tls_target("confused", serve_plain_echo());
    let report = sandport_loadgen::run(&quick(Mode::Echo, vec![target])).unwrap();
    let t = &report.targets[0];
    assert_eq!(t.requests, 0, "{report}");
    assert!(t.errors > 0, "{report}");
}

#[test]
fn holding_plaintext_and_tls_connections() {
    let (addr, seen) = serve_tls(echo);
    // The servers run in this process, so its memory is theirs (and the client's).
    let me = vec![std::process::id()];
    let targets = vec![
        Target { pids: me.clone(), ..plain_echo(serve_plain_echo()) },
        Target { pids: me, ..tls_target("tls", addr) },
    ];
    let spec = LoadSpec {
        connections: 60,
        threads: Some(2),
        duration: Duration::from_millis(200),
        ..quick(Mode::Echo, targets)
    };
    let report = sandport_loadgen::hold(&spec).unwrap();
    for t in &report.targets {
        assert_eq!((t.held, t.errors), (60, 0), "{report}");
        assert!(t.per_connection.is_some(), "{report}");
        assert!(t.rounds[0].rss_after.unwrap() > 0, "{report}");
    }
    assert_eq!(report.targets[0].above_first, Some(0.0));
    assert_eq!(seen.lock().unwrap().full, 60);
    let table = report.to_string();
    assert!(table.starts_with("hold: 60 connections per target on 2 threads"), "{table}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["targets"][1]["address"], format!("tls://{addr}"));
}

#[test]
fn holding_silent_connections() {
    let (addr, seen) = serve_tls(echo);
    let me = vec![std::process::id()];
    let targets = vec![
        Target { pids: me.clone(), ..plain_echo(serve_plain_echo()) },
        Target { pids: me, ..tls_target("tls", addr) },
    ];
    let spec =
        LoadSpec { connections: 40, duration: Duration::from_millis(200), silent: true, ..quick(Mode::Echo, targets) };
    let report = sandport_loadgen::hold(&spec).unwrap();
    for t in &report.targets {
        assert_eq!((t.held, t.errors), (40, 0), "{report}");
        assert_eq!(t.rounds[0].open_latency.max, Duration::ZERO, "no exchange was made\n{report}");
    }
    // Held once the handshake was over: the server saw every one finish.
    assert_eq!(seen.lock().unwrap().full, 40);
    assert!(report.to_string().contains("each silent once connected"), "{report}");
    // Nothing to measure a rate with.
    assert!(sandport_loadgen::run(&spec).unwrap_err().to_string().contains("silent"));
}

#[test]
fn holding_refuses_to_reconnect() {
    let spec = LoadSpec { reconnect: true, ..quick(Mode::Echo, vec![plain_echo(serve_plain_echo())]) };
    let error = sandport_loadgen::hold(&spec).unwrap_err();
    assert!(error.to_string().contains("exclude each other"), "{error}");
}
