//! A guest that traps or loops forever costs its own listener's connections, never
//! the host or a neighbour: the neighbour keeps echoing, the faulty listener serves
//! new connections from a fresh instance, and the log says what happened.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{
    BIG_SEND_BUFFER, Client, MORE_THAN_THE_KERNEL_HOLDS, PATIENCE, Server, big_send_limits, listener, plugins,
};
use crate::neighbour::wait_until;

fn tenants(probe_extra: &str) -> Server {
    Server::start(&(listener("probe", plugins::FIXTURE_PROBE, probe_extra) + &listener("echo", plugins::ECHO, "")))
}

fn assert_echoes(client: &mut Client, message: &[u8]) {
    client.write(message);
    assert_eq!(client.bytes(message.len()), message);
}

/// Make `offender` misbehave with `command` and check the aftermath.
/// `expected_reason` lists the words of which the fault's log line must hold one.
fn fault_is_contained(server: &Server, command: &str, expected_reason: &[&str]) {
    let mut neighbour = server.connect("echo");
    assert_echoes(&mut neighbour, b"before");
    let mut bystander = server.connect("probe");
    assert_eq!(bystander.ask("timer 1 60000"), "armed 1");
    let mut offender = server.connect("probe");
    assert_eq!(offender.ask("echo ready"), "ready");

    offender.send_line(command);
    offender.until_eof();
    assert!(bystander.until_eof().is_empty(), "connections of the dead instance are closed");
    let line = server.wait_for_log(&["handler failed", "listener=probe", "orphaned=2"]);
    assert!(expected_reason.iter().any(|reason| line.contains(reason)), "{line}");
    assert!(line.contains("fixture_probe.wasm"), "the log names the plugin: {line}");

    assert_echoes(&mut neighbour, b"after: the neighbour lost nothing");
    let mut newcomer = server.connect("probe");
    assert_eq!(newcomer.ask("echo fresh instance"), "fresh instance");
    assert_eq!(newcomer.ask("timer 9 10"), "armed 9");
    assert_eq!(newcomer.line(), "timer 9");
}

#[test]
fn trap_closes_only_its_listeners_connections() {
    let server = tenants("");
    fault_is_contained(&server, "trap", &["trapped"]);
}

/// The fault's reason names the limit that interrupted the loop: the event's time
/// budget, or on a starved machine its wall-clock ceiling.
pub const EVENT_DEADLINES: [&str; 2] = ["event-timeout-ms", "event-wall-timeout-ms"];

#[test]
fn runaway_loop_is_interrupted() {
    // 200 ms: far more than any innocent event of the probe needs, even on a busy
    // machine, and still well below the default 1 s wall-clock ceiling.
    let server = tenants("[listener.limits]\nevent-timeout-ms = 200");
    fault_is_contained(&server, "spin", &EVENT_DEADLINES);
}

#[test]
fn neighbour_under_load_loses_no_byte_while_a_plugin_traps() {
    let server = tenants("");
    let addr = server.addr("echo");
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut client = Client::connect(addr);
            while !stop.load(Ordering::SeqCst) {
                let message = format!("message {} ", rounds.load(Ordering::SeqCst)).repeat(40);
                assert_echoes(&mut client, message.as_bytes());
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        });
        let _stop = crate::neighbour::StopOnDrop(&stop);
        wait_until("the neighbour's first round trip", || rounds.load(Ordering::SeqCst) > 0 || load.is_finished());
        for _ in 0..5 {
            let mut offender = server.connect("probe");
            offender.send_line("trap");
            offender.until_eof();
        }
        // The neighbour's load goes on after the faults.
        let seen = rounds.load(Ordering::SeqCst);
        wait_until("a round trip after the faults", || rounds.load(Ordering::SeqCst) > seen || load.is_finished());
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
    server.wait_for_count("handler failed", 5);
}

/// The connections a fault orphans still receive everything their send buffers held
/// when their instance died, then a clean end of stream.
#[test]
fn orphans_get_their_send_buffers_then_eof() {
    const BIG: usize = MORE_THAN_THE_KERNEL_HOLDS;
    let server = tenants(&format!("[listener.limits]\n{}", big_send_limits()));
    let mut offender = server.connect("probe");
    let mut orphans: Vec<Client> = (0..2).map(|_| Client::connect_with_small_window(server.addr("probe"))).collect();
    let mut held = Vec::new();
    for orphan in &mut orphans {
        let id = orphan.ask("id").strip_prefix("id ").unwrap().to_owned();
        // The client does not read: the host holds most of it.
        orphan.send_line(&format!("big {BIG}"));
        held.push(send_buffer_settles(&mut offender, &id));
    }
    assert!(held.iter().all(|&h| h > BIG / 2), "bytes held in the send buffers: {held:?}");

    offender.send_line("trap");
    assert!(offender.until_eof().is_empty());
    server.wait_for_log(&["handler failed", "listener=probe", "orphaned=3"]);
    let answer = format!("ok {}\n", BIG_SEND_BUFFER - BIG);
    for orphan in &mut orphans {
        let got = orphan.until_eof();
        assert_eq!(got.len(), BIG + answer.len(), "an orphan lost bytes of its send buffer");
        assert!(got[..BIG].iter().all(|&b| b == b'x'));
        assert_eq!(String::from_utf8_lossy(&got[BIG..]), answer);
    }
}

/// Ask through `asker` for the room in connection `id`'s send buffer (of
/// [`BIG_SEND_BUFFER`]) until it stops changing and is no longer empty; returns the
/// bytes the buffer then holds.
fn send_buffer_settles(asker: &mut Client, id: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        let room = asker.ask(&format!("room {id}"));
        if room == last && room != format!("room {BIG_SEND_BUFFER}") {
            let room: usize = room.strip_prefix("room ").unwrap().parse().unwrap();
            return BIG_SEND_BUFFER - room;
        }
        assert!(Instant::now() < deadline, "the send buffer of {id} never settled with bytes in it: {room}");
        std::thread::sleep(Duration::from_millis(100));
        last = room;
    }
}

#[test]
fn guest_output_goes_to_the_log_with_the_listener_name() {
    let server = tenants("");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("print words from the guest"), "printed");
    let line = server.wait_for_log(&["words from the guest", "stdout"]);
    assert!(line.contains("listener=probe"), "{line}");
    server.wait_for_log(&["words from the guest", "stderr", "listener=probe"]);
    assert_eq!(c.ask("log a log line"), "logged");
    server.wait_for_log(&["a log line", "listener=probe"]);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let server = tenants("[listener.limits]\nmemory = \"2 MiB\"");
    fault_is_contained(&server, "big 3000000", &["memory limit exceeded"]);
}

#[test]
fn guests_get_clocks_and_randomness() {
    let server = tenants("");
    let mut c = server.connect("probe");
    let now: u64 = c.ask("now").strip_prefix("now ").unwrap().parse().unwrap();
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(host_now) <= 5, "guest clock {now}, host clock {host_now}");
    let a = c.ask("random");
    let b = server.connect("probe").ask("random");
    assert!(a.starts_with("random ") && b.starts_with("random "), "{a} / {b}");
}
