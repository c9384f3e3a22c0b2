//! Adversarial tenants: a plugin that misbehaves on purpose (the `adversary` fixture,
//! one test per mode) or a client that does (floods without reading, opens connections
//! and goes silent, resets mid-write) runs on one listener while a well-behaved echo
//! listener, another tenant, is under load on another port.
//!
//! Every test goes through [`beside_a_busy_neighbour`], which runs the offence twice,
//! with both tenants on one worker and on two workers, and asserts what must hold
//! whatever the offence: the host keeps running; the neighbour loses no byte, gets none
//! it did not send, and keeps answering after the offence; the neighbour's listener hits
//! no limit and sees no fault; the server's memory stays bounded; and the server stops
//! cleanly on SIGTERM. Each test then checks the offender's documented outcome in each
//! server's log.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::close::watcher;
use crate::faults::EVENT_DEADLINES;
use crate::harness::{Client, PATIENCE, free_address, listener, plugins, stalls_at, totals};
use crate::neighbour::{
    StopOnDrop, beside_a_busy_neighbour, beside_a_busy_neighbour_at, conn_id, hits, is_warning, lines, names, number,
};

/// Limits for modes whose events do real work (20 000 timer calls, 8 MiB of log
/// output, each a few ms): a machine starved by the rest of the suite could spend the
/// default 100 ms on them, and more than the default 1 s wall-clock ceiling.
const GENEROUS_DEADLINE: &str = "[listener.limits]\nevent-timeout-ms = 1000\nevent-wall-timeout-ms = 5000";

/// The adversary fixture's listener table, named "adversary", in `mode`, with extra
/// lines (keys such as `allow-connect`, or a `[listener.limits]` table).
fn adversary(mode: &str, extra: &str) -> String {
    listener("adversary", plugins::FIXTURE_ADVERSARY, &format!("{extra}\n[listener.config]\nmode = \"{mode}\""))
}

/// A plugin that loops forever in an event is interrupted at the event deadline: its
/// connections close, each new connection gets a fresh instance (which spins again),
/// and each interruption is one fault and one hit of a per-event time limit (the
/// budget, or on a starved machine the wall-clock ceiling).
#[test]
fn a_spinning_plugin_is_interrupted_and_its_neighbour_keeps_echoing() {
    let offender = adversary("spin", "[listener.limits]\nevent-timeout-ms = 200");
    let logs = beside_a_busy_neighbour(&offender, |server| {
        for _ in 1..=3 {
            let mut bystander = server.connect("adversary");
            let mut spinner = server.connect("adversary");
            let id = conn_id(server, "adversary", spinner.stream());
            spinner.write(b"spin\n");
            assert!(spinner.until_eof().is_empty());
            assert!(bystander.until_eof().is_empty(), "the instance's other connection is closed too");
            let line = server.wait_for_log(&["handler failed", "listener=adversary", &format!("conn={id} ")]);
            assert!(EVENT_DEADLINES.iter().any(|limit| line.contains(limit)), "{line}");
            assert!(line.contains("orphaned=2"), "{line}");
            server.wait_for_log(&["limit hit", "listener=adversary", "limit=event-", &format!("conn={id} ")]);
        }
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("accepted=6") && line.contains("faults=3 orphaned=6"), "{line}");
        assert_eq!(hits(line, "event-timeout-ms") + hits(line, "event-wall-timeout-ms"), 3, "{line}");
    }
}

