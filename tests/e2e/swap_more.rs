//! Swaps at the edges: to the Python and JavaScript echoes, which compile for seconds
//! while a neighbour on the same worker must not notice; faults after the rollback
//! window; SIGTERM in the middle of a swap; and `max-connections` shared by the
//! workers of a per-worker listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandport_test_artifacts::{ECHO, FIXTURE_PROBE};

use crate::admin::admin_table;
use crate::bounded::{admin_address, exits_within, put_path, text};
use crate::harness::{Client, End, Server, listener, plugins, totals};

/// A language's echo (`plugins/LANG/echo`), built with its `make`.
pub(crate) fn echo_of(lang: &str) -> PathBuf {
    let folder = Path::new(plugins::WORKSPACE).join("plugins").join(lang).join("echo");
    plugins::make(&folder, "echo").unwrap_or_else(|e| panic!("{lang} echo: {e}"))
}

/// Round trips of a small message on one connection until `stop`; each one's time.
/// The times are paired with when each round trip started (milliseconds since the
/// epoch), to find the worst one in the server's log.
fn round_trips(address: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(Duration, u128)>> {
    std::thread::spawn(move || {
        let mut client = Client::connect(address);
        let mut times = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let line = format!("neighbour message {n}");
            let started = Instant::now();
            assert_eq!(client.ask(&line), line, "the neighbour lost or changed bytes");
            let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            times.push((started.elapsed(), since_epoch.as_millis() - started.elapsed().as_millis()));
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        times
    })
}

/// Both listeners on one worker, compiling from scratch (no cache): the neighbour's
/// echoes go on while the big components compile and pre-flight. The bounds leave room
/// for a busy 2-core machine (a load of 8 showed a 1 s worst case once); a loop that
/// waited on the compile would stall for its whole length, 10 s and more there.
#[test]
fn python_and_javascript_swaps_do_not_stall_a_neighbour() {
    let (python, javascript) = (echo_of("python"), echo_of("js"));
    let config = format!(
        "workers = 1\ncache-dir = false\n{}{}{}",
        admin_table("127.0.0.1:0", None),
        listener("svc", ECHO, ""),
        listener("neighbour", ECHO, "")
    );
    let server = Server::start(&config);
    let admin = admin_address(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = round_trips(server.addr("neighbour"), stop.clone());

    let mut during = 0;
    for (number, component) in [(2, &python), (3, &javascript)] {
        let started = Instant::now();
        let reply = put_path(admin, "svc", text(component), Duration::from_secs(180)).expect("the swap answers");
        assert_eq!(reply.status, 200, "{}: {}", component.display(), reply.body);
        during = during.max(started.elapsed().as_millis());
        server.wait_for_log(&[&format!("version {number} took over"), "listener=svc"]);
        let mut client = server.connect("svc");
        client.write(b"hello from the test\n");
        assert_eq!(client.line(), "hello from the test", "version {number} echoes");
    }
    stop.store(true, Ordering::SeqCst);
    let mut times = neighbour.join().expect("the neighbour's echoes were right");
    let log = server.log();
    let compiled = log.lines().filter(|l| l.contains("plugin ready") && l.contains("from=compiled")).count();
    assert!(compiled >= 2, "the new versions were compiled, not taken from a cache:\n{log}");
    times.sort_unstable();
    let (worst, worst_at) = *times.last().unwrap();
    let p99 = times[times.len() * 99 / 100].0;
    assert!(
        times.len() > 20,
        "the neighbour was served while it compiled ({} ms): {} round trips",
        during,
        times.len()
    );
    assert!(
        worst < Duration::from_secs(2),
        "the neighbour's worst round trip: {worst:?}, started {worst_at} ms after the epoch (p99 {p99:?}):\n{log}"
    );
    assert!(p99 < Duration::from_millis(250), "the neighbour's p99 round trip: {p99:?}");
}

#[test]
fn faults_after_the_rollback_window_do_not_roll_back() {
    let rules = "rollback-faults = 1\nrollback-window-ms = 300\n";
    let server = Server::start(&listener("svc", ECHO, rules));
    server.reload(&listener("svc", FIXTURE_PROBE, rules));
    server.wait_for_log(&["version 2 took over"]);
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..3 {
        let mut client = server.connect("svc");
        client.send_line("trap");
        let _ = client.until_end();
    }
    server.wait_for_count("handler failed", 3);
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log();
    assert!(!log.contains("rolling back") && !log.contains("version 3"), "faults after the window:\n{log}");
    let mut client = server.connect("svc");
    assert_eq!(client.ask("echo still version 2"), "still version 2", "the probe serves on");
}

#[test]
fn sigterm_during_a_swap_exits_within_the_grace() {
    const GRACE: Duration = Duration::from_millis(1000);
    let python = echo_of("python");
    let config = format!(
        "cache-dir = false\nshutdown-grace-ms = {}\n{}{}",
        GRACE.as_millis(),
        admin_table("127.0.0.1:0", None),
        listener("svc", ECHO, "")
    );
    let server = Server::start(&config);
    let admin = admin_address(&server);
    let mut open = server.connect("svc");
    open.write(b"before\n");
    assert_eq!(open.line(), "before");

    let swap = std::thread::spawn(move || put_path(admin, "svc", text(&python), Duration::from_secs(60)));
    // The swap is compiling (seconds for the Python component) when the signal comes.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!swap.is_finished(), "the swap was over before the signal");
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    // The open connection is closed cleanly once the grace runs out.
    let (rest, end) = open.until_end();
    assert_eq!(end, End::Eof, "closed cleanly, not reset");
    assert!(rest.is_empty());
    let bound = GRACE + Duration::from_secs(3);
    assert!(
        exits_within(server.pid(), bound.saturating_sub(signalled.elapsed())),
        "still running {bound:?} after SIGTERM (the grace is {GRACE:?}) while a swap compiled"
    );
    let _ = swap.join();
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn max_connections_is_shared_by_the_workers_of_a_per_worker_listener() {
    const MAX: usize = 4;
    let extra = format!("instance = \"per-worker\"\n[listener.limits]\nmax-connections = {MAX}\n");
    let server = Server::start(&format!("workers = 2\n{}", listener("svc", ECHO, &extra)));
    let mut held: Vec<Client> = (0..MAX)
        .map(|n| {
            let mut client = server.connect("svc");
            client.send_line(&format!("client {n}"));
            assert_eq!(client.line(), format!("client {n}"));
            client
        })
        .collect();
    // The kernel deals these out to both workers: every one is over the listener's
    // limit, whichever worker takes it.
    const EXTRA: usize = 8;
    for n in 0..EXTRA {
        let mut client = server.connect("svc");
        let _ = std::io::Write::write_all(&mut client.stream(), b"over the limit\n");
        let (rest, _) = client.until_end();
        assert!(rest.is_empty(), "extra connection {n} was served: {:?}", String::from_utf8_lossy(&rest));
    }
    // A place freed on either worker is a place for anyone.
    drop(held.pop());
    let started = Instant::now();
    let mut again = loop {
        let mut client = server.connect("svc");
        client.send_line("room again");
        let mut byte = [0u8; 1];
        if client.stream().peek(&mut byte).is_ok_and(|n| n > 0) {
            break client;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the freed place was never given again");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(again.line(), "room again");
    for client in &mut held {
        client.send_line("still here");
        assert_eq!(client.line(), "still here");
    }
    drop((held, again));
    let (_, log) = server.terminate();
    let svc = totals(&log, "svc");
    let refused: usize = svc
        .split_whitespace()
        .find_map(|w| w.strip_prefix("refused="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{svc}"));
    assert!(refused >= EXTRA, "{svc}");
}

/// A stop signal while the server starts (here compiling the Python echo, seconds
/// without a cache) ends it at once, with a line saying so, rather than after the
/// start; nothing was handed to the workers to finish.
#[test]
fn sigterm_while_starting_exits_at_once() {
    let python = echo_of("python");
    let (_dir, path) =
        crate::harness::config_file(&format!("cache-dir = false\n{}", listener("svc", text(&python), "")));
    let mut child = crate::harness::sandport()
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let status = crate::harness::wait_exit(&mut child);
    let waited = signalled.elapsed();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopping while starting"), "{log}");
    assert!(!log.contains("ready workers="), "it had started after all: {log}");
    assert!(waited < Duration::from_secs(2), "exited {waited:?} after SIGTERM:\n{log}");
}
