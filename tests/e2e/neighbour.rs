//! A well-behaved tenant under load beside an offender: the machinery the adversarial
//! tests share. An echo listener named "echo" is kept busy by [`NEIGHBOURS`] clients
//! whose every byte is checked while a test offends on another listener of the same
//! server; [`beside_a_busy_neighbour`] then asserts that the neighbour got through
//! unharmed, and the log helpers below read what the server said about each listener.
//!
//! Where the two tenants run matters: on different workers, a plugin that froze its own
//! event loop would leave the neighbour's untouched. So [`beside_a_busy_neighbour`] runs
//! every offence twice ([`WORKER_COUNTS`]): once with one worker, both tenants on its
//! loop, and once with two, where a shared offender (listed first) and the neighbour
//! (listed last) are on different ones; the admin API's `/listeners` must confirm the
//! placement before the offence counts.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::admin::{Admin, admin_table};
use crate::harness::{Client, PATIENCE, Server, listener_at, plugins, totals};

/// Echo clients keeping the neighbour busy, each on its own connection.
pub const NEIGHBOURS: usize = 3;

/// Message sizes the neighbours cycle through: single bytes to a 64 KiB block.
const SIZES: [usize; 10] = [1, 2, 3, 100, 1000, 1460, 4096, 16384, 65535, 65536];

/// How far the server's peak resident memory may rise above its level before the
/// offence: the memory test's 32 MiB limit plus 16 MiB of slack; every other offence,
/// if the host bounded nothing, would take far more.
pub const HEADROOM: u64 = 48 << 20;

/// The worker counts every offence of [`beside_a_busy_neighbour`] runs with: one, where
/// the offender and the neighbour share an event loop, and two.
pub const WORKER_COUNTS: [usize; 2] = [1, 2];

/// What a neighbour saw of an offence.
pub struct Aftermath {
    /// The log of the stopped server.
    pub log: String,
    /// The slowest round trip of any neighbour client, offence included.
    pub worst_round_trip: Duration,
    /// The 99th percentile of the neighbour clients' round trips.
    pub p99_round_trip: Duration,
    /// Each listener's name and the workers it was placed on, as `/listeners` said.
    pub placement: Vec<(String, Vec<u64>)>,
}

impl Aftermath {
    /// The workers listener `name` was placed on.
    pub fn workers_of(&self, name: &str) -> &[u64] {
        let found = self.placement.iter().find(|(listener, _)| listener == name);
        &found.unwrap_or_else(|| panic!("no listener {name} in {:?}", self.placement)).1
    }
}

/// Run `offend` against the listener `offender` (a `[[listener]]` table) while
/// [`NEIGHBOURS`] clients keep an echo listener named "echo" busy, then check that the
/// neighbour got through unharmed; once for each of [`WORKER_COUNTS`]. Returns the log
/// of each stopped server, in that order.
pub fn beside_a_busy_neighbour(offender: &str, offend: impl FnMut(&Server)) -> Vec<String> {
    beside_a_busy_neighbour_at(offender, "127.0.0.1:0", offend)
}

/// [`beside_a_busy_neighbour`] with the neighbour on a given address.
pub fn beside_a_busy_neighbour_at(offender: &str, neighbour: &str, mut offend: impl FnMut(&Server)) -> Vec<String> {
    WORKER_COUNTS.map(|workers| neighbourhood_on(workers, offender, neighbour, HEADROOM, &mut offend).log).into()
}

/// [`neighbourhood`] on a server of `workers` event loops, after checking where the
/// listeners were placed: with one worker, every listener on it (the offender and the
/// neighbour share a loop); with more, the listeners spread over all of them.
pub fn neighbourhood_on(
    workers: usize,
    offender: &str,
    neighbour: &str,
    headroom: u64,
    offend: impl FnOnce(&Server),
) -> Aftermath {
    let aftermath = neighbourhood(&format!("workers = {workers}\n{offender}"), neighbour, headroom, offend);
    let mut used: Vec<u64> = aftermath.placement.iter().flat_map(|(_, on)| on.iter().copied()).collect();
    used.sort_unstable();
    used.dedup();
    let all: Vec<u64> = (0..workers as u64).collect();
    assert_eq!(used, all, "the listeners of a {workers}-worker server are on: {:?}", aftermath.placement);
    aftermath
}

