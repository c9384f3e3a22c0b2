//! Live migration in the per-worker and per-connection instance modes, over two
//! workers, of connections a plugin dialed: clients reach the migrating fixture
//! through the `tcp-proxy`, whose outbound connections are the ones that move. Then a
//! `take-over` fault once several have moved: the new instance dies with what moved
//! into it, and the listener (and the proxy) serve on.

use std::io::{BufRead, BufReader, ErrorKind, Write};
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

    // Now a version whose take-over traps: the instance that faults dies with what
    // moved into it (the proxy closes those clients), the others stay on the old
    // version. Per connection, every instance faults; per worker, the first move on
    // each worker.
    server.reload(&config(address, mode, "take-over = \"trap\""));
    server.wait_for_log(&["handler failed", "listener=mig", "trapped in take-over"]);
    let ended = clients.iter().enumerate().filter(|(n, client)| !still_echoes(client, &format!("probe {n}"))).count();
    match mode {
        "per-connection" => assert_eq!(ended, CLIENTS, "each connection's own instance faulted"),
        _ => assert!((1..=2).contains(&ended), "one move on each worker at most faulted: {ended} ended"),
    }
    let mut fresh = server.connect("proxy");
    echoes(&mut fresh, "a new client after the fault");
    let mut direct = Client::connect(address);
    echoes(&mut direct, "a direct client after the fault");
    drop((fresh, direct, clients));

    let (_, log) = server.terminate();
    let mig = totals(&log, "mig");
    assert!(count(mig, "migrated") >= CLIENTS, "{mig}");
    assert_eq!(count(mig, "faults"), ended, "one fault for each client that ended: {mig}");
    assert!(totals(&log, "proxy").contains("faults=0"), "{}", totals(&log, "proxy"));
}

/// Whether a client through the proxy still echoes `probe` (after any hand-over
/// notice) rather than being closed.
fn still_echoes(client: &Client, probe: &str) -> bool {
    let mut writer = client.stream().try_clone().unwrap();
    if writer.write_all(format!("{probe}\n").as_bytes()).is_err() {
        return false;
    }
    // The client's own reader holds nothing: every line before this was read.
    let mut reader = BufReader::new(client.stream().try_clone().unwrap());
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return false,
            Ok(_) if line == "* handing over\n" => continue,
            Ok(_) => {
                assert_eq!(line.trim_end(), probe, "what a client still open got");
                return true;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("neither an echo nor a close of {probe:?}: {e}"),
        }
    }
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
