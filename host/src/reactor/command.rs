//! What other threads ask of a worker, and how it does it between two turns of its
//! loop: swap a listener's plugin, report its counts, take a listener on or give one
//! up, put a fresh instance in a worn one's place (see `recycle`).
//!
//! A swap replaces the listener's factory, so new connections get the new version at
//! once. If both the old and the new version migrate, each old instance's state and
//! connections move to the new version first, all or nothing (see `migration`): if
//! that is called off, the swap is refused on this worker and nothing changes.
//! Otherwise the old instance drains: it serves its connections until they close, and
//! closes those left when the listener's `drain-timeout-ms` passes. An old instance is
//! dropped with its last connection.
//!
//! Commands arrive on a channel the loop empties once a turn (after waking it), never
//! on the path of a message. Nothing here compiles a plugin or blocks: the caller
//! hands over a ready factory and waits for the reply.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use mio::Waker;
use tracing::{info, warn};

use super::connection::Phase;
use mio::net::TcpStream;

use super::migration::CalledOff;
use super::{Binding, Counts, GateCounts, Reactor, SharedSite};
use crate::handler::{Fault, Handler, HandlerFactory};
use crate::listener::{Limit, ListenerSpec, Worn};
use crate::tls::ClientTls;

/// A request to a worker. Each carries the channel its answer goes back on.
pub(crate) enum Command {
    /// Serve listener `listener`'s new connections with `factory`, version `version`,
    /// under `spec` (whose name is the listener's).
    /// The upstreams its handlers dial over TLS come with it.
    Swap {
        spec: ListenerSpec,
        version: u64,
        factory: Box<dyn HandlerFactory>,
        upstreams: Vec<(SocketAddr, ClientTls)>,
        reply: Sender<Swapped>,
    },
    /// Every listener's counts, by name, and every routing address's.
    Snapshot { reply: Sender<Tallies> },
    /// Listen on a routing address (see [`Reactor::open_port`]).
    OpenPort { site: SharedSite, address: SocketAddr, shared_port: bool, reply: Sender<io::Result<SocketAddr>> },
    /// Stop listening on a routing address.
    ClosePort { address: SocketAddr, reply: Sender<()> },
    /// A connection accepted on routing address `address` by another worker, whose
    /// listener lives here; `bytes` came before it was handed over.
    Adopt { address: SocketAddr, socket: TcpStream, peer: SocketAddr, bytes: Vec<u8>, since: Instant },
    /// Listen for a listener added by a reload.
    Listen {
        spec: ListenerSpec,
        binding: Binding,
        version: u64,
        factory: Box<dyn HandlerFactory>,
        reply: Sender<io::Result<SocketAddr>>,
    },
    /// Stop listening for `listener` (removed by a reload, or about to be bound anew);
    /// its connections drain.
    Retire { listener: String, reply: Sender<()> },
    /// The fresh instance made, off the loop, to replace the worn instance `instance`
    /// (serial `serial`), or why none could be made (see `recycle`).
    Fresh { instance: usize, serial: u64, worn: Worn, handler: Result<Box<dyn Handler>, Fault> },
}

/// A worker's counts: every listener's by name, and every routing address's.
pub(crate) type Tallies = (Vec<(String, Counts)>, Vec<(SocketAddr, GateCounts)>);

/// What a swap did on one worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Swapped {
    /// Connections carried over to the new version.
    pub migrated: u64,
    /// Connections left on an old version until they close or drain.
    pub draining: u64,
    /// Why the new version did not take over on this worker (its migration was called
    /// off; the old version serves on as before).
    pub refused: Option<String>,
}

impl Swapped {
    /// Two workers' swaps together.
    pub fn and(self, other: Swapped) -> Swapped {
        Swapped {
            migrated: self.migrated + other.migrated,
            draining: self.draining + other.draining,
            refused: self.refused.or(other.refused),
        }
    }
}

/// Sends commands to one worker and wakes it to read them.
#[derive(Clone)]
pub(crate) struct Commands {
    sender: Sender<Command>,
    waker: Arc<Waker>,
}

impl Commands {
    pub(super) fn new(sender: Sender<Command>, waker: Arc<Waker>) -> Commands {
        Commands { sender, waker }
    }

    /// Queue `command` and wake the worker. False if the worker is gone (stopped).
    pub fn send(&self, command: Command) -> bool {
        self.sender.send(command).is_ok() && self.waker.wake().is_ok()
    }
}

