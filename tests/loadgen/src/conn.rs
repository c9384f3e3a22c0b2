//! One connection of a client thread: its batch in flight, its stream (plaintext or
//! TLS), and how it recovers from a failure. It never polls and never decides when a
//! round starts or ends: its thread's loop calls it with the events and the ticks.
//!
//! A connection is driven by its thread's event loop (mio, edge-triggered): it reads
//! while it is still writing, since with a large message or a deep pipeline the
//! server's replies fill the socket buffers before the client has finished sending,
//! and a client that only reads after writing would deadlock with any server that
//! applies back-pressure.
//!
//! A replaced connection is closed normally (after a TLS `close_notify`), not reset
//! (`SO_LINGER` 0), so that the server sees and pays for the teardown a real client
//! causes. That leaves each closed connection in `TIME_WAIT` on the client for a
//! minute, holding its ephemeral port: Linux lets new connections to loopback reuse
//! such ports (`net.ipv4.tcp_tw_reuse = 2`, the default), but to another host a fast
//! [`LoadSpec::reconnect`](crate::LoadSpec::reconnect) run can exhaust them (about
//! 28 000 per minute with the default port range), which shows as `cannot reconnect`
//! errors (`Cannot assign requested address`).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::client::RoundResult;
use crate::http;
use crate::spec::{LoadSpec, Mode};
use crate::stream::Stream;
use crate::tls::Connector;

/// The smallest read buffer; it grows to fit a whole batch of responses.
const MIN_RECV_BUF: usize = 16 * 1024;

