//! One TLS port, many tenants: the ClientHello's server name picks the listener (exact
//! names, one-label `*.` wildcards, the default for no name or an unknown one, else
//! `unrecognized_name`), and from there on the connection is that tenant's alone: its
//! `max-connections`, its counters, its handshake metrics, its worker. Tenants come,
//! go and change by SIGHUP, the admin API and the watcher while the others' open
//! connections carry on; config errors name both listeners they are about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::admin::admin_table;
use crate::bounded::{admin_address, assert_refused, put_path, request, run_bounded, text};
use crate::harness::{PATIENCE, Server, config_file, free_address, listener_at, plugins, sandport};
use crate::tls_kit::{Hello, Pair, Pki, TlsClient, leaf, s_client, served, tls_table};

/// A TLS tenant: listener `name` at `address` running `plugin` with `pair`'s
/// certificate. `settings` are its other lines, keys first, then tables.
pub(crate) fn tenant(name: &str, address: &str, plugin: &str, pair: &Pair, settings: &str) -> String {
    listener_at(name, address, plugin, &format!("{settings}\n{}", tls_table(pair, "")))
}

/// A probe tenant serving `names` that answers `config who` with its own name;
/// `keys` are more listener keys (`default = true`).
fn probe_tenant(name: &str, address: &str, pair: &Pair, names: &[&str], keys: &str) -> String {
    let settings = format!("{}\n{keys}\n[listener.config]\nwho = \"{name}\"", server_names(names));
    tenant(name, address, plugins::FIXTURE_PROBE, pair, &settings)
}

/// The `server-names = [...]` line.
pub(crate) fn server_names(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    format!("server-names = [{}]", quoted.join(", "))
}

/// A hello naming `name` (an IP address: no server name is sent).
pub(crate) fn hello(name: &str) -> Hello<'_> {
    Hello { name, ..Hello::default() }
}

/// Which probe tenant serves a new connection for `name`, and the certificate it got.
fn who_serves(addr: SocketAddr, ca: &Path, name: &str) -> (String, Vec<u8>) {
    let mut client = TlsClient::connect(addr, ca, hello(name));
    let answer = client.ask("config who");
    let who = answer.strip_prefix("config ").unwrap_or_else(|| panic!("not the probe: {answer}"));
    (who.to_owned(), served(&client).to_vec())
}

/// The admin API of a server started with [`admin_table`], reached through loopback.
pub(crate) fn admin_of(server: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], admin_address(server).port()))
}

/// One scrape of `/metrics`: every sample by name and labels (`name{label="value"}`).
pub(crate) struct Scrape {
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    /// Scrape the admin API at `admin`.
    pub(crate) fn of(admin: SocketAddr) -> Scrape {
        let reply = request(admin, "GET /metrics HTTP/1.1", b"", PATIENCE).expect("the admin API answers");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let samples = reply.body.lines().filter(|line| !line.starts_with('#') && !line.is_empty());
        let samples = samples.map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {line}")))
        });
        Scrape { samples: samples.collect(), text: reply.body }
    }

    /// The sample `key`; fails if there is none.
    pub(crate) fn get(&self, key: &str) -> f64 {
        *self.samples.get(key).unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }
}

impl Scrape {
    /// The lowest bucket of `family` (a histogram) for `listener`: its bound in
    /// seconds, and its count.
    pub(crate) fn first_bucket(&self, family: &str, listener: &str) -> (f64, f64) {
        let prefix = format!("{family}_bucket{{listener=\"{listener}\",le=\"");
        let buckets = self.samples.iter().filter_map(|(key, value)| {
            let bound = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((bound.parse::<f64>().ok()?, *value))
        });
        buckets.min_by(|a, b| a.0.total_cmp(&b.0)).unwrap_or_else(|| panic!("no {prefix}... in:\n{}", self.text))
    }
}