/// A plugin that allocates without end traps at its memory limit; the host's memory
/// rises by no more than that limit, and goes back, as three bombs in a row show.
/// (Generous event deadlines: filling 32 MiB on a starved machine may take longer than
/// the default 100 ms, or the 1 s wall-clock ceiling, which would stop the bomb for
/// the other reason.)
#[test]
fn a_memory_bomb_stops_at_the_memory_limit() {
    let limits = "[listener.limits]\nmemory = \"32 MiB\"\nevent-timeout-ms = 5000\nevent-wall-timeout-ms = 10000";
    let offender = adversary("memory", limits);
    let logs = beside_a_busy_neighbour(&offender, |server| {
        for round in 1..=3 {
            let mut bomber = server.connect("adversary");
            let id = conn_id(server, "adversary", bomber.stream());
            bomber.write(b"boom\n");
            assert!(bomber.until_eof().is_empty());
            let line = server.wait_for_log(&["handler failed", "listener=adversary", &format!("conn={id} ")]);
            assert!(line.contains("memory limit exceeded") && line.contains("orphaned=1"), "{line}");
            server.wait_for_count("limit=memory", round);
        }
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("faults=3 orphaned=3"), "{line}");
        assert_eq!(hits(line, "memory"), 3, "{line}");
    }
}

/// A plugin that panics on every event traps on `accept`: each connection is closed
/// without a byte, the panic message reaches the log under the offender's name, and
/// every new connection gets (and kills) a fresh instance.
#[test]
fn a_plugin_that_traps_on_accept_costs_only_its_connections() {
    let logs = beside_a_busy_neighbour(&adversary("trap", ""), |server| {
        for round in 1..=3 {
            let mut victim = server.connect("adversary");
            assert!(victim.until_eof().is_empty(), "a trap on accept closes without a byte");
            server.wait_for_count("handler failed", round);
        }
        let line = server.wait_for_log(&["sandport::guest", "trap on purpose: accept"]);
        assert!(names(&line, "adversary"), "{line}");
        let line = server.wait_for_log(&["handler failed", "listener=adversary"]);
        assert!(
            line.contains("fixture_adversary.wasm") && line.contains("trapped") && line.contains("orphaned=1"),
            "{line}"
        );
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("accepted=3") && line.contains("faults=3 orphaned=3"), "{line}");
        assert!(!log.contains("trap on purpose: close"), "a dead instance gets no CLOSE:\n{log}");
    }
}

/// A plugin that sends without end: its sends are refused at the 1 MiB send buffer
/// (logged once per connection), a client that reads gets an endless stream of `x`, and
/// a client that stops reading, or never reads, leaves the host's memory flat.
#[test]
fn a_send_flood_is_held_at_the_send_buffer() {
    let logs = beside_a_busy_neighbour(&adversary("send-flood", ""), |server| {
        let mut reader = server.connect("adversary");
        let _never_reads = server.connect("adversary");
        for _ in 0..4 {
            let chunk = reader.bytes(1 << 20);
            assert!(chunk.iter().all(|&b| b == b'x'), "the flood is all 'x'");
        }
        server.wait_for_count("send refused after 1048576 bytes: limit-exceeded", 2);
        server.wait_for_count("limit=send-buffer", 2);
        // The reader pauses: the flood waits, and resumes when it reads again.
        std::thread::sleep(Duration::from_millis(200));
        let chunk = reader.bytes(1 << 20);
        assert!(chunk.iter().all(|&b| b == b'x'));
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("faults=0"), "{line}");
        assert_eq!(hits(line, "send-buffer"), 2, "one hit per connection however many refusals: {line}");
    }
}

/// A plugin that arms 10 000 timers and re-arms one 10 000 times per line gets 64 per
/// connection, no more, each time it tries; the hit is logged once per connection.
#[test]
fn a_timer_hoarder_gets_max_timers_per_connection() {
    let logs = beside_a_busy_neighbour(&adversary("timers", GENEROUS_DEADLINE), |server| {
        for n in 1..=2 {
            let mut hoarder = server.connect("adversary");
            for _ in 0..3 {
                assert_eq!(hoarder.ask("arm"), "armed 10064 refused 9936 first-error limit-exceeded");
            }
            server.wait_for_count("limit=max-timers", n);
        }
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("faults=0"), "{line}");
        assert_eq!(hits(line, "max-timers"), 2, "{line}");
    }
}

