//! A guest that traps or loops forever costs its own listener's connections, never
//! the host or a neighbour: the neighbour keeps echoing, the faulty listener serves
//! new connections from a fresh instance, and the log says what happened.

use std::time::Duration;

use crate::harness::{Client, Server, listener, plugins};

fn tenants(probe_extra: &str) -> Server {
    Server::start(&(listener("probe", plugins::FIXTURE_PROBE, probe_extra) + &listener("echo", plugins::ECHO, "")))
}

fn assert_echoes(client: &mut Client, message: &[u8]) {
    client.write(message);
    assert_eq!(client.bytes(message.len()), message);
}

/// Make `offender` misbehave with `command` and check the aftermath.
fn fault_is_contained(server: &Server, command: &str, expected_reason: &str) {
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
    assert!(line.contains(expected_reason), "{line}");
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
    fault_is_contained(&server, "trap", "trapped");
}

#[test]
fn runaway_loop_is_interrupted() {
    let server = tenants("[listener.limits]\nevent-timeout-ms = 50");
    fault_is_contained(&server, "spin", "ran longer than its 50ms per event");
}

#[test]
fn neighbour_under_load_loses_no_byte_while_a_plugin_traps() {
    let server = tenants("");
    let addr = server.addr("echo");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut client = Client::connect(addr);
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let message = format!("message {rounds} ").repeat(40);
                assert_echoes(&mut client, message.as_bytes());
                rounds += 1;
            }
            rounds
        });
        for _ in 0..5 {
            let mut offender = server.connect("probe");
            offender.send_line("trap");
            offender.until_eof();
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(load.join().unwrap() > 0);
    });
    server.wait_for_count("handler failed", 5);
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
    fault_is_contained(&server, "big 3000000", "memory limit exceeded");
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
