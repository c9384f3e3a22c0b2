//! The event loop: accept, read, write, timers, POLL ticks, and event dispatch.
//!
//! The [`Reactor`] owns every listener socket, every connection and every buffer. It
//! reads into a connection's receive buffer, calls the listener's [`Handler`], and
//! writes out whatever the handler appended to send buffers. Handlers act only
//! through [`Host`], which records intentions; the loop carries them out after the
//! handler returns. So the reactor never calls a handler from inside a handler, and
//! never blocks: a full receive buffer pauses reading that one socket, a full send
//! buffer refuses the handler's `send`.
//!
//! ```no_run
//! use sandport::config::ListenerSpec;
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
//! let address = reactor.listen(&ListenerSpec::new("greeter", "127.0.0.1:7000".parse()?), Box::new(Greeter))?;
//! println!("greeting on {address}");
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, error, info, warn};

use crate::config::{Limits, ListenerSpec};
use crate::connection::{Connection, Phase};
use crate::handler::{CloseMode, ConnId, Event, Fault, Handler, Host, HostError};
use crate::mbuf::Mbuf;
use crate::timer::{Due, Timers};

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

/// Counts of what happened while the reactor ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed, for whatever reason.
    pub closed: u64,
    /// Handler faults (traps, time or memory limits).
    pub faults: u64,
    /// Connections closed because the handler instance serving them died.
    pub orphaned: u64,
}

/// Stops a running [`Reactor`] from another thread (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Ask the reactor to stop: it stops accepting, delivers CLOSE to every
    /// connection, and returns from [`Reactor::run`].
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(err) = self.waker.wake() {
            warn!("cannot wake the event loop to stop it: {err}");
        }
    }
}

/// A listening socket and its handler's bookkeeping.
struct Listener {
    spec: ListenerSpec,
    socket: Option<TcpListener>,
    address: SocketAddr,
    next_poll: Option<Instant>,
}

/// What handlers may see and change: the part of the reactor lent to a [`Host`].
struct Core {
    conns: Slab<Connection>,
    /// Per listener: the ids its handler may name.
    scopes: Vec<HashMap<ConnId, usize>>,
    /// Per listener: its limits.
    limits: Vec<Limits>,
    timers: Timers,
    /// Timers armed across all connections (entries in `timers` beyond this are stale).
    armed: usize,
    /// Connections that need a service: I/O to do, a close to carry out.
    queue: Vec<usize>,
    next_id: u64,
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
}

/// The event loop. Single-threaded: it owns its sockets, buffers and handlers.
pub struct Reactor {
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    handlers: Vec<Box<dyn Handler>>,
    core: Core,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stats: Stats,
}

