//! Live migration in the per-worker and per-connection instance modes, over two
//! workers, of connections a plugin dialed: clients reach the migrating fixture
//! through the `tcp-proxy`, whose outbound connections are the ones that move. Then a
//! `take-over` fault: the migration is called off on every worker, whole, and every
//! connection serves on with the old version as if nothing had happened. And a
//! migration that one worker calls off while the other commits: the committed worker is
//! given the old version back.

use std::net::SocketAddr;

use sandport_test_artifacts::{FIXTURE_MIGRATE_FAULTS, TCP_PROXY};

use crate::harness::{Client, Server, free_address, listener, listener_at, totals};

/// Clients through the proxy when the version changes.
const CLIENTS: usize = 6;

/// Two workers: the migrating fixture `mig` on `address` in instance mode `mode`
/// with these `[listener.config]` lines, and a per-worker proxy in front of it.
fn config(address: SocketAddr, mode: &str, settings: &str) -> String {
    let mig = listener_at(
        "mig",
        &address.to_string(),
        FIXTURE_MIGRATE_FAULTS,
        &format!("instance = \"{mode}\"\n[listener.config]\n{settings}"),
    );
    let proxy = listener(
        "proxy",
        TCP_PROXY,
        &format!(
            "instance = \"per-worker\"\nallow-connect = [\"{address}\"]\n[listener.config]\nupstream = \"{address}\""
        ),
    );
    format!("workers = 2\n{mig}{proxy}")
}

/// A line through `client`, echoed by the fixture behind the proxy.
fn echoes(client: &mut Client, line: &str) {
    assert_eq!(client.ask(line), line);
}

fn migrates_dialed_connections(mode: &str) {
    let address = free_address();
    let server = Server::start(&config(address, mode, ""));
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|n| {
            let mut client = server.connect("proxy");
            echoes(&mut client, &format!("{mode} client {n}"));
            client
        })
        .collect();

    // A changed setting is a new version: every dialed connection moves to it.
    server.reload(&config(address, mode, "revision = \"2\""));
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.line(), "* handing over", "client {n}: the old version's hand-over");
        assert_eq!(client.line(), "* taking over state", "client {n}: the new version's take-over");
        echoes(client, &format!("{mode} client {n} after the swap"));
    }
    let took_over = server.wait_for_log(&["version 2 took over", "listener=mig"]);
    assert!(took_over.contains(&format!("migrated={CLIENTS}")) && took_over.contains("draining=0"), "{took_over}");

    // Now a version whose take-over traps: the migration is called off on each
    // worker, whole; no connection notices, not even those whose take-over returned
    // before the trap, and the new version is refused.
    server.reload(&config(address, mode, "take-over = \"trap\""));
    server.wait_for_log(&["new version refused", "listener=mig", "trapped in take-over"]);
    for (n, client) in clients.iter_mut().enumerate() {
        echoes(client, &format!("{mode} client {n} after the refusal"));
    }
    let mut fresh = server.connect("proxy");
    echoes(&mut fresh, "a new client after the refusal");
    let mut direct = Client::connect(address);
    echoes(&mut direct, "a direct client after the refusal");
    drop((fresh, direct, clients));

    let (_, log) = server.terminate();
    let mig = totals(&log, "mig");
    assert_eq!(count(mig, "migrated"), CLIENTS, "{mig}");
    assert_eq!(count(mig, "faults"), 0, "{mig}");
    assert!(totals(&log, "proxy").contains("faults=0"), "{}", totals(&log, "proxy"));
}

/// The number `key=N` of a totals line.
fn count(totals: &str, key: &str) -> usize {
    let prefix = format!("{key}=");
    totals
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str())?.parse().ok())
        .unwrap_or_else(|| panic!("{totals}"))
}

#[test]
fn per_worker_instances_migrate_dialed_connections() {
    migrates_dialed_connections("per-worker");
}

#[test]
fn per_connection_instances_migrate_dialed_connections() {
    migrates_dialed_connections("per-connection");
}

