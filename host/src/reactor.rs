//! The event loop: accept, dial, read, write, timers, POLL ticks, limits, and event
//! dispatch.
//!
//! The [`Reactor`] owns every listener socket, every connection, every buffer and
//! every handler instance. It reads into a connection's receive buffer, calls the
//! [`Handler`] instance serving it, and writes out whatever the handler appended to
//! send buffers. Handlers act only through [`Host`], which records intentions; the
//! loop carries them out after the handler returns. So the reactor never calls a
//! handler from inside a handler, and never blocks: a full receive buffer pauses
//! reading that one socket, a full send buffer refuses the handler's `send`.
//!
//! Instances are the unit of fate. Each listener's [`HandlerFactory`] makes one
//! instance shared by all its connections, or one per accepted connection
//! ([`InstanceMode`]); a handler can name only its own instance's connections, and
//! when it faults exactly those are closed. Every limit hit is logged once per
//! connection and counted per listener ([`Stats`]); the lines about a listener's
//! connections (refusals, limit hits, faults) are rate-limited per listener, the counts
//! are not.
//!
//! `close(after-send)` lingers: once the send buffer is out, the write side is shut,
//! the handler gets its CLOSE, and what the peer still sends is read and discarded until
//! its EOF or `linger-ms`, so unread input cannot turn the close into a reset. When
//! accept runs out of descriptors, a spare one is given up to accept the waiting
//! connection and close it at once, and a listener whose accept failed otherwise is
//! retried when a connection closes or after 100 ms (see `reactor/accept.rs`).
//!
//! This file holds the loop itself (a turn: wait, take readiness in, accept, serve,
//! fire what the clock brings) and the listeners; each other concept has its own file
//! under `reactor/`: `state` (what handlers may see and change), `connection` (one
//! connection's state and its reads and writes), `service` (the steps of serving a
//! connection, and how it leaves), `deliver` (events to handlers, faults, timers and
//! POLL ticks), `scope` (the `Host` a handler gets), `accept`, `command` (what other
//! threads ask between turns), `migration` (moving instances to new ones, all or
//! nothing), `recycle` (replacing worn instances), `timer` (the deadline queue), `descriptors` (the
//! descriptor limit and the spare) and `stats`. The reactor imports nothing above it:
//! no config, control, server or plugin.
//!
//! [`Handler`]: crate::handler::Handler
//! [`Host`]: crate::handler::Host
//!
//! ```no_run
//! use sandport::listener::ListenerSpec;
//! use sandport::handler::{ConnId, Event, Fault, Handler, Host};
//! use sandport::reactor::Reactor;
//!
//! struct Greeter;
//! impl Handler for Greeter {
//!     fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
//!         if let Event::Accept(_) = event {
//!             let _ = host.send(conn, b"hello\n");
//!             let _ = host.close(conn, sandport::handler::CloseMode::AfterSend);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut reactor = Reactor::new()?;
//! let spec = ListenerSpec::new("greeter", "127.0.0.1:7000".parse()?);
//! let address = reactor.listen(&spec, Box::new(|| Ok(Box::new(Greeter) as Box<dyn Handler>)))?;
//! println!("greeting on {address}");
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::handler::HandlerFactory;
use crate::listener::{InstanceMode, ListenerSpec};
use crate::mbuf::Pool;
use crate::throttle::Throttle;

mod accept;
mod command;
mod connection;
mod deliver;
pub(crate) mod descriptors;
mod greeting;
mod migration;
mod recycle;
mod scope;
mod service;
mod site;
mod state;
mod stats;
mod timer;
mod transport;

use connection::Dial;
use descriptors::Reserve;
use state::{Account, Core};
use timer::Timers;

pub(crate) use command::{Command, Commands, Swapped, Tallies};
use scope::Scope;
pub use site::{Handling, SharedSite, Site, Target};
pub use stats::{Counts, GateCounts, GuestTime, Refusal, Stats};