impl Reactor {
    /// A reactor with no listeners yet.
    pub fn new() -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Reactor {
            poll,
            events: Events::with_capacity(1024),
            listeners: Vec::new(),
            handlers: Vec::new(),
            core: Core {
                conns: Slab::new(),
                scopes: Vec::new(),
                limits: Vec::new(),
                timers: Timers::default(),
                armed: 0,
                queue: Vec::new(),
                next_id: 1,
            },
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            stats: Stats::default(),
        })
    }

    /// Listen on `spec.address` and hand its connections to `handler`. Returns the
    /// bound address (useful with port 0).
    pub fn listen(&mut self, spec: &ListenerSpec, handler: Box<dyn Handler>) -> io::Result<SocketAddr> {
        let index = self.listeners.len();
        let mut socket = bind(spec.address)?;
        let address = socket.local_addr()?;
        self.poll.registry().register(&mut socket, listener_token(index), Interest::READABLE)?;
        info!(listener = %spec.name, %address, "listening");
        self.listeners.push(Listener {
            spec: spec.clone(),
            socket: Some(socket),
            address,
            next_poll: spec.poll_interval.map(|every| Instant::now() + every),
        });
        self.handlers.push(handler);
        self.core.scopes.push(HashMap::new());
        self.core.limits.push(spec.limits.clone());
        Ok(address)
    }

    /// The listeners' names and bound addresses, in the order they were added.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.iter().map(|l| (l.spec.name.clone(), l.address)).collect()
    }

    /// A handle that stops [`Reactor::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { flag: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Run until stopped, then close every connection (each gets its CLOSE event).
    pub fn run(&mut self) -> io::Result<Stats> {
        while !self.stop.load(Ordering::SeqCst) {
            self.turn()?;
        }
        self.shut_down();
        Ok(self.stats)
    }

    /// One loop iteration: wait for readiness or the next deadline, then do all the
    /// work that is ready.
    fn turn(&mut self) -> io::Result<()> {
        let timeout = self.timeout();
        if let Err(err) = self.poll.poll(&mut self.events, timeout) {
            return if err.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(err) };
        }
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
        self.fire_timers(now);
        self.fire_polls(now);
        self.service_queue();
        Ok(())
    }

    /// How long the next poll may sleep: not at all with work queued, otherwise until
    /// the next timer or POLL tick.
    fn timeout(&self) -> Option<Duration> {
        if !self.core.queue.is_empty() {
            return Some(Duration::ZERO);
        }
        let polls = self.listeners.iter().filter_map(|l| l.next_poll);
        let next = self.core.timers.next_deadline().into_iter().chain(polls).min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(socket) = &self.listeners[index].socket else { return };
            let (stream, peer) = match socket.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(listener = %self.listeners[index].spec.name, "accept failed: {e}");
                    return;
                }
            };
            if let Some(key) = self.register(index, stream, peer) {
                self.stats.accepted += 1;
                self.dispatch(key, Event::Accept(peer));
                self.core.enqueue(key);
            }
        }
    }

    fn register(&mut self, index: usize, mut stream: TcpStream, peer: SocketAddr) -> Option<usize> {
        let name = &self.listeners[index].spec.name;
        // Small writes (a prompt, a chat line) should leave at once, not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(listener = %name, %peer, "cannot disable Nagle: {err}");
        }
        let entry = self.core.conns.vacant_entry();
        let key = entry.key();
        if let Err(err) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            warn!(listener = %name, %peer, "cannot watch accepted connection: {err}");
            return None;
        }
        let id = ConnId(self.core.next_id);
        self.core.next_id += 1;
        entry.insert(Connection::new(id, index, stream, peer, &self.core.limits[index]));
        self.core.scopes[index].insert(id, key);
        debug!(listener = %name, conn = %id, %peer, "accepted");
        Some(key)
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

    /// Do what a connection is ready for: write, then read, then close if due.
    fn service(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        if conn.phase != Phase::Closing && conn.writable && !conn.tx.is_empty() {
            match conn.write_out() {
                Ok(0) => {}
                Ok(n) => self.dispatch(key, Event::Send(n as u32)),
                Err(err) => return self.close(key, Some(err)),
            }
        }
        let conn = &mut self.core.conns[key];
        if conn.phase == Phase::Open && conn.readable && !conn.peer_closed && conn.rx.room() > 0 {
            match conn.read_in(READ_BUDGET) {
                Ok(0) => {}
                Ok(n) => self.dispatch(key, Event::Recv(n as u32)),
                Err(err) => return self.close(key, Some(err)),
            }
        }
        let conn = &mut self.core.conns[key];
        let finished = match conn.phase {
            Phase::Closing => true,
            // A peer that stopped sending gets what is queued for it, then we close:
            // there is nothing left to answer.
            Phase::Open => conn.peer_closed && conn.tx.is_empty(),
            Phase::Draining => conn.tx.is_empty(),
        };
        if finished {
            return self.close(key, None);
        }
        update_interest(self.poll.registry(), conn, key);
        if conn.has_io_pending() {
            self.core.enqueue(key);
        }
    }

    /// Forget a connection: deliver its CLOSE (if its handler still serves it) and
    /// drop the socket.
    fn close(&mut self, key: usize, error: Option<io::Error>) {
        let conn = &mut self.core.conns[key];
        if let Err(err) = self.poll.registry().deregister(&mut conn.socket) {
            debug!(conn = %conn.id, "deregister failed: {err}");
        }
        conn.phase = Phase::Closing;
        let listener = conn.listener;
        let why = error.map(|err| format!(" on error: {err}")).unwrap_or_default();
        debug!(listener = %self.listeners[listener].spec.name, conn = %conn.id, peer = %conn.peer, "closed{why}");
        self.core.disarm_all(key);
        self.dispatch(key, Event::Close);
        let conn = self.core.conns.remove(key);
        self.core.scopes[listener].remove(&conn.id);
        self.stats.closed += 1;
    }

    /// Call the listener's handler with one event of one connection, if the
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
        let (listener, id) = (conn.listener, conn.id);
        let mut host = Scope { core: &mut self.core, listener };
        if let Err(fault) = self.handlers[listener].handle(&mut host, id, event) {
            self.orphan(listener, key, fault);
        }
    }

    /// The handler of `listener` died while handling `key`: close that connection at
    /// once and every other one of the listener after its send buffer drains. Their
    /// state died with the handler, so they get no CLOSE.
    fn orphan(&mut self, listener: usize, key: usize, fault: Fault) {
        let keys: Vec<usize> = self.core.scopes[listener].drain().map(|(_, key)| key).collect();
        let name = &self.listeners[listener].spec.name;
        let culprit = self.core.conns[key].id;
        error!(
            listener = %name,
            conn = %culprit,
            orphaned = keys.len(),
            "handler failed: {fault}; it serves new connections with a fresh instance, and the {} connection(s) it held are closed",
            keys.len()
        );
        self.stats.faults += 1;
        for k in keys {
            let conn = &mut self.core.conns[k];
            conn.attached = false;
            if conn.phase != Phase::Closing {
                conn.phase = if k == key { Phase::Closing } else { Phase::Draining };
            }
            self.stats.orphaned += 1;
            self.core.disarm_all(k);
            self.core.enqueue(k);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(due) = self.core.timers.pop_due(now) {
            if !is_armed(&self.core.conns, &due) {
                continue;
            }
            self.core.conns[due.key].timers.remove(&due.timer);
            self.core.armed -= 1;
            self.dispatch(due.key, Event::Timer(due.timer));
        }
    }

    fn fire_polls(&mut self, now: Instant) {
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            let (Some(at), Some(every)) = (listener.next_poll, listener.spec.poll_interval) else { continue };
            if at > now {
                continue;
            }
            listener.next_poll = Some(now + every);
            let mut keys: Vec<(ConnId, usize)> = self.core.scopes[index].iter().map(|(id, key)| (*id, *key)).collect();
            keys.sort_unstable();
            // Handlers only mark connections for closing; none leaves the slab here.
            for (_, key) in keys {
                self.dispatch(key, Event::Poll);
            }
        }
    }

    /// Stop accepting, flush what can be flushed without waiting, and close every
    /// connection with its CLOSE event.
    fn shut_down(&mut self) {
        for listener in &mut self.listeners {
            if let Some(mut socket) = listener.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
        }
        let keys: Vec<usize> = self.core.conns.iter().map(|(key, _)| key).collect();
        let open = keys.len();
        for key in keys {
            let Some(conn) = self.core.conns.get_mut(key) else { continue };
            if conn.phase != Phase::Closing {
                let _ = conn.write_out();
            }
            self.close(key, None);
        }
        info!(
            open,
            accepted = self.stats.accepted,
            faults = self.stats.faults,
            orphaned = self.stats.orphaned,
            "stopped"
        );
    }
}

