//! `run` against small servers started inside the test: thread-per-connection echo
//! and HTTP servers, correct and deliberately broken, and one in a process of its own
//! whose CPU time the load generator reads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use sandport_loadgen::{LoadSpec, Mode, Report, Target};

/// Serves every connection of a fresh listener on its own thread.
fn serve(handle: fn(TcpStream) -> io::Result<()>) -> SocketAddr {
    serve_counted(handle).0
}

/// [`serve`], also counting the connections accepted.
fn serve_counted(handle: fn(TcpStream) -> io::Result<()>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::Relaxed);
            thread::spawn(move || handle(stream));
        }
    });
    (addr, accepted)
}

/// Serves `n` connections with [`echo`], then stops listening, so that further
/// connects are refused; it closes the listener as it accepts the last connection,
/// before echoing anything, so no connect can race it.
fn serve_echo_then_refuse(n: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for _ in 1..n {
            let (stream, _) = listener.accept()?;
            thread::spawn(move || echo(stream));
        }
        let (last, _) = listener.accept()?;
        drop(listener);
        echo(last)
    });
    addr
}

fn echo(stream: TcpStream) -> io::Result<()> {
    io::copy(&mut &stream, &mut &stream).map(drop)
}

/// Echoes with the first byte of every read flipped.
fn corrupting_echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        buf[0] ^= 0xff;
        stream.write_all(&buf[..n])?;
    }
}

/// Answers every request in the buffer with `response`, then reads more.
fn http_server(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    let mut pending = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let mut replies = Vec::new();
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            replies.extend_from_slice(response);
        }
        stream.write_all(&replies)?;
    }
}

fn hello(stream: TcpStream) -> io::Result<()> {
    http_server(stream, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!")
}

/// Answers one request and closes the connection, as an HTTP/1.0 server does.
fn hello_once(mut stream: TcpStream) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0; 4096];
    while !request.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!")?;
    // Close only once the client closed, or sent a second request (read here, so the
    // close is a clean FIN, not a reset). A server that closes first keeps the port
    // pair in TIME_WAIT, and a client reconnecting thousands of times a second from
    // reused ports then gets resets now and then.
    let _ = stream.read(&mut buf)?;
    Ok(())
}

fn unavailable(stream: TcpStream) -> io::Result<()> {
    http_server(stream, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
}

fn target(name: &str, addr: SocketAddr) -> Target {
    Target::new(name, addr)
}

/// A short run: these servers are only fixtures, not measured.
fn quick(mode: Mode, targets: Vec<Target>) -> LoadSpec {
    LoadSpec {
        connections: 4,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        rounds: 1,
        ..LoadSpec::new(mode, targets)
    }
}

fn assert_clean(report: &Report) {
    for t in &report.targets {
        assert!(t.requests > 0, "{report}");
        assert_eq!(t.errors, 0, "{report}");
        assert!(t.requests_per_sec > 0.0 && t.latency.p50 > Duration::ZERO, "{report}");
    }
}

#[test]
fn echo_alternating_targets() {
    let spec = LoadSpec { rounds: 2, ..quick(Mode::Echo, vec![target("a", serve(echo)), target("b", serve(echo))]) };
    let mut order = Vec::new();
    let report = sandport_loadgen::run_with_progress(&spec, |t, round, _| order.push((t.name.clone(), round))).unwrap();
    assert_clean(&report);
    let order: Vec<_> = order.iter().map(|(name, round)| format!("{name}{round}")).collect();
    assert_eq!(order, ["a0", "b0", "a1", "b1"]);
    assert_eq!(report.targets[0].ratio, 1.0);
    assert!(report.targets[1].ratio > 0.0);
    assert!(report.targets.iter().all(|t| t.rounds.len() == 2));
    // Echo replies are exactly the messages.
    let t = &report.targets[0];
    assert_eq!(t.rounds[0].bytes, t.rounds[0].requests * 64);
}

#[test]
fn echo_large_pipelined_batches_do_not_deadlock() {
    // 16 MiB in flight: more than loopback socket buffers hold even after Linux
    // grows them (a client that writes it all before reading stalls at ~8 MiB), so
    // the client must read while it is still writing.
    let spec = LoadSpec {
        connections: 1,
        size: 1024 * 1024,
        pipeline: 16,
        ..quick(Mode::Echo, vec![target("echo", serve(echo))])
    };
    assert_clean(&sandport_loadgen::run(&spec).unwrap());
}

#[test]
fn http_keep_alive_pipelined() {
    let spec = LoadSpec { pipeline: 8, ..quick(Mode::Http, vec![target("hello", serve(hello))]) };
    let report = sandport_loadgen::run(&spec).unwrap();
    assert_clean(&report);
    assert_eq!(report.targets[0].requests % 8, 0, "whole batches only");
}

#[test]
fn http_single_requests() {
    let report = sandport_loadgen::run(&quick(Mode::Http, vec![target("hello", serve(hello))])).unwrap();
    assert_clean(&report);
}

#[test]
fn wrong_answers_are_errors() {
    let report = sandport_loadgen::run(&quick(Mode::Http, vec![target("503", serve(unavailable))])).unwrap();
    let t = &report.targets[0];
    assert_eq!(t.requests, 0);
    assert!(t.errors > 0);
    assert!(t.first_error.as_deref().unwrap().contains("503"), "{report}");

    let report = sandport_loadgen::run(&quick(Mode::Echo, vec![target("bad", serve(corrupting_echo))])).unwrap();
    assert_eq!(report.targets[0].requests, 0);
    assert!(report.targets[0].errors > 0, "{report}");
}

#[test]
fn refused_connections_fail_the_run() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let error = sandport_loadgen::run(&quick(Mode::Echo, vec![target("gone", addr)])).unwrap_err();
    assert!(format!("{error:#}").contains("cannot connect"), "{error:#}");
}

