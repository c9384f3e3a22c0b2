//! Runs the real `sandport` binary on free ports and talks to it over real sockets.
//!
//! It owns the server processes a test starts and the clients it connects. It never
//! lets a server end unchecked (every one is stopped with SIGTERM and must exit as
//! expected, without a panic), never takes a reset for a clean close, and never
//! waits without a deadline: whatever breaks, a test fails with the server's log
//! instead of passing or hanging.

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

/// The line `sandport serve` writes once it has started and a signal stops it
/// gracefully.
pub const READY: &str = "ready workers=";

/// More bytes than the kernel's buffers of a loopback connection hold (the sender's
/// `tcp_wmem` maximum is 4 MiB by default, a [`Client::connect_with_small_window`]
/// window a few KiB): of a send this big to a client that does not read, most stays
/// in the host's send buffer (which must then be larger: see [`BIG_SEND_BUFFER`]).
pub const MORE_THAN_THE_KERNEL_HOLDS: usize = 16 << 20;

/// A `send-buffer` limit that takes [`MORE_THAN_THE_KERNEL_HOLDS`] and more.
pub const BIG_SEND_BUFFER: usize = 32 << 20;

/// `[listener.limits]` lines for a listener whose events send
/// [`MORE_THAN_THE_KERNEL_HOLDS`] at once: a [`BIG_SEND_BUFFER`], and time for an
/// innocent event that copies that much on a busy machine (the 100 ms default can
/// be too little for it there).
pub fn big_send_limits() -> String {
    format!("send-buffer = {BIG_SEND_BUFFER}\nevent-timeout-ms = 1000\nevent-wall-timeout-ms = 5000")
}

/// The `sandport` binary under test. Its default compiled-component cache is one
/// folder for this run of the suite (shared by its servers, so each plugin is compiled
/// once), not the user's.
pub fn sandport() -> Command {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandport"));
    command.env("RUST_LOG", "info,sandport=debug").env("XDG_CACHE_HOME", cache.path());
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
    state: Mutex<LogState>,
    grew: Condvar,
}

/// The text so far, and whether more can come.
#[derive(Default)]
struct LogState {
    text: String,
    /// Stderr reached its end: the process exited (sandport starts no children).
    ended: bool,
}

/// How a server's process must end when its test is done with it. Whatever the
/// ending, a panic of the host (a `thread '...' panicked at` line) fails the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Stopped by SIGTERM with exit code 0: the default.
    Clean,
    /// Stopped by SIGTERM (or ended before) with this exit code.
    Code(i32),
    /// Killed by this signal before the test ended (the test sent it).
    Signal(i32),
}

/// A running `sandport serve` process.
///
/// Whatever the test does, the server ends checked: [`Server::terminate`] or, when the
/// test drops it, the drop sends SIGTERM, waits (at most [`PATIENCE`]) and fails the
/// test, with the log, unless the process ended as [`Server::expect_exit`] says (exit
/// code 0 by default) and never panicked. A server that dies while the test waits for
/// its log fails the wait at once.
pub struct Server {
    child: Mutex<Child>,
    pid: u32,
    addrs: HashMap<String, SocketAddr>,
    log: Arc<Log>,
    /// Copies stderr into `log`; finishes when the process exits.
    reader: Option<std::thread::JoinHandle<()>>,
    ending: Ending,
    /// The ending was checked already (by `terminate`): nothing left for the drop.
    checked: bool,
    dir: tempfile::TempDir,
}

impl Server {
    /// Start a server with this config text and wait until every listener listens.
    ///
    /// Unless the text sets `shutdown-grace-ms`, the server gets none: the SIGTERM that
    /// ends each test closes what is open at once, as the tests of stopping expect.
    pub fn start(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandport.toml");
        let config = if config.contains("shutdown-grace-ms") {
            config.to_owned()
        } else {
            format!("shutdown-grace-ms = 0\n{config}")
        };
        std::fs::write(&path, &config).unwrap();
        let expected = config.matches("[[listener]]").count();
        Server::spawn(sandport().arg("serve").arg("--config").arg(&path), expected, dir)
    }