const WAKER: Token = Token(usize::MAX);

/// Listeners take tokens from the top of the range, below the waker, and ports below
/// them; greetings use theirs from [`GREETING_BASE`] up, connections their slab keys
/// from the bottom.
fn listener_token(index: usize) -> Token {
    Token(usize::MAX - 1 - index)
}

/// Ports' tokens start this far below the listeners'.
const PORT_TOKENS: usize = 1 << 24;

fn port_token(index: usize) -> Token {
    Token(usize::MAX - 1 - PORT_TOKENS - index)
}

/// A greeting's token is its slab key plus this.
const GREETING_BASE: usize = usize::MAX / 4;

/// The listener a token names, if it names one of `count` listeners.
fn listener_index(token: Token, count: usize) -> Option<usize> {
    let index = (usize::MAX - 1).checked_sub(token.0)?;
    (index < count).then_some(index)
}

/// The port a token names, if it names one of `count` ports.
fn port_index(token: Token, count: usize) -> Option<usize> {
    let index = (usize::MAX - 1 - PORT_TOKENS).checked_sub(token.0)?;
    (index < count).then_some(index)
}

/// The greeting a token names, if it names one.
fn greeting_key(token: Token) -> Option<usize> {
    token.0.checked_sub(GREETING_BASE).filter(|key| *key < PORT_TOKENS)
}

/// Stops running [`Reactor`]s from another thread (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct StopHandle {
    reactors: Vec<(Arc<AtomicBool>, Arc<Waker>)>,
}

impl StopHandle {
    /// Ask the reactors to stop: each stops accepting, delivers CLOSE to every
    /// connection, and returns from [`Reactor::run`].
    pub fn stop(&self) {
        for (flag, waker) in &self.reactors {
            flag.store(true, Ordering::SeqCst);
            if let Err(err) = waker.wake() {
                warn!("cannot wake an event loop to stop it: {err}");
            }
        }
    }

    /// One handle that stops the reactors of both.
    pub fn and(mut self, other: StopHandle) -> StopHandle {
        self.reactors.extend(other.reactors);
        self
    }
}

/// A listener's connection slots (`max-connections`), shared by the workers that serve
/// it. Taken when a connection is accepted or dialed, given back when it is really
/// closed; never on the path of a message.
#[derive(Debug, Clone, Default)]
pub struct Slots(Arc<AtomicUsize>);

