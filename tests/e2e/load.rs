//! A running load that checks every byte: echo clients and HTTP clients on their own
//! threads, each reconnecting every few exchanges so that new connections keep
//! arriving, until stopped. Used to show that swaps and reloads under traffic lose
//! nothing: any short read, wrong byte, reset or refused connection is a failure,
//! recorded with what the client was doing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::PATIENCE;

/// Exchanges a client makes on one connection before it closes it and opens another.
const EXCHANGES_PER_CONNECTION: u64 = 20;

/// What a load saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Exchanges whose answer was checked and right.
    pub exchanges: u64,
    /// Connections opened.
    pub connections: u64,
    /// What went wrong, one line each.
    pub failures: Vec<String>,
}

/// Clients running against a server until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a client does on one connection, exchange after exchange.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Send bytes (a varying size, up to a few KiB), read the same bytes back.
    Echo,
    /// A keep-alive `GET /`, answered `hello from sandport`.
    Http,
    /// Two members of a chat room taking turns: one says a line no one else says,
    /// the other must hear it (whatever the chat's version prefixes it with).
    Chat,
}

impl Load {
    /// Start `clients` clients of each (kind, address).
    pub fn start(targets: &[(Kind, SocketAddr)], clients: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            exchanges: Arc::default(),
            connections: Arc::default(),
            failures: Arc::default(),
            threads: Vec::new(),
        };
        let threads = targets
            .iter()
            .flat_map(|&(kind, address)| (0..clients).map(move |n| (kind, address, n as u64)))
            .map(|(kind, address, n)| {
                let (stop, exchanges, connections, failures) =
                    (load.stop.clone(), load.exchanges.clone(), load.connections.clone(), load.failures.clone());
                std::thread::spawn(move || {
                    let mut seed = n + 1;
                    while !stop.load(Ordering::SeqCst) {
                        connections.fetch_add(1, Ordering::SeqCst);
                        let done = match kind {
                            Kind::Echo => echo_connection(address, &mut seed, &stop, &exchanges),
                            Kind::Http => http_connection(address, &stop, &exchanges),
                            Kind::Chat => chat_pair(address, n, &stop, &exchanges),
                        };
                        if let Err(failure) = done {
                            failures.lock().unwrap().push(failure);
                            return;
                        }
                    }
                })
            })
            .collect();
        Load { threads, ..load }
    }

    /// Exchanges checked so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::SeqCst)
    }

    /// Wait until `more` exchanges were checked after this call (failing the test if a
    /// client failed or it takes longer than [`PATIENCE`]).
    pub fn wait_for(&self, more: u64) {
        let target = self.exchanges() + more;
        let deadline = std::time::Instant::now() + PATIENCE;
        while self.exchanges() < target {
            let failures = self.failures.lock().unwrap().clone();
            assert!(failures.is_empty(), "the load failed: {failures:#?}");
            assert!(std::time::Instant::now() < deadline, "the load stalled at {} exchanges", self.exchanges());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop every client (each finishes its exchange and closes) and say what happened.
    pub fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Outcome {
            exchanges: self.exchanges.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            failures: std::mem::take(&mut *self.failures.lock().unwrap()),
        }
    }
}

fn open(address: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&address, PATIENCE).map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    Ok(stream)
}

/// One echo connection: exchanges of pseudo-random sizes and bytes, each checked.
fn echo_connection(address: SocketAddr, seed: &mut u64, stop: &AtomicBool, done: &AtomicU64) -> Result<(), String> {
    let mut stream = open(address)?;
    for exchange in 0..EXCHANGES_PER_CONNECTION {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let size = 1 + (*seed >> 33) as usize % 4096;
        let sent: Vec<u8> = (0..size).map(|i| (*seed >> (i % 56)) as u8 ^ i as u8).collect();
        stream.write_all(&sent).map_err(|e| format!("echo exchange {exchange}: write: {e}"))?;
        let mut got = vec![0; size];
        stream.read_exact(&mut got).map_err(|e| format!("echo exchange {exchange} ({size} B): read: {e}"))?;
        if got != sent {
            return Err(format!("echo exchange {exchange}: {size} bytes came back different"));
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// One keep-alive HTTP connection: requests, each answer parsed and checked.
fn http_connection(address: SocketAddr, stop: &AtomicBool, done: &AtomicU64) -> Result<(), String> {
    let mut reader = BufReader::new(open(address)?);
    for exchange in 0..EXCHANGES_PER_CONNECTION {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let request = b"GET / HTTP/1.1\r\nHost: sandport\r\n\r\n";
        reader.get_mut().write_all(request).map_err(|e| format!("http request {exchange}: write: {e}"))?;
        let mut length = None;
        let mut status = String::new();
        reader.read_line(&mut status).map_err(|e| format!("http request {exchange}: read: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("http request {exchange}: status line {status:?}"));
        }
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).map_err(|e| format!("http request {exchange}: headers: {e}"))?;
            if header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.ok_or(format!("http request {exchange}: no content-length"))?];
        reader.read_exact(&mut body).map_err(|e| format!("http request {exchange}: body: {e}"))?;
        if body != b"hello from sandport\n" {
            return Err(format!("http request {exchange}: body {:?}", String::from_utf8_lossy(&body)));
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Two chat members, `client`'s, taking turns to speak and to check that the other
/// heard. Lines of other members and the chat's notices (`* ...`) are skipped.
fn chat_pair(address: SocketAddr, client: u64, stop: &AtomicBool, done: &AtomicU64) -> Result<(), String> {
    static SAID: AtomicU64 = AtomicU64::new(0);
    let mut members = [BufReader::new(open(address)?), BufReader::new(open(address)?)];
    // A member hears only what is said after it joined: wait for both welcomes.
    for member in &mut members {
        let mut welcome = String::new();
        member.read_line(&mut welcome).map_err(|e| format!("chat welcome: {e}"))?;
        if !welcome.starts_with("* welcome") {
            return Err(format!("chat: {welcome:?} instead of a welcome"));
        }
    }
    for exchange in 0..EXCHANGES_PER_CONNECTION {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let text = format!("said-{client}-{}", SAID.fetch_add(1, Ordering::SeqCst));
        let (speaker, listener) = if exchange % 2 == 0 { (0, 1) } else { (1, 0) };
        let line = format!("{text}\n");
        members[speaker]
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("chat line {exchange}: write: {e}"))?;
        // The room's pings keep a read from timing out: the deadline is the check.
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(format!("chat line {exchange}: {text:?} was not heard within {PATIENCE:?}"));
            }
            let mut heard = String::new();
            let n = members[listener].read_line(&mut heard).map_err(|e| format!("chat line {exchange}: read: {e}"))?;
            if n == 0 {
                return Err(format!("chat line {exchange}: the listening member was disconnected"));
            }
            if heard.trim_end().ends_with(&format!(" {text}")) {
                break;
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}
