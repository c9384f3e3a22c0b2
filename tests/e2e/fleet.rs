//! A fleet on one machine: a real OCI registry (Debian's `docker-registry`) and three
//! sandport nodes that follow one tag. A pushed version reaches every node with kept
//! connections losing nothing; a version that fails its pre-flight, or faults once
//! serving, is refused or rolled back by every node and not taken again; a node
//! without its registry serves its last pull or exits with a clear error; a pinned
//! digest whose blob was altered is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sandport_test_artifacts::{ECHO, FIXTURE_BURN, FIXTURE_OLD_WIT, FIXTURE_PROBE};
use serde_json::Value;

use crate::admin::{Admin, admin_table};
use crate::harness::{Server, config_file, run_sandport, sandport, wait_exit};
use crate::registry::Registry;
use crate::swap::echoes;

/// How often the nodes look at the tag.
const FOLLOW: Duration = Duration::from_secs(3);

/// The repository and tag the fleet follows.
const TAG: &str = "fleet/app:stable";

/// Publish `file` under `reference` with `sandport push`; its manifest digest.
fn push(file: &str, reference: &str) -> String {
    let (status, stdout, stderr) = run_sandport(&["push", file, reference, "--insecure"]);
    assert!(status.success(), "sandport push failed: {stderr}");
    let digest = stdout.trim().to_owned();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "push printed {stdout:?}");
    digest
}

/// The config of a node following `reference`, storing pulls in `store`.
fn node_config(registry: &Registry, reference: &str, store: &std::path::Path, extra: &str) -> String {
    format!(
        "workers = 1\n{}[oci]\nstore = \"{}\"\ninsecure = [\"{}\"]\n\n[[listener]]\nname = \"app\"\naddress = \"127.0.0.1:0\"\nplugin = \"{reference}\"\n{extra}",
        admin_table("127.0.0.1:0", None),
        store.display(),
        registry.address(),
    )
}

/// A node: its server, admin API and store.
struct Node {
    server: Server,
    admin: Admin,
    _store: tempfile::TempDir,
}

impl Node {
    fn start(registry: &Registry, reference: &str, extra: &str) -> Node {
        let store = tempfile::tempdir().unwrap();
        let server = Server::start(&node_config(registry, reference, store.path(), extra));
        let admin = Admin::of(&server, None);
        Node { server, admin, _store: store }
    }

    /// What `/listeners` says of the listener's artifact.
    fn artifact(&self) -> Value {
        self.admin.listeners()[0]["artifact"].clone()
    }

    /// Wait until the log has `needle` `count` times.
    fn wait_for(&self, needle: &str, count: usize) {
        self.server.wait_for_count(needle, count);
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The manifest `digest` of the fleet's repository, as the registry serves it.
fn manifest(registry: &Registry, digest: &str) -> Value {
    let url = format!("http://{}/v2/fleet/app/manifests/{digest}", registry.address());
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let mut response = ureq::get(&url).header("Accept", accept).call().expect("the registry serves the manifest");
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn a_pushed_version_reaches_all_three_nodes_and_kept_connections_lose_nothing() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    let first = push(ECHO, &reference);
    let follow = format!("follow-ms = {}\n", FOLLOW.as_millis());
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&registry, &reference, &follow)).collect();
    for node in &nodes {
        assert_eq!(node.artifact()["digest"], first.as_str(), "every node starts on the pushed digest");
    }
    // Connections kept open through the rollout, each sending and checking echoes until
    // stopped: a changed or lost byte, or a failed connection, panics its thread.
    let (stop, rounds) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        // Set however this body ends, a failed assertion included: the scope waits for
        // the echoing threads, which would otherwise echo on forever.
        let _stop = StopOnDrop(&stop);
        for node in &nodes {
            for _ in 0..2 {
                let mut client = node.server.connect("app");
                let (stop, rounds) = (&stop, &rounds);
                s.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        echoes(&mut client, 4096);
                        rounds.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        }

        let second = push(FIXTURE_OLD_WIT, &reference);
        for node in &nodes {
            // How soon each node finds it (a poll every `follow-ms`) is a figure for
            // BENCHMARKS.md, not an assertion: on a loaded machine a poll comes late.
            node.wait_for("the tag moved: swapping its new digest in", 1);
            node.wait_for("the tag's new digest took over", 1);
            assert_eq!(node.artifact()["digest"], second.as_str());
            assert_eq!(node.admin.listeners()[0]["version"], 2);
            let mut fresh = node.server.connect("app");
            echoes(&mut fresh, 10_000);
        }
        let before = rounds.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert!(rounds.load(Ordering::SeqCst) > before, "the kept connections go on echoing");
    });
    for node in nodes {
        let (status, log) = node.server.terminate();
        assert!(status.success(), "{log}");
        let totals = crate::harness::totals(&log, "app");
        assert!(totals.contains("faults=0") && totals.contains("refused=0"), "{totals}");
    }
}