/// Whether `due` is still the current arming of a live connection's timer (not
/// cancelled, re-armed, or left behind by a closed connection).
fn is_armed(conns: &Slab<Connection>, due: &Due) -> bool {
    conns.get(due.key).is_some_and(|c| c.id == due.conn && c.timers.get(&due.timer) == Some(&due.arming))
}

/// Register for WRITABLE only while there is something to write and the socket last
/// said it would block.
fn update_interest(registry: &Registry, conn: &mut Connection, key: usize) {
    let want = !conn.tx.is_empty() && !conn.writable;
    if want == conn.write_interest {
        return;
    }
    let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
    match registry.reregister(&mut conn.socket, Token(key), interest) {
        Ok(()) => conn.write_interest = want,
        Err(err) => warn!(conn = %conn.id, "cannot change readiness interest: {err}"),
    }
}

fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The [`Host`] a handler gets: the reactor's core, seen from one listener.
///
/// A connection whose CLOSE is being delivered is already `Phase::Closing`: its
/// receive buffer can still be read, but nothing can be sent to it.
struct Scope<'a> {
    core: &'a mut Core,
    listener: usize,
}

impl Scope<'_> {
    fn key(&self, conn: ConnId) -> Result<usize, HostError> {
        self.core.scopes[self.listener].get(&conn).copied().ok_or(HostError::Closed)
    }

    /// A connection the handler may still act on: open, and not being closed.
    fn open(&mut self, conn: ConnId) -> Result<(usize, &mut Connection), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        if c.phase != Phase::Open {
            return Err(HostError::Closed);
        }
        Ok((key, c))
    }
}

