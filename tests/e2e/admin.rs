//! The admin API and its clients: `/listeners` shows what the config says, `/metrics`
//! moves by exactly the traffic sent, the token guards everything but the health
//! checks, swaps and rollbacks answer with the right status, JSON logs are JSON, and
//! `sandport status`, `swap` and `rollback` talk to a running server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bounded::admin_address;
use crate::harness::{
    PATIENCE, Server, config_file, free_address, listener, plugins, run_sandport, sandport, wait_exit,
};

/// An `[admin]` table (top-level keys must come before it).
pub(crate) fn admin_table(address: &str, token: Option<&str>) -> String {
    let token = token.map(|token| format!("token = \"{token}\"\n")).unwrap_or_default();
    format!("[admin]\nlisten = \"{address}\"\n{token}\n")
}

/// A server with an admin API on a free port of 127.0.0.1 and these listeners.
fn with_admin(listeners: &str) -> (Server, Admin) {
    let server = Server::start(&(admin_table("127.0.0.1:0", None) + listeners));
    let admin = Admin::of(&server, None);
    (server, admin)
}

/// An HTTP client for one server's admin API.
pub(crate) struct Admin {
    address: SocketAddr,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A status code and a body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    content_type: String,
    pub(crate) body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

impl Admin {
    /// The admin API the server says it listens on (`admin API listening address=...`).
    pub(crate) fn of(server: &Server, token: Option<&str>) -> Admin {
        let address = admin_address(server);
        let config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build();
        Admin { address, token: token.map(str::to_owned), agent: config.into() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = response.expect("the admin API answers");
        let content_type = response.headers().get("content-type").map_or("", |v| v.to_str().unwrap()).to_owned();
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap();
        Answer { status, content_type, body }
    }

    fn get(&self, path: &str) -> Answer {
        Admin::read(self.authorize(self.agent.get(self.url(path))).call())
    }

    pub(crate) fn put(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        Admin::read(self.authorize(self.agent.put(self.url(path))).header("Content-Type", content_type).send(body))
    }

    fn post(&self, path: &str) -> Answer {
        Admin::read(self.authorize(self.agent.post(self.url(path))).send_empty())
    }

    /// The `/listeners` list, in config order.
    pub(crate) fn listeners(&self) -> Vec<Value> {
        let answer = self.get("/listeners");
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json().as_array().unwrap().clone()
    }

    /// Every sample of `/metrics`, by name and labels (`name{label="value"}`).
    pub(crate) fn metrics(&self) -> Metrics {
        let answer = self.get("/metrics");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.content_type.starts_with("text/plain; version=0.0.4"), "{}", answer.content_type);
        let samples = answer.body.lines().filter(|line| !line.starts_with('#') && !line.is_empty());
        let samples = samples.map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {line}")))
        });
        Metrics { samples: samples.collect(), text: answer.body }
    }

    /// Wait until `/metrics` shows `key` at least at `value`.
    fn wait_for_metric(&self, key: &str, value: f64) -> Metrics {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let metrics = self.metrics();
            if metrics.get(key) >= value {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{key} stayed below {value}:\n{}", metrics.text);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) struct Metrics {
    samples: HashMap<String, f64>,
    text: String,
}

impl Metrics {
    pub(crate) fn get(&self, key: &str) -> f64 {
        *self.samples.get(key).unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }
}

#[test]
fn listeners_shows_the_configured_listeners() {
    let (server, admin) = with_admin(
        &(listener("echo", plugins::ECHO, "instance = \"per-worker\"\n[listener.limits]\nmax-connections = 77")
            + &listener("probe", plugins::FIXTURE_PROBE, "")),
    );
    let mut client = server.connect("echo");
    client.write(b"hello");
    assert_eq!(client.bytes(5), b"hello");

    let listeners = admin.listeners();
    let names: Vec<&str> = listeners.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "probe"], "in config order");
    let echo = &listeners[0];
    assert_eq!(echo["address"], server.addr("echo").to_string());
    assert_eq!(echo["instance"], "per-worker");
    assert!(echo["plugin"].as_str().unwrap().ends_with("echo.wasm"), "{echo}");
    let hash = echo["hash"].as_str().unwrap();
    assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()), "a SHA-256: {hash}");
    assert_eq!(echo["version"], 1);
    assert_eq!(echo["history"].as_array().unwrap().len(), 1);
    assert_eq!(echo["history"][0]["hash"], hash);
    assert_eq!(echo["limits"]["max-connections"], 77);
    assert_eq!(echo["limits"]["event-timeout-ms"], 100, "defaults are shown too");
    assert!(!echo["workers"].as_array().unwrap().is_empty(), "{echo}");
    assert_eq!((&echo["open"], &echo["connections"]["accepted"]), (&json!(1), &json!(1)), "{echo}");
    assert_eq!(echo["swaps"], 0);
    let probe = &listeners[1];
    assert_eq!(probe["instance"], "shared");
    assert_ne!(probe["hash"], echo["hash"]);
    assert_eq!((&probe["open"], &probe["connections"]["accepted"]), (&json!(0), &json!(0)), "{probe}");
}

