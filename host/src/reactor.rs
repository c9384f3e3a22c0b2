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
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustc_hash::FxHashMap;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, error, info, warn};

use crate::connection::{Connection, Phase, WriteSide};
use crate::descriptors::Reserve;
use crate::handler::{ConnId, Event, Fault, Handler, HandlerFactory, HostError, SendEvents};
use crate::listener::{InstanceMode, Limit, ListenerSpec};
use crate::throttle::Throttle;
use crate::timer::{Alarm, Due, Timers};

mod accept;
mod command;
mod scope;
mod stats;

pub(crate) use command::{Command, Commands, Swapped};
use scope::Scope;
pub use stats::{Counts, GuestTime, Stats};

/// Most bytes read from one socket per service, so one flooding peer cannot starve
/// the others.
const READ_BUDGET: usize = 256 * 1024;

/// Rounds of the service queue per loop turn. Handlers that keep feeding each other
/// (a SEND that sends to another connection whose SEND sends back) are cut off here
/// and continue next turn, after the other sockets had their say.
const SERVICE_ROUNDS: usize = 8;

/// Stale timer entries tolerated before the queue is compacted.
const TIMER_SLACK: usize = 1024;

const WAKER: Token = Token(usize::MAX);

/// Listeners take tokens from the top of the range, below the waker; connections
/// use their slab keys from the bottom.
fn listener_token(index: usize) -> Token {
    Token(usize::MAX - 1 - index)
}

