//! One round against one target: client threads, each running a mio event loop over
//! its share of the connections (see [`conn`](crate::conn) for what a connection
//! does).
//!
//! Connections are opened before the round starts with a blocking connect, since
//! that is not measured (a TLS handshake, though, happens in the warm-up); a
//! connection opened during the round (to replace a failed one, or for every batch
//! with [`LoadSpec::reconnect`]) connects without blocking, so that the other
//! connections of its thread keep running meanwhile.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConfig;

use crate::conn::{Conn, Settings, TICK};
use crate::cpu::ServerProcesses;
use crate::spec::{LoadSpec, Target};
use crate::stats::Histogram;
use crate::stream::Stream;
use crate::tls::{self, Connector};

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
    pub(crate) fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    pub(crate) fn merge(&mut self, other: RoundResult) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latency.merge(&other.latency);
    }
}

/// Runs one round of `spec` against `target`, and measures the CPU time `server`
/// uses in the measured window.
///
/// Fails if a connection cannot be opened at the start; later failures are counted
/// as errors and the connection is reopened.
pub(crate) fn run_round(spec: &LoadSpec, target: &Target, server: &ServerProcesses) -> Result<RoundResult> {
    let threads = spec.thread_count();
    let tls = ClientSide::of(spec, target)?;
    // Every thread connects and allocates its buffers first, so that none of that
    // is measured and the threads start loading the server together; this thread
    // passes the barrier with them and reads the server's CPU time as the
    // measurement starts and ends.
    let ready = Barrier::new(threads + 1);
    let failed = AtomicBool::new(false);
    let (results, server_cpu) = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let conns = share(spec.connections, threads, i);
                let (ready, failed, tls) = (&ready, &failed, &tls);
                scope.spawn(move || {
                    let worker = Worker::new(spec, target.addr, tls.connector(i, threads), conns);
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

/// How many of `connections` thread `i` of `threads` opens.
pub(crate) fn share(connections: usize, threads: usize, i: usize) -> usize {
    connections / threads + usize::from(i < connections % threads)
}

/// What a round's threads need to start TLS sessions to a target: one configuration
/// for the round, so that resumption starts afresh with every round and target.
pub(crate) struct ClientSide<'a> {
    target: &'a Target,
    config: Option<Arc<ClientConfig>>,
}

impl<'a> ClientSide<'a> {
    /// The client side of `spec` against `target`: TLS if the target says so.
    pub(crate) fn of(spec: &LoadSpec, target: &'a Target) -> Result<Self> {
        let config = target.tls.then(|| tls::client_config(spec.tls_version, spec.resume)).transpose()?;
        Ok(ClientSide { target, config })
    }

    /// The session starter of thread `i` of `threads`, for a TLS target.
    pub(crate) fn connector(&self, i: usize, threads: usize) -> Option<Connector> {
        let config = self.config.as_ref()?;
        let names = self.target.server_names.clone();
        Some(Connector::new(Arc::clone(config), names, self.target.addr.ip(), i, threads))
    }
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

/// One client thread: an event loop over some of the round's connections.
struct Worker<'a> {
    spec: &'a LoadSpec,
    addr: SocketAddr,
    tls: Option<Connector>,
    poll: Poll,
    conns: Vec<Conn>,
}

impl<'a> Worker<'a> {
    /// Opens `conns` connections to `addr` (with TLS sessions from `tls`, if given),
    /// ready to go.
    fn new(spec: &'a LoadSpec, addr: SocketAddr, tls: Option<Connector>, conns: usize) -> Result<Self> {
        let poll = Poll::new().context("cannot create a poll instance")?;
        let conns = (0..conns)
            .map(|i| {
                let mut socket = connect(addr, spec.timeout).with_context(|| format!("cannot connect to {addr}"))?;
                poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
                Ok(Conn::new(Token(i), Stream::new(socket, tls.as_ref())?, spec))
            })
            .collect::<Result<_>>()?;
        Ok(Worker { spec, addr, tls, poll, conns })
    }

    fn run(mut self) -> Result<RoundResult> {
        let now = Instant::now();
        let settings = Settings {
            mode: self.spec.mode,
            size: self.spec.size,
            pipeline: self.spec.pipeline,
            reconnect: self.spec.reconnect,
            hold: false,
            silent: false,
            addr: self.addr,
            tls: self.tls.take(),
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
