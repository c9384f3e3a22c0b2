//! Recycling: an instance worn past a bound of `[listener.recycle]` (memory, events,
//! age) is replaced by a fresh one of the same version. Where the plugin migrates, its
//! connections move without a lost or doubled byte; where it does not, new connections
//! go to the fresh instance and the worn one drains. Each test runs on one worker, so
//! that every instance it watches is the one its clients use, unless it says otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::{Admin, admin_table};
use crate::harness::{Client, PATIENCE, Server, listener, plugins};

/// The log line of each recycle.
const RECYCLED: &str = "recycled a worn instance";

/// Listener settings for the migrate-faults fixture as a plain echo that migrates
/// without a word to its clients, leaking `leak` bytes per receive.
fn quiet_echo(leak: usize) -> String {
    format!("[listener.config]\nhand-over = \"quiet\"\ntake-over = \"quiet\"\nleak = {leak}\n")
}

/// Recycles the log shows for `reason`.
fn recycles(server: &Server, reason: &str) -> usize {
    let log = server.log();
    log.lines().filter(|line| line.contains(RECYCLED) && line.contains(&format!("reason={reason}"))).count()
}

/// `rounds` round trips of `size` bytes each on a new connection to `addr`, each
/// message different (its round and `client` in it), each answer checked byte for byte.
/// Returns the connection, still open.
fn ping_pong(addr: SocketAddr, client: u8, rounds: usize, size: usize) -> JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut answer = vec![0; size];
        for round in 0..rounds {
            let message = message(client, round, size);
            stream.write_all(&message).unwrap();
            stream.read_exact(&mut answer).unwrap_or_else(|e| panic!("client {client}, round {round}: {e}"));
            assert!(answer == message, "client {client}, round {round}: another echo than the message");
        }
        stream
    })
}

/// Message `round` of `client`: `size` bytes no other round or client sends.
fn message(client: u8, round: usize, size: usize) -> Vec<u8> {
    let stamp = format!("{client}:{round}:");
    let mut message: Vec<u8> = stamp.bytes().chain((0..).map(|i: usize| b'a' + (i % 26) as u8)).take(size).collect();
    message[size - 1] = b'\n';
    message
}

/// Every client, joined; their connections, still open.
fn join_all(clients: Vec<JoinHandle<TcpStream>>) -> Vec<TcpStream> {
    clients.into_iter().map(|c| c.join().expect("a client failed")).collect()
}

/// One more round trip on each connection: none was closed or fell behind.
fn still_served(streams: &mut [TcpStream]) {
    for (i, stream) in streams.iter_mut().enumerate() {
        let message = message(255, i, 64);
        stream.write_all(&message).unwrap();
        let mut answer = vec![0; 64];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer, message, "connection {i} after the recycles");
    }
}

