//! One round against one target: client threads, each running a mio event loop over
//! its share of the connections.
//!
//! Non-blocking sockets rather than a blocking thread per connection, because a
//! connection must read while it writes: with a large message or a deep pipeline the
//! server's replies fill the socket buffers before the client has finished sending,
//! and a client that only reads after writing would deadlock with any server that
//! applies back-pressure.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

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

/// Runs one round of `spec` against `addr`.
///
/// Fails if a connection cannot be opened at the start; later failures are counted
/// as errors and the connection is reopened.
pub(crate) fn run_round(spec: &LoadSpec, addr: SocketAddr) -> Result<RoundResult> {
    let threads = spec.thread_count();
    // Every thread connects and allocates its buffers first, so that none of that
    // is measured and the threads start loading the server together.
    let ready = Barrier::new(threads);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<RoundResult>> = thread::scope(|scope| {
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
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))).collect()
    });
    let mut total = RoundResult::default();
    for result in results {
        total.merge(result?);
    }
    Ok(total)
}

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
    /// Whether the stream is registered for writability, which it only needs while
    /// the kernel refuses part of a batch.
    wants_write: bool,
    /// The current batch: `pipeline` echo messages or HTTP requests.
    out: Vec<u8>,
    sent: usize,
    recv: RecvBuf,
    /// Responses to the current batch received so far.
    answered: usize,
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

    /// Starts sending the next batch.
    fn start_batch(&mut self, settings: &Settings, registry: &Registry, now: Instant) -> io::Result<()> {
        if settings.mode == Mode::Echo {
            let stamp = settings.size.min(8);
            for message in self.out.chunks_exact_mut(settings.size) {
                message[..stamp].copy_from_slice(&self.seq.to_le_bytes()[..stamp]);
                self.seq += 1;
            }
        }
        self.sent = 0;
        self.answered = 0;
        self.batch_start = now;
        self.last_progress = now;
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

    /// Handles a readiness event: writes what is pending, then reads until the
    /// socket is drained (mio is edge-triggered), completing responses as they come.
    fn on_ready(&mut self, settings: &Settings, registry: &Registry, result: &mut RoundResult) -> io::Result<()> {
        if self.stream.is_none() {
            // An event for the stream a failed reconnect replaced.
            return Ok(());
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
                    self.take_responses(now, settings, registry, result)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the complete responses off the receive buffer, verifies and records
    /// them, and starts the next batch once the current one is answered.
    fn take_responses(
        &mut self,
        now: Instant,
        settings: &Settings,
        registry: &Registry,
        result: &mut RoundResult,
    ) -> io::Result<()> {
        while self.answered < settings.pipeline {
            let data = self.recv.data();
            let (len, ok) = match settings.mode {
                Mode::Echo => {
                    if data.len() < settings.size {
                        return Ok(());
                    }
                    let sent = &self.out[self.answered * settings.size..][..settings.size];
                    (settings.size, data[..settings.size] == *sent)
                }
                Mode::Http => match http::parse_response(data) {
                    Ok(Some(response)) => (response.len, response.status == 200),
                    Ok(None) => return Ok(()),
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
        self.start_batch(settings, registry, now)
    }

    /// Counts `error` and replaces the connection.
    fn fail(&mut self, error: io::Error, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        result.error(|| error.to_string());
        self.reconnect(settings, registry, result);
    }

    fn reconnect(&mut self, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        if let Some(mut old) = self.stream.take() {
            // Closing deregisters too; this just keeps mio's bookkeeping exact.
            let _ = registry.deregister(&mut old);
        }
        self.recv.clear();
        self.wants_write = false;
        let now = Instant::now();
        // Also the time of the next attempt if this one fails (see `tick`).
        self.last_progress = now;
        let started = connect(settings.addr, settings.timeout).and_then(|mut stream| {
            registry.register(&mut stream, self.token, Interest::READABLE)?;
            self.stream = Some(stream);
            self.start_batch(settings, registry, now)
        });
        if let Err(e) = started {
            result.error(|| format!("cannot reconnect to {}: {e}", settings.addr));
            self.stream = None;
        }
    }

    /// Periodic check: a connection that made no progress within the timeout is
    /// failed, and a failed reconnect is retried after a tick.
    fn tick(&mut self, now: Instant, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        match self.stream {
            Some(_) if now - self.last_progress > settings.timeout => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "no response within the timeout");
                self.fail(error, settings, registry, result);
            }
            None if now - self.last_progress >= TICK => self.reconnect(settings, registry, result),
            _ => {}
        }
    }
}

/// The status line of a response, for error messages.
fn first_line(response: &[u8]) -> String {
    let end = response.iter().position(|&b| b == b'\r').unwrap_or(response.len());
    String::from_utf8_lossy(&response[..end]).into_owned()
}