/// The worker that accepted `client`'s connection to listener `name`: worker `w` of two
/// hands out the ids `w + 1`, `w + 3`, ..., and the log names each accepted peer.
fn worker_of(server: &Server, name: &str, client: &Client) -> u64 {
    let peer = client.stream().local_addr().unwrap();
    let line = server.wait_for_log(&["accepted", &format!("listener={name} "), &format!("peer={peer} ")]);
    let id = line.split_whitespace().find_map(|word| word.strip_prefix("conn=#")).expect("a conn id");
    (id.parse::<u64>().unwrap() - 1) % 2
}

#[test]
fn a_worker_that_calls_its_migration_off_has_the_others_put_back() {
    // Per worker on two: the new version traps in its second take-over, so the worker
    // holding one connection moves it and the worker holding two calls off. The first
    // is then given the old version back: every worker serves one version.
    let address = free_address();
    let config = |settings: &str| {
        let mig = listener_at(
            "mig",
            &address.to_string(),
            FIXTURE_MIGRATE_FAULTS,
            &format!("instance = \"per-worker\"\n[listener.config]\n{settings}"),
        );
        format!("workers = 2\n{mig}")
    };
    let server = Server::start(&config(""));
    // Connections by worker, until one worker holds one and the other two.
    let mut held: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    let mut dropped = 0;
    while !matches!((held[0].len(), held[1].len()), (1, 2) | (2, 1)) {
        assert!(dropped < 200, "the kernel gave every connection to one worker");
        let mut client = Client::connect(address);
        echoes(&mut client, "hello");
        let worker = worker_of(&server, "mig", &client) as usize;
        let (here, there) = (held[worker].len(), held[1 - worker].len());
        if here == 2 || (here == 1 && there == 2) {
            drop(client);
            dropped += 1;
        } else {
            held[worker].push(client);
        }
    }
    // Those let go must be gone before the swap, or they would count as moves.
    server.wait_for_count("closed listener=mig conn=", dropped);
    let [first, second] = held;
    let (mut lone, mut pair) = if first.len() == 1 { (first, second) } else { (second, first) };
    server.reload(&config("take-over = \"trap at 2\""));
    server.wait_for_log(&["new version refused", "listener=mig", "trapped in take-over"]);
    // The lone client went to the new version and back: each move greets it.
    let lone = &mut lone[0];
    for line in ["* handing over", "* taking over state", "* handing over", "* taking over state"] {
        assert_eq!(lone.line(), line);
    }
    echoes(lone, "the lone one, after");
    for (n, client) in pair.iter_mut().enumerate() {
        echoes(client, &format!("one of the pair ({n}), after"));
    }
    let (_, log) = server.terminate();
    assert!(!log.contains("version 2 took over"), "{log}");
    let mig = totals(&log, "mig");
    assert_eq!(count(mig, "faults"), 0, "{mig}");
}

/// A swap of a per-connection listener at `max-connections`: the pre-flight and the new
/// version's instances need slots of the pool while the old ones hold theirs. The pool
/// keeps a few spare (9 with one worker): a full listener of 20 cannot move all 20 at
/// once, and its swap is refused with that reason, every connection served on; with 8
/// left, the next swap moves them all.
#[test]
fn a_full_per_connection_listener_swaps_within_its_spare_slots() {
    let address = free_address();
    let config = |revision: u32| {
        let settings = format!(
            "instance = \"per-connection\"\n[listener.limits]\nmax-connections = 20\n[listener.config]\nhand-over = \"quiet\"\ntake-over = \"quiet\"\nrevision = {revision}\n"
        );
        format!("workers = 1\n{}", listener_at("mig", &address.to_string(), FIXTURE_MIGRATE_FAULTS, &settings))
    };
    let server = Server::start(&config(1));
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(address)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        echoes(client, &format!("before {i}"));
    }
    server.reload(&config(2));
    let line = server.wait_for_log(&["the migration to version 2 was called off"]);
    assert!(line.contains("concurrent limit"), "the reason names the pool: {line}");
    for (i, client) in clients.iter_mut().enumerate() {
        echoes(client, &format!("refused {i}"));
    }
    clients.truncate(8);
    server.wait_for_count("closed listener=mig conn", 12);
    server.reload(&config(3));
    // A refused version takes no number.
    let line = server.wait_for_log(&["version 2 took over"]);
    assert!(line.contains("migrated=8") && line.contains("draining=0"), "{line}");
    for (i, client) in clients.iter_mut().enumerate() {
        echoes(client, &format!("after {i}"));
    }
}