/// A leak that would end the instance at its memory limit (and every connection with
/// it) is recycled first: the connections move to fresh instances again and again,
/// every echo comes back whole, and nothing faults.
#[test]
fn a_leaking_instance_is_recycled_by_memory_before_it_fails_and_its_connections_move() {
    let extra = format!(
        "[listener.limits]\nmemory = \"16 MiB\"\n[listener.recycle]\nmemory = \"50%\"\n{}",
        quiet_echo(64 << 10)
    );
    let config = format!(
        "workers = 1\n{}{}",
        admin_table("127.0.0.1:0", None),
        listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, &extra)
    );
    let server = Server::start(&config);
    let admin = Admin::of(&server, None);
    // 64 KiB leaked per receive: 16 MiB, the limit, would be reached in 256 receives.
    let clients = (0..4).map(|c| ping_pong(server.addr("echo"), c, 1500, 64)).collect();
    let mut streams = join_all(clients);
    still_served(&mut streams);
    let metrics = admin.metrics();
    let metric = metrics.get(r#"sandport_recycles_total{listener="echo",reason="memory"}"#) as usize;
    // The log the test reads may lag behind the metric, never the other way.
    let deadline = Instant::now() + PATIENCE;
    while recycles(&server, "memory") < metric && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert!(!log.contains("handler failed"), "no instance may fault:\n{log}");
    let by_memory = recycles(&server, "memory");
    assert!(by_memory >= 10, "6 000 receives leak 375 MiB, a recycle every 8 MiB at most: {by_memory} recycles\n{log}");
    assert!(log.contains("moved=4"), "the four connections moved with the instance:\n{log}");
    // An instance the last round trips wore may have been recycled since the metric was read.
    assert!((metric..=metric + 1).contains(&by_memory), "the log ({by_memory}) says what the metric ({metric}) counts");
    assert_eq!(metrics.get(r#"sandport_recycles_total{listener="echo",reason="events"}"#), 0.0);
    let listeners = admin.listeners();
    assert_eq!(listeners[0]["recycle"]["memory"], 8 << 20, "50% of 16 MiB");
    assert!(listeners[0]["recycle"]["recycled"]["memory"].as_u64().unwrap() >= by_memory as u64);
}

/// The same leak without `[listener.recycle]` ends in the fault recycling prevents: the
/// test above would prove nothing if it did not.
#[test]
fn without_recycling_the_same_leak_faults_the_instance() {
    let extra = format!("[listener.limits]\nmemory = \"16 MiB\"\n{}", quiet_echo(64 << 10));
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, &extra)));
    let mut client = TcpStream::connect_timeout(&server.addr("echo"), PATIENCE).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let ended = (0..1000).any(|round| {
        let mut answer = vec![0; 64];
        client.write_all(&message(0, round, 64)).is_err() || client.read_exact(&mut answer).is_err()
    });
    assert!(ended, "the instance should have hit its memory limit");
    server.wait_for_log(&["handler failed", "memory limit exceeded"]);
    assert_eq!(recycles(&server, "memory"), 0);
}

/// A plugin that does not migrate (the Rust echo) is recycled by draining: the worn
/// instance keeps its connection until `drain-timeout-ms`, while a new connection is
/// served by the fresh instance at once.
#[test]
fn a_plugin_that_does_not_migrate_drains_to_the_fresh_instance() {
    let extra = "drain-timeout-ms = 1500\n[listener.recycle]\nevents = 40\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", plugins::ECHO, extra)));
    let mut old = join_all(vec![ping_pong(server.addr("echo"), 0, 60, 64)]);
    let line = server.wait_for_log(&[RECYCLED, "reason=events"]);
    assert!(line.contains("draining=1") && line.contains("moved=0"), "{line}");
    // The worn instance still serves its connection until the drain timeout...
    still_served(&mut old);
    // ...and a new connection is the fresh instance's.
    let mut new = join_all(vec![ping_pong(server.addr("echo"), 1, 10, 64)]);
    let mut byte = [0; 1];
    let closed = old[0].read(&mut byte);
    assert!(matches!(closed, Ok(0) | Err(_)), "the drained connection closes: {closed:?}");
    server.wait_for_log(&["drain-timeout-ms passed"]);
    still_served(&mut new);
}

/// The chat carries its room through each recycle: ten of them, with every member
/// still in the room under its name and every line reaching the others.
#[test]
fn the_chat_keeps_its_room_across_ten_recycles() {
    let extra = "[listener.recycle]\nevents = 12\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("chat", plugins::CHAT, extra)));
    let names = ["ada", "bob", "cy"];
    let mut room: Vec<Client> = Vec::new();
    for name in names {
        let mut client = Client::connect(server.addr("chat"));
        assert!(client.line().starts_with("* welcome"));
        client.send_line(&format!("/name {name}"));
        while !client.line().starts_with(&format!("* you are {name}")) {}
        // No idle pings in the middle of the test, however slow the machine.
        assert_eq!(client.ask("/idle 3600000"), "* idle 3600000");
        for other in &mut room {
            loop {
                if other.line().ends_with(&format!("is now {name}")) {
                    break;
                }
            }
        }
        room.push(client);
    }
    let mut took_over = [0; 3];
    let mut said = 0;
    while recycles(&server, "events") < 10 {
        let from = said % 3;
        let text = format!("line {said}");
        room[from].send_line(&text);
        for (i, member) in room.iter_mut().enumerate().filter(|(i, _)| *i != from) {
            // Each recycle greets each member once: `* chat took over, you are still NAME`.
            loop {
                let line = member.line();
                if line == format!("* chat took over, you are still {}", names[i]) {
                    took_over[i] += 1;
                    continue;
                }
                assert_eq!(line, format!("{}: {text}", names[from]), "what {} got", names[i]);
                break;
            }
        }
        said += 1;
        assert!(said < 2000, "ten recycles take about 120 lines; {said} lines made {}", recycles(&server, "events"));
    }
    let log = server.log();
    assert!(log.lines().filter(|l| l.contains(RECYCLED)).all(|l| l.contains("moved=3")), "{log}");
    assert!(!log.contains("handler failed"), "{log}");
    assert!(took_over.iter().all(|&n| n >= 8), "each member saw most recycles before the last lines: {took_over:?}");
}