impl Host for Scope<'_> {
    fn recv_buffer(&self, conn: ConnId) -> Result<&Mbuf, HostError> {
        Ok(&self.core.conns[self.key(conn)?].rx)
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<u32, HostError> {
        let (key, c) = self.open(conn)?;
        c.tx.append(data).map_err(|_| HostError::LimitExceeded("send buffer"))?;
        let room = c.tx.room() as u32;
        self.core.enqueue(key);
        Ok(room)
    }

    fn send_room(&self, conn: ConnId) -> Result<u32, HostError> {
        let c = &self.core.conns[self.key(conn)?];
        if c.phase != Phase::Open {
            return Err(HostError::Closed);
        }
        Ok(c.tx.room() as u32)
    }

    fn remove(&mut self, conn: ConnId, n: u32) -> Result<(), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        c.rx.remove(n as usize).map_err(|short| HostError::Invalid(short.to_string()))?;
        if c.readable {
            self.core.enqueue(key);
        }
        Ok(())
    }

    fn set_timer(&mut self, conn: ConnId, id: u64, after: Duration) -> Result<(), HostError> {
        let max = self.core.limits[self.listener].max_timers;
        let at = Instant::now()
            .checked_add(after)
            .ok_or_else(|| HostError::Invalid(format!("timer delay {after:?} is too far")))?;
        let (key, c) = self.open(conn)?;
        if !c.timers.contains_key(&id) && c.timers.len() >= max {
            return Err(HostError::LimitExceeded("timers per connection"));
        }
        let arming = self.core.timers.arm(at, key, conn, id);
        if self.core.conns[key].timers.insert(id, arming).is_none() {
            self.core.armed += 1;
        }
        if self.core.timers.len() > 2 * self.core.armed + TIMER_SLACK {
            let Core { conns, timers, .. } = &mut *self.core;
            timers.compact(|due| is_armed(conns, due));
        }
        Ok(())
    }

    fn cancel_timer(&mut self, conn: ConnId, id: u64) -> Result<bool, HostError> {
        let (_, c) = self.open(conn)?;
        let was_armed = c.timers.remove(&id).is_some();
        if was_armed {
            self.core.armed -= 1;
        }
        Ok(was_armed)
    }

    fn close(&mut self, conn: ConnId, mode: CloseMode) -> Result<(), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        if c.phase == Phase::Closing {
            return Err(HostError::Closed);
        }
        c.phase = match mode {
            CloseMode::Now => Phase::Closing,
            CloseMode::AfterSend => Phase::Draining,
        };
        self.core.enqueue(key);
        Ok(())
    }
}