/// How often a worker looks for stalled connections and retries failed connects.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// The settings of a round that every connection of a worker needs.
pub(crate) struct Settings {
    pub mode: Mode,
    pub size: usize,
    pub pipeline: usize,
    pub reconnect: bool,
    /// Whether a connection stops after its first batch and stays open, idle.
    pub hold: bool,
    /// Whether a held connection makes no exchange at all: it is held once
    /// connected, and over TLS once its handshake is done.
    pub silent: bool,
    pub addr: SocketAddr,
    /// `None` for plaintext.
    pub tls: Option<Connector>,
    pub timeout: Duration,
    /// Responses completed before this belong to the warm-up.
    pub measure_from: Instant,
    /// The end of the round; responses completed after it are not counted.
    pub end: Instant,
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
    fn read_from(&mut self, stream: &mut impl io::Read) -> io::Result<usize> {
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
pub(crate) struct Conn {
    token: Token,
    /// `None` after a failed reconnect, until the next attempt.
    stream: Option<Stream>,
    /// Whether `stream` is still connecting (see [`Conn::reconnect`]).
    connecting: bool,
    /// Whether the socket is registered for writability, which it only needs while
    /// it connects or the kernel refuses part of a batch (or of its TLS records).
    wants_write: bool,
    /// Answered its batch and stays open without another ([`Settings::hold`]).
    held: bool,
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
    /// A connection over `stream`, already connected and registered with `token`.
    pub(crate) fn new(token: Token, stream: Stream, spec: &LoadSpec) -> Conn {
        let mut conn = Conn::unconnected(token, spec);
        conn.stream = Some(stream);
        conn
    }

    /// A connection that has yet to connect, which [`Conn::reconnect`] starts.
    pub(crate) fn unconnected(token: Token, spec: &LoadSpec) -> Conn {
        let out = match spec.mode {
            _ if spec.silent => Vec::new(),
            Mode::Echo => (0..spec.size * spec.pipeline).map(|i| (i % 251) as u8).collect(),
            Mode::Http => http::REQUEST.repeat(spec.pipeline),
        };
        // Set for real when the first batch starts.
        let now = Instant::now();
        let recv = RecvBuf::new(out.len().max(MIN_RECV_BUF));
        Conn {
            token,
            stream: None,
            connecting: false,
            wants_write: false,
            held: false,
            out,
            sent: 0,
            recv,
            answered: 0,
            batch_start: now,
            last_progress: now,
            seq: 0,
        }
    }

    /// Whether it answered its batch and now stays idle ([`Settings::hold`]).
    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// Starts sending the next batch, whose latency counts from `started`.
    pub(crate) fn start_batch(&mut self, settings: &Settings, registry: &Registry, started: Instant) -> io::Result<()> {
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

    /// Writes as much of the batch, and of the TLS records waiting, as the kernel
    /// takes, and asks for writability while some is left.
    fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let stream = self.stream.as_mut().expect("connected");
        while self.sent < self.out.len() {
            match io::Write::write(stream, &self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stream.flush_records()?;
        let wants_write = self.sent < self.out.len() || stream.pending();
        if wants_write != self.wants_write {
            let interest = if wants_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(stream.socket(), self.token, interest)?;
            self.wants_write = wants_write;
        }
        Ok(())
    }

    /// Handles a readiness event: completes a connect, writes what is pending, then
    /// reads until the socket is drained (mio is edge-triggered), completing
    /// responses as they come, and writes what reading left to send (TLS handshake
    /// messages, or the rest of a batch the handshake held back).
    pub(crate) fn on_ready(
        &mut self,
        settings: &Settings,
        registry: &Registry,
        result: &mut RoundResult,
    ) -> io::Result<()> {
        let Some(stream) = &mut self.stream else {
            // An event for the stream a failed reconnect replaced.
            return Ok(());
        };
        if self.connecting {
            let socket = stream.socket();
            if !is_connected(socket)? {
                return Ok(());
            }
            socket.set_nodelay(true)?;
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
                Ok(_) if settings.silent => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent data to a silent connection",
                    ));
                }
                Ok(_) => {
                    let now = Instant::now();
                    self.last_progress = now;
                    if !self.take_responses(now, settings, result)? {
                        continue;
                    }
                    if settings.hold {
                        self.held = true;
                    } else if settings.reconnect {
                        self.reconnect(settings, registry, result);
                        return Ok(());
                    } else {
                        self.start_batch(settings, registry, now)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A silent connection's batch is empty: it is held once the
                    // handshake (if any) is over.
                    if settings.silent && !stream.is_handshaking() {
                        self.held = true;
                    }
                    return self.flush(registry);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the complete responses off the receive buffer, verifies and records
    /// them, and returns whether the batch is now answered.
    fn take_responses(&mut self, now: Instant, settings: &Settings, result: &mut RoundResult) -> io::Result<bool> {
        if self.held {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the server sent data to an idle connection"));
        }
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
    pub(crate) fn fail(
        &mut self,
        error: io::Error,
        settings: &Settings,
        registry: &Registry,
        result: &mut RoundResult,
    ) {
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
    pub(crate) fn reconnect(&mut self, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        self.close(registry);
        let now = Instant::now();
        // The start of the next batch's latency (see `on_ready`), and also the time of
        // the next attempt if this one fails (see `tick`).
        self.batch_start = now;
        self.last_progress = now;
        match start_connect(settings, self.token, registry) {
            Ok(stream) => {
                self.stream = Some(stream);
                self.connecting = true;
                self.wants_write = true;
            }
            Err(e) => result.error(|| format!("cannot reconnect to {}: {e}", settings.addr)),
        }
    }

    /// Closes the stream, if any.
    pub(crate) fn close(&mut self, registry: &Registry) {
        if let Some(mut old) = self.stream.take() {
            if !self.connecting {
                old.close();
            }
            // Closing deregisters too; this just keeps mio's bookkeeping exact.
            let _ = registry.deregister(old.socket());
        }
        self.connecting = false;
        self.held = false;
        self.recv.clear();
    }

    /// Periodic check: a connection that made no progress within the timeout is
    /// failed, and a failed reconnect is retried after a tick. A held connection
    /// waits for nothing.
    pub(crate) fn tick(&mut self, now: Instant, settings: &Settings, registry: &Registry, result: &mut RoundResult) {
        match self.stream {
            Some(_) if self.held => {}
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

/// Starts a non-blocking connect to the settings' address, registered for the
/// writability that signals its end, with a TLS session to start once it connects
/// if the settings ask for TLS.
fn start_connect(settings: &Settings, token: Token, registry: &Registry) -> io::Result<Stream> {
    let mut socket = TcpStream::connect(settings.addr)?;
    registry.register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)?;
    Stream::new(socket, settings.tls.as_ref())
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
