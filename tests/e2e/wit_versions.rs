//! Versions of the WIT contract: a plugin built against `sandport:handler@0.1.0` (the
//! `old-wit` fixture, an echo that migrates) loads unchanged, serves in every instance
//! mode, migrates its connections, and swaps with a plugin of the current 0.2.0 both
//! ways, live; `sandport check` accepts it and names its version. And `tls-info`, the
//! import 0.2.0 added, as the probe reports it on a plaintext connection.

use crate::admin::{Admin, admin_table};
use crate::harness::{Client, Server, listener, plugins, run_sandport, totals};
use crate::swap::echoes;

/// The settings of the listeners below: the current echo greets every client with
/// this line and the old-wit echo does not, so the first bytes of a connection say
/// which of the two serves it.
const GREETING: &str = "[listener.config]\ngreeting = \"hello from 0.2.0\"\n";

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
    assert_eq!(client.line(), "hello from 0.2.0", "greeted by the 0.2.0 echo");
    echoes(&mut client, 1000);
    client
}

#[test]
fn a_plugin_built_against_0_1_0_serves_and_swaps_with_a_current_one_both_ways() {
    let config = admin_table("127.0.0.1:0", None)
        + &listener("svc", plugins::FIXTURE_OLD_WIT, GREETING)
        + &listener("fresh", plugins::FIXTURE_OLD_WIT, &format!("instance = \"per-connection\"\n{GREETING}"));
    let server = Server::start(&config);
    let admin = Admin::of(&server, None);
    let mut first = old_wit(&server, "svc");
    let mut fresh = old_wit(&server, "fresh");

    // To 0.2.0: new connections get the current echo; the open one drains on its
    // version (the echo does not migrate), still served.
    swap(&admin, "svc", plugins::ECHO);
    let mut second = current(&server, "svc");
    echoes(&mut first, 5000);

    // And back to 0.1.0.
    swap(&admin, "svc", plugins::FIXTURE_OLD_WIT);
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
fn a_plugin_built_against_0_1_0_migrates_its_connections() {
    let server = Server::start(&listener("svc", plugins::FIXTURE_OLD_WIT, ""));
    let mut client = server.connect("svc");
    echoes(&mut client, 1000);

    // A changed setting is a new version: both export `migrate@0.1.0`.
    server.reload(&listener("svc", plugins::FIXTURE_OLD_WIT, "[listener.config]\nrevision = \"2\"\n"));
    let took_over = server.wait_for_log(&["version 2 took over", "listener=svc"]);
    assert!(took_over.contains("migrated=1") && took_over.contains("draining=0"), "{took_over}");
    server.wait_for_log(&["old-wit took over"]);
    echoes(&mut client, 5000);
    drop(client);

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    let totals = totals(&log, "svc");
    assert!(totals.contains("migrated=1") && totals.contains("faults=0"), "{totals}");
}

#[test]
fn check_accepts_a_plugin_built_against_0_1_0_and_names_its_version() {
    let (status, stdout, stderr) = run_sandport(&["check", plugins::FIXTURE_OLD_WIT]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("ok, implements sandport:handler/plugin@0.1.0\n"), "{stdout}");
    assert!(stdout.contains("live migration: migrates open connections\n"), "{stdout}");
    for interface in ["host", "handler", "migrate"] {
        assert!(stdout.contains(&format!("  sandport:handler/{interface}@0.1.0\n")), "{interface}: {stdout}");
    }
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