/// A plugin that writes 8 MiB of log lines per request is answered, and the log rate
/// limit drops nearly all of them: the server's log gets a small fraction.
#[test]
fn a_log_flood_is_mostly_dropped() {
    let mut took = Vec::new();
    let logs = beside_a_busy_neighbour(&adversary("log-flood", GENEROUS_DEADLINE), |server| {
        let started = Instant::now();
        for n in 1..=2 {
            let mut flooder = server.connect("adversary");
            let id = conn_id(server, "adversary", flooder.stream());
            assert_eq!(flooder.ask("flood"), "logged 8388608");
            let line = server.wait_for_log(&["limit hit", "limit=log-rate", &format!("conn={id} ")]);
            assert!(names(&line, "adversary"), "{line}");
            server.wait_for_count("limit=log-rate", n);
        }
        took.push(started.elapsed().as_secs_f64());
    });
    for (log, seconds) in logs.into_iter().zip(took) {
        let (log_lines, stdout_lines) = ("l".repeat(1024), "p".repeat(1023));
        let kept = log.lines().filter(|l| l.contains(&log_lines) || l.contains(&stdout_lines)).count();
        assert!(kept > 0, "some of the output is logged");
        // 64 lines a second, and a second's worth at once; a slow machine, taking longer
        // over the floods, is allowed more.
        let most = (64.0 * (seconds + 1.0)).ceil() as usize;
        assert!(kept <= most, "{kept} of 16384 lines of 1 KiB logged at 64 KiB/s in {seconds:.1} s");
        assert!(!log.contains("handler failed"), "{log}");
        assert_eq!(hits(totals(&log, "adversary"), "log-rate"), 2);
    }
}

/// A plugin that names connections that are not its own (0, `u64::MAX`, far ahead, one
/// closed) gets `closed` for every call and reaches nobody; one that forges a resource
/// handle traps and loses its connections.
#[test]
fn forged_ids_reach_nobody_and_a_forged_handle_traps() {
    let logs = beside_a_busy_neighbour(&adversary("forge", ""), |server| {
        let gone = server.connect("adversary");
        let gone_id = conn_id(server, "adversary", gone.stream());
        drop(gone);
        server.wait_for_log(&["closed", "listener=adversary", &format!("conn={gone_id} ")]);

        let mut bystander = server.connect("adversary");
        let mut forger = server.connect("adversary");
        let id = conn_id(server, "adversary", forger.stream());
        for _ in 0..3 {
            assert_eq!(
                forger.ask("forge"),
                "forge send0=closed sendmax=closed sendfar=closed stale=closed remove=closed timer=closed close=closed"
            );
        }
        assert!(bystander.quiet_for(Duration::from_millis(200)), "nothing forged reached the other connection");

        forger.send_line("handle");
        assert!(forger.until_eof().is_empty(), "a forged handle traps");
        assert!(bystander.until_eof().is_empty(), "the instance's other connection is closed too");
        let line = server.wait_for_log(&["handler failed", "listener=adversary", &format!("conn={id} ")]);
        assert!(line.contains("trapped") && line.contains("orphaned=2"), "{line}");
    });
    for log in logs {
        assert!(!log.contains("forge handle survived"), "{log}");
        assert!(totals(&log, "adversary").contains("faults=1 orphaned=2"), "{log}");
    }
}

/// A plugin dials what `allow-connect` lists and nothing else: the neighbour (listed)
/// is reached, a closed listed port fails, an unlisted address (another port, or the
/// neighbour's port on another IP) is not allowed and a malformed one is invalid; the
/// dialed connections end with their dialer.
#[test]
fn a_dialer_reaches_only_allowed_addresses() {
    let neighbour = free_address();
    let dead = free_address();
    let offender = adversary("dial", &format!("allow-connect = [\"{neighbour}\", \"{dead}\"]"));
    let logs = beside_a_busy_neighbour_at(&offender, &neighbour.to_string(), |server| {
        let mut dialer = server.connect("adversary");
        let answer = dialer.ask(&neighbour.to_string());
        let reached = answer.strip_prefix(&format!("dial {neighbour} ok ")).unwrap_or_else(|| panic!("{answer}"));
        let reached = reached.to_owned();
        assert_eq!(dialer.line(), format!("connected {reached}"));

        assert_eq!(dialer.ask("127.0.0.1:1"), "dial 127.0.0.1:1 not-allowed");
        let unlisted = SocketAddr::new([127, 0, 0, 2].into(), neighbour.port());
        assert_eq!(dialer.ask(&unlisted.to_string()), format!("dial {unlisted} not-allowed"));
        assert_eq!(dialer.ask("garbage"), "dial garbage invalid");

        let answer = dialer.ask(&dead.to_string());
        let failed = answer.strip_prefix(&format!("dial {dead} ok ")).unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(dialer.line(), format!("connect-failed {failed} failed"));

        // The dialer leaves: the connection it dialed goes with it.
        drop(dialer);
        server.wait_for_log(&["closed", "listener=adversary", &format!("conn=#{reached} ")]);
    });
    for log in logs {
        let line = totals(&log, "adversary");
        assert!(line.contains("accepted=1 dialed=2") && line.contains("faults=0"), "{line}");
    }
}

