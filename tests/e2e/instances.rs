//! Instance modes: one instance shared by a listener's connections (the default), or
//! a fresh one per connection, dropped when its connections are gone, so a fault
//! costs only that connection.

use crate::faults::EVENT_DEADLINES;
use crate::harness::{Client, Server, listener, plugins};

fn per_connection(limits: &str) -> Server {
    let extra = format!("instance = \"per-connection\"\n[listener.limits]\n{limits}");
    Server::start(&(listener("probe", plugins::FIXTURE_PROBE, &extra) + &listener("echo", plugins::ECHO, "")))
}

fn conn_id(client: &mut Client) -> String {
    client.ask("id").strip_prefix("id ").unwrap().to_owned()
}

#[test]
fn per_connection_instances_cannot_name_each_other() {
    let server = per_connection("");
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    let b_id = conn_id(&mut b);
    assert_eq!(a.ask(&format!("send {b_id} hello")), "err closed", "another instance's connection is not a's to name");
    assert_eq!(b.ask("echo quiet"), "quiet", "nothing reached b");

    // In shared mode the same command reaches the other connection.
    let shared = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut a = shared.connect("probe");
    let mut b = shared.connect("probe");
    let b_id = conn_id(&mut b);
    assert_eq!(a.ask(&format!("send {b_id} hello")), "ok");
    assert_eq!(b.line(), "hello");
}

/// Guest state: the probe's `count` is a counter of its instance. Per connection,
/// each client counts alone, and a new client starts afresh; shared, they count
/// together.
#[test]
fn per_connection_instances_keep_their_own_state() {
    let server = per_connection("");
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    assert_eq!(a.ask("count"), "count 1");
    assert_eq!(a.ask("count"), "count 2");
    assert_eq!(b.ask("count"), "count 1", "b's instance does not see a's counter");
    assert_eq!(a.ask("count"), "count 3");
    drop(a);
    assert_eq!(server.connect("probe").ask("count"), "count 1", "a new client gets a fresh instance");
    assert_eq!(b.ask("count"), "count 2");

    let shared = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut a = shared.connect("probe");
    let mut b = shared.connect("probe");
    assert_eq!(a.ask("count"), "count 1");
    assert_eq!(b.ask("count"), "count 2", "a shared instance counts for all its connections");
    assert_eq!(a.ask("count"), "count 3");
}

#[test]
fn a_trap_per_connection_closes_only_that_connection() {
    let server = per_connection("");
    let mut neighbour = server.connect("echo");
    let mut bystander = server.connect("probe");
    assert_eq!(bystander.ask("count"), "count 1");
    assert_eq!(bystander.ask("timer 1 300"), "armed 1");
    let mut offender = server.connect("probe");
    assert_eq!(offender.ask("count"), "count 1");

    offender.send_line("trap");
    assert!(offender.until_eof().is_empty());
    let line = server.wait_for_log(&["handler failed", "listener=probe", "orphaned=1"]);
    assert!(line.contains("trapped"), "{line}");

    assert_eq!(bystander.line(), "timer 1", "the bystander's instance and timers live on");
    assert_eq!(bystander.ask("count"), "count 2", "and so does its state");
    neighbour.write(b"ping");
    assert_eq!(neighbour.bytes(4), b"ping");
    assert_eq!(server.connect("probe").ask("echo next"), "next");
}

#[test]
fn a_runaway_loop_per_connection_costs_only_that_connection() {
    let server = per_connection("event-timeout-ms = 200");
    let mut bystander = server.connect("probe");
    assert_eq!(bystander.ask("count"), "count 1");
    let mut offender = server.connect("probe");
    offender.send_line("spin");
    assert!(offender.until_eof().is_empty());
    let line = server.wait_for_log(&["handler failed", "orphaned=1"]);
    assert!(EVENT_DEADLINES.iter().any(|limit| line.contains(limit)), "{line}");
    assert_eq!(bystander.ask("count"), "count 2", "the bystander's instance lives on");
    server.wait_for_log(&["limit hit", "listener=probe", "limit=event-"]);
}

#[test]
fn instances_are_dropped_when_their_connection_closes() {
    // A pool of 8 slots serves 300 connections one after another only if every
    // instance goes back to the pool on CLOSE.
    let server = per_connection("max-connections = 8");
    for n in 0..300 {
        let mut c = server.connect("probe");
        assert_eq!(c.ask(&format!("echo {n}")), n.to_string());
        c.shutdown_write();
        assert!(c.until_eof().is_empty());
    }
    let (_, log) = server.terminate();
    assert!(!log.contains("cannot start a handler"), "{log}");
}

#[test]
fn many_live_instances_at_once_stay_cheap() {
    const CLIENTS: usize = 400;
    let server = per_connection("max-connections = 500");
    let rss_before = server.rss();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| server.connect("probe")).collect();
    for (n, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.ask(&format!("echo {n}")), n.to_string());
    }
    let grown = server.rss().saturating_sub(rss_before);
    assert!(grown < 200 << 20, "{CLIENTS} instances grew the server by {grown} bytes");
    // Each has its own state: every one counts from 1, and counts alone.
    for c in &mut clients {
        assert_eq!(c.ask("count"), "count 1");
    }
    assert_eq!(clients[7].ask("count"), "count 2");
    assert_eq!(clients[8].ask("count"), "count 2");
}