/// [`beside_a_busy_neighbour`] with the neighbour on `neighbour`, the server's peak
/// memory allowed to rise by `headroom` bytes, and the server's workers as `offender`
/// (which may begin with top-level keys) says; also tells the worst and 99th-percentile
/// round trips, and where each listener was placed.
pub fn neighbourhood(offender: &str, neighbour: &str, headroom: u64, offend: impl FnOnce(&Server)) -> Aftermath {
    // The admin table goes last: `offender` may begin with top-level keys.
    let config =
        offender.to_owned() + &listener_at("echo", neighbour, plugins::ECHO, "") + &admin_table("127.0.0.1:0", None);
    let server = Server::start(&config);
    let placement = placement(&server);
    let echo = server.addr("echo");
    let stop = AtomicBool::new(false);
    let rounds: Vec<AtomicU64> = (0..NEIGHBOURS).map(|_| AtomicU64::new(0)).collect();
    let round_trips = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let _stop_on_unwind = StopOnDrop(&stop);
        let threads: Vec<_> = rounds
            .iter()
            .enumerate()
            .map(|(seed, rounds)| {
                let (stop, round_trips) = (&stop, &round_trips);
                s.spawn(move || keep_echoing(echo, seed, stop, rounds, round_trips))
            })
            .collect();
        let running = || !threads.iter().any(|t| t.is_finished());
        wait_until("every neighbour to finish a round", || {
            !running() || rounds.iter().all(|r| r.load(Ordering::SeqCst) > 0)
        });

        let rss_before = server.rss();
        let peak_tracked = reset_peak_rss(&server);
        offend(&server);

        // The neighbour keeps answering after the offence, every one of its clients.
        let seen: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        wait_until("every neighbour to finish a round after the offence", || {
            !running() || rounds.iter().zip(&seen).all(|(r, seen)| r.load(Ordering::SeqCst) > *seen)
        });
        let peak = if peak_tracked { peak_rss(&server) } else { server.rss() };
        let grown = peak.saturating_sub(rss_before);
        assert!(grown < headroom, "server memory rose by {grown} bytes (from {rss_before}) during the offence");

        // A newcomer is served too: the host is alive and accepting.
        let mut fresh = Client::connect(echo);
        fresh.write(b"still there?");
        assert_eq!(fresh.bytes(12), b"still there?");

        stop.store(true, Ordering::SeqCst);
        for thread in threads {
            let bytes = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            assert!(bytes > 0);
        }
    });

    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "echo");
    assert!(line.contains("faults=0 orphaned=0 limit_hits=") && line.ends_with("limit_hits="), "{line}");
    let alarms: Vec<&str> = log.lines().filter(|l| names(l, "echo") && is_warning(l)).collect();
    assert!(alarms.is_empty(), "the neighbour's listener logged warnings:\n{}", alarms.join("\n"));
    let mut round_trips = round_trips.into_inner().unwrap();
    round_trips.sort_unstable();
    let worst_round_trip = round_trips.last().copied().unwrap_or_default();
    let p99_round_trip = round_trips.get(round_trips.len() * 99 / 100).copied().unwrap_or_default();
    Aftermath { log, worst_round_trip, p99_round_trip, placement }
}

