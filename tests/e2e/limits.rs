//! Per-listener limits: each has a default, a key under `[listener.limits]`, and a
//! documented outcome; each hit is logged once per connection, naming the listener,
//! and counted in the listener's totals (logged when the server stops).

use std::time::{Duration, Instant};

use crate::harness::{Client, Server, listener, plugins, totals};

fn probe(limits: &str) -> Server {
    Server::start(&listener("probe", plugins::FIXTURE_PROBE, &format!("[listener.limits]\n{limits}")))
}

#[test]
fn connections_beyond_the_limit_are_accepted_and_closed_at_once() {
    let server = probe("max-connections = 2");
    let mut first = server.connect("probe");
    let mut second = server.connect("probe");
    assert_eq!(first.ask("echo one"), "one");
    assert_eq!(second.ask("echo two"), "two");

    let mut third = server.connect("probe");
    assert!(third.until_eof().is_empty(), "the third connection is closed without a word");
    let line = server.wait_for_log(&["limit hit", "limit=max-connections"]);
    assert!(line.contains("listener=probe") && line.contains("refused"), "{line}");

    // Room again once one leaves.
    drop(first);
    server.wait_for_log(&["closed 1"]);
    let mut fourth = server.connect("probe");
    assert_eq!(fourth.ask("echo four"), "four");
    assert_eq!(second.ask("echo still here"), "still here");

    let (_, log) = server.terminate();
    let line = totals(&log, "probe");
    assert!(line.contains("accepted=3") && line.contains("refused=1"), "{line}");
    assert!(line.contains("max-connections:1"), "{line}");
}

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    let server = probe("idle-timeout-ms = 400");
    let mut idle = server.connect("probe");
    let id = idle.ask("id");
    let mut busy = server.connect("probe");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        assert_eq!(busy.ask("echo tick"), "tick");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(busy.ask("echo still open"), "still open");
    assert!(idle.until_eof().is_empty());
    let conn = id.strip_prefix("id ").unwrap();
    let line = server.wait_for_log(&["limit hit", "limit=idle-timeout-ms", &format!("conn=#{conn} ")]);
    assert!(line.contains("listener=probe"), "{line}");
    server.wait_for_log(&[&format!("closed {conn} ")]);
}

#[test]
fn idle_timeout_counts_bytes_either_way() {
    // A client that only reads (a download) is not idle while bytes flow to it.
    let server = probe("idle-timeout-ms = 400");
    let mut c = server.connect("probe");
    let commands: String = (1..=5).map(|n| format!("timer {n} {}\n", n * 300)).collect();
    c.write(commands.as_bytes());
    for n in 1..=5 {
        assert_eq!(c.line(), format!("armed {n}"));
    }
    // From here the client only reads: a line every 300 ms, for 1.5 s.
    for n in 1..=5 {
        assert_eq!(c.line(), format!("timer {n}"));
    }
    assert_eq!(c.ask("echo alive"), "alive");
}

#[test]
fn guest_log_output_beyond_the_rate_is_dropped_and_reported_once() {
    let server = probe("log-rate = \"2 KiB\"");
    let mut c = server.connect("probe");
    let text = "y".repeat(200);
    for _ in 0..40 {
        assert_eq!(c.ask(&format!("log {text}")), "logged");
    }
    for _ in 0..10 {
        assert_eq!(c.ask(&format!("print {text}")), "printed");
    }
    let line = server.wait_for_log(&["limit hit", "limit=log-rate"]);
    assert!(line.contains("listener=probe"), "{line}");
    let logged = server.log().lines().filter(|l| l.contains(&text)).count();
    assert!((5..=20).contains(&logged), "{logged} of 60 lines of 200 bytes logged at 2 KiB/s");

    // A second connection hitting it gets its own line; the first no second one.
    let mut other = server.connect("probe");
    for _ in 0..20 {
        assert_eq!(other.ask(&format!("log {text}")), "logged");
    }
    server.wait_for_count("limit=log-rate", 2);
    let (_, log) = server.terminate();
    assert!(totals(&log, "probe").contains("log-rate:2"), "{log}");
    assert!(log.contains("guest log output dropped in all"), "{log}");
}

#[test]
fn each_limit_is_logged_once_per_connection_and_counted() {
    let server = probe("send-buffer = \"4 KiB\"\nmax-timers = 2");
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(c.ask("big 5000"), "err limit-exceeded");
        }
        assert_eq!(c.ask("timer 1 60000"), "armed 1");
        assert_eq!(c.ask("timer 2 60000"), "armed 2");
        for _ in 0..3 {
            assert_eq!(c.ask("timer 3 60000"), "err limit-exceeded");
        }
    }
    server.wait_for_count("limit=send-buffer", 2);
    server.wait_for_count("limit=max-timers", 2);
    let (status, log) = server.terminate();
    assert!(status.success());
    let line = totals(&log, "probe");
    assert!(line.contains("send-buffer:2") && line.contains("max-timers:2"), "{line}");
}

#[test]
fn a_full_receive_buffer_is_reported() {
    let server = probe("recv-buffer = \"1 KiB\"");
    let mut c = server.connect("probe");
    // No newline: the probe waits for the rest of a line that cannot fit.
    c.write(&[b'z'; 4096]);
    let line = server.wait_for_log(&["limit hit", "limit=recv-buffer"]);
    assert!(line.contains("reading paused"), "{line}");
    drop(c);
    let mut fresh = Client::connect(server.addr("probe"));
    assert_eq!(fresh.ask("echo fine"), "fine");
}

#[test]
fn defaults_apply_without_a_limits_table() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("room"), format!("room {}", 1 << 20));
    assert!(c.quiet_for(Duration::from_millis(500)), "no idle close long before the 60 s default");
    assert_eq!(c.ask("echo open"), "open");
}
