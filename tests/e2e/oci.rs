//! `sandport push` and `sandport pull` against a real registry (Debian's
//! `docker-registry`), checked with the tools others use: skopeo and the `oras` Python
//! client; registry auth (basic, the token flow, a ready token, a Docker config, a
//! password file), the store that spares a second download, and registries that are
//! plain HTTP without being named insecure, or that never answer.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use sandport_test_artifacts::ECHO;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::harness::{Client, PATIENCE, Server, config_file, listener, run_to_end, sandport, wait_exit};
use crate::registry::token::TokenServer;
use crate::registry::{Access, PASSWORD, Registry, USERNAME};
use crate::swap::echoes;

/// The repository and tag these tests publish to.
const TAG: &str = "tenants/echo:1.0";

/// Run `sandport ARGS` with extra environment variables.
fn sandport_with(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = sandport();
    command.args(args).envs(env.iter().copied());
    run_to_end(command)
}

/// `sandport push ECHO reference ARGS`, which must succeed: the digest it printed.
fn push(reference: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let (status, stdout, stderr) = sandport_with(&[&["push", ECHO, reference], args].concat(), env);
    assert!(status.success(), "sandport push failed:\n{stderr}");
    let digest = stdout.trim().to_owned();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "push printed {stdout:?}");
    digest
}

/// `sandport pull reference --store STORE ARGS`.
fn pull(reference: &str, store: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    sandport_with(&[&["pull", reference, "--store", store.to_str().unwrap()], args].concat(), env)
}

/// `sha256:HEX` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Run a program that is not ours; its stdout, or the test fails with its stderr.
fn run_tool(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program).args(args).output().unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Run a Python snippet with the `oras` client imported as `oras.client`.
fn oras(script: &str, dir: &Path) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!("import oras.client\n{script}"))
        .current_dir(dir)
        .output()
        .expect("python3 with the oras package (pip install oras)");
    assert!(output.status.success(), "oras: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn registry_harness_starts_each_kind() {
    let open = Registry::start();
    assert!(open.log().contains("listening on"), "{}", open.log());
    let basic = Registry::start_with(Access::Basic);
    let tokens = TokenServer::start();
    let token = Registry::start_with(Access::Token(&tokens));
    for registry in [&basic, &token] {
        assert!(registry.log().contains("listening on"), "{}", registry.log());
    }
}

#[test]
fn a_pushed_plugin_is_the_cncf_wasm_layout_to_skopeo_and_oras() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    let digest =
        push(&reference, &["--insecure", "--source", "https://example.test/echo", "--plugin-version", "1.0"], &[]);

    let image = format!("docker://{}/{TAG}", registry.address());
    let raw = run_tool("skopeo", &["inspect", "--raw", "--tls-verify=false", &image]);
    assert_eq!(sha256(&raw), digest, "the digest printed is the manifest's");
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json", "{manifest}");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    let component = std::fs::read(ECHO).unwrap();
    assert_eq!(layers[0]["digest"], sha256(&component).as_str(), "the layer is the file as it was");
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.source"], "https://example.test/echo");
    assert_eq!(annotations["org.opencontainers.image.version"], "1.0");
    assert!(annotations["org.opencontainers.image.created"].as_str().unwrap().starts_with("20"), "{annotations}");
    let config: Value =
        serde_json::from_slice(&run_tool("skopeo", &["inspect", "--raw", "--config", "--tls-verify=false", &image]))
            .unwrap();
    assert_eq!(config["architecture"], "wasm", "{config}");

    let dir = tempfile::tempdir().unwrap();
    let files = oras(
        &format!(
            "for f in oras.client.OrasClient(insecure=True).pull(target='{}/{TAG}', outdir='out'): print(f)",
            registry.address()
        ),
        dir.path(),
    );
    let pulled = files.lines().next().expect("oras pulled a file");
    assert_eq!(std::fs::read(dir.path().join(pulled)).unwrap(), component, "oras reads back the same bytes");
}

