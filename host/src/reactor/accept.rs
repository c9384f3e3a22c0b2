//! Taking connections in: accepting on a listener until its backlog is empty,
//! refusing beyond `max-connections`, starting the instance that will serve a
//! connection, and what to do when accept fails.
//!
//! Readiness is edge-triggered, so a listener whose accept failed gets no new event
//! for the connections already waiting. Out of descriptors (EMFILE, ENFILE), the
//! reactor's spare descriptor is given up to accept each waiting connection and close
//! it at once, so its peer is told; any other failure (or no spare to give) leaves the
//! listener "starved", retried as soon as a connection closes or after
//! [`ACCEPT_RETRY`]. Nothing here reads or writes a connection's bytes.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use mio::net::{TcpListener, TcpStream};

use super::Reactor;
use super::connection::Dial;
use super::descriptors;
use super::descriptors::Reserve;
use super::stats::Refusal;
use super::transport::Transport;
use crate::handler::Event;
use crate::listener::{InstanceMode, Limit};

/// How soon a starved listener tries again if no connection closes first.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Reactor {
    /// Accept the connections waiting on listener `index` until none is left.
    pub(super) fn accept(&mut self, index: usize) {
        loop {
            let Some(socket) = &self.listeners[index].socket else { return };
            let (stream, peer) = match take(socket, &mut self.reserve) {
                Taken::Conn(stream, peer) => (stream, peer),
                Taken::Empty => return,
                Taken::Shed(peer, e) => {
                    let account = &mut self.core.accounts[index];
                    account.counts.refused += 1;
                    if account.may_log() {
                        warn!(listener = %account.spec.name, %peer, "out of file descriptors ({e}): connection refused");
                    }
                    continue;
                }
                Taken::Failed(e) => return self.starve(index, &e),
            };
            // Over the limit: accept and close at once, so the peer learns right away
            // and the backlog never fills with connections nobody will serve.
            let account = &mut self.core.accounts[index];
            if !account.open.take(account.spec.limits.max_connections) {
                let limit = Limit::Connections;
                account.counts.refused += 1;
                account.counts.limit_hits[limit.index()] += 1;
                if account.may_log() {
                    warn!(listener = %account.spec.name, %peer, limit = %limit.key(), "limit hit: {}", limit.outcome());
                }
                continue;
            }
            let Some(instance) = self.instance_for(index) else {
                let account = &mut self.core.accounts[index];
                account.open.give_back();
                account.counts.refused += 1;
                continue;
            };
            match self.core.register(instance, (stream, peer, Transport::Plain), Dial::Over) {
                Ok((key, id)) => {
                    self.core.accounts[index].counts.accepted += 1;
                    let version = self.core.instances[instance].version;
                    debug!(listener = %self.core.accounts[index].spec.name, conn = %id, %peer, version, "accepted");
                    self.dispatch(key, Event::Accept(peer));
                    self.core.enqueue(key);
                }
                Err(err) => {
                    let account = &mut self.core.accounts[index];
                    account.open.give_back();
                    account.counts.refused += 1;
                    if account.may_log() {
                        warn!(listener = %account.spec.name, %peer, "cannot watch accepted connection: {err}");
                    }
                    self.release_if_idle(instance);
                }
            }
        }
    }

    /// Accept the connections waiting on port `port` until none is left, each to be
    /// greeted (see `reactor/greeting.rs`).
    pub(super) fn accept_port(&mut self, port: usize) {
        loop {
            let Some(socket) = &self.ports[port].socket else { return };
            match take(socket, &mut self.reserve) {
                Taken::Conn(stream, peer) => self.greet(port, (stream, peer), Vec::new(), Instant::now(), false),
                Taken::Empty => return,
                Taken::Shed(peer, e) => {
                    let p = &mut self.ports[port];
                    p.counts.refused[Refusal::Busy as usize] += 1;
                    if p.throttle.admit(Instant::now()) {
                        warn!(address = %p.address, %peer, "out of file descriptors ({e}): connection refused");
                    }
                }
                Taken::Failed(e) => {
                    let p = &mut self.ports[port];
                    p.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    if p.throttle.admit(Instant::now()) {
                        warn!(address = %p.address, "accept failed: {e}; retrying when a connection closes, or in {ACCEPT_RETRY:?}");
                    }
                    return;
                }
            }
        }
    }

    /// Accept on listener `index` failed with `err` and the connections waiting there
    /// will raise no new readiness: try again when a connection closes, or after
    /// [`ACCEPT_RETRY`].
    fn starve(&mut self, index: usize, err: &io::Error) {
        self.listeners[index].retry_at = Some(Instant::now() + ACCEPT_RETRY);
        let account = &mut self.core.accounts[index];
        if account.may_log() {
            warn!(listener = %account.spec.name, "accept failed: {err}; retrying when a connection closes, or in {ACCEPT_RETRY:?}");
        }
    }

    /// Accept again on the listeners whose accept failed, once a connection closed or
    /// their retry is due.
    pub(super) fn retry_accepts(&mut self, now: Instant) {
        let freed = std::mem::take(&mut self.freed);
        for index in 0..self.listeners.len() {
            if self.listeners[index].retry_at.is_some_and(|at| freed || at <= now) {
                self.listeners[index].retry_at = None;
                self.reserve.restore();
                self.accept(index);
            }
        }
        for port in 0..self.ports.len() {
            if self.ports[port].retry_at.is_some_and(|at| freed || at <= now) {
                self.ports[port].retry_at = None;
                self.reserve.restore();
                self.accept_port(port);
            }
        }
    }

    /// The instance that will serve a new connection of listener `index`: the shared
    /// one (started if need be) or a fresh one. `None` if none could start; the
    /// reason is logged.
    pub(super) fn instance_for(&mut self, index: usize) -> Option<usize> {
        let listener = &mut self.listeners[index];
        let account = &mut self.core.accounts[index];
        // Shared and per-worker listeners have one instance in this reactor.
        let shared = account.spec.instance != InstanceMode::PerConnection;
        if shared && let Some(instance) = listener.shared {
            return Some(instance);
        }
        match listener.factory.new_handler() {
            Ok(handler) => {
                let version = listener.version;
                let instance = self.core.add_instance(index, version, handler);
                let account = &mut self.core.accounts[index];
                if shared {
                    self.listeners[index].shared = Some(instance);
                    if account.counts.faults > 0 && account.may_log() {
                        info!(listener = %account.spec.name, "plugin instance restarted");
                    }
                }
                Some(instance)
            }
            Err(fault) => {
                if account.may_log() {
                    error!(listener = %account.spec.name, "cannot start a handler, connection refused: {fault}");
                }
                None
            }
        }
    }
}

/// What one accept on a listening socket gave.
enum Taken {
    /// A connection.
    Conn(TcpStream, SocketAddr),
    /// Out of descriptors: the spare was given up to take this peer's connection and
    /// close it at once, so it is told.
    Shed(SocketAddr, io::Error),
    /// Nothing is waiting.
    Empty,
    /// Accept failed, and readiness will not say so again.
    Failed(io::Error),
}

/// Accept one connection on `socket`, giving up the `reserve`d descriptor to shed it
/// when none is left.
fn take(socket: &TcpListener, reserve: &mut Reserve) -> Taken {
    loop {
        match socket.accept() {
            Ok((stream, peer)) => return Taken::Conn(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Taken::Empty,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) if descriptors::exhausted(&e) && reserve.release() => {
                let shed = socket.accept().map(|(_, peer)| peer);
                reserve.restore();
                return match shed {
                    Ok(peer) => Taken::Shed(peer, e),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Taken::Empty,
                    Err(e) => Taken::Failed(e),
                };
            }
            Err(e) => return Taken::Failed(e),
        }
    }
}