impl Reactor {
    /// Carry out the commands that arrived since the last turn.
    pub(super) fn obey(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Swap { spec, version, factory, upstreams, reply } => {
                    let swapped = self.swap(spec, version, factory, upstreams);
                    let _ = reply.send(swapped);
                }
                Command::Snapshot { reply } => {
                    let counts = self.core.accounts.iter().map(|a| (a.spec.name.clone(), a.counts.clone()));
                    let gates = self.ports.iter().map(|p| (p.address, p.counts.clone()));
                    let _ = reply.send((counts.collect(), gates.collect()));
                }
                Command::OpenPort { site, address, shared_port, reply } => {
                    let _ = reply.send(self.open_port(site, address, shared_port));
                }
                Command::ClosePort { address, reply } => {
                    self.close_port(address);
                    let _ = reply.send(());
                }
                Command::Adopt { address, socket, peer, bytes, since } => {
                    self.adopt(address, socket, peer, bytes, since)
                }
                Command::Listen { spec, binding, version, factory, reply } => {
                    let bound = self.listen_as(&spec, binding, factory);
                    if bound.is_ok() {
                        self.listeners.last_mut().expect("just added").version = version;
                    }
                    let _ = reply.send(bound);
                }
                Command::Retire { listener, reply } => {
                    self.retire(&listener);
                    let _ = reply.send(());
                }
                Command::Fresh { instance, serial, worn, handler } => self.recycle(instance, serial, worn, handler),
            }
        }
    }

    /// The listener named `name` that is still configured.
    pub(super) fn listener_named(&self, name: &str) -> Option<usize> {
        (0..self.listeners.len()).find(|&i| !self.listeners[i].retired && self.core.accounts[i].spec.name == name)
    }

    /// Instances of listener `index` that are not its current shared one.
    fn old_instances(&self, index: usize) -> Vec<usize> {
        let current = self.listeners[index].shared;
        let of_listener = self.core.instances.iter().filter(|(key, i)| i.listener == index && Some(*key) != current);
        of_listener.map(|(key, _)| key).collect()
    }

    /// Make `factory` (version `version`) serve listener `spec.name`'s new connections,
    /// after its old instances' state and connections have moved to the new version
    /// (see `migration`); those that do not migrate drain. If the migration is called
    /// off, nothing changes here and the answer says why.
    fn swap(
        &mut self,
        spec: ListenerSpec,
        version: u64,
        mut factory: Box<dyn HandlerFactory>,
        upstreams: Vec<(SocketAddr, ClientTls)>,
    ) -> Swapped {
        let Some(index) = self.listener_named(&spec.name) else { return Swapped::default() };
        let olds: Vec<usize> =
            self.core.instances.iter().filter(|(_, i)| i.listener == index).map(|(key, _)| key).collect();
        let state_limit = spec.limits.migrate_state;
        let started = Instant::now();
        let committed = match self.migrate_all(index, &olds, factory.as_mut(), version, state_limit) {
            Ok(committed) => committed,
            Err(CalledOff { reason, broken_old, over_bound }) => {
                let account = &mut self.core.accounts[index];
                if over_bound {
                    account.counts.limit_hits[Limit::MigrateState.index()] += 1;
                }
                warn!(listener = %account.spec.name, version, "the migration to version {version} was called off: {reason}");
                if let Some((old, key, fault)) = broken_old {
                    self.fault(old, key, fault);
                }
                return Swapped { refused: Some(reason), ..Swapped::default() };
            }
        };
        let listener = &mut self.listeners[index];
        listener.factory = factory;
        listener.version = version;
        listener.shared = committed.shared;
        self.core.accounts[index].spec = spec;
        self.core.accounts[index].upstreams = upstreams;
        self.core.accounts[index].counts.migrated += committed.moved;
        if committed.migrated() {
            // How long this worker's loop stood still: every connection of the
            // listener's waited for it.
            let took = started.elapsed();
            info!(listener = %self.core.accounts[index].spec.name, worker = self.index, moved = committed.moved, ?took, "migrated to version {version}");
        }
        let mut swapped = Swapped { migrated: committed.moved, ..Swapped::default() };
        // Those that migrated are gone; the new ones are not among these.
        for instance in olds {
            swapped.draining += self.drain_later(instance);
            self.release_if_idle(instance);
        }
        swapped
    }

    /// Set the drain deadline of `instance`, if it still holds connections; returns
    /// how many.
    pub(super) fn drain_later(&mut self, instance: usize) -> u64 {
        let Some(i) = self.core.instances.get_mut(instance) else { return 0 };
        if i.conns.is_empty() {
            return 0;
        }
        let drain_timeout = self.core.accounts[i.listener].spec.drain_timeout;
        if i.drain_at.is_none() {
            i.drain_at = Some(Instant::now() + drain_timeout);
            // A stale entry of an earlier instance under the same key may be there.
            if !self.draining.contains(&instance) {
                self.draining.push(instance);
            }
        }
        i.conns.len() as u64
    }

    /// Close the connections of old versions whose `drain-timeout-ms` has passed.
    pub(super) fn fire_drains(&mut self, now: Instant) {
        // Keys whose instance is gone (or was replaced by one with no deadline) leave
        // the list here too.
        let instances = &self.core.instances;
        let (due, waiting): (Vec<usize>, Vec<usize>) = std::mem::take(&mut self.draining)
            .into_iter()
            .filter(|&key| instances.get(key).is_some_and(|i| i.drain_at.is_some()))
            .partition(|&key| instances[key].drain_at.is_some_and(|at| at <= now));
        self.draining = waiting;
        for instance in due {
            let i = &mut self.core.instances[instance];
            i.drain_at = None;
            let (listener, version) = (i.listener, i.version);
            let keys: Vec<usize> = i.conns.values().copied().collect();
            let account = &mut self.core.accounts[listener];
            account.counts.drained += keys.len() as u64;
            if account.may_log() {
                warn!(
                    listener = %account.spec.name,
                    version,
                    connections = keys.len(),
                    "drain-timeout-ms passed: closing the connections still on an old version"
                );
            }
            for key in keys {
                let conn = &mut self.core.conns[key];
                if conn.phase == Phase::Open {
                    conn.phase = conn.phase.to_draining();
                }
                self.core.enqueue(key);
            }
        }
    }

    /// Stop listening for `name`; its connections drain.
    fn retire(&mut self, name: &str) {
        let Some(index) = self.listener_named(name) else { return };
        self.close_socket(index);
        let listener = &mut self.listeners[index];
        listener.retired = true;
        listener.next_poll = None;
        listener.retry_at = None;
        listener.shared = None;
        info!(listener = %name, worker = self.index, "stopped listening");
        for instance in self.old_instances(index) {
            self.drain_later(instance);
            self.release_if_idle(instance);
        }
    }
}