#[test]
fn a_version_refused_or_rolled_back_by_every_node_is_not_taken_again() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    let first = push(ECHO, &reference);
    // The burner burns far past its CPU budget on the pre-flight's message; the echo
    // and the probe ignore the setting.
    let rules = format!(
        "follow-ms = {}\nrollback-faults = 2\nrollback-window-ms = 60000\n[listener.limits]\nevent-timeout-ms = 20\n[listener.config]\nburn-iterations = 100000000000\n",
        FOLLOW.as_millis()
    );
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&registry, &reference, &rules)).collect();

    let burner = push(FIXTURE_BURN, &reference);
    for node in &nodes {
        node.wait_for("the tag's new digest is refused", 1);
        let artifact = node.artifact();
        assert_eq!(artifact["refused"], burner.as_str(), "{artifact}");
        assert_eq!(artifact["digest"], first.as_str(), "the first version goes on serving: {artifact}");
        assert!(artifact["refused_why"].as_str().unwrap().contains("pre-flight"), "{artifact}");
        echoes(&mut node.server.connect("app"), 1000);
    }

    let prober = push(FIXTURE_PROBE, &reference);
    for node in &nodes {
        node.wait_for("the tag's new digest took over", 1);
        for _ in 0..3 {
            let mut client = node.server.connect("app");
            client.send_line("trap");
            let _ = client.until_end();
        }
        node.wait_for("route=AutoRollback", 1);
        let artifact = node.artifact();
        assert_eq!(artifact["digest"], first.as_str(), "rolled back to the first version: {artifact}");
        assert_eq!(artifact["refused"], prober.as_str(), "{artifact}");
        echoes(&mut node.server.connect("app"), 1000);
    }
    // Two more polls: the tag still points at the rolled-back digest, which no node takes.
    std::thread::sleep(FOLLOW * 2);
    for node in &nodes {
        let log = node.server.log();
        assert_eq!(log.matches("swapping its new digest in").count(), 2, "{log}");
        let pulls = node.artifact()["pulls"].as_u64().unwrap();
        assert!(pulls >= 3, "the node went on looking at the tag: {pulls} answers");
        // What an operator alerts on: the digest serving and the one refused.
        let metrics = node.admin.metrics();
        let serving =
            format!("sandport_plugin_artifact{{listener=\"app\",reference=\"{reference}\",digest=\"{first}\"}}");
        assert_eq!(metrics.get(&serving), 1.0);
        assert_eq!(
            metrics.get(&format!("sandport_plugin_artifact_refused{{listener=\"app\",digest=\"{prober}\"}}")),
            1.0
        );
        assert!(metrics.get("sandport_plugin_pulls_total{listener=\"app\",result=\"ok\"}") >= 3.0);
    }
}

#[test]
fn without_its_registry_a_node_serves_its_last_pull_or_exits_with_a_clear_error() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    let digest = push(ECHO, &reference);
    let store = tempfile::tempdir().unwrap();
    let offline = "offline = \"last-pulled\"\n";
    let first = Server::start(&node_config(&registry, &reference, store.path(), offline));
    let (status, _) = first.terminate();
    assert!(status.success());
    drop(registry);

    let again = Server::start(&node_config_without(&reference, store.path(), offline));
    again.wait_for_log(&["serving the version pulled last"]);
    assert!(again.log().contains(&digest), "the warning names the digest served:\n{}", again.log());
    echoes(&mut again.connect("app"), 5000);

    let (_dir, path) = config_file(&node_config_without(&reference, store.path(), ""));
    let mut child = sandport()
        .args(["serve", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started without its registry:\n{stderr}");
    assert!(stderr.contains("listener `app`") && stderr.contains(&reference), "{stderr}");
}

/// A node's config whose registry is gone (its address is in the reference).
fn node_config_without(reference: &str, store: &std::path::Path, extra: &str) -> String {
    let registry = reference.trim_start_matches("oci://").split('/').next().unwrap();
    format!(
        "workers = 1\n[oci]\nstart-timeout-ms = 1500\nstore = \"{}\"\ninsecure = [\"{registry}\"]\n\n[[listener]]\nname = \"app\"\naddress = \"127.0.0.1:0\"\nplugin = \"{reference}\"\n{extra}",
        store.display()
    )
}

#[test]
fn a_pinned_digest_whose_blob_the_registry_alters_is_refused() {
    let registry = Registry::start();
    let digest = push(ECHO, &registry.reference(TAG));
    let manifest = manifest(&registry, &digest);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    registry.corrupt_blob(&layer);
    let pinned = format!("oci://{}/fleet/app@{digest}", registry.address());
    let store = tempfile::tempdir().unwrap();
    let config = node_config(&registry, &pinned, store.path(), "");
    let (_dir, path) = config_file(&config.replace("[oci]\n", "[oci]\nstart-timeout-ms = 1000\n"));
    let (status, _, stderr) = run_sandport(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!status.success(), "served an altered blob:\n{stderr}");
    assert!(stderr.contains("listener `app`") && stderr.contains(&layer), "{stderr}");
}