    /// Start `sandport` with these arguments, expecting `listeners` listeners.
    pub fn start_args(args: &[&str], listeners: usize) -> Server {
        Server::spawn(sandport().args(args), listeners, tempfile::tempdir().unwrap())
    }

    /// Start a server from a command of the test's own making (another binary than
    /// [`sandport`]'s, or the binary run through a wrapper that `exec`s it, so that the
    /// process started is the server), expecting `listeners` listeners.
    pub fn start_command(command: &mut Command, listeners: usize) -> Server {
        Server::spawn(command, listeners, tempfile::tempdir().unwrap())
    }

    fn spawn(command: &mut Command, listeners: usize, dir: tempfile::TempDir) -> Server {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut state = sink.state.lock().unwrap();
                state.text.push_str(&line);
                state.text.push('\n');
                sink.grew.notify_all();
            }
            sink.state.lock().unwrap().ended = true;
            sink.grew.notify_all();
        });
        let pid = child.id();
        let mut server = Server {
            child: Mutex::new(child),
            pid,
            addrs: HashMap::new(),
            log,
            reader: Some(reader),
            ending: Ending::Clean,
            checked: false,
            dir,
        };
        let deadline = Instant::now() + PATIENCE;
        // `ready` comes once the server has started as a whole (listeners bound, the
        // signal thread told): a SIGTERM before it would end the start, not serve.
        while server.addrs.len() < listeners || !server.log().contains(READY) {
            let text = server.log();
            server.addrs = text
                .lines()
                .filter(|line| line.contains(" listening "))
                .filter_map(|line| Some((field(line, "listener")?, field(line, "address")?.parse().ok()?)))
                .collect();
            if let Some(status) = server.child.lock().unwrap().try_wait().unwrap() {
                server.checked = true;
                panic!("sandport exited with {status} before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "sandport did not start listening:\n{text}");
            server.wait_log_change(&text, Duration::from_millis(100));
        }
        server
    }

    /// The config file it was started with (by [`Server::start`]): rewrite it and
    /// send SIGHUP to reload.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sandport.toml")
    }

    /// Rewrite the config file with `config` (with no shutdown grace, as [`Server::start`]
    /// gives) and send SIGHUP; wait until the reload is done (its `config reloaded`
    /// line).
    pub fn reload(&self, config: &str) {
        let before = self.log().matches("config reloaded").count();
        std::fs::write(self.config_path(), format!("shutdown-grace-ms = 0\n{config}")).unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
        self.wait_for_count("config reloaded", before + 1);
    }

    /// Send the server `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Say how this server's process must end instead of the default, exit code 0 on
    /// SIGTERM: for a test that stops or kills it in another way.
    pub fn expect_exit(&mut self, ending: Ending) {
        self.ending = ending;
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
        self.log.state.lock().unwrap().text.clone()
    }

    /// Wait up to `wait` for the log to grow past `seen` (or the process to end).
    fn wait_log_change(&self, seen: &str, wait: Duration) {
        let state = self.log.state.lock().unwrap();
        if state.text.len() == seen.len() && !state.ended {
            drop(self.log.grew.wait_timeout(state, wait).unwrap());
        }
    }

    /// Fail the test at once if the process is gone (it can no longer do what the
    /// test waits for), with its exit status and log: for a test's own waiting loops.
    pub fn assert_alive(&self, waiting_for: &str) {
        let state = self.log.state.lock().unwrap();
        if !state.ended {
            return;
        }
        let text = state.text.clone();
        drop(state);
        // Its stderr closed as it exited: the status follows at once.
        let status = wait_until_exit(&mut self.child.lock().unwrap(), PATIENCE);
        let status = status.map_or_else(|| "it closed its stderr".to_owned(), |s| s.to_string());
        panic!("sandport exited ({status}) while the test waited for {waiting_for}:\n{text}");
    }

    /// Wait until `needle` occurs `count` times in the log; fails if it occurs more, or
    /// if the process dies first.
    pub fn wait_for_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.log();
            let seen = text.matches(needle).count();
            assert!(seen <= count, "{needle:?} occurs {seen} times, expected {count}:\n{text}");
            if seen == count {
                return;
            }
            self.assert_alive(&format!("{count} times {needle:?} (seen {seen})"));
            assert!(Instant::now() < deadline, "{needle:?} occurs {seen} times, expected {count}:\n{text}");
            self.wait_log_change(&text, Duration::from_millis(100));
        }
    }

    /// Wait until the log has a line containing every one of `needles`; returns it.
    /// Fails if the process dies first.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.log();
            if let Some(line) = text.lines().find(|line| needles.iter().all(|n| line.contains(n))) {
                return line.to_owned();
            }
            self.assert_alive(&format!("a log line with {needles:?}"));
            assert!(Instant::now() < deadline, "no log line with {needles:?} in:\n{text}");
            self.wait_log_change(&text, Duration::from_millis(100));
        }
    }

    /// The process id, e.g. to read its memory use.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            self.assert_alive("its memory use");
            panic!("cannot read the memory use of sandport (pid {})", self.pid());
        };
        let kib: u64 = field_value(&status, "VmRSS:").unwrap();
        kib * 1024
    }

    /// Wait for the process to exit on its own (after a signal the test sent); fails
    /// if it takes longer than [`PATIENCE`]. [`Server::terminate`] then checks how.
    pub fn wait_for_exit(&self) {
        let mut child = self.child.lock().unwrap();
        assert!(wait_until_exit(&mut child, PATIENCE).is_some(), "sandport did not exit within {PATIENCE:?}");
    }

    /// Send SIGTERM, wait for the process to exit and check that it ended as expected
    /// (exit code 0 unless [`Server::expect_exit`] said otherwise, and no panic);
    /// returns its status and log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.checked = true;
        match self.finish() {
            Ok(ended) => ended,
            Err(why) => panic!("{why}"),
        }
    }

    /// Stop the process (SIGTERM, unless it already exited), collect its whole log,
    /// and check its ending. Kills it if SIGTERM does not stop it within [`PATIENCE`].
    fn finish(&mut self) -> Result<(ExitStatus, String), String> {
        let mut child = self.child.lock().unwrap();
        let mut hung = false;
        let status = match child.try_wait().unwrap() {
            Some(status) => status,
            None => {
                let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
                match wait_until_exit(&mut child, PATIENCE) {
                    Some(status) => status,
                    None => {
                        hung = true;
                        let _ = child.kill();
                        child.wait().unwrap()
                    }
                }
            }
        };
        drop(child);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log();
        let problem = if hung {
            Some(format!("sandport did not exit within {PATIENCE:?} of SIGTERM (killed)"))
        } else if let Some(line) = log.lines().find(|l| is_host_panic(l)) {
            Some(format!("sandport panicked: {line}"))
        } else if !self.ended_as_expected(status) {
            Some(format!("sandport ended with {status}, expected {:?}", self.ending))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(format!("{problem}; its log:\n{}", tail(&log))),
            None => Ok((status, log)),
        }
    }

    fn ended_as_expected(&self, status: ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self.ending {
            Ending::Clean => status.code() == Some(0),
            Ending::Code(code) => status.code() == Some(code),
            Ending::Signal(signal) => status.signal() == Some(signal),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.checked {
            return;
        }
        self.checked = true;
        let outcome = self.finish();
        if std::thread::panicking() {
            // The test failed already: show how the server ended and what it said,
            // which often explains the failure, without a panic inside the unwinding.
            match outcome {
                Ok((status, log)) => eprintln!("sandport ended with {status}; its log:\n{}", tail(&log)),
                Err(why) => eprintln!("{why}"),
            }
        } else if let Err(why) = outcome {
            panic!("{why}");
        }
    }
}