impl Slots {
    /// Take a slot if fewer than `max` are taken.
    fn take(&self, max: usize) -> bool {
        if self.0.fetch_add(1, Ordering::AcqRel) < max {
            return true;
        }
        self.0.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn give_back(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Slots taken now: the listener's open connections.
    pub fn taken(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Where and how a reactor listens for one listener.
#[derive(Clone)]
pub struct Binding {
    /// The address to bind (port 0: any free port).
    pub address: SocketAddr,
    /// Other workers bind the same address (`SO_REUSEPORT`): the kernel spreads
    /// connections over them.
    pub shared_port: bool,
    /// The address is a port with a [`Site`] (opened beforehand with
    /// [`Reactor::open_port`]) that routes connections to the listener: bind nothing.
    pub routed: bool,
    /// The upstreams the listener's handlers dial over TLS, ready.
    pub upstreams: Vec<(SocketAddr, crate::tls::ClientTls)>,
    /// The listener's connection slots, shared with those workers.
    pub slots: Slots,
}

impl Binding {
    /// One worker's own socket on `address`, with slots of its own and no TLS
    /// upstreams.
    pub fn new(address: SocketAddr) -> Binding {
        Binding { address, shared_port: false, routed: false, upstreams: Vec::new(), slots: Slots::default() }
    }
}

/// A listening socket and where its handlers come from.
struct Listener {
    socket: Option<TcpListener>,
    address: SocketAddr,
    next_poll: Option<Instant>,
    /// Makes the instances of new connections: the current version's. A swap
    /// replaces it (see `reactor/command.rs`).
    factory: Box<dyn HandlerFactory>,
    /// The current version's number.
    version: u64,
    /// Taken out of the config by a reload: no socket, no new connections; its old
    /// connections finish or drain.
    retired: bool,
    /// The instance serving every connection (shared and per-worker modes) of the
    /// current version, once started.
    shared: Option<usize>,
    /// Accept failed in a way readiness will not report again: try again at this
    /// time, or as soon as a connection closes.
    retry_at: Option<Instant>,
    /// Its TLS handshakes in flight on this worker (`max-handshakes`).
    handshakes: usize,
}

/// A listening socket whose connections are routed by a [`Site`]: read for a PROXY
/// header and a ClientHello before a listener takes them.
struct Port {
    socket: Option<TcpListener>,
    address: SocketAddr,
    site: SharedSite,
    /// As for a listener's: when to try accepting again.
    retry_at: Option<Instant>,
    /// Its connections still greeting on this worker.
    greetings: usize,
    counts: GateCounts,
    /// The rate limit on lines about its refusals.
    throttle: Throttle,
}

/// The event loop of one worker. Single-threaded: it owns its sockets, buffers and
/// handlers.
pub struct Reactor {
    /// Which worker of its server this is.
    index: usize,
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    /// Addresses that route; a port stays while the config has listeners there.
    ports: Vec<Port>,
    greetings: Slab<greeting::Greeting>,
    /// Greetings with something to do, served a few per turn.
    greeting_queue: Vec<usize>,
    /// Greetings' deadlines: when, which, and its serial.
    greeting_deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize, u64)>>,
    next_greeting: u64,
    /// Where to hand a connection whose listener lives on another worker.
    peers: Vec<Commands>,
    core: Core,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// The descriptor given up when accept finds none left.
    reserve: Reserve,
    /// A connection closed (a descriptor freed) since listeners waiting to retry
    /// their accept were last looked at.
    freed: bool,
    /// Swaps, snapshots and listener changes from the control surface.
    commands: std::sync::mpsc::Receiver<Command>,
    commander: std::sync::mpsc::Sender<Command>,
    /// Where faults are reported, for rolling back a version that faults too often.
    faults: Option<std::sync::mpsc::Sender<FaultNotice>>,
    /// After a stop, how long open connections may go on (`shutdown-grace-ms`).
    grace: Duration,
    /// Stopping: open connections are closed at this time (the grace is over).
    closing_at: Option<Instant>,
    /// The instances with a drain deadline (`Instance::drain_at`), so that a turn
    /// looks at these few rather than at every instance.
    draining: Vec<usize>,
    /// The thread that makes fresh instances for worn ones (see `recycle`).
    maker: recycle::Maker,
}

/// A handler instance of a listener faulted: what the control surface hears, to roll
/// back a new version that faults too often.
#[derive(Debug, Clone)]
pub struct FaultNotice {
    /// The listener.
    pub listener: String,
    /// The version the faulting instance ran.
    pub version: u64,
}

impl Reactor {
    /// A reactor with no listeners yet, the only one of its server.
    pub fn new() -> io::Result<Reactor> {
        Reactor::worker(0, 1)
    }

    /// Worker `index` of `workers`: the same, with connection ids of its own.
    pub fn worker(index: usize, workers: usize) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let registry = poll.registry().try_clone()?;
        let (commander, commands) = std::sync::mpsc::channel();
        Ok(Reactor {
            index,
            poll,
            events: Events::with_capacity(1024),
            listeners: Vec::new(),
            ports: Vec::new(),
            greetings: Slab::new(),
            greeting_queue: Vec::new(),
            greeting_deadlines: std::collections::BinaryHeap::new(),
            next_greeting: 0,
            peers: Vec::new(),
            core: Core {
                registry,
                conns: Slab::new(),
                instances: Slab::new(),
                accounts: Vec::new(),
                timers: Timers::default(),
                armed: 0,
                queue: Vec::new(),
                next_id: index as u64 + 1,
                id_step: workers as u64,
                stopping: false,
                timers_held: false,
                now: Instant::now(),
                buffers: Pool::default(),
                next_serial: 0,
            },
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            reserve: Reserve::new(),
            freed: false,
            commands,
            commander,
            faults: None,
            grace: Duration::ZERO,
            closing_at: None,
            draining: Vec::new(),
            maker: recycle::Maker::default(),
        })
    }

    /// After a stop, let open connections go on for up to `grace` (no new ones are
    /// accepted) before they are closed.
    pub fn set_shutdown_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Report every handler fault to `faults`.
    pub fn report_faults(&mut self, faults: std::sync::mpsc::Sender<FaultNotice>) {
        self.faults = Some(faults);
    }

    /// Where to send this worker commands from other threads.
    pub(crate) fn commands(&self) -> Commands {
        Commands::new(self.commander.clone(), self.waker.clone())
    }

    /// The workers of this one's server, by index: a routed connection whose listener
    /// lives on another is handed to it.
    pub(crate) fn set_peers(&mut self, peers: Vec<Commands>) {
        self.peers = peers;
    }

    /// Listen on `address` (port 0: any free one) for connections that `site` routes.
    /// Returns the bound address.
    pub fn open_port(&mut self, site: SharedSite, address: SocketAddr, shared_port: bool) -> io::Result<SocketAddr> {
        let index = self.ports.len();
        let mut socket = bind(address, shared_port)?;
        let address = socket.local_addr()?;
        self.poll.registry().register(&mut socket, port_token(index), Interest::READABLE)?;
        info!(%address, worker = self.index, "listening for routed connections");
        self.ports.push(Port {
            socket: Some(socket),
            address,
            site,
            retry_at: None,
            greetings: 0,
            counts: GateCounts::default(),
            throttle: Throttle::new(Instant::now()),
        });
        Ok(address)
    }

    /// Stop listening on the port at `address` (its last listener is gone). Greetings
    /// under way go on to their routes.
    pub(crate) fn close_port(&mut self, address: SocketAddr) {
        for port in self.ports.iter_mut().filter(|p| p.address == address) {
            if let Some(mut socket) = port.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
                info!(%address, worker = self.index, "stopped listening for routed connections");
            }
        }
    }

    /// Listen on `spec.address`; `factory` makes the handlers of its connections
    /// (when they are needed: the first connection, or each one, per
    /// `spec.instance`). Returns the bound address (useful with port 0).
    pub fn listen(&mut self, spec: &ListenerSpec, factory: Box<dyn HandlerFactory>) -> io::Result<SocketAddr> {
        self.listen_as(spec, Binding::new(spec.address), factory)
    }

    /// [`Reactor::listen`] as one of the workers that serve a listener.
    pub fn listen_as(
        &mut self,
        spec: &ListenerSpec,
        binding: Binding,
        factory: Box<dyn HandlerFactory>,
    ) -> io::Result<SocketAddr> {
        let index = self.listeners.len();
        let (socket, address) = if binding.routed {
            info!(listener = %spec.name, address = %binding.address, worker = self.index, "listening on an address that routes by server name");
            (None, binding.address)
        } else {
            let mut socket = bind(binding.address, binding.shared_port)?;
            let address = socket.local_addr()?;
            self.poll.registry().register(&mut socket, listener_token(index), Interest::READABLE)?;
            info!(listener = %spec.name, %address, worker = self.index, "listening");
            (Some(socket), address)
        };
        self.listeners.push(Listener {
            socket,
            address,
            next_poll: spec.poll_interval.map(|every| Instant::now() + every),
            factory,
            version: 1,
            retired: false,
            shared: None,
            retry_at: None,
            handshakes: 0,
        });
        self.core.accounts.push(Account {
            spec: spec.clone(),
            upstreams: binding.upstreams,
            open: binding.slots,
            counts: Counts::default(),
            throttle: Throttle::new(Instant::now()),
        });
        Ok(address)
    }

    /// The listeners' names and bound addresses, in the order they were added.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.core.accounts.iter().zip(&self.listeners).map(|(a, l)| (a.spec.name.clone(), l.address)).collect()
    }

