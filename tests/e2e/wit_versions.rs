//! Versions of the WIT contract: plugins built against `sandport:handler@0.1.0`,
//! `@0.2.0` and `@0.3.0` (the `old-wit`, `wit-0-2` and `wit-0-3` fixtures, one echo that
//! migrates) load unchanged, serve in every instance mode, migrate their connections,
//! and swap with a plugin of the current 0.4.0 both ways, live; `sandport check` accepts them and names
//! their version. A migration from a 0.2.0 plugin (whose `hand-over` forgets the
//! connection) that is called off gives it its connections back. And `tls-info`, the
//! import 0.2.0 added, as the probe reports it on a plaintext connection.

use crate::admin::{Admin, admin_table};
use crate::harness::{Client, Server, listener, plugins, run_sandport, totals};
use crate::swap::echoes;

/// The settings of the listeners below: the current echo greets every client with
/// this line and the old-wit echo does not, so the first bytes of a connection say
/// which of the two serves it.
const GREETING: &str = "[listener.config]\ngreeting = \"hello from the current echo\"\n";

/// Swap listener `name` to the component `plugin`, uploaded through the admin API.
fn swap(admin: &Admin, name: &str, plugin: &str) {
    let bytes = std::fs::read(plugin).unwrap();
    let answer = admin.put(&format!("/listeners/{name}/plugin"), "application/wasm", &bytes);
    assert_eq!(answer.status, 200, "swap {name} to {plugin}: {}", answer.body);
}

/// A new connection to `name`, served by the old-wit echo: no greeting (the echo of
/// the first bytes would not match after one), and every byte back.
fn old_wit(server: &Server, name: &str) -> Client {
    let mut client = server.connect(name);
    echoes(&mut client, 1000);
    client
}

/// A new connection to `name`, served by the current echo: the greeting, then every
/// byte back.
fn current(server: &Server, name: &str) -> Client {
    let mut client = server.connect(name);
    assert_eq!(client.line(), "hello from the current echo", "greeted by the current echo");
    echoes(&mut client, 1000);
    client
}

/// The fixtures built against earlier versions, and the version each names.
const OLD: [(&str, &str); 3] =
    [(plugins::FIXTURE_OLD_WIT, "0.1.0"), (plugins::FIXTURE_WIT_0_2, "0.2.0"), (plugins::FIXTURE_WIT_0_3, "0.3.0")];

#[test]
fn plugins_built_against_earlier_versions_serve_and_swap_with_a_current_one_both_ways() {
    for (plugin, _) in OLD {
        serves_and_swaps_with_a_current_one_both_ways(plugin);
    }
}

fn serves_and_swaps_with_a_current_one_both_ways(old: &str) {
    let config = admin_table("127.0.0.1:0", None)
        + &listener("svc", old, GREETING)
        + &listener("fresh", old, &format!("instance = \"per-connection\"\n{GREETING}"));
    let server = Server::start(&config);
    let admin = Admin::of(&server, None);
    let mut first = old_wit(&server, "svc");
    let mut fresh = old_wit(&server, "fresh");

    // To the current contract: new connections get the current echo; the open one
    // drains on its version (the echo does not migrate), still served.
    swap(&admin, "svc", plugins::ECHO);
    let mut second = current(&server, "svc");
    echoes(&mut first, 5000);

    // And back.
    swap(&admin, "svc", old);
    let mut third = old_wit(&server, "svc");
    for client in [&mut first, &mut second, &mut third, &mut fresh] {
        echoes(client, 5000);
    }
    drop((first, second, third, fresh));

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    for name in ["svc", "fresh"] {
        let totals = totals(&log, name);
        assert!(totals.contains("faults=0") && totals.contains("drained=0"), "{totals}");
    }
}

#[test]
fn plugins_built_against_earlier_versions_migrate_their_connections() {
    for (plugin, _) in OLD {
        migrates_its_connections(plugin);
    }
}

fn migrates_its_connections(old: &str) {
    let server = Server::start(&listener("svc", old, ""));
    let mut client = server.connect("svc");
    echoes(&mut client, 1000);

    // A changed setting is a new version: both export `migrate` of their version.
    server.reload(&listener("svc", old, "[listener.config]\nrevision = \"2\"\n"));
    let took_over = server.wait_for_log(&["version 2 took over", "listener=svc"]);
    assert!(took_over.contains("migrated=1") && took_over.contains("draining=0"), "{took_over}");
    server.wait_for_log(&[" took over 1", "sandport::guest"]);
    echoes(&mut client, 5000);
    drop(client);

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    let totals = totals(&log, "svc");
    assert!(totals.contains("migrated=1") && totals.contains("faults=0"), "{totals}");
}

#[test]
fn check_accepts_plugins_built_against_earlier_versions_and_names_their_version() {
    for (plugin, version) in OLD {
        let (status, stdout, stderr) = run_sandport(&["check", plugin]);
        assert!(status.success(), "{stderr}");
        assert!(stdout.contains(&format!("ok, implements sandport:handler/plugin@{version}\n")), "{stdout}");
        assert!(stdout.contains("live migration: migrates open connections\n"), "{stdout}");
        for interface in ["host", "handler", "migrate"] {
            assert!(stdout.contains(&format!("  sandport:handler/{interface}@{version}\n")), "{interface}: {stdout}");
        }
    }
}

#[test]
fn a_migration_from_0_2_0_called_off_gives_the_old_version_its_connections_back() {
    // The new version (the current contract's migrate-faults) traps in its second
    // take-over: the 0.2.0 echo had forgotten the two it handed over, and takes them
    // back through its own take-over.
    let settings = "[listener.config]\ntake-over = \"trap at 2\"\n";
    let server = Server::start(&format!("workers = 1\n{}", listener("svc", plugins::FIXTURE_WIT_0_2, settings)));
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect("svc")).collect();
    for client in &mut clients {
        echoes(client, 1000);
    }
    server.reload(&format!("workers = 1\n{}", listener("svc", plugins::FIXTURE_MIGRATE_FAULTS, settings)));
    server.wait_for_log(&["new version refused", "listener=svc", "trapped in take-over"]);
    server.wait_for_count("fixture-wit-0-2 took over", 2);
    for client in &mut clients {
        echoes(client, 5000);
    }
    drop(clients);
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    let totals = totals(&log, "svc");
    assert!(totals.contains("migrated=0") && totals.contains("faults=0"), "{totals}");
}

#[test]
fn tls_info_is_none_on_a_plaintext_connection() {
    let server = Server::start(&listener("probe", plugins::FIXTURE_PROBE, ""));
    let mut client = server.connect("probe");
    assert_eq!(client.ask("tls"), "tls none");
    let mut other = server.connect("probe");
    let id = other.ask("id").strip_prefix("id ").unwrap().to_owned();
    assert_eq!(client.ask(&format!("tls {id}")), "tls none", "another connection of the instance");
    assert_eq!(client.ask("tls 999999"), "err closed", "a connection that is not the instance's");
}