/// A plugin that removes one byte more than it has is refused, and the refused remove
/// removes nothing.
#[test]
fn removing_too_much_removes_nothing() {
    let logs = beside_a_busy_neighbour(&adversary("remove-too-much", ""), |server| {
        let mut c = server.connect("adversary");
        for _ in 0..3 {
            c.write(b"abc\n");
            assert_eq!(c.bytes(26), b"remove invalid kept 4\nabc\n");
        }
    });
    for log in logs {
        assert!(totals(&log, "adversary").contains("faults=0"), "{log}");
    }
}

/// A client that sends without end and never reads: echo's buffers fill, the host
/// stops reading that socket (a `recv-buffer` hit), the writer stalls, the host's memory
/// stays flat; once the client reads, it gets every byte back.
#[test]
fn a_client_flooding_without_reading_is_paused() {
    /// Pattern period; a chunk holds a whole number of periods.
    const PERIOD: usize = 251;
    const CHUNK: usize = PERIOD * 256;
    const CAP: usize = 256 << 20;
    beside_a_busy_neighbour(&listener("target", plugins::ECHO, ""), |server| {
        let client = TcpStream::connect(server.addr("target")).unwrap();
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % PERIOD) as u8).collect();
        let (written, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
        std::thread::scope(|s| {
            let mut writer = client.try_clone().unwrap();
            let (chunk, written, stop) = (&chunk, &written, &stop);
            let writing = s.spawn(move || {
                while !stop.load(Ordering::SeqCst) && written.load(Ordering::SeqCst) < CAP {
                    writer.write_all(chunk).unwrap();
                    written.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let _stop_on_unwind = StopOnDrop(stop);
            server.wait_for_log(&["limit hit", "listener=target", "limit=recv-buffer", "reading paused"]);
            // Wait until the writer is stuck: the server stopped reading.
            let last = stalls_at(written);
            assert!(last < CAP, "the server kept reading from a client that never reads");

            stop.store(true, Ordering::SeqCst);
            let mut back = Vec::new();
            let mut reader = &client;
            reader.read_to_end(&mut back).unwrap();
            writing.join().unwrap();
            assert_eq!(back.len(), written.load(Ordering::SeqCst), "every byte comes back");
            if let Some(at) = back.iter().enumerate().position(|(i, &b)| b != (i % PERIOD) as u8) {
                panic!("byte {at} of the echo differs");
            }
        });
        server.wait_for_count("limit=recv-buffer", 1);
    });
}

/// Slowloris: 50 connections trickle a byte every 100 ms, 50 send nothing, 100 more
/// arrive on a listener that takes 100, whose idle timeout is a second. The excess is refused at once, the silent ones
/// are closed by the idle timeout, the tricklers are not, the listener accepts again once
/// the silent ones are gone, and the neighbour, on another listener, never notices.
#[test]
fn slowloris_connections_are_refused_or_timed_out() {
    // The tricklers' 100 ms pauses stay far below a second of idleness on a starved
    // machine.
    let limits = "[listener.limits]\nidle-timeout-ms = 1000\nmax-connections = 100";
    let logs = beside_a_busy_neighbour(&listener("target", plugins::ECHO, limits), |server| {
        let target = server.addr("target");
        let mut slow: Vec<Client> = (0..50).map(|_| Client::connect(target)).collect();
        for c in &mut slow {
            c.write(b"s");
            assert_eq!(c.bytes(1), b"s");
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let stop = &stop;
            let trickle = s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    for c in &mut slow {
                        c.write(b".");
                        assert_eq!(c.bytes(1), b".");
                    }
                }
                slow
            });
            let _stop_on_unwind = StopOnDrop(stop);
            let mut silent: Vec<Client> = (0..50).map(|_| Client::connect(target)).collect();
            let mut excess: Vec<Client> = (0..100).map(|_| Client::connect(target)).collect();
            for c in excess.iter_mut().chain(&mut silent) {
                assert!(c.until_eof().is_empty(), "refused or timed out, without a byte");
            }
            // Room again: the silent ones are gone, the tricklers still there.
            let mut again = Client::connect(target);
            again.write(b"again");
            assert_eq!(again.bytes(5), b"again");

            stop.store(true, Ordering::SeqCst);
            let mut slow = trickle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for c in &mut slow {
                c.write(b"!");
                assert_eq!(c.bytes(1), b"!", "a trickling connection is not idle");
            }
        });
    });
    for log in logs {
        let line = totals(&log, "target");
        let (refused, idle) = (number(line, "refused"), hits(line, "idle-timeout-ms"));
        assert!(refused > 0 && refused == hits(line, "max-connections"), "{line}");
        assert!(idle >= 50, "every silent connection timed out: {line}");
        assert_eq!(refused + idle, 150, "every silent or excess connection was refused or timed out: {line}");
        assert_eq!(number(line, "accepted"), 201 - refused, "{line}");
    }
}

