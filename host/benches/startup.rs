//! What the compiled-component cache saves: the real `sandport` binary started on
//! the example config (`sandport.toml`, its plugins from the test artifacts, on free
//! ports) with a cold cache (an empty directory) and a warm one, timed from spawn
//! until the echo listener answers a line and until every listener accepts; and
//! what a load costs in a runtime that has seen the component (a swap back), read
//! from disk (a restart), or compiled. Medians of `RUNS` runs of each, alternating.
//!
//! ```text
//! cargo bench -p sandport --bench startup
//! ```
// `criterion_group!` defines a public function without a doc.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandport::plugin::Runtime;
use sandport_test_artifacts as plugins;

const RUNS: usize = 9;

/// Longest a start may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandport.toml")).unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for run in 0..RUNS {
        let cache = dir.path().join(format!("cache-{run}"));
        let config = dir.path().join(format!("sandport-{run}.toml"));
        let addresses = write_config(&example, &cache, &config);
        cold.push(start(&config, &addresses));
        warm.push(start(&config, &addresses));
    }
    report("cold cache (every plugin compiled)", &mut cold);
    report("warm cache (every plugin read from disk)", &mut warm);
    loads(dir.path());
}

/// The example config with free ports, the built plugins and `cache-dir = cache`,
/// written to `path`; the listeners' addresses, echo's first.
fn write_config(example: &str, cache: &Path, path: &Path) -> Vec<SocketAddr> {
    let mut text = format!("cache-dir = {:?}\n{example}", cache.display().to_string());
    for (from, to) in [
        ("target/wasm32-wasip2/plugin/echo.wasm", plugins::ECHO),
        ("target/wasm32-wasip2/plugin/chat.wasm", plugins::CHAT),
        ("target/wasm32-wasip2/plugin/http_hello.wasm", plugins::HTTP_HELLO),
        ("target/wasm32-wasip2/plugin/tcp_proxy.wasm", plugins::TCP_PROXY),
    ] {
        text = text.replace(from, to);
    }
    let mut addresses = Vec::new();
    for port in ["7000", "7001", "8080", "7003", "7002"] {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        text = text.replace(&format!("127.0.0.1:{port}"), &free.to_string());
        addresses.push(free);
    }
    std::fs::write(path, text).unwrap();
    addresses
}

/// Spawn the server, wait until echo answers and every listener accepts, stop it.
/// Returns (until echo answered, until all accepted).
fn start(config: &Path, addresses: &[SocketAddr]) -> (Duration, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandport"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let echoed = until(started, &mut child, || {
        let mut stream = TcpStream::connect(addresses[0]).ok()?;
        stream.write_all(b"ping\n").ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        (line == "ping\n").then_some(())
    });
    let all = until(started, &mut child, || addresses.iter().all(|a| TcpStream::connect(a).is_ok()).then_some(()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
    (echoed, all)
}

/// Time since `started` when `ready` first succeeds, trying every 200 µs.
fn until(started: Instant, child: &mut Child, mut ready: impl FnMut() -> Option<()>) -> Duration {
    loop {
        if ready().is_some() {
            return started.elapsed();
        }
        assert!(child.try_wait().unwrap().is_none(), "sandport exited before it served");
        assert!(started.elapsed() < PATIENCE, "sandport did not serve within {PATIENCE:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn report(what: &str, runs: &mut [(Duration, Duration)]) {
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let echoed = median(runs.iter().map(|run| run.0).collect());
    let all = median(runs.iter().map(|run| run.1).collect());
    println!(
        "start, {what}: echo answers after {echoed:.1?}, every listener accepts after {all:.1?} (median of {RUNS})"
    );
}

/// One load of the echo in each way a runtime can serve it, `RUNS` times each.
fn loads(dir: &Path) {
    let cache = dir.join("loads");
    let echo = Path::new(plugins::ECHO);
    let mut compiled = Vec::new();
    let mut disk = Vec::new();
    let mut memory = Vec::new();
    for _ in 0..RUNS {
        let time = |runtime: &Runtime| {
            let started = Instant::now();
            runtime.load(echo).unwrap();
            started.elapsed()
        };
        compiled.push(time(&Runtime::new().unwrap()));
        let runtime = Runtime::new().unwrap().with_cache(Some(&cache));
        runtime.load(echo).unwrap();
        disk.push(time(&Runtime::new().unwrap().with_cache(Some(&cache))));
        memory.push(time(&runtime));
    }
    for (what, mut times) in [("compiled", compiled), ("read from disk", disk), ("from memory (swap back)", memory)] {
        times.sort();
        println!("load echo.wasm, {what}: {:.2?} (median of {RUNS})", times[RUNS / 2]);
    }
}