/// Per-connection instances recycle with their one connection each, and per-worker
/// instances on each worker, with the same guarantee: every byte comes back. The
/// per-connection listener is full (`max-connections` 4, four clients), so the fresh
/// instances need slots of the pool beyond one per connection.
#[test]
fn per_connection_and_per_worker_instances_recycle_too() {
    for (mode, workers) in [("per-connection", 1), ("per-worker", 2)] {
        let extra = format!(
            "instance = \"{mode}\"\n[listener.limits]\nmax-connections = 4\n[listener.recycle]\nevents = 25\n{}",
            quiet_echo(0)
        );
        let config = format!("workers = {workers}\n{}", listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, &extra));
        let server = Server::start(&config);
        let clients = (0..4).map(|c| ping_pong(server.addr("echo"), c, 300, 64)).collect();
        let mut streams = join_all(clients);
        still_served(&mut streams);
        let log = server.log();
        let recycled: Vec<&str> = log.lines().filter(|l| l.contains(RECYCLED)).collect();
        // 1 200 receives, a recycle every 25 events of an instance.
        assert!(recycled.len() >= 40, "{mode}: {} recycles\n{log}", recycled.len());
        assert!(recycled.iter().all(|l| l.contains("draining=0")), "{mode}: every connection moved:\n{log}");
        if mode == "per-connection" {
            assert!(recycled.iter().all(|l| l.contains("moved=1")), "{mode}: one connection each:\n{log}");
        }
        assert!(!log.contains("handler failed"), "{mode}:\n{log}");
    }
}

/// An instance is recycled by age when it handles an event after `age-ms`.
#[test]
fn an_old_instance_is_recycled_by_age() {
    let extra = format!("[listener.recycle]\nage-ms = 200\n{}", quiet_echo(0));
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, &extra)));
    let mut streams = join_all(vec![ping_pong(server.addr("echo"), 0, 1, 64)]);
    let started = Instant::now();
    while recycles(&server, "age") < 3 {
        still_served(&mut streams);
        std::thread::sleep(Duration::from_millis(50));
        assert!(started.elapsed() < PATIENCE, "three ages of 200 ms passed without three recycles:\n{}", server.log());
    }
    assert_eq!(recycles(&server, "memory") + recycles(&server, "events"), 0);
}

/// A memory mark below what a fresh instance takes could only recycle in circles: it
/// is not acted on, and the log says why.
#[test]
fn a_mark_below_a_fresh_instance_recycles_nothing() {
    let extra = format!("[listener.recycle]\nmemory = \"1%\"\n{}", quiet_echo(0));
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, &extra)));
    let mut streams = join_all(vec![ping_pong(server.addr("echo"), 0, 300, 64)]);
    still_served(&mut streams);
    assert_eq!(recycles(&server, "memory"), 0, "{}", server.log());
}

/// A recycle whose migration is called off (here the fresh instance's `take-over`
/// traps) leaves the connections on the worn instance, which drains instead; no byte
/// is lost, and new connections are served.
#[test]
fn a_recycle_whose_migration_is_called_off_drains_instead() {
    let extra = "drain-timeout-ms = 60000\n[listener.recycle]\nevents = 30\n[listener.config]\nhand-over = \"quiet\"\ntake-over = \"trap\"\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, extra)));
    let mut streams = join_all((0..2).map(|c| ping_pong(server.addr("echo"), c, 40, 64)).collect());
    let line = server.wait_for_log(&["was called off", "it drains instead"]);
    assert!(line.contains("trapped in take-over"), "{line}");
    server.wait_for_log(&[RECYCLED, "draining=2"]);
    still_served(&mut streams);
    let mut fresh = join_all(vec![ping_pong(server.addr("echo"), 9, 10, 64)]);
    still_served(&mut fresh);
    assert!(!server.log().contains("handler failed"), "{}", server.log());
}

