//! The reactor's state that handlers may see and change through their [`Host`]: the
//! connections, the handler instances, each listener's rules and books, and the timer
//! queue, with the bookkeeping every part of the reactor shares (queueing a connection
//! for service, counting a limit hit, registering a new connection, telling a live
//! timer from a stale one).
//!
//! It records and never does I/O beyond registering a socket for readiness; it never
//! calls a handler (the reactor lends it out while one runs).
//!
//! [`Host`]: crate::handler::Host

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Registry, Token};
use rustc_hash::FxHashMap;
use slab::Slab;
use tracing::{debug, warn};

use super::connection::{Connection, Dial, Queued};
use super::recycle::Wear;
use super::timer::{Alarm, Due, Timers};
use super::transport::Transport;
use super::{Counts, Slots};
use crate::handler::{ConnId, Handler, SendEvents};
use crate::listener::{Limit, ListenerSpec};
use crate::mbuf::Pool;
use crate::throttle::Throttle;
use crate::tls::ClientTls;

/// Stale timer entries tolerated before the queue is compacted.
const TIMER_SLACK: usize = 1024;

/// A listener's rules and books: what handlers' host calls are checked against.
pub(super) struct Account {
    pub(super) spec: ListenerSpec,
    /// The upstreams of `spec.allow_connect` that speak TLS, ready to dial.
    pub(super) upstreams: Vec<(SocketAddr, ClientTls)>,
    /// Connections open now, accepted and dialed (lingering ones included), on every
    /// worker that serves the listener.
    pub(super) open: Slots,
    pub(super) counts: Counts,
    /// The rate limit on lines about its connections.
    pub(super) throttle: Throttle,
}

impl Account {
    /// Whether a line about one of this listener's connections may be logged now;
    /// if not, it is counted as suppressed.
    pub(super) fn may_log(&mut self) -> bool {
        let admitted = self.throttle.admit(Instant::now());
        if !admitted {
            self.counts.suppressed += 1;
        }
        admitted
    }
}

/// One handler instance and the connections it may name.
pub(super) struct Instance {
    pub(super) listener: usize,
    /// The version of the listener's plugin it runs.
    pub(super) version: u64,
    /// A newer version took over: the connections still here are closed at this time
    /// (`drain-timeout-ms`).
    pub(super) drain_at: Option<Instant>,
    /// Lent out while it handles an event.
    pub(super) handler: Option<Box<dyn Handler>>,
    /// Its connections' keys by the ids it knows them by. Fx, not SipHash: the ids
    /// are the host's own sequence numbers, so nobody can pick colliding ones, and
    /// every host call looks one up.
    pub(super) conns: FxHashMap<ConnId, usize>,
    /// When the handler gets SEND events.
    pub(super) send_events: SendEvents,
    /// How worn it is, for recycling.
    pub(super) wear: Wear,
}

/// What handlers may see and change: the part of the reactor lent to a [`Host`].
pub(super) struct Core {
    pub(super) registry: Registry,
    pub(super) conns: Slab<Connection>,
    pub(super) instances: Slab<Instance>,
    pub(super) accounts: Vec<Account>,
    pub(super) timers: Timers,
    /// Handler timers armed across all connections. With one idle check per
    /// connection, the live entries of `timers`; the rest are stale.
    pub(super) armed: usize,
    /// Connections that need a service: I/O to do, a close to carry out.
    pub(super) queue: Vec<usize>,
    pub(super) next_id: u64,
    /// Ids go up by this much, so that workers never hand out the same id.
    pub(super) id_step: u64,
    /// The reactor is closing every connection to stop: no new one may be dialed.
    pub(super) stopping: bool,
    /// A migration is under way and may put connections' timers back as they were:
    /// entries that look stale may come alive again, so none is dropped.
    pub(super) timers_held: bool,
    /// The clock as last read: when the poll returned, or the last event ended. Good
    /// enough to stamp activity with, and a reading fewer per read and per write.
    pub(super) now: Instant,
    /// The storage of the connections' buffers while they hold bytes: an empty buffer
    /// takes a block from here when bytes arrive and gives it back when drained.
    pub(super) buffers: Pool,
    /// The serial of the next instance (see [`Wear`]).
    pub(super) next_serial: u64,
}

impl Core {
    /// Take `handler`, version `version` of listener `listener`'s plugin, in as an
    /// instance serving nothing yet; returns its key.
    pub(super) fn add_instance(&mut self, listener: usize, version: u64, handler: Box<dyn Handler>) -> usize {
        self.next_serial += 1;
        let wear = Wear::new(self.next_serial, self.now, handler.memory());
        self.instances.insert(Instance {
            listener,
            version,
            drain_at: None,
            handler: Some(handler),
            conns: FxHashMap::default(),
            send_events: SendEvents::default(),
            wear,
        })
    }

    pub(super) fn enqueue(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.queued == Queued::No
        {
            conn.queued = Queued::Yes;
            self.queue.push(key);
        }
    }

    pub(super) fn disarm_all(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        self.armed -= conn.timers.len();
        conn.timers.clear();
    }

    /// Count and log a limit hit by `key`, once per connection and limit.
    pub(super) fn hit(&mut self, key: usize, limit: Limit) {
        let conn = &mut self.conns[key];
        if !conn.first_hit(limit) {
            return;
        }
        // A connection no handler serves any more (lingering) has no version.
        let version = conn.phase.attached().then(|| self.instances.get(conn.instance).map(|i| i.version)).flatten();
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
    pub(super) fn register(
        &mut self,
        instance: usize,
        (stream, peer, transport): (TcpStream, SocketAddr, Transport),
        dial: Dial,
    ) -> io::Result<(usize, ConnId)> {
        let listener = self.instances[instance].listener;
        let account = &mut self.accounts[listener];
        // Small writes (a prompt, a chat line) should leave at once, not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(listener = %account.spec.name, %peer, "cannot disable Nagle: {err}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = ConnId(self.next_id);
        let limits = &account.spec.limits;
        let mut conn = Connection::new(id, (listener, instance), (stream, peer, transport), limits, dial);
        self.registry.register(&mut conn.socket, Token(key), conn.interest)?;
        self.next_id += self.id_step;
        conn.idle_arming = self.timers.arm(conn.last_active + limits.idle_timeout, key, id, Alarm::Idle);
        entry.insert(conn);
        self.instances[instance].conns.insert(id, key);
        Ok((key, id))
    }

    /// Whether `due` is still the current arming of a live connection's alarm (not
    /// cancelled, re-armed, or left behind by a closed connection).
    pub(super) fn is_armed(&self, due: &Due) -> bool {
        let Some(conn) = self.conns.get(due.key).filter(|c| c.id == due.conn) else { return false };
        match due.alarm {
            Alarm::Handler(timer) => conn.timers.get(&timer) == Some(&due.arming),
            Alarm::Idle => conn.idle_arming == due.arming,
        }
    }

    /// Drop stale timer entries once they outnumber the live ones.
    pub(super) fn compact_timers(&mut self) {
        if self.timers_held {
            return;
        }
        let live = self.armed + self.conns.len();
        if self.timers.len() > 2 * live + TIMER_SLACK {
            let mut timers = std::mem::take(&mut self.timers);
            timers.compact(|due| self.is_armed(due));
            self.timers = timers;
        }
    }
}
