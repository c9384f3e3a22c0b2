//! SIGHUP with a changed address, instance mode or restart-only key: the listener
//! moves to its new address (the old one refuses), its mode changes, and a
//! restart-only key (`workers`, `cache-dir`, `log-format`, `[admin]`) is reported and
//! otherwise left as the server started.

use std::net::TcpStream;
use std::time::Duration;

use sandport_test_artifacts::{CHAT, ECHO};

use crate::admin::admin_table;
use crate::bounded::{admin_address, healthy};
use crate::harness::{Client, PATIENCE, Server, free_address, listener_at};
use crate::swap::echoes;

#[test]
fn a_new_address_moves_the_listener() {
    let (first, second) = (free_address(), free_address());
    let config = |address: std::net::SocketAddr| {
        format!("workers = 2\n{}", listener_at("svc", &address.to_string(), ECHO, "instance = \"per-worker\"\n"))
    };
    let server = Server::start(&config(first));
    let mut open = Client::connect(first);
    echoes(&mut open, 100);

    server.reload(&config(second));
    let mut moved = Client::connect(second);
    echoes(&mut moved, 5000);
    assert!(TcpStream::connect_timeout(&first, PATIENCE).is_err(), "the old address refuses");
    // The connection accepted on the old address goes on until it closes.
    echoes(&mut open, 5000);
    let listening =
        server.log().lines().filter(|l| l.contains(" listening ") && l.contains(&second.to_string())).count();
    assert_eq!(listening, 2, "both workers listen on the new address:\n{}", server.log());
}

/// Whether a chat member hears a newcomer join (one room) or not (a room each).
fn hears_newcomer(address: std::net::SocketAddr) -> bool {
    let mut first = Client::connect(address);
    assert!(first.line().starts_with("* welcome"));
    let mut second = Client::connect(address);
    assert!(second.line().starts_with("* welcome"));
    !first.quiet_for(Duration::from_millis(500))
}

#[test]
fn a_new_instance_mode_applies() {
    let address = free_address().to_string();
    let config = |mode: &str| {
        format!("workers = 2\n{}", listener_at("chat", &address, CHAT, &format!("instance = \"{mode}\"\n")))
    };
    let server = Server::start(&config("shared"));
    let address = server.addr("chat");
    assert!(hears_newcomer(address), "a shared chat is one room");

    server.reload(&config("per-connection"));
    assert!(!hears_newcomer(address), "per-connection: each member is alone");
    let rebound = server
        .log()
        .lines()
        .filter(|l| l.contains("sandport::reactor: listening ") && l.contains("listener=chat "))
        .count();
    assert_eq!(rebound, 1 + 2, "shared on one worker, then per-connection on both:\n{}", server.log());

    server.reload(&config("shared"));
    assert!(hears_newcomer(address), "back to one room");
}

#[test]
fn restart_only_keys_are_reported_and_otherwise_ignored() {
    let (cache, other_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let address = free_address().to_string();
    let config = |workers: usize, cache: &std::path::Path, format: &str, admin: &str| {
        format!(
            "workers = {workers}\ncache-dir = \"{}\"\nlog-format = \"{format}\"\n{}{}",
            cache.display(),
            admin_table(admin, None),
            listener_at("svc", &address, ECHO, "instance = \"per-worker\"\n")
        )
    };
    let server = Server::start(&config(2, cache.path(), "text", "127.0.0.1:0"));
    let admin = admin_address(&server);
    let mut open = server.connect("svc");
    echoes(&mut open, 100);
    let listening = server.log().matches("sandport::reactor: listening ").count();

    let other_admin = free_address();
    server.reload(&config(1, other_cache.path(), "json", &other_admin.to_string()));
    let warning = server.wait_for_log(&["take a restart"]);
    for key in ["workers", "cache-dir", "log-format", "admin"] {
        assert!(warning.contains(key), "{key} is reported: {warning}");
    }
    // Nothing of it applied: the same workers listen, the log stays text, the admin
    // API stays where it was, and nothing was rebound or swapped.
    let reloaded = server.wait_for_log(&["config reloaded"]);
    assert!(reloaded.contains("swapped=0") && reloaded.contains("added=0"), "{reloaded}");
    assert!(!reloaded.trim_start().starts_with('{'), "still text: {reloaded}");
    assert_eq!(server.log().matches("sandport::reactor: listening ").count(), listening, "nothing rebound");
    assert!(healthy(admin), "the admin API stays where it was");
    assert!(TcpStream::connect_timeout(&other_admin, Duration::from_secs(1)).is_err(), "and is not at the new address");
    echoes(&mut open, 5000);
    let mut fresh = server.connect("svc");
    echoes(&mut fresh, 5000);
}