/// The listener a token names, if it names one of `count` listeners.
fn listener_index(token: Token, count: usize) -> Option<usize> {
    let index = (usize::MAX - 1).checked_sub(token.0)?;
    (index < count).then_some(index)
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
#[derive(Debug, Clone)]
pub struct Binding {
    /// The address to bind (port 0: any free port).
    pub address: SocketAddr,
    /// Other workers bind the same address (`SO_REUSEPORT`): the kernel spreads
    /// connections over them.
    pub shared_port: bool,
    /// The listener's connection slots, shared with those workers.
    pub slots: Slots,
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
}

/// A listener's rules and books: what handlers' host calls are checked against.
struct Account {
    spec: ListenerSpec,
    /// Connections open now, accepted and dialed (lingering ones included), on every
    /// worker that serves the listener.
    open: Slots,
    counts: Counts,
    /// The rate limit on lines about its connections.
    throttle: Throttle,
}

impl Account {
    /// Whether a line about one of this listener's connections may be logged now;
    /// if not, it is counted as suppressed.
    fn may_log(&mut self) -> bool {
        let admitted = self.throttle.admit(Instant::now());
        if !admitted {
            self.counts.suppressed += 1;
        }
        admitted
    }
}

/// One handler instance and the connections it may name.
struct Instance {
    listener: usize,
    /// The version of the listener's plugin it runs.
    version: u64,
    /// A newer version took over: the connections still here are closed at this time
    /// (`drain-timeout-ms`).
    drain_at: Option<Instant>,
    /// Lent out while it handles an event.
    handler: Option<Box<dyn Handler>>,
    /// Its connections' keys by the ids it knows them by. Fx, not SipHash: the ids
    /// are the host's own sequence numbers, so nobody can pick colliding ones, and
    /// every host call looks one up.
    conns: FxHashMap<ConnId, usize>,
    /// When the handler gets SEND events.
    send_events: SendEvents,
}

/// What handlers may see and change: the part of the reactor lent to a [`Host`].
struct Core {
    registry: Registry,
    conns: Slab<Connection>,
    instances: Slab<Instance>,
    accounts: Vec<Account>,
    timers: Timers,
    /// Handler timers armed across all connections. With one idle check per
    /// connection, the live entries of `timers`; the rest are stale.
    armed: usize,
    /// Connections that need a service: I/O to do, a close to carry out.
    queue: Vec<usize>,
    next_id: u64,
    /// Ids go up by this much, so that workers never hand out the same id.
    id_step: u64,
    /// The reactor is closing every connection to stop: no new one may be dialed.
    stopping: bool,
    /// The clock as last read: when the poll returned, or the last event ended. Good
    /// enough to stamp activity with, and a reading fewer per read and per write.
    now: Instant,
}

impl Core {
    fn enqueue(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.queued
        {
            conn.queued = true;
            self.queue.push(key);
        }
    }

    fn disarm_all(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        self.armed -= conn.timers.len();
        conn.timers.clear();
    }

    /// Count and log a limit hit by `key`, once per connection and limit.
    fn hit(&mut self, key: usize, limit: Limit) {
        let conn = &mut self.conns[key];
        if !conn.first_hit(limit) {
            return;
        }
        // A connection no handler serves any more (lingering) has no version.
        let version = conn.attached.then(|| self.instances.get(conn.instance).map(|i| i.version)).flatten();
        let account = &mut self.accounts[conn.listener];
        account.counts.limit_hits[limit.index()] += 1;
        if account.may_log() {
            warn!(
                listener = %account.spec.name,
                conn = %conn.id,
                peer = %conn.peer,
                version,
                limit = %limit.key(),
                "limit hit: {}",
                limit.outcome()
            );
        }
    }

    /// Take `stream` into the reactor as a connection of `instance`, watched for
    /// readiness and for idleness.
    fn register(
        &mut self,
        instance: usize,
        mut stream: TcpStream,
        peer: SocketAddr,
        dialing: bool,
    ) -> io::Result<(usize, ConnId)> {
        let listener = self.instances[instance].listener;
        let account = &mut self.accounts[listener];
        // Small writes (a prompt, a chat line) should leave at once, not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(listener = %account.spec.name, %peer, "cannot disable Nagle: {err}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // A dial's outcome shows as writability.
        let interest = if dialing { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        self.registry.register(&mut stream, Token(key), interest)?;
        let id = ConnId(self.next_id);
        self.next_id += self.id_step;
        let limits = &account.spec.limits;
        let mut conn = Connection::new(id, (listener, instance), stream, peer, limits, dialing);
        conn.idle_arming = self.timers.arm(conn.last_active + limits.idle_timeout, key, id, Alarm::Idle);
        entry.insert(conn);
        self.instances[instance].conns.insert(id, key);
        Ok((key, id))
    }

    /// Whether `due` is still the current arming of a live connection's alarm (not
    /// cancelled, re-armed, or left behind by a closed connection).
    fn is_armed(&self, due: &Due) -> bool {
        let Some(conn) = self.conns.get(due.key).filter(|c| c.id == due.conn) else { return false };
        match due.alarm {
            Alarm::Handler(timer) => conn.timers.get(&timer) == Some(&due.arming),
            Alarm::Idle => conn.idle_arming == due.arming,
        }
    }

    /// Drop stale timer entries once they outnumber the live ones.
    fn compact_timers(&mut self) {
        let live = self.armed + self.conns.len();
        if self.timers.len() > 2 * live + TIMER_SLACK {
            let mut timers = std::mem::take(&mut self.timers);
            timers.compact(|due| self.is_armed(due));
            self.timers = timers;
        }
    }
}

/// The event loop of one worker. Single-threaded: it owns its sockets, buffers and
/// handlers.
pub struct Reactor {
    /// Which worker of its server this is.
    index: usize,
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
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
                now: Instant::now(),
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

    /// Listen on `spec.address`; `factory` makes the handlers of its connections
    /// (when they are needed: the first connection, or each one, per
    /// `spec.instance`). Returns the bound address (useful with port 0).
    pub fn listen(&mut self, spec: &ListenerSpec, factory: Box<dyn HandlerFactory>) -> io::Result<SocketAddr> {
        let binding = Binding { address: spec.address, shared_port: false, slots: Slots::default() };
        self.listen_as(spec, binding, factory)
    }

    /// [`Reactor::listen`] as one of the workers that serve a listener.
    pub fn listen_as(
        &mut self,
        spec: &ListenerSpec,
        binding: Binding,
        factory: Box<dyn HandlerFactory>,
    ) -> io::Result<SocketAddr> {
        let index = self.listeners.len();
        let mut socket = bind(binding.address, binding.shared_port)?;
        let address = socket.local_addr()?;
        self.poll.registry().register(&mut socket, listener_token(index), Interest::READABLE)?;
        info!(listener = %spec.name, %address, worker = self.index, "listening");
        self.listeners.push(Listener {
            socket: Some(socket),
            address,
            next_poll: spec.poll_interval.map(|every| Instant::now() + every),
            factory,
            version: 1,
            retired: false,
            shared: None,
            retry_at: None,
        });
        self.core.accounts.push(Account {
            spec: spec.clone(),
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
        self.obey();
        let mut ready_listeners = Vec::new();
        for event in self.events.iter() {
            match event.token() {
                WAKER => {}
                token if let Some(index) = listener_index(token, self.listeners.len()) => {
                    ready_listeners.push(index);
                }
                Token(key) => {
                    let Some(conn) = self.core.conns.get_mut(key) else { continue };
                    let trouble = event.is_error();
                    conn.readable |= event.is_readable() || event.is_read_closed() || trouble;
                    conn.read_closed |= event.is_read_closed() || trouble;
                    conn.writable |= event.is_writable() || event.is_write_closed() || trouble;
                    self.core.enqueue(key);
                }
            }
        }
        for index in ready_listeners {
            self.accept(index);
        }
        self.service_queue();
        let now = Instant::now();
        self.core.now = now;
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
    /// the next timer, POLL tick, accept retry or report of suppressed lines.
    fn timeout(&self) -> Option<Duration> {
        if !self.core.queue.is_empty() {
            return Some(Duration::ZERO);
        }
        let polls = self.listeners.iter().filter_map(|l| l.next_poll);
        let retries = self.listeners.iter().filter_map(|l| l.retry_at);
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
            .chain(self.closing_at)
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

    /// Service queued connections, in rounds; connections queued during a round are
    /// served in the next one.
    fn service_queue(&mut self) {
        for _ in 0..SERVICE_ROUNDS {
            if self.core.queue.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.core.queue);
            for key in batch.drain(..) {
                if let Some(conn) = self.core.conns.get_mut(key) {
                    conn.queued = false;
                    self.service(key);
                }
            }
            if self.core.queue.is_empty() {
                // Keep the allocation for the next turn.
                self.core.queue = batch;
            }
        }
    }

    /// Do what a connection is ready for: finish a dial, write, shut down our
    /// sending side, read, then close if due.
    fn service(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        if conn.connecting && conn.phase != Phase::Closing {
            if !(conn.writable || conn.readable) {
                return;
            }
            match dial_outcome(&conn.socket) {
                Ok(true) => {
                    conn.connecting = false;
                    self.dispatch(key, Event::Connect(Ok(())));
                }
                Ok(false) => {
                    // Spurious readiness: the dial goes on.
                    (conn.readable, conn.writable) = (false, false);
                    return;
                }
                Err(err) => return self.close(key, Some(err)),
            }
        }
        let conn = &mut self.core.conns[key];
        if conn.phase != Phase::Closing && conn.writable && !conn.tx.is_empty() {
            match conn.write_out(self.core.now) {
                Ok(0) => {}
                Ok(n) => {
                    self.core.accounts[conn.listener].counts.bytes_out += n as u64;
                    let waited = std::mem::take(&mut conn.awaits_room);
                    // An orphan's instance is gone (its key may name another by now).
                    let wanted = conn.delivers_events()
                        && (waited || self.core.instances[conn.instance].send_events == SendEvents::EveryWrite);
                    if wanted {
                        self.dispatch(key, Event::Send(n as u32));
                    }
                }
                Err(err) => return self.close(key, Some(err)),
            }
        }
        let conn = &mut self.core.conns[key];
        if conn.write_side == WriteSide::ShutAfterSend && conn.tx.is_empty() && conn.phase == Phase::Open {
            if let Err(err) = conn.socket.shutdown(Shutdown::Write) {
                return self.close(key, Some(err));
            }
            conn.write_side = WriteSide::Shut;
        }
        if conn.can_read() {
            match conn.read_in(READ_BUDGET, self.core.now) {
                Ok(n) => {
                    let (full, eof) = (conn.rx.room() == 0, conn.peer_closed);
                    self.core.accounts[conn.listener].counts.bytes_in += n as u64;
                    if n > 0 {
                        self.dispatch(key, Event::Recv(n as u32));
                    }
                    if full {
                        self.core.hit(key, Limit::RecvBuffer);
                    }
                    if eof {
                        self.dispatch(key, Event::Recv(0));
                    }
                }
                Err(err) => return self.close(key, Some(err)),
            }
        } else if conn.can_discard() {
            match conn.discard_in(READ_BUDGET) {
                Ok(()) if conn.peer_closed => return self.close(key, None),
                Ok(()) => {}
                Err(err) => return self.close(key, Some(err)),
            }
        }
        let conn = &mut self.core.conns[key];
        match conn.phase {
            Phase::Closing => return self.close(key, None),
            // A peer that already sent EOF left nothing unread: no need to linger.
            Phase::Draining if conn.tx.is_empty() && conn.peer_closed => return self.close(key, None),
            Phase::Draining if conn.tx.is_empty() => return self.linger(key),
            Phase::Open if conn.is_spent() => return self.close(key, None),
            _ => {}
        }
        update_interest(self.poll.registry(), conn, key);
        if conn.has_io_pending() {
            self.core.enqueue(key);
        }
    }

    /// Forget a connection: deliver its CLOSE (if its handler still serves it; a
    /// dial that never finished gets its failed CONNECT first) and drop the socket.
    fn close(&mut self, key: usize, error: Option<io::Error>) {
        let conn = &mut self.core.conns[key];
        if conn.connecting {
            conn.connecting = false;
            let why = match &error {
                Some(err) => HostError::Failed(err.to_string()),
                None => HostError::Closed,
            };
            self.dispatch(key, Event::Connect(Err(why)));
        }
        let conn = &mut self.core.conns[key];
        if let Err(err) = self.core.registry.deregister(&mut conn.socket) {
            debug!(conn = %conn.id, "deregister failed: {err}");
        }
        conn.phase = Phase::Closing;
        let listener = conn.listener;
        let why = error.map(|err| format!(" on error: {err}")).unwrap_or_default();
        debug!(listener = %self.core.accounts[listener].spec.name, conn = %conn.id, peer = %conn.peer, "closed{why}");
        self.detach(key);
        self.core.conns.remove(key);
        let account = &mut self.core.accounts[listener];
        account.open.give_back();
        account.counts.closed += 1;
        self.freed = true;
    }

    /// A drained connection whose peer may still be sending: shut our write side (the
    /// peer reads EOF after the last byte), hand the connection back from its handler
    /// (CLOSE), and read and discard until the peer's EOF, an error or `linger-ms`.
    /// It keeps its place in `max-connections` until it is really closed.
    fn linger(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        if conn.write_side != WriteSide::Shut {
            if let Err(err) = conn.socket.shutdown(Shutdown::Write) {
                return self.close(key, Some(err));
            }
            conn.write_side = WriteSide::Shut;
        }
        conn.phase = Phase::Lingering;
        let linger = self.core.accounts[conn.listener].spec.limits.linger;
        conn.idle_arming = self.core.timers.arm(Instant::now() + linger, key, conn.id, Alarm::Idle);
        debug!(listener = %self.core.accounts[conn.listener].spec.name, conn = %conn.id, peer = %conn.peer, "lingering");
        self.detach(key);
        let conn = &mut self.core.conns[key];
        conn.rx.clear();
        update_interest(self.poll.registry(), conn, key);
        self.core.enqueue(key);
    }

    /// The handler is done with a connection: deliver its CLOSE (if the handler still
    /// serves it) and take it out of its instance's table, dropping a per-connection
    /// instance left with nothing to serve.
    fn detach(&mut self, key: usize) {
        self.core.disarm_all(key);
        self.dispatch(key, Event::Close);
        let conn = &self.core.conns[key];
        let (instance, id) = (conn.instance, conn.id);
        if let Some(i) = self.core.instances.get_mut(instance)
            && i.conns.remove(&id).is_some()
        {
            self.release_if_idle(instance);
        }
    }

    /// Call the handler serving a connection with one of its events, if the
    /// connection's phase lets that event through.
    fn dispatch(&mut self, key: usize, event: Event) {
        let conn = &mut self.core.conns[key];
        let deliver = match event {
            Event::Close => conn.attached,
            _ => conn.delivers_events(),
        };
        if !deliver {
            return;
        }
        if event == Event::Close {
            conn.attached = false;
        }
        let (instance, id, listener) = (conn.instance, conn.id, conn.listener);
        let kind = event.kind();
        let mut handler = self.core.instances[instance].handler.take().expect("handlers are never re-entered");
        let started = Instant::now();
        let result = handler.handle(&mut Scope { core: &mut self.core, instance, current: key }, id, event);
        self.core.now = Instant::now();
        let counts = &mut self.core.accounts[listener].counts;
        counts.guest_time.record(self.core.now - started);
        counts.events[kind] += 1;
        self.core.instances[instance].handler = Some(handler);
        if let Err(fault) = result {
            self.fault(instance, key, fault);
        }
    }

    /// The handler `instance` died while handling `key`: drop it, close that
    /// connection at once and every other one it held after its send buffer drains.
    /// Their state died with the handler, so they get no CLOSE.
    fn fault(&mut self, instance: usize, key: usize, fault: Fault) {
        let Instance { listener, conns, version, .. } = self.core.instances.remove(instance);
        if self.listeners[listener].shared == Some(instance) {
            self.listeners[listener].shared = None;
        }
        if let Some(faults) = &self.faults {
            let _ = faults.send(FaultNotice { listener: self.core.accounts[listener].spec.name.clone(), version });
        }
        if let Some(limit) = fault.limit {
            self.core.hit(key, limit);
            self.core.accounts[listener].counts.fault_limits[limit.index()] += 1;
        }
        let account = &mut self.core.accounts[listener];
        account.counts.faults += 1;
        account.counts.orphaned += conns.len() as u64;
        if account.may_log() {
            error!(
                listener = %account.spec.name,
                conn = %self.core.conns[key].id,
                version,
                orphaned = conns.len(),
                "handler failed: {fault}; the {} connection(s) it held are closed, new connections get a fresh instance",
                conns.len()
            );
        }
        for k in conns.into_values() {
            let conn = &mut self.core.conns[k];
            conn.attached = false;
            if conn.phase != Phase::Closing {
                conn.phase = if k == key { Phase::Closing } else { Phase::Draining };
            }
            self.core.disarm_all(k);
            self.core.enqueue(k);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(due) = self.core.timers.pop_due(now) {
            if !self.core.is_armed(&due) {
                continue;
            }
            let conn = &mut self.core.conns[due.key];
            match due.alarm {
                Alarm::Handler(timer) => {
                    conn.timers.remove(&timer);
                    self.core.armed -= 1;
                    self.dispatch(due.key, Event::Timer(timer));
                }
                Alarm::Idle if conn.phase == Phase::Lingering => {
                    self.core.hit(due.key, Limit::Linger);
                    self.close(due.key, None);
                }
                Alarm::Idle => {
                    let idle_timeout = self.core.accounts[conn.listener].spec.limits.idle_timeout;
                    let deadline = conn.last_active + idle_timeout;
                    if deadline <= now {
                        self.core.hit(due.key, Limit::IdleTimeout);
                        self.close(due.key, None);
                    } else {
                        conn.idle_arming = self.core.timers.arm(deadline, due.key, due.conn, Alarm::Idle);
                    }
                }
            }
        }
    }

    fn fire_polls(&mut self, now: Instant) {
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            if listener.retired {
                continue;
            }
            let every = self.core.accounts[index].spec.poll_interval;
            let (Some(at), Some(every)) = (listener.next_poll, every) else { continue };
            if at > now {
                continue;
            }
            listener.next_poll = Some(now + every);
            let instances = self.core.instances.iter().filter(|(_, i)| i.listener == index);
            let mut keys: Vec<(ConnId, usize)> =
                instances.flat_map(|(_, i)| i.conns.iter().map(|(id, k)| (*id, *k))).collect();
            keys.sort_unstable();
            // Handlers only mark connections for closing; none leaves the slab here.
            for (_, key) in keys {
                self.dispatch(key, Event::Poll);
            }
        }
    }

    /// Stop accepting, flush what can be flushed without waiting, close every
    /// connection with its CLOSE event, and return what happened.
    fn shut_down(&mut self) -> Stats {
        self.stop_accepting();
        let open = self.core.conns.len();
        // A handler that dials while it handles its CLOSE is refused from here on (one
        // that dialed on every CLOSE would never let go), so every connection there is
        // gets its CLOSE and none is left behind.
        self.core.stopping = true;
        while let Some(key) = self.core.conns.iter().map(|(key, _)| key).next() {
            let conn = &mut self.core.conns[key];
            if conn.phase != Phase::Closing && !conn.connecting {
                let _ = conn.write_out(self.core.now);
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
        stats
    }
}

/// How a dial ended, once its socket reported readiness: connected (true), still
/// going (false, a spurious wake-up), or the error that ended it.
fn dial_outcome(socket: &TcpStream) -> io::Result<bool> {
    if let Some(err) = socket.take_error()? {
        return Err(err);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(err) => Err(err),
    }
}

/// Register for WRITABLE only while there is something to write and the socket last
/// said it would block.
fn update_interest(registry: &Registry, conn: &mut Connection, key: usize) {
    let want = conn.connecting || (!conn.tx.is_empty() && !conn.writable);
    if want == conn.write_interest {
        return;
    }
    let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
    match registry.reregister(&mut conn.socket, Token(key), interest) {
        Ok(()) => conn.write_interest = want,
        Err(err) => warn!(conn = %conn.id, "cannot change readiness interest: {err}"),
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
