//! What running under Kubernetes relies on: a config mounted from a ConfigMap (the
//! kubelet's `..data` symlink flipped to a new folder) is seen and reloaded, and the
//! manifests of `deploy/kubernetes` validate against the pinned Kubernetes schema,
//! with `preStop` and the grace period in step with the ConfigMap's
//! `shutdown-grace-ms` and the compiled cache where sandport trusts it; broken copies
//! of them fail; the ConfigMap's config is one sandport takes.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Server, listener, plugins};

/// The folder the kubelet mounts a ConfigMap as: `..<timestamp>/` holds the files,
/// `..data` points to it, and each key is a symlink through `..data`.
struct ConfigMapFolder {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigMapFolder {
    fn new(config: &str) -> ConfigMapFolder {
        let mut folder = ConfigMapFolder { dir: tempfile::tempdir().unwrap(), version: 0 };
        folder.publish(config);
        symlink("..data/sandport.toml", folder.config()).unwrap();
        folder
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sandport.toml")
    }

    /// What the kubelet does on an update: write a new timestamped folder, point a
    /// new symlink at it and rename that over `..data` (one atomic flip), then remove
    /// the old folder.
    fn publish(&mut self, config: &str) {
        self.version += 1;
        let name = format!("..2026_12_07_12_00_0{}.{}", self.version, 100 + self.version);
        let fresh = self.dir.path().join(&name);
        std::fs::create_dir(&fresh).unwrap();
        std::fs::write(fresh.join("sandport.toml"), format!("watch = true\nshutdown-grace-ms = 0\n{config}")).unwrap();
        let staged = self.dir.path().join("..data_tmp");
        symlink(&name, &staged).unwrap();
        let data = self.dir.path().join("..data");
        let old = std::fs::read_link(&data).ok();
        std::fs::rename(&staged, &data).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
        }
    }
}

#[test]
fn a_configmap_update_is_reloaded() {
    let echo = listener("echo", plugins::ECHO, "");
    let mut folder = ConfigMapFolder::new(&echo);
    let path = folder.config();
    let server = Server::start_args(&["serve", "--config", path.to_str().unwrap()], 1);
    assert_eq!(server.connect("echo").ask("before"), "before");

    // A listener added, and the echo's plugin changed, in one flip.
    let probe = listener("echo", plugins::FIXTURE_PROBE, "");
    folder.publish(&format!("{probe}{}", listener("added", plugins::ECHO, "")));
    server.wait_for_log(&["config reloaded"]);
    let log = server.log();
    let added = log
        .lines()
        .filter(|line| line.contains(" listening ") && line.contains("listener=added"))
        .find_map(|line| line.split_whitespace().find_map(|word| word.strip_prefix("address=")))
        .unwrap_or_else(|| panic!("`added` never listened:\n{log}"));
    let mut client = crate::harness::Client::connect(added.trim_matches('"').parse().unwrap());
    assert_eq!(client.ask("the new listener"), "the new listener");
    assert_eq!(server.connect("echo").ask("echo after"), "after", "the probe serves new connections");
}

/// `deploy/kubernetes` of this checkout.
fn manifests() -> PathBuf {
    Path::new(plugins::WORKSPACE).join("deploy/kubernetes")
}

/// Run `validate.sh` of the manifests in `dir`: (success, everything it said).
fn validate(dir: &Path) -> (bool, String) {
    validate_with(dir, None)
}

/// Run `validate.sh` of the manifests in `dir`, with `KUBECTL` set to `kubectl` if
/// given (empty: render without kubectl).
fn validate_with(dir: &Path, kubectl: Option<&str>) -> (bool, String) {
    let mut command = Command::new("bash");
    command.arg(dir.join("validate.sh"));
    if let Some(kubectl) = kubectl {
        command.env("KUBECTL", kubectl);
    }
    let output = command.output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// A copy of the manifests in a temporary folder, with `from` replaced by `to` in
/// `file` (which must hold it).
fn broken_copy(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-r").arg(manifests()).arg(copy.path()).status().unwrap();
    assert!(status.success());
    let path = copy.path().join("kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    copy
}

#[test]
fn the_manifests_validate_and_broken_ones_do_not() {
    let (ok, said) = validate(&manifests());
    assert!(ok, "{said}");
    for overlay in ["base", "overlays/daemonset", "overlays/hostnetwork"] {
        assert!(said.contains(&format!("{overlay}: ok")), "{overlay} not validated:\n{said}");
    }
    // As on a machine without kubectl: the offline renderer alone.
    let (ok, said) = validate_with(&manifests(), Some(""));
    assert!(ok && said.matches("rendered by the offline renderer)").count() == 3, "{said}");

    // Not a schema's shape: a port that is text.
    let copy = broken_copy("base/deployment.yaml", "containerPort: 7000", "containerPort: seven-thousand");
    let (ok, said) = validate(&copy.path().join("kubernetes"));
    assert!(!ok, "{said}");
    assert!(said.contains("base: INVALID"), "{said}");

    // A grace period shorter than the config's shutdown-grace-ms plus the preStop.
    let copy = broken_copy("base/configmap.yaml", "shutdown-grace-ms = 20000", "shutdown-grace-ms = 60000");
    let (ok, said) = validate(&copy.path().join("kubernetes"));
    assert!(!ok, "{said}");
    assert!(said.contains("terminationGracePeriodSeconds"), "{said}");

    // The compiled cache at the emptyDir's top, which the kubelet makes writable by all.
    let (from, to) = ("cache-dir = \"/var/cache/sandport/compiled\"", "cache-dir = \"/var/cache/sandport\"");
    let copy = broken_copy("base/configmap.yaml", from, to);
    let (ok, said) = validate(&copy.path().join("kubernetes"));
    assert!(!ok && said.contains("sandport would not trust compiled code there"), "{said}");
}

#[test]
fn the_configmap_holds_a_config_sandport_takes() {
    let yaml = std::fs::read_to_string(manifests().join("base/configmap.yaml")).unwrap();
    let (_, block) = yaml.split_once("  sandport.toml: |\n").expect("a sandport.toml key");
    let toml: String = block.lines().map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line))).collect();
    // The token comes from a Secret in the pod; here a literal one stands in for it.
    let toml = toml.replace("token-env = \"SANDPORT_ADMIN_TOKEN\"", "token = \"stand-in\"");
    let config = sandport::config::Config::from_toml(&toml, Path::new("/etc/sandport/config/sandport.toml"))
        .unwrap_or_else(|err| panic!("{err}\n{toml}"));
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["echo", "http-hello", "hello-tls"]);
    assert!(config.watch, "the ConfigMap is followed");
    let admin = config.admin.expect("an admin API");
    assert!(admin.health_address.is_some(), "the kubelet probes a plain health address");
    assert!(
        matches!(admin.listen, sandport::config::AdminListen::Tcp { tls: Some(_), .. }),
        "beyond loopback the admin API is HTTPS"
    );
    let cache = Path::new("/var/cache/sandport/compiled");
    assert_eq!(config.cache_dir.as_deref(), Some(cache), "a folder of its own on the emptyDir");
}
