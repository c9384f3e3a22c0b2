//! Serving a connection: the service queue, and the steps a queued connection goes
//! through in a turn (finish a dial, write, shut our write side, read or discard,
//! then settle: close, linger, or wait for readiness), and how it leaves (its CLOSE,
//! lingering, its slot given back).
//!
//! Each step looks only at the connection's own state and stops the service when it
//! closed the connection. This is the hot path: a step makes no allocation and no
//! system call of its own beyond the read, the write and a change of readiness
//! interest, and stamps activity with the clock as last read, not a fresh reading.
//! Nothing here decides what a handler wants; it delivers the events the I/O brings.

use std::io;
use std::net::Shutdown;
use std::ops::ControlFlow;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};

use super::Reactor;
use super::connection::{Connection, Dial, Inbound, Outbound, Phase, Queued, SendWanted, WriteSide};
use super::timer::Alarm;
use super::transport::{self, Handshake, Transport};
use crate::handler::{Event, HostError, SendEvents};
use crate::listener::Limit;

/// Most bytes read from one socket per service, so one flooding peer cannot starve
/// the others.
const READ_BUDGET: usize = 256 * 1024;

/// Rounds of the service queue per loop turn. Handlers that keep feeding each other
/// (a SEND that sends to another connection whose SEND sends back) are cut off here
/// and continue next turn, after the other sockets had their say.
const SERVICE_ROUNDS: usize = 8;

/// Whether a service goes on to its next step: `Break` once the connection is closed
/// (or its dial is still going).
type Step = ControlFlow<()>;

const NEXT: Step = ControlFlow::Continue(());