/// Whether a line of a server's stderr is a panic message of the host's own. (Guest
/// output is logged with a prefix, so a guest's panic never starts a line.)
fn is_host_panic(line: &str) -> bool {
    line.starts_with("thread '") && line.contains("' panicked at ")
}

/// The end of a log, short enough to read in a test failure.
fn tail(log: &str) -> &str {
    const MAX: usize = 256 << 10;
    if log.len() <= MAX {
        return log;
    }
    let mut start = log.len() - MAX;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// Wait up to `patience` for a child to exit; `None` if it is still running.
fn wait_until_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a child to exit, failing the test (after killing it) if it takes longer
/// than [`PATIENCE`].
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    if let Some(status) = wait_until_exit(child, PATIENCE) {
        return status;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("process did not exit within {PATIENCE:?} (killed)");
}

/// Run `sandport` with `args` to completion; returns exit status, stdout, stderr.
/// Fails the test if it panics, or (after killing it) if it runs longer than
/// [`PATIENCE`].
pub fn run_sandport<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (ExitStatus, String, String) {
    let mut command = sandport();
    command.args(args);
    run_to_end(command)
}

/// Run a `sandport` command (made with [`sandport`], with arguments and environment of
/// its own) to completion, as [`run_sandport`] does.
pub fn run_to_end(mut command: Command) -> (ExitStatus, String, String) {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let slurp = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = slurp(Box::new(child.stdout.take().unwrap()));
    let stderr = slurp(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(!stderr.lines().any(is_host_panic), "sandport {status} and panicked:\n{stderr}");
    (status, stdout, stderr)
}

/// A config file in a fresh temporary folder, for commands that are expected to fail.
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandport.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// An address of 127.0.0.1 that was free a moment ago, for a test that must name its
/// port (listeners sharing one address, a port reused after a restart).
///
/// Its port lies below the kernel's ephemeral range, which `bind(0)` and every
/// outgoing connection of the suite draw from: a port from that range could be taken
/// by another test's client or server between this call and the bind it is for. The
/// ports below are handed out in turn, from a point that depends on the process, so
/// two tests never get the same one.
pub fn free_address() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000, ephemeral_start.saturating_sub(10_000).max(1_000));
    let _ = NEXT.compare_exchange(0, std::process::id() % span + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr().unwrap();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The `listener totals` line of listener `name` in a stopped server's log.
pub fn totals<'a>(log: &'a str, name: &str) -> &'a str {
    let needle = format!("listener={name} ");
    log.lines().find(|l| l.contains("listener totals") && l.contains(&needle)).unwrap_or_else(|| panic!("{log}"))
}

