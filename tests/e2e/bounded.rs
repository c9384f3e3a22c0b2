//! Helpers for tests that feed the server what may make it hang or grow: a plain HTTP
//! request with a deadline, a command run under a time and memory bound, a watchdog
//! on a running server's memory, and a FIFO nobody writes.
//!
//! It owns only the processes and sockets it starts. It never waits without a
//! deadline and never lets a process it watches grow past its bound: a server that
//! reads `/dev/zero` to its end must fail a test, not the machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Server;

/// Resident memory beyond which a watched process is killed: far above what a server
/// of these tests uses (tens of MiB), far below what the machine has.
pub const MEMORY_BOUND: u64 = 1 << 30;

/// What a plain HTTP exchange got: the status code and the body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body (the whole rest after the headers; the request asks to close).
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close` to `address`; `None` if no whole
/// answer came within `patience` (the test decides whether that fails).
pub fn request(address: SocketAddr, head: &str, body: &[u8], patience: Duration) -> Option<Reply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, patience).ok()?;
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(patience)).unwrap();
    let head = format!("{head}\r\nHost: sandport\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).ok()?;
    // The server may answer (and close) before it has read a body it refuses.
    let _ = stream.write_all(body);
    read_reply(&mut stream, started, patience)
}

/// Read an answer until the server closes, within `patience` of `started`.
pub fn read_reply(stream: &mut TcpStream, started: Instant, patience: Duration) -> Option<Reply> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if started.elapsed() > patience {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            // A reset after a whole answer (the server closed with our body unread).
            Err(_) if !answer.is_empty() => break,
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Some(Reply { status, body })
}

/// The admin API address a server announced.
pub fn admin_address(server: &Server) -> SocketAddr {
    let line = server.wait_for_log(&["admin API listening"]);
    let address = line.split_whitespace().find_map(|word| word.strip_prefix("address="));
    address.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// `PUT /listeners/NAME/plugin` with a JSON body, answered within `patience` or `None`.
pub fn put_json(admin: SocketAddr, name: &str, json: &str, patience: Duration) -> Option<Reply> {
    let head = format!("PUT /listeners/{name}/plugin HTTP/1.1\r\nContent-Type: application/json");
    request(admin, &head, json.as_bytes(), patience)
}

/// `PUT /listeners/NAME/plugin {"path": PATH}`, answered within `patience` or `None`.
pub fn put_path(admin: SocketAddr, name: &str, path: &str, patience: Duration) -> Option<Reply> {
    put_json(admin, name, &serde_json::json!({ "path": path }).to_string(), patience)
}

/// Whether `GET /healthz` answers 200 within a second.
pub fn healthy(admin: SocketAddr) -> bool {
    request(admin, "GET /healthz HTTP/1.1", b"", Duration::from_secs(1)).is_some_and(|reply| reply.status == 200)
}

/// A FIFO nobody writes, in a fresh folder (kept while the returned folder lives).
pub fn fifo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.wasm");
    let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
    (dir, path)
}

/// Resident memory of process `pid` in bytes, `None` once it is gone.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Kills a server (SIGKILL) whose resident memory passes [`MEMORY_BOUND`], until
/// dropped; says whether it had to.
pub struct MemoryGuard {
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryGuard {
    /// Watch `server` every 10 ms.
    pub fn watch(server: &Server) -> MemoryGuard {
        let pid = server.pid();
        let (stop, killed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (until, did) = (stop.clone(), killed.clone());
        let thread = std::thread::spawn(move || {
            while !until.load(Ordering::SeqCst) {
                match rss(pid) {
                    Some(bytes) if bytes > MEMORY_BOUND => {
                        let pid = nix::unistd::Pid::from_raw(pid as i32);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        did.store(true, Ordering::SeqCst);
                        return;
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(10)),
                    None => return,
                }
            }
        });
        MemoryGuard { stop, killed, thread: Some(thread) }
    }

    /// Whether the server grew past the bound and was killed.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a bounded run ended.
#[derive(Debug)]
pub enum Ran {
    /// It exited within the time, with this status and stderr.
    Exited(ExitStatus, String),
    /// It ran longer than the time allowed (killed).
    Hung(String),
    /// Its memory passed [`MEMORY_BOUND`] (killed).
    Grew(String),
}

/// Run `command` (stdin empty, stdout dropped) for at most `patience`, killing it if it
/// runs longer or its memory passes [`MEMORY_BOUND`].
pub fn run_bounded(command: &mut Command, patience: Duration) -> Ran {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + patience;
    let ending = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Ok(status);
        }
        if rss(child.id()).is_some_and(|bytes| bytes > MEMORY_BOUND) {
            break Err(true);
        }
        if Instant::now() >= deadline {
            break Err(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if ending.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let said = said.join().unwrap();
    match ending {
        Ok(status) => Ran::Exited(status, said),
        Err(true) => Ran::Grew(said),
        Err(false) => Ran::Hung(said),
    }
}

/// Assert that a bounded run exited 1 with one `error:` line that contains every
/// one of `names` (e.g. the listener and the file).
pub fn assert_refused(ran: Ran, what: &str, names: &[&str]) {
    let stderr = match ran {
        Ran::Exited(status, stderr) => {
            assert_eq!(status.code(), Some(1), "{what}: exit status {status}:\n{stderr}");
            stderr
        }
        Ran::Hung(stderr) => panic!("{what}: still running at the deadline (killed):\n{stderr}"),
        Ran::Grew(stderr) => panic!("{what}: grew past {MEMORY_BOUND} bytes (killed):\n{stderr}"),
    };
    let errors: Vec<&str> = stderr.lines().filter(|line| line.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: one `error:` line expected:\n{stderr}");
    for name in names {
        assert!(errors[0].contains(name), "{what}: the error names {name:?}: {}", errors[0]);
    }
}

/// A path as the TOML and JSON texts of the tests take it.
pub fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Whether process `pid` (a child not yet reaped) exits within `patience`: its
/// `/proc` entry turns zombie or goes. Unlike waiting on the child, a failure here
/// leaves the server's handle usable for the checks that follow.
pub fn exits_within(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