impl Reactor {
    /// Service queued connections, in rounds; connections queued during a round are
    /// served in the next one.
    pub(super) fn service_queue(&mut self) {
        for _ in 0..SERVICE_ROUNDS {
            if self.core.queue.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.core.queue);
            for key in batch.drain(..) {
                if let Some(conn) = self.core.conns.get_mut(key) {
                    conn.queued = Queued::No;
                    let _ = self.service(key);
                }
            }
            if self.core.queue.is_empty() {
                // Keep the allocation for the next turn.
                self.core.queue = batch;
            }
        }
    }

    /// Do what a connection is ready for, step by step.
    fn service(&mut self, key: usize) -> Step {
        self.finish_dial(key)?;
        self.write(key)?;
        self.shut_write_side(key)?;
        self.read(key)?;
        self.discard(key)?;
        self.settle(key);
        NEXT
    }

    /// A dial whose socket reported readiness: deliver its CONNECT, or close it on
    /// its error. While the dial goes on, the service stops here.
    fn finish_dial(&mut self, key: usize) -> Step {
        let conn = &mut self.core.conns[key];
        if conn.dial == Dial::Over || conn.phase.is_closing() {
            return NEXT;
        }
        if conn.dial == Dial::Pending {
            if conn.outbound == Outbound::Blocked && !conn.inbound.is_ready() {
                return ControlFlow::Break(());
            }
            match dial_outcome(&conn.socket) {
                Ok(true) if matches!(conn.transport, Transport::Tls(_)) => conn.dial = Dial::Handshaking,
                Ok(true) => {
                    conn.dial = Dial::Over;
                    self.dispatch(key, Event::Connect(Ok(())));
                    return NEXT;
                }
                Ok(false) => {
                    // Spurious readiness: the dial goes on.
                    (conn.inbound, conn.outbound) = (Inbound::Waiting, Outbound::Blocked);
                    return ControlFlow::Break(());
                }
                Err(err) => return self.closed(key, Some(err)),
            }
        }
        let Transport::Tls(tls) = &mut conn.transport else { unreachable!("only a TLS dial shakes hands") };
        match transport::handshake(tls, &conn.socket) {
            Ok(Handshake::Done) => {
                conn.dial = Dial::Over;
                conn.last_active = self.core.now;
                self.dispatch(key, Event::Connect(Ok(())));
                NEXT
            }
            Ok(Handshake::Waiting { blocked }) => {
                conn.inbound = Inbound::Waiting;
                conn.outbound = if blocked { Outbound::Blocked } else { Outbound::Ready };
                let wanted = if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                reregister(self.poll.registry(), conn, key, wanted);
                ControlFlow::Break(())
            }
            Err(err) => self.closed(key, Some(err)),
        }
    }

    /// Write the send buffer out as far as the socket takes it, and tell the handler
    /// with SEND if it wants to know.
    fn write(&mut self, key: usize) -> Step {
        let conn = &mut self.core.conns[key];
        if conn.phase.is_closing() || conn.outbound == Outbound::Blocked || !conn.has_output() {
            return NEXT;
        }
        match conn.write_out(self.core.now, &mut self.core.buffers) {
            Ok(0) => NEXT,
            Ok(n) => {
                self.core.accounts[conn.listener].counts.bytes_out += n as u64;
                let owed = std::mem::replace(&mut conn.send_wanted, SendWanted::AsChosen) == SendWanted::Owed;
                // An orphan's instance is gone (its key may name another by now).
                let wanted = conn.delivers_events()
                    && (owed || self.core.instances[conn.instance].send_events == SendEvents::EveryWrite);
                if wanted {
                    self.dispatch(key, Event::Send(n as u32));
                }
                NEXT
            }
            Err(err) => self.closed(key, Some(err)),
        }
    }

    /// Shut the socket's sending side once a handler's shutdown has been written out.
    fn shut_write_side(&mut self, key: usize) -> Step {
        let conn = &mut self.core.conns[key];
        if conn.write_side == WriteSide::ShutAfterSend && conn.tx.is_empty() && conn.phase == Phase::Open {
            match conn.transport.say_goodbye(&conn.socket) {
                // close_notify waits for room: shut once it is out.
                Ok(false) => return NEXT,
                Ok(true) => {}
                Err(err) => return self.closed(key, Some(err)),
            }
            if let Err(err) = conn.socket.shutdown(Shutdown::Write) {
                return self.closed(key, Some(err));
            }
            conn.write_side = WriteSide::Shut;
        }
        NEXT
    }

    /// Read into the receive buffer and deliver RECV for what came (and RECV 0 for the
    /// peer's end of stream).
    fn read(&mut self, key: usize) -> Step {
        let conn = &mut self.core.conns[key];
        if !conn.can_read() {
            return NEXT;
        }
        match conn.read_in(READ_BUDGET, self.core.now, &mut self.core.buffers) {
            Ok(n) => {
                let (full, eof) = (conn.rx.room() == 0, conn.inbound.ended());
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
                NEXT
            }
            Err(err) => self.closed(key, Some(err)),
        }
    }

    /// While lingering, read and throw away what the peer still sends; close at its
    /// end of stream.
    fn discard(&mut self, key: usize) -> Step {
        let conn = &mut self.core.conns[key];
        if !conn.can_discard() {
            return NEXT;
        }
        match conn.discard_in(READ_BUDGET) {
            Ok(()) if conn.inbound.ended() => self.closed(key, None),
            Ok(()) => NEXT,
            Err(err) => self.closed(key, Some(err)),
        }
    }

    /// After the I/O: close or linger where the phase says so; otherwise register for
    /// the readiness the connection waits for, and queue it again if it has more to do.
    fn settle(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        match conn.phase {
            Phase::Closing(_) => return self.close(key, None),
            // A peer that already sent EOF left nothing unread: no need to linger.
            Phase::Draining(_) if conn.tx.is_empty() && conn.inbound.ended() => {
                match conn.transport.say_goodbye(&conn.socket) {
                    Ok(true) => return self.close(key, None),
                    Ok(false) => {}
                    Err(err) => return self.close(key, Some(err)),
                }
            }
            Phase::Draining(_) if conn.tx.is_empty() => return self.linger(key),
            Phase::Open if conn.is_spent() => return self.close(key, None),
            _ => {}
        }
        update_interest(self.poll.registry(), conn, key);
        if conn.has_io_pending() {
            self.core.enqueue(key);
        }
    }

    /// [`Reactor::close`], as the step that ends a service.
    fn closed(&mut self, key: usize, error: Option<io::Error>) -> Step {
        self.close(key, error);
        ControlFlow::Break(())
    }

    /// Forget a connection: deliver its CLOSE (if its handler still serves it; a
    /// dial that never finished gets its failed CONNECT first) and drop the socket.
    pub(super) fn close(&mut self, key: usize, error: Option<io::Error>) {
        let conn = &mut self.core.conns[key];
        if conn.dial != Dial::Over {
            conn.dial = Dial::Over;
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
        conn.phase = conn.phase.to_closing();
        let listener = conn.listener;
        let why = error.map(|err| format!(" on error: {err}")).unwrap_or_default();
        debug!(listener = %self.core.accounts[listener].spec.name, conn = %conn.id, peer = %conn.peer, "closed{why}");
        self.detach(key);
        let conn = self.core.conns.remove(key);
        // Bytes it still held: their storage serves the next connection.
        let (mut rx, mut tx) = (conn.rx, conn.tx);
        rx.clear(&mut self.core.buffers);
        tx.clear(&mut self.core.buffers);
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
            match conn.transport.say_goodbye(&conn.socket) {
                // Still draining until close_notify is out.
                Ok(false) => return update_interest(self.poll.registry(), conn, key),
                Ok(true) => {}
                Err(err) => return self.close(key, Some(err)),
            }
            if let Err(err) = conn.socket.shutdown(Shutdown::Write) {
                return self.close(key, Some(err));
            }
            conn.write_side = WriteSide::Shut;
        }
        conn.phase = conn.phase.to_lingering();
        let linger = self.core.accounts[conn.listener].spec.limits.linger;
        conn.idle_arming = self.core.timers.arm(Instant::now() + linger, key, conn.id, Alarm::Idle);
        debug!(listener = %self.core.accounts[conn.listener].spec.name, conn = %conn.id, peer = %conn.peer, "lingering");
        self.detach(key);
        let conn = &mut self.core.conns[key];
        conn.rx.clear(&mut self.core.buffers);
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

/// Register for the readiness the connection waits for (WRITABLE only while there is
/// something to write and the socket last said it would block), if that changed.
fn update_interest(registry: &Registry, conn: &mut Connection, key: usize) {
    let wanted = conn.wanted_interest();
    reregister(registry, conn, key, wanted);
}

/// Register for `wanted` readiness, if that is not what the connection has.
fn reregister(registry: &Registry, conn: &mut Connection, key: usize, wanted: Interest) {
    if wanted == conn.interest {
        return;
    }
    match registry.reregister(&mut conn.socket, Token(key), wanted) {
        Ok(()) => conn.interest = wanted,
        Err(err) => warn!(conn = %conn.id, "cannot change readiness interest: {err}"),
    }
}