/// Wait until a writer's progress counter stops moving (the peer stopped taking
/// bytes); returns where it stopped. Fails if it still moves after [`PATIENCE`].
pub fn stalls_at(written: &std::sync::atomic::AtomicUsize) -> usize {
    let deadline = Instant::now() + PATIENCE;
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the writer never stalled ({now} bytes written)");
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

/// How the server ended a connection, for a test that accepts either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// End of stream: the server closed (or shut down its sending side) cleanly.
    Eof,
    /// The connection was reset.
    Reset,
}

impl Client {
    /// Connect to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, PATIENCE).unwrap())
    }

    /// Connect to `addr` with a small receive buffer (a few KiB, set before the
    /// handshake so that the advertised window is small too): bytes the server sends
    /// and this client does not read stay in the server's send buffer.
    pub fn connect_with_small_window(addr: SocketAddr) -> Client {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect_timeout(&addr.into(), PATIENCE).unwrap();
        Client::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Client {
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

    /// Read until the server closes cleanly (end of stream); returns what arrived.
    /// A reset fails the test: it can destroy bytes in flight, so it is not a clean
    /// close. (A test that accepts one says so with [`Client::until_end`].)
    pub fn until_eof(&mut self) -> Vec<u8> {
        let (rest, end) = self.until_end();
        assert_eq!(end, End::Eof, "expected end of stream, got a reset after {} bytes", rest.len());
        rest
    }

    /// Read until the server ends the connection, by closing or by a reset; returns
    /// what arrived and how it ended. Fails on a timeout.
    pub fn until_end(&mut self) -> (Vec<u8>, End) {
        let mut rest = Vec::new();
        // On an error, what was read before it stays in `rest`.
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => (rest, End::Eof),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => (rest, End::Reset),
            Err(e) => panic!("expected the server to close the connection: {e} (after {} bytes)", rest.len()),
        }
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