/// Each listener's name and the workers the admin API says it is placed on.
fn placement(server: &Server) -> Vec<(String, Vec<u64>)> {
    let listeners = Admin::of(server, None).listeners();
    let workers = |listener: &serde_json::Value| -> Vec<u64> {
        let list = listener["workers"].as_array().unwrap_or_else(|| panic!("no workers in {listener}"));
        list.iter().map(|worker| worker.as_u64().unwrap()).collect()
    };
    listeners.iter().map(|listener| (listener["name"].as_str().unwrap().to_owned(), workers(listener))).collect()
}

/// One neighbour: echo round trips of varied sizes and contents, each checked byte for
/// byte, until `stop`; then a half-close, after which nothing more may arrive. Returns
/// the bytes echoed; adds the time of every round trip to `round_trips`.
fn keep_echoing(
    addr: SocketAddr,
    seed: usize,
    stop: &AtomicBool,
    rounds: &AtomicU64,
    round_trips: &std::sync::Mutex<Vec<Duration>>,
) -> u64 {
    let mut client = Client::connect(addr);
    let mut bytes = 0u64;
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let len = SIZES[(round + seed) % SIZES.len()];
        let message: Vec<u8> = (0..len).map(|i| ((i * 7 + round * 13 + seed * 101) % 251) as u8).collect();
        let sent = Instant::now();
        client.write(&message);
        let back = client.bytes(len);
        round_trips.lock().unwrap().push(sent.elapsed());
        if let Some(at) = back.iter().zip(&message).position(|(a, b)| a != b) {
            panic!("neighbour {seed}, round {round}: byte {at} of {len} differs in the echo");
        }
        bytes += len as u64;
        round += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    client.shutdown_write();
    let extra = client.until_eof();
    assert!(extra.is_empty(), "neighbour {seed} received {} bytes it never sent", extra.len());
    bytes
}

/// Sets the flag when dropped, so that a failing test stops the neighbours' threads
/// rather than waiting for them forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Poll `done` until it holds; fails the test after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reset the kernel's record of the server's peak resident memory to its current
/// level (`/proc/PID/clear_refs`); false if not permitted.
pub fn reset_peak_rss(server: &Server) -> bool {
    std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").is_ok()
}

/// The server's peak resident memory (`VmHWM`) since the last reset, in bytes.
pub fn peak_rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Whether a log line is about listener `name` (has the field `listener=NAME`).
pub fn names(line: &str, name: &str) -> bool {
    let field = format!("listener={name}");
    line.split_whitespace().any(|word| word == field)
}

pub fn is_warning(line: &str) -> bool {
    line.contains(" WARN ") || line.contains(" ERROR ")
}

/// The lines of `log` about listener `name` that contain every one of `needles`.
pub fn lines<'a>(log: &'a str, name: &str, needles: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| names(l, name) && needles.iter().all(|n| l.contains(n))).collect()
}

/// A number field (`key=N`) of a log line.
pub fn number(line: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    let word = line.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{line}"));
    word.parse().unwrap_or_else(|_| panic!("{key} in {line}"))
}

/// How many connections hit `limit`, from a totals line's `limit_hits=key:n,...`.
pub fn hits(line: &str, limit: &str) -> u64 {
    let list = line.split_whitespace().find_map(|w| w.strip_prefix("limit_hits=")).unwrap_or("");
    let count = list.split(',').find_map(|pair| pair.strip_prefix(limit)?.strip_prefix(':'));
    count.map_or(0, |n| n.parse().unwrap())
}

/// The id (`#N`) the server gave the connection whose client end is `stream`.
pub fn conn_id(server: &Server, name: &str, stream: &TcpStream) -> String {
    let peer = format!("peer={}", stream.local_addr().unwrap());
    let mut id = None;
    wait_until(&format!("the accept of {peer} on {name}"), || {
        server.assert_alive(&format!("the accept of {peer} on {name}"));
        let log = server.log();
        let line = lines(&log, name, &["accepted"]).into_iter().find(|l| l.split_whitespace().any(|w| w == peer));
        id = line.and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("conn=")).map(str::to_owned));
        id.is_some()
    });
    id.unwrap()
}