/// What the README recommends for a Python listener (`memory = "75%"` of the default
/// 64 MiB), held to it: a shared Python echo, whose runtime leaks about 320 bytes per
/// event and would fault after about 170 000 round trips, serves two million over four
/// kept connections with no fault and no lost byte, its connections moving to a fresh
/// instance at each recycle.
#[test]
fn a_python_echo_recycled_at_75_percent_serves_two_million_round_trips() {
    let echo = crate::swap_more::echo_of("python");
    crate::conformance::warm(&echo);
    let extra = "[listener.recycle]\nmemory = \"75%\"\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", &echo.to_string_lossy(), extra)));
    let clients = (0..4).map(|c| ping_pong(server.addr("echo"), c, 500_000, 64)).collect();
    let mut streams = join_all(clients);
    still_served(&mut streams);
    let log = server.log();
    assert!(!log.contains("handler failed"), "no instance may fault:\n{log}");
    let recycled: Vec<&str> = log.lines().filter(|l| l.contains(RECYCLED)).collect();
    assert!(recycled.len() >= 5, "two million round trips leak about 640 MiB: {} recycles\n{log}", recycled.len());
    assert!(recycled.iter().all(|l| l.contains("reason=memory") && l.contains("draining=0")), "{log}");
}

/// `total` bytes streamed through a new connection to `addr` by one thread while
/// another reads the echo and checks each byte against what was sent at its position
/// (a pattern of `seed` whose period no chunk size divides). Returns the connection.
fn stream(addr: SocketAddr, seed: u32, total: u64) -> JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        let period = (1 << 20) + 7;
        let block = crate::echo::pattern(period, seed);
        let cycle = std::sync::Arc::new([block.as_slice(), block.as_slice()].concat());
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sent = std::sync::Arc::clone(&cycle);
        let writing = std::thread::spawn(move || {
            let mut at = 0u64;
            while at < total {
                let from = (at % period as u64) as usize;
                let n = (total - at).min(256 << 10) as usize;
                writer.write_all(&sent[from..from + n]).unwrap();
                at += n as u64;
            }
        });
        let mut reader = stream.try_clone().unwrap();
        let mut buffer = vec![0; 256 << 10];
        let mut at = 0u64;
        while at < total {
            let want = (total - at).min(buffer.len() as u64) as usize;
            let n = reader.read(&mut buffer[..want]).unwrap_or_else(|e| panic!("stream {seed} at byte {at}: {e}"));
            assert!(n > 0, "stream {seed}: the echo ended at byte {at} of {total}");
            let from = (at % period as u64) as usize;
            assert!(buffer[..n] == cycle[from..from + n], "stream {seed}: another byte than was sent near byte {at}");
            at += n as u64;
        }
        writing.join().unwrap();
        stream
    })
}

/// The JavaScript echo, whose memory grows with the events it handles (its collector
/// lags), recycled at 75% of a 32 MiB limit: four connections stream 4 GB through it,
/// every byte back in order, with no fault, while the instance is replaced under them.
/// (Under the default 64 MiB a stream of large reads stays below the mark: it is the
/// number of events that wears a JavaScript instance, not the bytes.)
#[test]
fn a_javascript_echo_recycled_at_75_percent_streams_four_gigabytes() {
    let echo = crate::swap_more::echo_of("js");
    crate::conformance::warm(&echo);
    let extra = "[listener.limits]\nmemory = \"32 MiB\"\n[listener.recycle]\nmemory = \"75%\"\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("echo", &echo.to_string_lossy(), extra)));
    let clients = (0..4).map(|c| stream(server.addr("echo"), c, 1_000_000_000)).collect();
    let mut streams = join_all(clients);
    still_served(&mut streams);
    let log = server.log();
    assert!(!log.contains("handler failed"), "no instance may fault:\n{log}");
    let recycled: Vec<&str> = log.lines().filter(|l| l.contains(RECYCLED)).collect();
    assert!(!recycled.is_empty(), "the instance should have been recycled at least once:\n{log}");
    assert!(recycled.iter().all(|l| l.contains("reason=memory") && l.contains("draining=0")), "{log}");
}