#[test]
fn metrics_move_by_exactly_the_traffic() {
    let (server, admin) =
        with_admin(&(listener("echo", plugins::ECHO, "") + &listener("probe", plugins::FIXTURE_PROBE, "")));
    let before = admin.metrics();
    assert!(before.text.contains("# TYPE sandport_guest_time_seconds histogram"), "{}", before.text);

    let message = vec![b'x'; 1000];
    for _ in 0..10 {
        let mut client = server.connect("echo");
        client.write(&message);
        assert_eq!(client.bytes(message.len()), message);
    }
    let mut offender = server.connect("probe");
    assert_eq!(offender.ask("echo ready"), "ready");
    offender.send_line("trap");
    offender.until_eof();

    let closed = r#"sandport_connections_total{listener="echo",kind="closed"}"#;
    let after = admin.wait_for_metric(closed, before.get(closed) + 10.0);
    let moved = |key: &str| after.get(key) - before.get(key);
    assert_eq!(moved(r#"sandport_connections_total{listener="echo",kind="accepted"}"#), 10.0);
    assert_eq!(moved(closed), 10.0);
    assert_eq!(moved(r#"sandport_bytes_in_total{listener="echo"}"#), 10_000.0);
    assert_eq!(moved(r#"sandport_bytes_out_total{listener="echo"}"#), 10_000.0);
    assert_eq!(moved(r#"sandport_events_total{listener="echo",kind="accept"}"#), 10.0);
    assert!(moved(r#"sandport_events_total{listener="echo",kind="recv"}"#) >= 10.0, "{}", after.text);
    assert!(moved(r#"sandport_guest_time_seconds_count{listener="echo"}"#) >= 20.0, "{}", after.text);
    assert_eq!(after.get(r#"sandport_connections_open{listener="echo"}"#), 0.0);
    assert_eq!(moved(r#"sandport_faults_total{listener="probe",kind="trap"}"#), 1.0);
    assert_eq!(moved(r#"sandport_faults_total{listener="probe",kind="memory"}"#), 0.0);
    assert_eq!(moved(r#"sandport_faults_total{listener="echo",kind="trap"}"#), 0.0);
    assert_eq!(after.get(r#"sandport_swaps_total{listener="echo"}"#), 0.0);
}

#[test]
fn the_token_guards_everything_but_health_checks() {
    let server = Server::start(&(admin_table("127.0.0.1:0", Some("s3cret")) + &listener("echo", plugins::ECHO, "")));
    let without = Admin::of(&server, None);
    let wrong = Admin::of(&server, Some("s3cre"));
    let with = Admin::of(&server, Some("s3cret"));
    for path in ["/listeners", "/metrics"] {
        assert_eq!(without.get(path).status, 401, "{path} without the token");
        assert_eq!(wrong.get(path).status, 401, "{path} with a wrong token");
        assert_eq!(with.get(path).status, 200, "{path} with the token");
    }
    assert_eq!(without.put("/listeners/echo/plugin", "application/wasm", b"\0asm").status, 401);
    assert_eq!(without.post("/listeners/echo/rollback").status, 401);
    assert_eq!(without.get("/healthz").status, 200);
    wait_ready(&without);

    let address = with.address.to_string();
    let (status, _, stderr) = run_sandport(&["status", "--admin", &address]);
    assert!(!status.success());
    assert!(stderr.contains("wants its token"), "{stderr}");
    let output =
        sandport().args(["status", "--admin", &address]).env("SANDPORT_ADMIN_TOKEN", "s3cret").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("echo  "), "{output:?}");
}

/// `/readyz` says ready once the workers run (the admin API may answer just before).
fn wait_ready(admin: &Admin) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = admin.get("/readyz");
        if answer.status == 200 {
            return;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_and_readiness() {
    let (server, admin) = with_admin(&listener("echo", plugins::ECHO, ""));
    let health = admin.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    wait_ready(&admin);
    server.terminate();
    assert!(admin.agent.get(admin.url("/healthz")).call().is_err(), "stopping the server stops the admin API");
}

#[test]
fn a_busy_admin_port_stops_the_start() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let (_dir, path) = config_file(&(admin_table(&address, None) + &listener("echo", plugins::ECHO, "")));
    let (status, _, stderr) = run_sandport(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains(&format!("error: admin API: cannot listen on {address}")), "{stderr}");
}

#[test]
fn json_logs_are_json_with_fields() {
    let address = free_address();
    let config = format!(
        "log-format = \"json\"\n{}",
        crate::harness::listener_at("echo", &address.to_string(), plugins::ECHO, "")
    );
    let (_dir, path) = config_file(&config);
    let mut child = sandport()
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, receive) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |wanted: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = receive.recv_timeout(left).unwrap_or_else(|_| panic!("no such line in:\n{}", seen.join("\n")));
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            seen.push(line);
            if wanted(&value) {
                return value;
            }
        }
    };
    let listening = wait_for(&|v| v["message"] == "listening");
    assert_eq!(listening["listener"], "echo", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    // Workers accept before the server says it is ready; a SIGTERM before that ends a
    // start (exit 1), which is not what this test is about.
    let ready = wait_for(&|v| v["message"] == "ready");
    assert_eq!(ready["workers"].as_u64().map(|n| n > 0), Some(true), "{ready}");

    let mut client = crate::harness::Client::connect(address);
    client.write(b"hi");
    assert_eq!(client.bytes(2), b"hi");
    let accepted = wait_for(&|v| v["message"] == "accepted");
    assert_eq!(accepted["listener"], "echo", "{accepted}");
    assert!(accepted["conn"].is_string() || accepted["conn"].is_number(), "{accepted}");
    drop(client);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
    reader.join().unwrap();
    for line in receive.try_iter() {
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
    }
}

#[test]
fn client_subcommands_against_a_running_server() {
    let (server, admin) =
        with_admin(&(listener("echo", plugins::ECHO, "") + &listener("probe", plugins::FIXTURE_PROBE, "")));
    let address = admin.address.to_string();
    let mut client = server.connect("echo");
    client.write(b"hi");
    assert_eq!(client.bytes(2), b"hi");

    let (status, stdout, stderr) = run_sandport(&["status", "--admin", &address]);
    assert!(status.success(), "{stderr}");
    let hash = admin.listeners()[0]["hash"].as_str().unwrap().to_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let echo = format!("echo  {}  v1 {}  shared  open 1/1  swaps 0", server.addr("echo"), &hash[..12]);
    assert_eq!(lines[0], echo);
    assert!(lines[1].starts_with("probe  "), "{stdout}");

    let (status, _, stderr) = run_sandport(&["rollback", "echo", "--admin", &address]);
    assert!(!status.success());
    assert!(stderr.contains("no previous version"), "{stderr}");
    let (status, _, stderr) = run_sandport(&["swap", "nosuch", plugins::ECHO, "--admin", &address]);
    assert!(!status.success());
    assert!(stderr.contains("no listener is named `nosuch`"), "{stderr}");

    let nobody = free_address().to_string();
    let (status, _, stderr) = run_sandport(&["status", "--admin", &nobody]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("no admin API at {nobody}: is the server running with an [admin] table?")),
        "{stderr}"
    );
}

#[test]
fn swap_and_rollback_through_the_api() {
    let (server, admin) = with_admin(&listener("echo", plugins::ECHO, ""));
    let original = admin.listeners()[0]["hash"].as_str().unwrap().to_owned();
    let mut old = server.connect("echo");
    old.write(b"echo old\n");
    assert_eq!(old.line(), "echo old");

    // The probe answers `echo X` with `X`: new connections show which version serves them.
    let probe = std::fs::read(plugins::FIXTURE_PROBE).unwrap();
    let answer = admin.put("/listeners/echo/plugin", "application/wasm", &probe);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report = answer.json();
    assert_eq!((&report["took_over"], &report["serving"]["number"]), (&json!(true), &json!(2)), "{report}");
    assert_ne!(report["serving"]["hash"], original);
    assert_eq!(server.connect("echo").ask("echo new"), "new");
    old.write(b"echo still old\n");
    assert_eq!(old.line(), "echo still old", "an open connection stays on its version");

    let broken = std::fs::read(plugins::FIXTURE_WRONG_WORLD).unwrap();
    let answer = admin.put("/listeners/echo/plugin", "application/octet-stream", &broken);
    assert_eq!(answer.status, 422, "{}", answer.body);
    let report = answer.json();
    assert_eq!((&report["took_over"], &report["serving"]["number"]), (&json!(false), &json!(2)), "{report}");
    assert!(report["refused"].as_str().is_some_and(|why| !why.is_empty()), "{report}");
    assert_eq!(server.connect("echo").ask("echo still new"), "still new");

    let answer = admin.post("/listeners/echo/rollback");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report = answer.json();
    assert_eq!((&report["serving"]["number"], &report["serving"]["hash"]), (&json!(3), &json!(original)), "{report}");
    let mut back = server.connect("echo");
    back.write(b"echo back\n");
    assert_eq!(back.line(), "echo back");

    let by_path = json!({ "path": plugins::FIXTURE_PROBE }).to_string();
    let answer = admin.put("/listeners/echo/plugin", "application/json", by_path.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["serving"]["path"], plugins::FIXTURE_PROBE);

    assert_eq!(admin.put("/listeners/nosuch/plugin", "application/wasm", &probe).status, 404);
    assert_eq!(admin.post("/listeners/nosuch/rollback").status, 404);
    assert_eq!(admin.put("/listeners/echo/plugin", "text/plain", b"hello").status, 415);

    let listener = &admin.listeners()[0];
    assert_eq!(listener["history"].as_array().unwrap().len(), 4, "{listener}");
    let metrics = admin.metrics();
    assert_eq!(metrics.get(r#"sandport_swaps_total{listener="echo"}"#), 3.0);
    assert_eq!(metrics.get(r#"sandport_failed_swaps_total{listener="echo"}"#), 1.0);
    assert_eq!(metrics.get(r#"sandport_rollbacks_total{listener="echo"}"#), 1.0);
}

#[test]
fn rollback_with_nothing_to_roll_back_to_is_a_conflict() {
    let (_server, admin) = with_admin(&listener("echo", plugins::ECHO, ""));
    let answer = admin.post("/listeners/echo/rollback");
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(answer.json()["error"].as_str().unwrap().contains("no previous version"), "{}", answer.body);
}

#[test]
fn sandport_swap_uploads_and_reports() {
    let (server, admin) = with_admin(&listener("echo", plugins::ECHO, ""));
    let address = admin.address.to_string();
    let (status, stdout, stderr) = run_sandport(&["swap", "echo", plugins::FIXTURE_PROBE, "--admin", &address]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("echo: version 2 (") && stdout.contains("took over"), "{stdout}");
    assert_eq!(server.connect("echo").ask("echo new"), "new");

    let (status, _, stderr) = run_sandport(&["swap", "echo", plugins::FIXTURE_WRONG_WORLD, "--admin", &address]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("echo: refused: ") && stderr.contains("version 2 ("), "{stderr}");

    let (status, stdout, stderr) = run_sandport(&["rollback", "echo", "--admin", &address]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("echo: version 3 ("), "{stdout}");
    let mut back = server.connect("echo");
    back.write(b"echo back\n");
    assert_eq!(back.line(), "echo back");
}
