//! One round against one target: client threads, each running a mio event loop over
//! its share of the connections.
//!
//! Non-blocking sockets rather than a blocking thread per connection, because a
//! connection must read while it writes: with a large message or a deep pipeline the
//! server's replies fill the socket buffers before the client has finished sending,
//! and a client that only reads after writing would deadlock with any server that
//! applies back-pressure.
//!
//! Connections are opened before the round starts with a blocking connect, since
//! that is not measured; a connection opened during the round (to replace a failed
//! one, or for every batch with [`LoadSpec::reconnect`]) connects without blocking,
//! so that the other connections of its thread keep running meanwhile.
//!
//! A replaced connection is closed normally, not reset (`SO_LINGER` 0), so that the
//! server sees and pays for the teardown a real client causes. That leaves each
//! closed connection in `TIME_WAIT` on the client for a minute, holding its
//! ephemeral port: Linux lets new connections to loopback reuse such ports
//! (`net.ipv4.tcp_tw_reuse = 2`, the default), but to another host a fast
//! [`LoadSpec::reconnect`] run can exhaust them (about 28 000 per minute with the
//! default port range), which shows as `cannot reconnect` errors (`Cannot assign
//! requested address`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::cpu::ServerProcesses;
use crate::http;
use crate::spec::{LoadSpec, Mode};
use crate::stats::Histogram;

/// How often a worker looks for stalled connections and retries failed connects.
const TICK: Duration = Duration::from_millis(100);
/// The smallest read buffer; it grows to fit a whole batch of responses.
const MIN_RECV_BUF: usize = 16 * 1024;

/// What one round against one target measured.
#[derive(Debug, Default)]
pub(crate) struct RoundResult {
    /// Responses that passed verification within the measured window.
    pub requests: u64,
    /// Bytes of those responses.
    pub bytes: u64,
    /// Failed responses, connection failures and timeouts, warm-up included.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// Latency of each response counted in `requests`.
    pub latency: Histogram,
    /// CPU time the server used in the measured window, if it could be read.
    pub server_cpu: Option<Duration>,
}

impl RoundResult {
    fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    fn merge(&mut self, other: RoundResult) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latency.merge(&other.latency);
    }
}

/// Runs one round of `spec` against `addr`, and measures the CPU time `server` uses
/// in the measured window.
///
/// Fails if a connection cannot be opened at the start; later failures are counted
/// as errors and the connection is reopened.
pub(crate) fn run_round(spec: &LoadSpec, addr: SocketAddr, server: &ServerProcesses) -> Result<RoundResult> {
    let threads = spec.thread_count();
    // Every thread connects and allocates its buffers first, so that none of that
    // is measured and the threads start loading the server together; this thread
    // passes the barrier with them and reads the server's CPU time as the
    // measurement starts and ends.
    let ready = Barrier::new(threads + 1);
    let failed = AtomicBool::new(false);
    let (results, server_cpu) = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let conns = spec.connections / threads + usize::from(i < spec.connections % threads);
                let (ready, failed) = (&ready, &failed);
                scope.spawn(move || {
                    let worker = Worker::new(spec, addr, conns);
                    if worker.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    ready.wait();
                    if failed.load(Ordering::Relaxed) {
                        return worker.map(|_| RoundResult::default());
                    }
                    worker?.run()
                })
            })
            .collect();
        ready.wait();
        let server_cpu = if failed.load(Ordering::Relaxed) { None } else { measure_cpu(spec, server) };
        let results: Vec<Result<RoundResult>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked"))))
            .collect();
        (results, server_cpu)
    });
    let mut total = RoundResult { server_cpu, ..RoundResult::default() };
    for result in results {
        total.merge(result?);
    }
    Ok(total)
}

/// The CPU time `server` uses from the end of the warm-up to the end of the round,
/// both counted from now (the start of the round).
fn measure_cpu(spec: &LoadSpec, server: &ServerProcesses) -> Option<Duration> {
    let start = Instant::now();
    let sleep_until = |when: Instant| thread::sleep(when.saturating_duration_since(Instant::now()));
    sleep_until(start + spec.warmup);
    let before = server.cpu_time();
    sleep_until(start + spec.warmup + spec.duration);
    server.cpu_time()?.checked_sub(before?)
}

/// Opens a connection before the round starts.
fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    // Small requests must go out at once, not wait for the previous one's ACK.
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

/// The settings of a round that every connection of a worker needs.
struct Settings {
    mode: Mode,
    size: usize,
    pipeline: usize,
    reconnect: bool,
    addr: SocketAddr,
    timeout: Duration,
    /// Responses completed before this belong to the warm-up.
    measure_from: Instant,
    /// The end of the round; responses completed after it are not counted.
    end: Instant,
}

/// One client thread: an event loop over some of the round's connections.
struct Worker<'a> {
    spec: &'a LoadSpec,
    addr: SocketAddr,
    poll: Poll,
    conns: Vec<Conn>,
}