/// Wait until `/metrics` shows counter `key` at `value` (the server counts a moment
/// after the client is done); fails if it passes it or stays below.
pub(crate) fn wait_for_sample(admin: SocketAddr, key: &str, value: f64) -> Scrape {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let scrape = Scrape::of(admin);
        let now = scrape.get(key);
        assert!(now <= value, "{key} is {now}, past {value}:\n{}", scrape.text);
        if now == value {
            return scrape;
        }
        assert!(Instant::now() < deadline, "{key} stayed at {now}, below {value}:\n{}", scrape.text);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error of a handshake the server ends with a fatal alert.
fn refused_handshake(addr: SocketAddr, ca: &Path, name: &str) -> String {
    match TlsClient::try_connect(addr, ca, hello(name)) {
        Ok(_) => panic!("a hello naming {name:?} was served"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn exact_names_beat_wildcards_of_one_label_and_the_default_takes_the_rest() {
    let mut pki = Pki::new("routing CA");
    let exact = pki.server(&["a.tenant.test"]);
    let wild = pki.server(&["*.tenant.test"]);
    let fallback = pki.server(&["fallback.test", "tenant.test", "x.a.tenant.test", "unknown.test", "127.0.0.1"]);
    let address = free_address().to_string();
    let config = "workers = 1\n".to_owned()
        + &probe_tenant("exact", &address, &exact, &["a.tenant.test"], "")
        + &probe_tenant("wild", &address, &wild, &["*.tenant.test"], "")
        + &probe_tenant("fallback", &address, &fallback, &["fallback.test"], "default = true");
    let server = Server::start(&config);
    let addr = server.addr("exact");
    let (exact, wild, fallback) = (leaf(&exact).to_vec(), leaf(&wild).to_vec(), leaf(&fallback).to_vec());

    let expected = [
        ("a.tenant.test", "exact", &exact),
        ("b.tenant.test", "wild", &wild),
        ("B.Tenant.TEST", "wild", &wild),
        ("fallback.test", "fallback", &fallback),
        ("x.a.tenant.test", "fallback", &fallback),
        ("tenant.test", "fallback", &fallback),
        ("unknown.test", "fallback", &fallback),
        ("127.0.0.1", "fallback", &fallback),
    ];
    for (name, tenant, certificate) in expected {
        let (who, got) = who_serves(addr, &pki.ca, name);
        assert_eq!(who, tenant, "a hello naming {name:?} reaches {tenant}");
        assert!(&got == certificate, "a hello naming {name:?} gets {tenant}'s certificate");
    }

    let ca = pki.ca.to_str().unwrap();
    let out = s_client(addr, &["-noservername", "-CAfile", ca], b"config who\n");
    assert!(out.contains("config fallback"), "openssl without a server name reaches the default:\n{out}");
    let out = s_client(addr, &["-servername", "c.tenant.test", "-CAfile", ca], b"config who\n");
    assert!(out.contains("config wild"), "openssl naming c.tenant.test reaches the wildcard:\n{out}");
}

#[test]
fn without_a_default_an_unknown_name_gets_unrecognized_name_and_is_counted() {
    let mut pki = Pki::new("routing CA");
    let (a, b) = (pki.server(&["a.test"]), pki.server(&["b.test"]));
    let address = free_address().to_string();
    let config = "workers = 1\n".to_owned()
        + &admin_table("127.0.0.1:0", None)
        + &probe_tenant("a", &address, &a, &["a.test"], "")
        + &probe_tenant("b", &address, &b, &["b.test"], "");
    let server = Server::start(&config);
    let (addr, admin) = (server.addr("a"), admin_of(&server));

    let err = refused_handshake(addr, &pki.ca, "c.test");
    assert!(err.contains("UnrecognisedName"), "an unknown name: {err}");
    let err = refused_handshake(addr, &pki.ca, "127.0.0.1");
    assert!(err.contains("UnrecognisedName"), "no name at all: {err}");
    let out = s_client(addr, &["-servername", "c.test"], b"");
    assert!(out.contains("unrecognized name") && out.contains("alert number 112"), "openssl hears alert 112:\n{out}");

    let refused = |reason: &str| format!("sandport_address_refused_total{{address=\"{addr}\",reason=\"{reason}\"}}");
    let scrape = wait_for_sample(admin, &refused("unrecognized_name"), 3.0);
    for reason in ["busy", "bad_hello", "no_listener", "abandoned", "timeout"] {
        assert_eq!(scrape.get(&refused(reason)), 0.0, "nothing else was refused");
    }
    for name in ["a", "b"] {
        let accepted = format!("sandport_connections_total{{listener=\"{name}\",kind=\"accepted\"}}");
        assert_eq!(scrape.get(&accepted), 0.0, "{name}: no unrouted hello is its connection");
        let handshakes = format!("sandport_tls_handshakes_total{{listener=\"{name}\",result=\"failed\"}}");
        assert_eq!(scrape.get(&handshakes), 0.0, "{name}: no unrouted hello is its handshake");
    }
    assert_eq!(who_serves(addr, &pki.ca, "b.test").0, "b", "the named tenants serve on");

    let (_, log) = server.terminate();
    let totals = log.lines().find(|l| l.contains("address totals") && l.contains(&addr.to_string()));
    let totals = totals.unwrap_or_else(|| panic!("no address totals for {addr}:\n{log}"));
    assert!(totals.contains("refused=unrecognized_name:3"), "{totals}");
}

#[test]
fn each_tenant_has_its_own_connection_limit_counters_and_handshake_metrics() {
    own_limit_counters_and_handshake_metrics(1, "shared");
}

#[test]
fn each_tenant_has_its_own_connection_limit_counters_and_handshake_metrics_across_two_workers() {
    own_limit_counters_and_handshake_metrics(2, "per-worker");
}

/// Two echo tenants on one port, `small` of `max-connections = 2`, on `workers`
/// workers in `instance` mode: the limit is small's alone (across its workers), and
/// so are its counters and handshake metrics.
fn own_limit_counters_and_handshake_metrics(workers: usize, instance: &str) {
    let mut pki = Pki::new("routing CA");
    let (small, big) = (pki.server(&["small.test"]), pki.server(&["big.test"]));
    let address = free_address().to_string();
    let keys = |name: &str| format!("{}\ninstance = \"{instance}\"", server_names(&[name]));
    let small_settings = format!("{}\n[listener.limits]\nmax-connections = 2", keys("small.test"));
    let config = format!("workers = {workers}\n")
        + &admin_table("127.0.0.1:0", None)
        + &tenant("small", &address, plugins::ECHO, &small, &small_settings)
        + &tenant("big", &address, plugins::ECHO, &big, &keys("big.test"));
    let server = Server::start(&config);
    let (addr, admin) = (server.addr("small"), admin_of(&server));
    let metric =
        |name: &str, listener: &str, label: &str| format!("sandport_{name}{{listener=\"{listener}\",{label}}}");

    let mut smalls: Vec<TlsClient> = (0..2).map(|_| TlsClient::connect(addr, &pki.ca, hello("small.test"))).collect();
    for (index, client) in smalls.iter_mut().enumerate() {
        assert_eq!(client.ask(&format!("small {index}")), format!("small {index}"));
    }
    assert!(
        TlsClient::try_connect(addr, &pki.ca, hello("small.test")).is_err(),
        "a third connection to a tenant of max-connections = 2 is refused"
    );
    let mut bigs: Vec<TlsClient> = (0..3).map(|_| TlsClient::connect(addr, &pki.ca, hello("big.test"))).collect();
    for (index, client) in bigs.iter_mut().enumerate() {
        assert_eq!(client.ask(&format!("big {index}")), format!("big {index}"), "the full tenant's neighbour serves");
    }
    let stranger = Pki::new("a CA nobody trusts here");
    assert!(
        TlsClient::try_connect(addr, &stranger.ca, hello("big.test")).is_err(),
        "the client refuses big's certificate"
    );

    drop(smalls.pop());
    wait_for_sample(admin, &metric("connections_total", "small", "kind=\"closed\""), 1.0);
    let mut again = TlsClient::connect(addr, &pki.ca, hello("small.test"));
    assert_eq!(again.ask("a slot came back"), "a slot came back");
    assert_eq!(smalls[0].ask("still here"), "still here");

    let scrape = wait_for_sample(admin, &metric("tls_handshakes_total", "big", "result=\"failed\""), 1.0);
    let counts = [
        ("connections_total", "small", "kind=\"accepted\"", 3.0),
        ("connections_total", "small", "kind=\"refused\"", 1.0),
        ("limit_hits_total", "small", "limit=\"max-connections\"", 1.0),
        ("tls_handshakes_total", "small", "result=\"ok\"", 3.0),
        ("tls_handshakes_total", "small", "result=\"failed\"", 0.0),
        ("connections_total", "big", "kind=\"accepted\"", 3.0),
        ("connections_total", "big", "kind=\"refused\"", 0.0),
        ("limit_hits_total", "big", "limit=\"max-connections\"", 0.0),
        ("tls_handshakes_total", "big", "result=\"ok\"", 3.0),
        ("tls_handshakes_total", "big", "result=\"timeout\"", 0.0),
        ("connections_open", "small", "", 2.0),
        ("connections_open", "big", "", 3.0),
    ];
    for (name, listener, label, value) in counts {
        let key = match label {
            "" => format!("sandport_{name}{{listener=\"{listener}\"}}"),
            label => metric(name, listener, label),
        };
        assert_eq!(scrape.get(&key), value, "{key}");
    }
    for listener in ["small", "big"] {
        let count = scrape.get(&format!("sandport_tls_handshake_time_seconds_count{{listener=\"{listener}\"}}"));
        assert_eq!(count, 3.0, "{listener}: one handshake time per completed handshake");
        let all = metric("tls_handshake_time_seconds_bucket", listener, "le=\"+Inf\"");
        assert_eq!(scrape.get(&all), 3.0, "{all}");
        let sum = scrape.get(&format!("sandport_tls_handshake_time_seconds_sum{{listener=\"{listener}\"}}"));
        let histogram: Vec<&str> = scrape.text.lines().filter(|l| l.contains("handshake_time")).collect();
        assert!(sum > 0.0, "{listener}: a handshake takes some time:\n{}", histogram.join("\n"));
    }
}

/// Read lines until `wanted`; the lines before it must be chat notices (`* ...`).
fn hear(client: &mut TlsClient, wanted: &str) {
    loop {
        let line = client.line();
        if line == wanted {
            return;
        }
        assert!(line.starts_with("* "), "expected {wanted:?} or a notice, got {line:?}");
    }
}

#[test]
fn shared_tenants_on_two_workers_get_every_connection_handed_to_their_worker() {
    let mut pki = Pki::new("routing CA");
    let (chat, probe) = (pki.server(&["chat.test"]), pki.server(&["probe.test"]));
    let address = free_address().to_string();
    // Shared instances: the chat lives on worker 0, the probe on worker 1, and each
    // connection the kernel gives the other worker is handed over.
    let config = "workers = 2\n".to_owned()
        + &tenant("chat", &address, plugins::CHAT, &chat, &server_names(&["chat.test"]))
        + &probe_tenant("probe", &address, &probe, &["probe.test"], "");
    let server = Server::start(&config);
    let addr = server.addr("chat");

    let mut members = Vec::new();
    for _ in 0..10 {
        let mut member = TlsClient::connect(addr, &pki.ca, hello("chat.test"));
        let welcome = member.line();
        let name = welcome.strip_prefix("* welcome ").unwrap_or_else(|| panic!("{welcome}")).to_owned();
        members.push((member, name));
    }
    let (first, name) = &mut members[0];
    first.write(b"one room for all\n");
    let said = format!("{name}: one room for all");
    for (member, _) in &mut members[1..] {
        hear(member, &said);
    }
    for count in 1..=10 {
        let mut client = TlsClient::connect(addr, &pki.ca, hello("probe.test"));
        assert_eq!(client.ask("count"), format!("count {count}"), "one probe instance counts every connection");
    }

    let (_, log) = server.terminate();
    let handed: u64 = log
        .lines()
        .filter(|l| l.contains("address totals") && l.contains(&addr.to_string()))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("handed_on="))?.parse::<u64>().ok())
        .sum();
    // Each of 20 connections lands on the wrong worker with odds of one in two.
    assert!(handed > 0, "some connections were handed to the other worker:\n{log}");
}

/// Run `sandport serve` on `config` and expect it to refuse the config with an
/// `error:` line naming `names`.
fn refuses(config: &str, what: &str, names: &[&str]) {
    let (_dir, path) = config_file(config);
    assert_refused(run_bounded(sandport().args(["serve", "--config", text(&path)]), PATIENCE), what, names);
}

#[test]
fn config_errors_on_a_shared_address_name_both_listeners() {
    let mut pki = Pki::new("routing CA");
    let pair = pki.server(&["one.test", "two.test"]);
    let address = free_address().to_string();
    let with = |name: &str, names: &[&str], keys: &str| {
        tenant(name, &address, plugins::ECHO, &pair, &format!("{}\n{keys}", server_names(names)))
    };
    refuses(
        &(with("first", &["one.test", "two.test"], "") + &with("second", &["two.test"], "")),
        "one server name on two listeners",
        &["first", "second", "two.test"],
    );
    refuses(
        &(with("first", &["one.test", "*.two.test"], "") + &with("second", &["*.Two.TEST."], "")),
        "one wildcard on two listeners, written differently",
        &["first", "second", "*.two.test"],
    );
    refuses(
        &(with("first", &["one.test"], "default = true") + &with("second", &["two.test"], "default = true")),
        "two defaults",
        &["first", "second", "default"],
    );
    refuses(
        &(with("secure", &["one.test"], "") + &listener_at("plain", &address, plugins::ECHO, "")),
        "a plaintext listener on a TLS address",
        &["secure", "plain"],
    );

    // The same mistake by SIGHUP leaves the running config serving.
    let good = "workers = 1\n".to_owned() + &with("first", &["one.test"], "") + &with("second", &["two.test"], "");
    let server = Server::start(&good);
    let addr = server.addr("first");
    let two_defaults =
        with("first", &["one.test"], "default = true") + &with("second", &["two.test"], "default = true");
    std::fs::write(server.config_path(), format!("shutdown-grace-ms = 0\nworkers = 1\n{two_defaults}")).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let line = server.wait_for_log(&["reload refused"]);
    assert!(line.contains("first") && line.contains("second"), "the refusal names both: {line}");
    let mut client = TlsClient::connect(addr, &pki.ca, hello("two.test"));
    assert_eq!(client.ask("the old config serves"), "the old config serves");
    let err = refused_handshake(addr, &pki.ca, "three.test");
    assert!(err.contains("UnrecognisedName"), "still no default: {err}");
}

#[test]
fn sighup_adds_removes_and_changes_tenants_while_another_tenants_connection_goes_on() {
    let mut pki = Pki::new("routing CA");
    let keep = pki.server(&["keep.test"]);
    let gone = pki.server(&["gone.test"]);
    let changed = pki.server(&["before.test", "after.test"]);
    let added = pki.server(&["added.test", "nobody.test"]);
    let address = free_address().to_string();
    let before = "workers = 1\n".to_owned()
        + &probe_tenant("keep", &address, &keep, &["keep.test"], "")
        + &probe_tenant("gone", &address, &gone, &["gone.test"], "")
        + &probe_tenant("changed", &address, &changed, &["before.test"], "");
    let changed_after = format!("{}\n[listener.config]\nwho = \"after\"", server_names(&["after.test"]));
    let after = |added_keys: &str| {
        "workers = 1\n".to_owned()
            + &probe_tenant("keep", &address, &keep, &["keep.test"], "")
            + &tenant("changed", &address, plugins::FIXTURE_PROBE, &changed, &changed_after)
            + &probe_tenant("added", &address, &added, &["added.test"], added_keys)
    };
    let server = Server::start(&before);
    let addr = server.addr("keep");

    let mut kept = TlsClient::connect(addr, &pki.ca, hello("keep.test"));
    assert_eq!(kept.ask("config who"), "config keep");
    let mut leaving = TlsClient::connect(addr, &pki.ca, hello("gone.test"));
    assert_eq!(leaving.ask("config who"), "config gone");
    assert_eq!(who_serves(addr, &pki.ca, "before.test").0, "changed");

    server.reload(&after(""));
    assert_eq!(kept.ask("config who"), "config keep", "the untouched tenant's open connection goes on");
    assert_eq!(kept.ask("echo across the reload"), "across the reload");
    assert_eq!(leaving.ask("config who"), "config gone", "a removed tenant's open connection drains");
    assert_eq!(who_serves(addr, &pki.ca, "keep.test").0, "keep");
    assert_eq!(who_serves(addr, &pki.ca, "added.test").0, "added", "the added tenant serves");
    assert_eq!(who_serves(addr, &pki.ca, "after.test").0, "after", "the changed tenant's new name and config");
    for name in ["gone.test", "before.test"] {
        let err = refused_handshake(addr, &pki.ca, name);
        assert!(err.contains("UnrecognisedName"), "{name} is no longer served: {err}");
    }
    assert_eq!(kept.ask("config who"), "config keep");

    // Only its TLS changes: the added tenant becomes the default, with no new
    // version of its plugin (its one instance counts on).
    let mut newcomer = TlsClient::connect(addr, &pki.ca, hello("added.test"));
    assert_eq!(newcomer.ask("count"), "count 1");
    server.reload(&after("default = true"));
    assert_eq!(who_serves(addr, &pki.ca, "nobody.test").0, "added", "the new default takes unknown names");
    assert_eq!(newcomer.ask("count"), "count 2", "the default's instance is the one it was");
    assert_eq!(kept.ask("config who"), "config keep");
    let log = server.log();
    let swaps = |name: &str| {
        let field = format!("listener={name} ");
        log.lines().filter(|l| l.contains(&field) && l.contains("took over")).count()
    };
    assert_eq!(swaps("changed"), 1, "the changed tenant's new config is a new version:\n{log}");
    assert_eq!(swaps("keep") + swaps("added"), 0, "nothing else was swapped:\n{log}");
}

/// `(tenant, version)` of each listener, from `/listeners`.
fn versions(admin: SocketAddr) -> Vec<(String, u64)> {
    let reply = request(admin, "GET /listeners HTTP/1.1", b"", PATIENCE).expect("the admin API answers");
    let listeners: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let listeners = listeners.as_array().unwrap_or_else(|| panic!("{}", reply.body));
    listeners.iter().map(|l| (l["name"].as_str().unwrap().to_owned(), l["version"].as_u64().unwrap())).collect()
}

#[test]
fn the_admin_api_swaps_one_tenants_plugin_and_leaves_the_other_alone() {
    let mut pki = Pki::new("routing CA");
    let (echo, probe) = (pki.server(&["echo.test"]), pki.server(&["probe.test"]));
    let address = free_address().to_string();
    let config = "workers = 1\n".to_owned()
        + &admin_table("127.0.0.1:0", None)
        + &tenant("echo", &address, plugins::ECHO, &echo, &server_names(&["echo.test"]))
        + &probe_tenant("probe", &address, &probe, &["probe.test"], "");
    let server = Server::start(&config);
    let (addr, admin) = (server.addr("echo"), admin_of(&server));
    let mut old_echo = TlsClient::connect(addr, &pki.ca, hello("echo.test"));
    assert_eq!(old_echo.ask("config who"), "config who", "the echo answers in kind");
    let mut neighbour = TlsClient::connect(addr, &pki.ca, hello("probe.test"));
    assert_eq!(neighbour.ask("count"), "count 1");

    let reply = put_path(admin, "echo", plugins::FIXTURE_PROBE, PATIENCE).expect("the swap is answered");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(who_serves(addr, &pki.ca, "echo.test").0, "none", "echo.test is served by the probe now");
    assert_eq!(old_echo.ask("an echo drains"), "an echo drains", "the echo's open connection goes on");
    assert_eq!(neighbour.ask("count"), "count 2", "the neighbour's instance is the one it was");
    assert_eq!(who_serves(addr, &pki.ca, "probe.test").0, "probe");
    assert_eq!(versions(admin), [("echo".to_owned(), 2), ("probe".to_owned(), 1)]);
}

#[test]
fn the_watcher_swaps_one_tenants_plugin_and_leaves_the_other_alone() {
    let mut pki = Pki::new("routing CA");
    let (echo, probe) = (pki.server(&["echo.test"]), pki.server(&["probe.test"]));
    let dir = tempfile::tempdir().unwrap();
    let (plugin, neighbour_plugin) = (dir.path().join("tenant.wasm"), dir.path().join("neighbour.wasm"));
    std::fs::copy(plugins::ECHO, &plugin).unwrap();
    std::fs::copy(plugins::FIXTURE_PROBE, &neighbour_plugin).unwrap();
    let address = free_address().to_string();
    let watched = |names: &[&str]| format!("{}\nwatch = true", server_names(names));
    let neighbour_settings = format!("{}\n[listener.config]\nwho = \"probe\"", watched(&["probe.test"]));
    let config = "workers = 1\n".to_owned()
        + &tenant("echo", &address, text(&plugin), &echo, &watched(&["echo.test"]))
        + &tenant("probe", &address, text(&neighbour_plugin), &probe, &neighbour_settings);
    let server = Server::start(&config);
    let addr = server.addr("echo");
    let mut old_echo = TlsClient::connect(addr, &pki.ca, hello("echo.test"));
    assert_eq!(old_echo.ask("config who"), "config who", "the echo answers in kind");
    let mut neighbour = TlsClient::connect(addr, &pki.ca, hello("probe.test"));
    assert_eq!(neighbour.ask("count"), "count 1");

    let swap = dir.path().join("tenant.wasm.new");
    std::fs::copy(plugins::FIXTURE_PROBE, &swap).unwrap();
    std::fs::rename(&swap, &plugin).unwrap();
    server.wait_for_log(&["plugin file changed: version", "listener=echo"]);
    assert_eq!(who_serves(addr, &pki.ca, "echo.test").0, "none", "echo.test is served by the probe now");
    assert_eq!(old_echo.ask("an echo drains"), "an echo drains", "the echo's open connection goes on");
    assert_eq!(neighbour.ask("count"), "count 2", "the neighbour's instance is the one it was");
    assert_eq!(who_serves(addr, &pki.ca, "probe.test").0, "probe");
    let log = server.log();
    assert!(!log.lines().any(|l| l.contains("plugin file changed") && l.contains("listener=probe")), "{log}");
}