#[test]
fn a_pull_verifies_checks_and_stores_and_the_second_downloads_nothing() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    let digest = push(&reference, &["--insecure"], &[]);
    let layer = sha256(&std::fs::read(ECHO).unwrap());
    let store = tempfile::tempdir().unwrap();
    let out = store.path().join("copy.wasm");

    let (status, stdout, stderr) = pull(&reference, store.path(), &["--insecure", "-o", out.to_str().unwrap()], &[]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&digest) && stdout.contains("implements sandport:handler/plugin@"), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(ECHO).unwrap());
    let blob_gets = format!("GET /v2/tenants/echo/blobs/{layer}");
    assert_eq!(registry.requests(&blob_gets), 1, "{}", registry.log());

    let (status, _, stderr) = pull(&reference, store.path(), &["--insecure"], &[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(registry.requests(&blob_gets), 1, "the second pull took the layer from the store");

    // A server started twice on the same store downloads the layer no more.
    let config = format!(
        "workers = 1\n[oci]\nstore = \"{}\"\ninsecure = [\"{}\"]\n\n{}",
        store.path().display(),
        registry.address(),
        listener("echo", &reference, "")
    );
    for _ in 0..2 {
        let server = Server::start(&config);
        echoes(&mut server.connect("echo"), 1000);
        let (status, log) = server.terminate();
        assert!(status.success(), "{log}");
    }
    assert_eq!(registry.requests(&blob_gets), 1, "a restart pulls nothing");
}

#[test]
fn what_is_not_a_component_is_not_pushed() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    for file in [&core, &text] {
        let (status, _, stderr) =
            sandport_with(&["push", file.to_str().unwrap(), &registry.reference(TAG), "--insecure"], &[]);
        assert!(!status.success(), "pushed {}", file.display());
        assert!(stderr.contains(file.to_str().unwrap()), "the error names the file: {stderr}");
    }
    assert_eq!(registry.requests("PUT /v2/"), 0, "nothing reached the registry");
}

#[test]
fn layouts_other_tools_publish_are_pulled_and_unknown_media_types_refused() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(ECHO, dir.path().join("echo.wasm")).unwrap();
    let push_with = |tag: &str, layer_type: &str| {
        oras(
            &format!(
                "oras.client.OrasClient(insecure=True).push(target='{}/tenants/{tag}', files=['echo.wasm:{layer_type}'])",
                registry.address()
            ),
            dir.path(),
        );
    };
    let store = tempfile::tempdir().unwrap();
    // wasm-to-oci's layer under oras's default (unknown) config type; the Istio/Solo
    // wasm image layer.
    for (tag, layer_type) in [
        ("wasm-to-oci:1", "application/vnd.wasm.content.layer.v1+wasm"),
        ("istio:1", "application/vnd.module.wasm.content.layer.v1+wasm"),
    ] {
        push_with(tag, layer_type);
        let (status, stdout, stderr) =
            pull(&registry.reference(&format!("tenants/{tag}")), store.path(), &["--insecure"], &[]);
        assert!(status.success(), "{layer_type}: {stderr}");
        assert!(stdout.contains(layer_type), "{stdout}");
    }
    push_with("tarball:1", "application/vnd.oci.image.layer.v1.tar+gzip");
    let (status, _, stderr) = pull(&registry.reference("tenants/tarball:1"), store.path(), &["--insecure"], &[]);
    assert!(!status.success(), "pulled a container image layer as a plugin");
    assert!(
        stderr.contains("application/vnd.oci.image.layer.v1.tar+gzip") && stderr.contains("application/wasm"),
        "the error names the media type and what is accepted: {stderr}"
    );
}

#[test]
fn basic_auth_from_flags_a_docker_config_or_a_password_file() {
    let registry = Registry::start_with(Access::Basic);
    let reference = registry.reference(TAG);
    let (status, _, stderr) = sandport_with(&["push", ECHO, &reference, "--insecure"], &[]);
    assert!(!status.success(), "pushed without credentials");
    assert!(stderr.contains(&reference), "the error names the reference: {stderr}");

    let digest = push(
        &reference,
        &["--insecure", "--username", USERNAME, "--password-env", "REGISTRY_PASSWORD"],
        &[("REGISTRY_PASSWORD", PASSWORD)],
    );
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("config.json");
    let auth = base64_encode(&format!("{USERNAME}:{PASSWORD}"));
    std::fs::write(&docker_config, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.address())).unwrap();
    let (status, stdout, stderr) = pull(
        &reference,
        &dir.path().join("store"),
        &["--insecure", "--docker-config", docker_config.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&digest), "{stdout}");

    let (status, _, stderr) = pull(&reference, &dir.path().join("store2"), &["--insecure"], &[]);
    assert!(!status.success() && stderr.contains(&reference), "pulled without credentials: {stderr}");

    // A server with the password in a file, as a Kubernetes Secret mounts it.
    std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
    let config = format!(
        "workers = 1\n[oci]\nstore = \"{store}\"\ninsecure = [\"{address}\"]\n\n[oci.auth.\"{address}\"]\nusername = \"{USERNAME}\"\npassword-file = \"{password}\"\n\n{listener}",
        store = dir.path().join("store3").display(),
        address = registry.address(),
        password = dir.path().join("password").display(),
        listener = listener("echo", &reference, "")
    );
    let server = Server::start(&config);
    echoes(&mut server.connect("echo"), 1000);
}