#[test]
fn echo_reconnect_opens_a_connection_per_exchange() {
    let (addr, accepted) = serve_counted(echo);
    let spec = LoadSpec { reconnect: true, ..quick(Mode::Echo, vec![target("echo", addr)]) };
    let report = sandport_loadgen::run(&spec).unwrap();
    assert_clean(&report);
    assert!(report.reconnect);
    // The measured exchanges, plus the warm-up's on the connections opened first.
    assert!(accepted.load(Ordering::Relaxed) > report.targets[0].requests + 4, "{report}");
}

#[test]
fn http_reconnect_works_with_one_response_per_connection() {
    let spec = quick(Mode::Http, vec![target("once", serve(hello_once))]);
    let report = sandport_loadgen::run(&LoadSpec { reconnect: true, ..spec.clone() }).unwrap();
    assert_clean(&report);
    // Without reconnecting, the server's close fails every connection.
    let report = sandport_loadgen::run(&spec).unwrap();
    assert!(report.targets[0].first_error.as_deref().unwrap().contains("closed"), "{report}");
}

#[test]
fn reconnect_counts_refused_connects_as_errors() {
    let spec = LoadSpec {
        connections: 1,
        reconnect: true,
        ..quick(Mode::Echo, vec![target("refusing", serve_echo_then_refuse(5))])
    };
    let report = sandport_loadgen::run(&spec).unwrap();
    let t = &report.targets[0];
    assert!(t.first_error.as_deref().unwrap().contains("cannot reconnect"), "{report}");
    // Retried once per 100 ms tick over the 400 ms round, not in a busy loop.
    assert!((1..10).contains(&t.errors), "{report}");
}

/// Set in the environment of the child process that [`server_cpu_per_request`]
/// starts: there the test is the server instead.
const CHILD_SERVER: &str = "SANDPORT_LOADGEN_TEST_CHILD_SERVER";
/// What the child server prints before its address.
const LISTENING: &str = "child server listening on ";

/// A server in a process of its own: this test binary again, running only
/// [`server_cpu_per_request`] in its server role.
struct ChildServer {
    child: Child,
    /// The rest of its output, read to the end before it exits so that libtest's
    /// last lines there do not fail on a closed pipe.
    stdout: io::Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl ChildServer {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["server_cpu_per_request", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_SERVER, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // libtest prints its own text around the server's, on the same line too.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .find_map(|line| Some(line.unwrap().split_once(LISTENING)?.1.trim().parse().unwrap()))
            .expect("the child server's address");
        ChildServer { child, stdout: lines, addr }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // Closing its stdin stops it.
        drop(self.child.stdin.take());
        self.stdout.by_ref().for_each(drop);
        let _ = self.child.wait();
    }
}

/// The server role: echo on a fresh port until stdin closes.
fn serve_until_stdin_closes() {
    let addr = serve(echo);
    println!("{LISTENING}{addr}");
    io::stdout().flush().unwrap();
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
}

#[test]
fn server_cpu_per_request() {
    if std::env::var_os(CHILD_SERVER).is_some() {
        return serve_until_stdin_closes();
    }
    let server = ChildServer::start();
    let pid = server.child.id();
    // Found from the listening socket, and given by hand: the same process.
    let spec = LoadSpec {
        duration: Duration::from_secs(1),
        ..quick(
            Mode::Echo,
            vec![target("found", server.addr), Target { pids: vec![pid], ..target("given", server.addr) }],
        )
    };
    let report = sandport_loadgen::run(&spec).unwrap();
    assert_clean(&report);
    for t in &report.targets {
        assert_eq!(t.server_pids, [pid], "{report}");
        // A thread per connection moving 64 bytes each way costs microseconds per
        // exchange; a whole clock tick (10 ms) per exchange would be a wrong count.
        let cpu = t.cpu_per_request_us.unwrap_or_else(|| panic!("no CPU figure\n{report}"));
        assert!(cpu > 0.0 && cpu < 10_000.0, "{report}");
        assert!(t.rounds[0].server_cpu_us.unwrap() > 0.0, "{report}");
    }
    let table = report.to_string();
    let header: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(header[..4], ["target", "address", "req/s", "cpu/req"], "{table}");
    let found: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
    assert!(found[3].ends_with("µs") && found[3].trim_end_matches("µs").parse::<f64>().unwrap() > 0.0, "{table}");
    assert!(table.ends_with(&format!("of found = pid {pid}; given = pid {pid}\n")), "{table}");
}

#[test]
fn a_server_in_the_client_has_no_cpu_figure() {
    let report = sandport_loadgen::run(&quick(Mode::Echo, vec![target("inside", serve(echo))])).unwrap();
    assert_clean(&report);
    let t = &report.targets[0];
    assert!(t.server_pids.is_empty() && t.cpu_per_request_us.is_none(), "{report}");
    assert!(t.server_missing.as_deref().unwrap().contains("no other process"), "{report}");
}