impl<'a> Worker<'a> {
    /// Opens `conns` connections to `addr`, ready to go.
    fn new(spec: &'a LoadSpec, addr: SocketAddr, conns: usize) -> Result<Self> {
        let poll = Poll::new().context("cannot create a poll instance")?;
        let conns = (0..conns)
            .map(|i| {
                let mut stream = connect(addr, spec.timeout).with_context(|| format!("cannot connect to {addr}"))?;
                poll.registry().register(&mut stream, Token(i), Interest::READABLE)?;
                Ok(Conn::new(Token(i), stream, spec))
            })
            .collect::<Result<_>>()?;
        Ok(Worker { spec, addr, poll, conns })
    }

    fn run(mut self) -> Result<RoundResult> {
        let now = Instant::now();
        let settings = Settings {
            mode: self.spec.mode,
            size: self.spec.size,
            pipeline: self.spec.pipeline,
            reconnect: self.spec.reconnect,
            addr: self.addr,
            timeout: self.spec.timeout,
            measure_from: now + self.spec.warmup,
            end: now + self.spec.warmup + self.spec.duration,
        };
        let mut result = RoundResult::default();
        let registry = self.poll.registry();
        for conn in &mut self.conns {
            if let Err(e) = conn.start_batch(&settings, registry, now) {
                conn.fail(e, &settings, registry, &mut result);
            }
        }

        let mut events = Events::with_capacity(1024);
        let mut next_tick = now + TICK;
        loop {
            let now = Instant::now();
            if now >= settings.end {
                break;
            }
            let wait = (settings.end - now).min(next_tick.saturating_duration_since(now));
            match self.poll.poll(&mut events, Some(wait)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("poll failed")?,
            }
            let registry = self.poll.registry();
            for event in &events {
                let conn = &mut self.conns[event.token().0];
                if let Err(e) = conn.on_ready(&settings, registry, &mut result) {
                    conn.fail(e, &settings, registry, &mut result);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                for conn in &mut self.conns {
                    conn.tick(now, &settings, registry, &mut result);
                }
            }
        }
        Ok(result)
    }
}

/// A byte buffer that is filled at the end and consumed at the front.
///
/// Kept initialised so that reads need no zeroing per call; it grows only when a
/// batch of responses does not fit.
struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    fn new(capacity: usize) -> Self {
        RecvBuf { buf: vec![0; capacity], start: 0, end: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `stream` into the free space, making room first.
    fn read_from(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// One connection and its batch in flight.
struct Conn {
    token: Token,
    /// `None` after a failed reconnect, until the next attempt.
    stream: Option<TcpStream>,
    /// Whether `stream` is still connecting (see [`Conn::reconnect`]).
    connecting: bool,
    /// Whether the stream is registered for writability, which it only needs while
    /// it connects or the kernel refuses part of a batch.
    wants_write: bool,
    /// The current batch: `pipeline` echo messages or HTTP requests.
    out: Vec<u8>,
    sent: usize,
    recv: RecvBuf,
    /// Responses to the current batch received so far.
    answered: usize,
    /// When the current batch started, or on a fresh connection when it was opened:
    /// the start of its responses' latency.
    batch_start: Instant,
    last_progress: Instant,
    /// Echo messages sent so far; stamped into each message so that a server that
    /// replays old data is caught.
    seq: u64,
}

impl Conn {
    fn new(token: Token, stream: TcpStream, spec: &LoadSpec) -> Conn {
        let out = match spec.mode {
            Mode::Echo => (0..spec.size * spec.pipeline).map(|i| (i % 251) as u8).collect(),
            Mode::Http => http::REQUEST.repeat(spec.pipeline),
        };
        // Set for real when the first batch starts.
        let now = Instant::now();
        let recv = RecvBuf::new(out.len().max(MIN_RECV_BUF));
        Conn {
            token,
            stream: Some(stream),
            connecting: false,
            wants_write: false,
            out,
            sent: 0,
            recv,
            answered: 0,
            batch_start: now,
            last_progress: now,
            seq: 0,
        }
    }

    /// Starts sending the next batch, whose latency counts from `started`.
    fn start_batch(&mut self, settings: &Settings, registry: &Registry, started: Instant) -> io::Result<()> {
        if settings.mode == Mode::Echo {
            let stamp = settings.size.min(8);
            for message in self.out.chunks_exact_mut(settings.size) {
                message[..stamp].copy_from_slice(&self.seq.to_le_bytes()[..stamp]);
                self.seq += 1;
            }
        }
        self.sent = 0;
        self.answered = 0;
        self.batch_start = started;
        self.last_progress = started;
        self.flush(registry)
    }

    /// Writes as much of the batch as the kernel takes.
    fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let stream = self.stream.as_mut().expect("connected");
        while self.sent < self.out.len() {
            match stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let wants_write = self.sent < self.out.len();
        if wants_write != self.wants_write {
            let interest = if wants_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(stream, self.token, interest)?;
            self.wants_write = wants_write;
        }
        Ok(())
    }

    /// Handles a readiness event: completes a connect, writes what is pending, then
    /// reads until the socket is drained (mio is edge-triggered), completing
    /// responses as they come.
    fn on_ready(&mut self, settings: &Settings, registry: &Registry, result: &mut RoundResult) -> io::Result<()> {
        let Some(stream) = &self.stream else {
            // An event for the stream a failed reconnect replaced.
            return Ok(());
        };
        if self.connecting {
            if !is_connected(stream)? {
                return Ok(());
            }
            stream.set_nodelay(true)?;
            self.connecting = false;
            self.start_batch(settings, registry, self.batch_start)?;
            self.last_progress = Instant::now();
        }
        if self.sent < self.out.len() {
            let before = self.sent;
            self.flush(registry)?;
            if self.sent > before {
                self.last_progress = Instant::now();
            }
        }
        loop {
            let stream = self.stream.as_mut().expect("connected");
            match self.recv.read_from(stream) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
                }
                Ok(_) => {
                    let now = Instant::now();
                    self.last_progress = now;
                    if !self.take_responses(now, settings, result)? {
                        continue;
                    }
                    if settings.reconnect {
                        self.reconnect(settings, registry, result);
                        return Ok(());
                    }
                    self.start_batch(settings, registry, now)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the complete responses off the receive buffer, verifies and records
    /// them, and returns whether the batch is now answered.
    fn take_responses(&mut self, now: Instant, settings: &Settings, result: &mut RoundResult) -> io::Result<bool> {
        while self.answered < settings.pipeline {
            let data = self.recv.data();
            let (len, ok) = match settings.mode {
                Mode::Echo => {
                    if data.len() < settings.size {
                        return Ok(false);
                    }
                    let sent = &self.out[self.answered * settings.size..][..settings.size];
                    (settings.size, data[..settings.size] == *sent)
                }
                Mode::Http => match http::parse_response(data) {
                    Ok(Some(response)) => (response.len, response.status == 200),
                    Ok(None) => return Ok(false),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
            };
            if !ok {
                let what = match settings.mode {
                    Mode::Echo => "the echo differs from the message sent".to_owned(),
                    Mode::Http => format!("HTTP status is not 200: {}", first_line(data)),
                };
                result.error(|| what);
            } else if (settings.measure_from..settings.end).contains(&now) {
                result.requests += 1;
                result.bytes += len as u64;
                result.latency.record(now - self.batch_start);
            }
            self.recv.consume(len);
            self.answered += 1;
        }
        if !self.recv.data().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent more than the responses to the requests",
            ));
        }
        Ok(true)
    }

    /// Counts `error` and replaces the connection; if it was a fresh connection that
    /// failed to open, only after a tick (see [`Conn::tick`]), so that a server that
    /// refuses connections is not flooded with them.
    fn fail(&mut self, error: io::Error, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        if self.connecting {
            result.error(|| format!("cannot reconnect to {}: {error}", settings.addr));
            self.close(registry);
            self.last_progress = Instant::now();
        } else {
            result.error(|| error.to_string());
            self.reconnect(settings, registry, result);
        }
    }

    /// Closes the connection, if open, and starts opening a fresh one; once it is
    /// connected, [`Conn::on_ready`] starts the next batch.
    fn reconnect(&mut self, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        self.close(registry);
        let now = Instant::now();
        // The start of the next batch's latency (see `on_ready`), and also the time of
        // the next attempt if this one fails (see `tick`).
        self.batch_start = now;
        self.last_progress = now;
        match start_connect(settings.addr, self.token, registry) {
            Ok(stream) => {
                self.stream = Some(stream);
                self.connecting = true;
                self.wants_write = true;
            }
            Err(e) => result.error(|| format!("cannot reconnect to {}: {e}", settings.addr)),
        }
    }

    /// Closes the stream, if any.
    fn close(&mut self, registry: &Registry) {
        if let Some(mut old) = self.stream.take() {
            // Closing deregisters too; this just keeps mio's bookkeeping exact.
            let _ = registry.deregister(&mut old);
        }
        self.connecting = false;
        self.recv.clear();
    }

    /// Periodic check: a connection that made no progress within the timeout is
    /// failed, and a failed reconnect is retried after a tick.
    fn tick(&mut self, now: Instant, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        match self.stream {
            Some(_) if now - self.last_progress > settings.timeout => {
                let what = if self.connecting { "not connected" } else { "no response" };
                let error = io::Error::new(io::ErrorKind::TimedOut, format!("{what} within the timeout"));
                self.fail(error, settings, registry, result);
            }
            None if now - self.last_progress >= TICK => self.reconnect(settings, registry, result),
            _ => {}
        }
    }
}

/// Starts a non-blocking connect to `addr`, registered for the writability that
/// signals its end.
fn start_connect(addr: SocketAddr, token: Token, registry: &Registry) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

/// Whether the non-blocking connect of `stream` has completed, or why it failed; the
/// checks [`TcpStream::connect`] prescribes (on Unix, the peer's address is
/// `NotConnected` until then).
fn is_connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// The status line of a response, for error messages.
fn first_line(response: &[u8]) -> String {
    let end = response.iter().position(|&b| b == b'\r').unwrap_or(response.len());
    String::from_utf8_lossy(&response[..end]).into_owned()
}