#[test]
fn the_token_flow_and_a_ready_bearer_token() {
    let tokens = TokenServer::start();
    let registry = Registry::start_with(Access::Token(&tokens));
    let reference = registry.reference(TAG);
    let digest = push(
        &reference,
        &["--insecure", "--username", USERNAME, "--password-env", "REGISTRY_PASSWORD"],
        &[("REGISTRY_PASSWORD", PASSWORD)],
    );
    assert!(tokens.issued() > 0, "the push went through the token server");

    let store = tempfile::tempdir().unwrap();
    let token = tokens.mint("tenants/echo");
    let (status, stdout, stderr) =
        pull(&reference, store.path(), &["--insecure", "--token-env", "REGISTRY_TOKEN"], &[("REGISTRY_TOKEN", &token)]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&digest), "{stdout}");

    let wrong = tokens.mint("tenants/other");
    let (status, _, stderr) = pull(
        &reference,
        &store.path().join("again"),
        &["--insecure", "--token-env", "REGISTRY_TOKEN"],
        &[("REGISTRY_TOKEN", &wrong)],
    );
    assert!(!status.success(), "a token for another repository pulled this one");
    assert!(stderr.contains(&reference), "{stderr}");
}

#[test]
fn plain_http_only_for_registries_named_insecure() {
    let registry = Registry::start();
    let reference = registry.reference(TAG);
    push(&reference, &["--insecure"], &[]);
    let store = tempfile::tempdir().unwrap();
    let (status, _, stderr) = pull(&reference, store.path(), &[], &[]);
    assert!(!status.success(), "pulled over plain HTTP from a registry not named insecure");
    assert!(stderr.contains(&reference), "{stderr}");
    assert_eq!(registry.requests("GET /v2/tenants/echo/manifests"), 0, "no request went out in plain HTTP");
}

#[test]
fn a_registry_that_never_answers_times_out_and_delays_only_its_own_listener() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let reference = format!("oci://{}/{TAG}", silent.local_addr().unwrap());
    let store = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (status, _, stderr) = pull(&reference, store.path(), &["--insecure", "--timeout-ms", "500"], &[]);
    assert!(!status.success());
    assert!(stderr.contains(&reference), "{stderr}");
    assert!(started.elapsed() < PATIENCE, "the timeout ended it");

    // At start, a listener with a local plugin serves while one from that registry waits
    // for its pull, until the start gives up naming the listener and the reference.
    let config = format!(
        "workers = 1\n[oci]\nstore = \"{}\"\ninsecure = [\"{}\"]\ntimeout-ms = 500\nstart-timeout-ms = 3000\n\n{}{}",
        store.path().display(),
        silent.local_addr().unwrap(),
        listener("local", ECHO, ""),
        listener("remote", &reference, "")
    );
    let (_dir, path) = config_file(&config);
    let mut child =
        sandport().args(["serve", "--config", path.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map(Result::unwrap);
    let listening = lines.by_ref().find(|line| line.contains("listening listener=local")).expect("local listens");
    let address = listening.split("address=").nth(1).unwrap().split(' ').next().unwrap();
    echoes(&mut Client::connect(address.parse().unwrap()), 1000);
    let rest: Vec<String> = lines.collect();
    assert!(!wait_exit(&mut child).success(), "started without its registry");
    let error = rest.iter().find(|line| line.starts_with("error:")).expect("an error line");
    assert!(error.contains("listener `remote`") && error.contains(&reference), "{error}");

    // A server whose reload adds a listener from that registry: the pull waits on its
    // own thread while the listener already serving goes on echoing.
    let base = format!(
        "workers = 1\n[oci]\nstore = \"{}\"\ninsecure = [\"{}\"]\ntimeout-ms = 8000\n\n{}",
        store.path().display(),
        silent.local_addr().unwrap(),
        listener("local", ECHO, "")
    );
    let server = Server::start(&base);
    let mut client = server.connect("local");
    // As `Server::reload` does, without waiting for the reload to end.
    let reloaded = format!("shutdown-grace-ms = 0\n{base}{}", listener("remote", &reference, ""));
    std::fs::write(server.config_path(), reloaded).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log(&["SIGHUP: reloading the config"]);
    for _ in 0..10 {
        echoes(&mut client, 1000);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!server.log().contains("cannot add the listener"), "the pull is still waiting:\n{}", server.log());
    server.wait_for_log(&["cannot add the listener", &reference, "did not answer"]);
    echoes(&mut client, 1000);
    echoes(&mut server.connect("local"), 1000);
}

/// Standard base64, as a Docker config's `auth` holds `user:password`.
fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