    /// A handle that stops [`Reactor::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { reactors: vec![(self.stop.clone(), self.waker.clone())] }
    }

    /// Run until stopped; then stop accepting, let open connections go on for the
    /// shutdown grace, and close those left (each gets its CLOSE event).
    pub fn run(&mut self) -> io::Result<Stats> {
        loop {
            if self.stop.load(Ordering::SeqCst) && self.grace_over() {
                break;
            }
            self.turn()?;
        }
        Ok(self.shut_down())
    }

    /// Asked to stop: whether the connections' time is up (or none is left). The first
    /// time, stop accepting and start the grace.
    fn grace_over(&mut self) -> bool {
        let now = Instant::now();
        let at = match self.closing_at {
            Some(at) => at,
            None => {
                self.stop_accepting();
                let open = self.core.conns.len();
                if open > 0 && !self.grace.is_zero() {
                    info!(worker = self.index, open, grace = ?self.grace, "stopping: open connections may finish within the grace");
                }
                *self.closing_at.insert(now + self.grace)
            }
        };
        at <= now || self.core.conns.is_empty()
    }

    /// Close every listening socket.
    fn stop_accepting(&mut self) {
        for index in 0..self.listeners.len() {
            self.close_socket(index);
        }
        let addresses: Vec<SocketAddr> = self.ports.iter().map(|p| p.address).collect();
        for address in addresses {
            self.close_port(address);
        }
    }

    /// Close listener `index`'s listening socket, if it has one.
    fn close_socket(&mut self, index: usize) {
        if let Some(mut socket) = self.listeners[index].socket.take() {
            let _ = self.poll.registry().deregister(&mut socket);
        }
    }

    /// One loop iteration: wait for readiness or the next deadline, then do all the
    /// work that is ready.
    fn turn(&mut self) -> io::Result<()> {
        if !self.wait()? {
            return Ok(());
        }
        self.core.now = Instant::now();
        self.core.buffers.settle(self.core.now);
        self.obey();
        let mut ready_listeners = Vec::new();
        let mut ready_ports = Vec::new();
        let mut ready_greetings = Vec::new();
        for event in self.events.iter() {
            match event.token() {
                WAKER => {}
                token if let Some(index) = listener_index(token, self.listeners.len()) => {
                    ready_listeners.push(index);
                }
                token if let Some(index) = port_index(token, self.ports.len()) => ready_ports.push(index),
                token if let Some(key) = greeting_key(token) => ready_greetings.push(key),
                Token(key) => {
                    let Some(conn) = self.core.conns.get_mut(key) else { continue };
                    conn.on_readiness(event);
                    self.core.enqueue(key);
                }
            }
        }
        for index in ready_listeners {
            self.accept(index);
        }
        for key in ready_greetings {
            self.greeting_ready(key);
        }
        for port in ready_ports {
            self.accept_port(port);
        }
        self.serve_greetings();
        self.service_queue();
        let now = Instant::now();
        self.core.now = now;
        self.expire_greetings(now);
        self.fire_timers(now);
        self.fire_polls(now);
        self.fire_drains(now);
        self.retry_accepts(now);
        self.report_suppressed(now);
        self.service_queue();
        Ok(())
    }

    /// Wait for readiness or the next deadline; false if a signal cut the wait short.
    ///
    /// Finding nothing ready, a worker yields its CPU once and looks again before it
    /// sleeps. Under load the next bytes mostly arrive while another thread (the other
    /// worker, the peer) has the CPU, and a worker that never slept needs no wake-up,
    /// which costs the sender as much as the sleeper: with two workers under wrk this
    /// cut context switches fourfold and the CPU per request by a few percent (see
    /// BENCHMARKS.md). An idle worker pays one more look per sleep.
    fn wait(&mut self) -> io::Result<bool> {
        let timeout = self.timeout();
        if timeout != Some(Duration::ZERO) {
            if !self.poll_once(Some(Duration::ZERO))? {
                return Ok(false);
            }
            if !self.events.is_empty() {
                return Ok(true);
            }
            std::thread::yield_now();
        }
        self.poll_once(timeout)
    }

    /// One poll; false if a signal interrupted it.
    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// How long the next poll may sleep: not at all with work queued, otherwise until
    /// the next timer, POLL tick, accept retry, report of suppressed lines or the
    /// buffer pool's shrinking back to its idle bound.
    fn timeout(&self) -> Option<Duration> {
        if !self.core.queue.is_empty() || !self.greeting_queue.is_empty() {
            return Some(Duration::ZERO);
        }
        let polls = self.listeners.iter().filter_map(|l| l.next_poll);
        let retries =
            self.listeners.iter().filter_map(|l| l.retry_at).chain(self.ports.iter().filter_map(|p| p.retry_at));
        let reports = self.core.accounts.iter().filter_map(|a| a.throttle.next_report());
        let drains = self.draining.iter().filter_map(|&key| self.core.instances.get(key)?.drain_at);
        let next = self
            .core
            .timers
            .next_deadline()
            .into_iter()
            .chain(polls)
            .chain(retries)
            .chain(reports)
            .chain(drains)
            .chain(self.next_greeting_deadline())
            .chain(self.closing_at)
            .chain(self.core.buffers.next_settle())
            .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Log how many lines about each listener's connections the rate limit left out,
    /// where that report is due.
    fn report_suppressed(&mut self, now: Instant) {
        for account in &mut self.core.accounts {
            if let Some(n) = account.throttle.due_report(now) {
                warn!(listener = %account.spec.name, suppressed = n, "host lines about connections suppressed by the rate limit");
            }
        }
    }

    /// Drop an instance that no longer holds any connection, unless new connections
    /// will come to it (the current shared or per-worker one).
    fn release_if_idle(&mut self, instance: usize) {
        let Some(i) = self.core.instances.get(instance) else { return };
        let per_connection = self.core.accounts[i.listener].spec.instance == InstanceMode::PerConnection;
        let current = self.listeners[i.listener].shared == Some(instance);
        if i.conns.is_empty() && (per_connection || !current) {
            self.core.instances.remove(instance);
        }
    }

    /// Stop accepting, flush what can be flushed without waiting, close every
    /// connection with its CLOSE event, and return what happened.
    fn shut_down(&mut self) -> Stats {
        self.stop_accepting();
        self.drop_greetings();
        let open = self.core.conns.len();
        // A handler that dials while it handles its CLOSE is refused from here on (one
        // that dialed on every CLOSE would never let go), so every connection there is
        // gets its CLOSE and none is left behind.
        self.core.stopping = true;
        while let Some(key) = self.core.conns.iter().map(|(key, _)| key).next() {
            let conn = &mut self.core.conns[key];
            if !conn.phase.is_closing() && conn.dial == Dial::Over {
                let _ = conn.write_out(self.core.now, &mut self.core.buffers);
            }
            self.close(key, None);
        }
        let mut stats = Stats { open: open as u64, ..Stats::default() };
        for account in &mut self.core.accounts {
            if let Some(n) = account.throttle.flush() {
                warn!(listener = %account.spec.name, suppressed = n, "host lines about connections suppressed by the rate limit");
            }
            stats.push(&account.spec.name, &account.counts);
        }
        for port in &self.ports {
            stats.addresses.push((port.address, port.counts.clone()));
        }
        stats
    }
}

fn bind(address: SocketAddr, shared_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Only where workers share the port: otherwise a second server on the same port
    // would be told it is in use, not quietly handed half the connections.
    socket.set_reuse_port(shared_port)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}
