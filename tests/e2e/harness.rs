//! Runs the real `sandport` binary on free ports and talks to it over real sockets.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use sandport_test_artifacts as plugins;

/// Time any single expectation may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The `sandport` binary under test.
pub fn sandport() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandport"));
    command.env("RUST_LOG", "info,sandport=debug");
    command
}

/// One `[[listener]]` table on a free port of 127.0.0.1, with extra TOML lines
/// (e.g. `poll-interval-ms = 50` or a `[listener.limits]` section).
pub fn listener(name: &str, plugin: &str, extra: &str) -> String {
    listener_at(name, "127.0.0.1:0", plugin, extra)
}

/// One `[[listener]]` table on a given address.
pub fn listener_at(name: &str, address: &str, plugin: &str, extra: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\nplugin = \"{plugin}\"\n{extra}\n")
}

/// Everything a server process wrote to stderr, shared with the thread reading it.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

/// A running `sandport serve` process. Killed on drop.
pub struct Server {
    child: Option<Child>,
    addrs: HashMap<String, SocketAddr>,
    log: Arc<Log>,
    /// Copies stderr into `log`; finishes when the process exits.
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start a server with this config text and wait until every listener listens.
    pub fn start(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandport.toml");
        std::fs::write(&path, config).unwrap();
        let expected = config.matches("[[listener]]").count();
        Server::spawn(sandport().arg("serve").arg("--config").arg(&path), expected, dir)
    }

    /// Start `sandport` with these arguments, expecting `listeners` listeners.
    pub fn start_args(args: &[&str], listeners: usize) -> Server {
        Server::spawn(sandport().args(args), listeners, tempfile::tempdir().unwrap())
    }

    fn spawn(command: &mut Command, listeners: usize, dir: tempfile::TempDir) -> Server {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                sink.grew.notify_all();
            }
        });
        let mut server = Server { child: Some(child), addrs: HashMap::new(), log, reader: Some(reader), _dir: dir };
        let deadline = Instant::now() + PATIENCE;
        while server.addrs.len() < listeners {
            let text = server.log();
            server.addrs = text
                .lines()
                .filter(|line| line.contains(" listening "))
                .filter_map(|line| Some((field(line, "listener")?, field(line, "address")?.parse().ok()?)))
                .collect();
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sandport exited with {status} before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "sandport did not start listening:\n{text}");
            server.wait_log_change(&text, Duration::from_millis(100));
        }
        server
    }

    /// The bound address of a listener.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// Connect a client to a listener.
    pub fn connect(&self, name: &str) -> Client {
        Client::connect(self.addr(name))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    fn wait_log_change(&self, seen: &str, wait: Duration) {
        let text = self.log.text.lock().unwrap();
        if text.len() == seen.len() {
            drop(self.log.grew.wait_timeout(text, wait).unwrap());
        }
    }

    /// Wait until `needle` occurs `count` times in the log; fails if it occurs more.
    pub fn wait_for_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.log();
            let seen = text.matches(needle).count();
            assert!(seen <= count, "{needle:?} occurs {seen} times, expected {count}:\n{text}");
            if seen == count {
                return;
            }
            assert!(Instant::now() < deadline, "{needle:?} occurs {seen} times, expected {count}:\n{text}");
            self.wait_log_change(&text, Duration::from_millis(100));
        }
    }

    /// Wait until the log has a line containing every one of `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.log();
            if let Some(line) = text.lines().find(|line| needles.iter().all(|n| line.contains(n))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?} in:\n{text}");
            self.wait_log_change(&text, Duration::from_millis(100));
        }
    }

    /// The process id, e.g. to read its memory use.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = field_value(&status, "VmRSS:").unwrap();
        kib * 1024
    }

    /// Send SIGTERM and wait for the process to exit; returns its status and log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_exit(&mut child);
        self.reader.take().unwrap().join().unwrap();
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wait for a child to exit, failing the test if it takes longer than [`PATIENCE`].
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `sandport` with `args` to completion; returns exit status, stdout, stderr.
pub fn run_sandport<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (ExitStatus, String, String) {
    let output = sandport().args(args).output().unwrap();
    (output.status, String::from_utf8_lossy(&output.stdout).into(), String::from_utf8_lossy(&output.stderr).into())
}

/// A config file in a fresh temporary folder, for commands that are expected to fail.
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandport.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// An address of 127.0.0.1 that was free a moment ago.
pub fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The `listener totals` line of listener `name` in a stopped server's log.
pub fn totals<'a>(log: &'a str, name: &str) -> &'a str {
    let needle = format!("listener={name} ");
    log.lines().find(|l| l.contains("listener totals") && l.contains(&needle)).unwrap_or_else(|| panic!("{log}"))
}

/// Wait until a writer's progress counter stops moving (the peer stopped taking
/// bytes); returns where it stopped.
pub fn stalls_at(written: &std::sync::atomic::AtomicUsize) -> usize {
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The value of `key=value` in a tracing log line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

fn field_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// A TCP client with line helpers and timeouts that fail the test instead of hanging.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connect to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Write all of `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Write `line` and a newline.
    pub fn send_line(&mut self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
    }

    /// Read one line, without its newline. Fails on EOF or timeout.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed while a line was expected");
        line.trim_end_matches('\n').to_owned()
    }

    /// Send a command line and return the reply line.
    pub fn ask(&mut self, line: &str) -> String {
        self.send_line(line);
        self.line()
    }

    /// Read exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader.read_exact(&mut buf).unwrap();
        buf
    }

    /// Read until the server closes; returns what arrived. A reset counts as closed.
    pub fn until_eof(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the server to close the connection: {e}"),
        }
        rest
    }

    /// Whether nothing arrives within `wait` (and the connection stays open).
    pub fn quiet_for(&mut self, wait: Duration) -> bool {
        self.stream().set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let quiet = match self.reader.read(&mut byte) {
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            Ok(_) => false,
        };
        self.stream().set_read_timeout(Some(PATIENCE)).unwrap();
        quiet
    }

    /// Stop sending (half-close); the server sees end of stream.
    pub fn shutdown_write(&self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }
}