/// A client that asks for a big answer and resets the connection (`SO_LINGER` 0) while
/// the server writes it, twenty times: each such connection is closed quietly and its
/// handler gets its CLOSE (a watching connection of the same probe instance hears of
/// each), nothing is logged as a warning, and the listener keeps serving.
#[test]
fn clients_resetting_mid_write_are_closed_quietly() {
    const PAYLOAD: usize = 512 << 10;
    let logs = beside_a_busy_neighbour(&listener("target", plugins::FIXTURE_PROBE, ""), |server| {
        let mut w = watcher(server, "target");
        let mut reset = HashSet::new();
        for _ in 0..20 {
            let mut c = Client::connect(server.addr("target"));
            reset.insert(c.ask("id").strip_prefix("id ").unwrap().to_owned());
            c.send_line(&format!("big {PAYLOAD}"));
            assert!(c.bytes(1000).iter().all(|&b| b == b'x'), "the server is writing the answer");
            socket2::SockRef::from(c.stream()).set_linger(Some(Duration::ZERO)).unwrap();
            drop(c);
        }
        let closed: HashSet<String> =
            (0..20).map(|_| w.line().strip_prefix("closed ").map(str::to_owned).unwrap_or_default()).collect();
        assert_eq!(closed, reset, "the guest got the CLOSE of every reset connection");
        let mut fresh = Client::connect(server.addr("target"));
        fresh.send_line(&format!("big {PAYLOAD}"));
        let answer = fresh.bytes(PAYLOAD);
        assert!(answer.iter().all(|&b| b == b'x'), "a fresh connection gets its whole answer");
        assert_eq!(fresh.line(), format!("ok {}", (1 << 20) - PAYLOAD));
    });
    for log in logs {
        let alarms: Vec<&str> = log.lines().filter(|l| names(l, "target") && is_warning(l)).collect();
        assert!(alarms.is_empty(), "resets are not alarming:\n{}", alarms.join("\n"));
        let line = totals(&log, "target");
        assert!(line.contains("accepted=22 dialed=0 refused=0 closed=22 faults=0 orphaned=0"), "{line}");
        let resets = lines(&log, "target", &[": closed on error"]).len();
        assert!(resets > 0, "the resets were seen as such:\n{log}");
    }
}
