//! Per-listener limits: each has a default, a key under `[listener.limits]`, and a
//! documented outcome; each hit is logged once per connection, naming the listener,
//! and counted in the listener's totals (logged when the server stops).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::close::watcher;
use crate::harness::{PATIENCE, Server, listener, plugins, stalls_at, totals};
use crate::neighbour::StopOnDrop;

fn probe(limits: &str) -> Server {
    Server::start(&listener("probe", plugins::FIXTURE_PROBE, &format!("[listener.limits]\n{limits}")))
}

#[test]
fn connections_beyond_the_limit_are_accepted_and_closed_at_once() {
    let server = probe("max-connections = 3");
    let mut w = watcher(&server, "probe");
    let mut first = server.connect("probe");
    let mut second = server.connect("probe");
    let first_id = first.ask("id");
    assert_eq!(second.ask("echo two"), "two");

    let mut third = server.connect("probe");
    assert!(third.until_eof().is_empty(), "the third connection is closed without a word");
    let line = server.wait_for_log(&["limit hit", "limit=max-connections"]);
    assert!(line.contains("listener=probe") && line.contains("refused"), "{line}");

    // Room again once one leaves.
    drop(first);
    assert_eq!(w.line(), format!("closed {}", first_id.strip_prefix("id ").unwrap()));
    let mut fourth = server.connect("probe");
    assert_eq!(fourth.ask("echo four"), "four");
    assert_eq!(second.ask("echo still here"), "still here");

    let (_, log) = server.terminate();
    let line = totals(&log, "probe");
    assert!(line.contains("accepted=4") && line.contains("refused=1"), "{line}");
    assert!(line.contains("max-connections:1"), "{line}");
}

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    // A second of idleness: the busy client's 100 ms pauses keep far below it, even on
    // a starved machine.
    let server = probe("idle-timeout-ms = 1000");
    let mut idle = server.connect("probe");
    let conn = idle.ask("id").strip_prefix("id ").unwrap().to_owned();
    // The busy client watches: it hears the idle one's CLOSE, seen by the guest.
    let mut busy = watcher(&server, "probe");
    let deadline = Instant::now() + PATIENCE;
    let mut heard = false;
    while !heard {
        assert!(Instant::now() < deadline, "the idle connection was never closed");
        std::thread::sleep(Duration::from_millis(100));
        busy.send_line("echo tick");
        loop {
            match busy.line() {
                line if line == "tick" => break,
                line => {
                    assert_eq!(line, format!("closed {conn}"));
                    heard = true;
                }
            }
        }
    }
    assert_eq!(busy.ask("echo still open"), "still open");
    assert!(idle.until_eof().is_empty());
    let line = server.wait_for_log(&["limit hit", "limit=idle-timeout-ms", &format!("conn=#{conn} ")]);
    assert!(line.contains("listener=probe"), "{line}");
}

#[test]
fn idle_timeout_counts_bytes_either_way() {
    // A client that only reads (a download) is not idle while bytes flow to it: a
    // line every 300 ms for 1.5 s, against an idle timeout of a second.
    let server = probe("idle-timeout-ms = 1000");
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
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(c.ask(&format!("log {text}")), "logged");
    }
    for _ in 0..10 {
        assert_eq!(c.ask(&format!("print {text}")), "printed");
    }
    let seconds = started.elapsed().as_secs_f64();
    let line = server.wait_for_log(&["limit hit", "limit=log-rate"]);
    assert!(line.contains("listener=probe"), "{line}");
    // 2 KiB/s is about 10 lines a second, plus a second's worth at once; a slow
    // machine takes longer over the 60 lines and is allowed more.
    let logged = server.log().lines().filter(|l| l.contains(&text)).count();
    let most = (10.0 * (seconds + 1.0)).ceil() as usize + 1;
    assert!((5..=most).contains(&logged), "{logged} of 60 lines of 200 bytes logged at 2 KiB/s in {seconds:.1} s");

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

/// A receive buffer at its limit pauses reading: the client's writes stall once the
/// kernel's buffers are full too. Nothing is dropped: once the handler takes the
/// bytes, every one of them comes back, in order.
#[test]
fn a_full_receive_buffer_pauses_reading_and_keeps_every_byte() {
    const TOTAL: usize = 32 << 20;
    let server = probe("recv-buffer = \"64 KiB\"");
    let mut w = server.connect("probe");
    let mut c = server.connect("probe");
    let id = c.ask("id").strip_prefix("id ").unwrap().to_owned();
    assert_eq!(c.ask("hold"), "holding", "the probe leaves what follows in the receive buffer");
    let payload: Vec<u8> = (0..TOTAL as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (written, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        let mut writer = c.stream().try_clone().unwrap();
        let (payload, written, stop) = (&payload, &written, &stop);
        let writing = s.spawn(move || {
            for chunk in payload.chunks(64 * 1024) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                writer.write_all(chunk).unwrap();
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        });
        let _stop_on_unwind = StopOnDrop(stop);
        let line = server.wait_for_log(&["limit hit", "limit=recv-buffer"]);
        assert!(line.contains("reading paused") && line.contains(&format!("conn=#{id} ")), "{line}");
        let stuck = stalls_at(written);
        assert!(stuck < TOTAL, "the server kept reading from a connection whose receive buffer is full");

        // The host held exactly its limit: the probe echoes that much at once.
        assert_eq!(w.ask(&format!("release {id}")), format!("released {}", 64 << 10));
        let mut back = vec![0u8; TOTAL];
        let mut reader = c.stream().try_clone().unwrap();
        reader.read_exact(&mut back).unwrap();
        writing.join().unwrap();
        if let Some(at) = back.iter().zip(payload).position(|(a, b)| a != b) {
            panic!("byte {at} of {TOTAL} came back changed");
        }
    });
    server.wait_for_count("limit=recv-buffer", 1);
}

#[test]
fn defaults_apply_without_a_limits_table() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut c = server.connect("probe");
    assert_eq!(c.ask("room"), format!("room {}", 1 << 20));
    assert!(c.quiet_for(Duration::from_millis(500)), "no idle close long before the 60 s default");
    assert_eq!(c.ask("echo open"), "open");
}
