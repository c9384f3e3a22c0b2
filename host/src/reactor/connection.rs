//! Per-connection state: the socket, its two buffers, readiness, lifecycle, timers,
//! and the limits it has hit. Each part of the state is an enum of its own (the
//! phase, the dial, each direction's readiness, the write side, what SEND is owed), so
//! no two fields can contradict each other.
//!
//! A [`Connection`] moves bytes between its socket and its buffers when the reactor
//! tells it to, within the limits of the buffers. It never calls a handler and never
//! decides on its own to close: it reports what the socket said and the reactor acts.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;
use rustix::net::{RecvFlags, SendFlags};

use super::transport::{self, Transport};
use crate::handler::ConnId;
use crate::listener::{Limit, Limits};
use crate::mbuf::{Mbuf, Pool};

/// Whether the listener's handler still serves a connection that is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tie {
    /// Its handler serves it: CLOSE is still owed.
    Attached,
    /// CLOSE was delivered, or the handler's instance died and the connection is
    /// closing unattended: no event reaches a handler any more.
    Detached,
}

/// Where a connection is in its life. An open connection is always served by its
/// handler; on the way out, [`Tie`] says whether it still is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading, writing, delivering events.
    Open,
    /// Asked to close after the send buffer drains (by the handler, a drain, or a
    /// fault of its instance): no more reading and no events until CLOSE.
    Draining(Tie),
    /// Drained, our write side shut and CLOSE delivered (or being delivered), while the
    /// peer had not finished sending: what still arrives is read and discarded until its
    /// EOF, an error or `linger-ms`, so unread input cannot turn the close into a reset
    /// that destroys the last bytes sent.
    Lingering(Tie),
    /// About to be closed and forgotten; only CLOSE remains.
    Closing(Tie),
}

impl Phase {
    /// Whether the listener's handler still serves the connection.
    pub fn attached(self) -> bool {
        match self {
            Phase::Open => true,
            Phase::Draining(tie) | Phase::Lingering(tie) | Phase::Closing(tie) => tie == Tie::Attached,
        }
    }

    /// Whether the connection is about to be closed.
    pub fn is_closing(self) -> bool {
        matches!(self, Phase::Closing(_))
    }

    /// The same phase, no longer served by a handler.
    pub fn detached(self) -> Phase {
        match self {
            Phase::Open | Phase::Draining(_) => Phase::Draining(Tie::Detached),
            Phase::Lingering(_) => Phase::Lingering(Tie::Detached),
            Phase::Closing(_) => Phase::Closing(Tie::Detached),
        }
    }

    /// Drain next, served as now.
    pub fn to_draining(self) -> Phase {
        Phase::Draining(self.tie())
    }

    /// Linger next, served as now.
    pub fn to_lingering(self) -> Phase {
        Phase::Lingering(self.tie())
    }

    /// Close next, served as now.
    pub fn to_closing(self) -> Phase {
        Phase::Closing(self.tie())
    }

    fn tie(self) -> Tie {
        if self.attached() { Tie::Attached } else { Tie::Detached }
    }
}

/// Our sending side, which a handler may shut down before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteSide {
    /// Sends are accepted.
    Open,
    /// Shut down asked for: no more sends; the socket's sending side is shut once
    /// the send buffer is written out.
    ShutAfterSend,
    /// The peer has been sent end-of-stream.
    Shut,
}

/// An outbound dial's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dial {
    /// Still in progress: readiness will say how it ended. No I/O until then.
    Pending,
    /// Connected to an upstream over TLS, whose handshake goes on: no data moves, and
    /// no CONNECT is delivered, until it is done.
    Handshaking,
    /// Accepted, or the dial ended (connected, or failed and closing).
    Over,
}

/// What the socket's readiness says about the peer's bytes (edge-triggered: a state
/// is kept until reading uses it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// Read until it would block (or emptied): wait for the next readiness event.
    Waiting,
    /// There may be bytes to read.
    Ready,
    /// Readiness said the peer closed its side (or an error): the socket must be read
    /// until it says so itself, since no new event will come.
    Ending,
    /// The peer's end of stream was read: nothing more will arrive.
    Ended,
}

impl Inbound {
    /// What a readiness event adds: maybe bytes (`readable`), maybe the peer's close
    /// or an error (`closed`).
    pub fn on_event(&mut self, readable: bool, closed: bool) {
        *self = match *self {
            Inbound::Ended => Inbound::Ended,
            _ if closed => Inbound::Ending,
            Inbound::Waiting if readable => Inbound::Ready,
            state => state,
        };
    }

    /// Whether the socket may have bytes to read, or the peer's close to tell.
    pub fn is_ready(self) -> bool {
        matches!(self, Inbound::Ready | Inbound::Ending)
    }

    /// Whether the peer's end of stream was read.
    pub fn ended(self) -> bool {
        self == Inbound::Ended
    }
}

/// What the socket's readiness says about room to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// The last write would have blocked (or the dial has not finished): wait for
    /// WRITABLE.
    Blocked,
    /// The socket may accept bytes.
    Ready,
}

/// Which writes bring the handler a SEND event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendWanted {
    /// As its instance's [`SendEvents`](crate::handler::SendEvents) says.
    AsChosen,
    /// The handler was told the send buffer had no room: the next write brings a
    /// SEND whatever the instance chose.
    Owed,
}

/// Whether a connection is in the reactor's service queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Not queued: readiness or a handler's call queues it.
    No,
    /// Queued once; queueing it again would serve it twice.
    Yes,
}

/// One accepted TCP connection.
#[derive(Debug)]
pub(super) struct Connection {
    pub id: ConnId,
    /// Index of the listener that accepted it (or whose handler dialed it).
    pub listener: usize,
    /// The reactor's key of the handler instance that serves it.
    pub instance: usize,
    pub socket: TcpStream,
    pub peer: SocketAddr,
    /// Plain, or through a TLS session the host ends.
    pub transport: Transport,
    /// Bytes read from the peer, not yet removed by the handler. Its storage is the
    /// worker's [`Pool`]'s while it is empty (an idle connection holds none).
    pub rx: Mbuf,
    /// Bytes the handler sent, not yet written to the socket; storage as `rx`'s.
    pub tx: Mbuf,
    /// Where it is in its life, and whether its handler still serves it.
    pub phase: Phase,
    /// Whether its outbound dial (if it was dialed) still goes on.
    pub dial: Dial,
    /// What readiness said about the peer's bytes.
    pub inbound: Inbound,
    /// What readiness said about room to write.
    pub outbound: Outbound,
    /// Whether the handler may still send, and whether the socket's side is shut.
    pub write_side: WriteSide,
    /// Whether the next write owes the handler a SEND.
    pub send_wanted: SendWanted,
    /// Whether it waits in the service queue.
    pub queued: Queued,
    /// The readiness it is registered for: WRITABLE only while a write would block.
    pub interest: Interest,
    /// Armed handler timers: timer id -> arming number in the reactor's queue.
    pub timers: HashMap<u64, u64>,
    /// The arming number of the idle check in the reactor's timer queue; while
    /// lingering, of the `linger-ms` deadline, which takes its place.
    pub idle_arming: u64,
    /// When a byte last moved either way (or the connection was made).
    pub last_active: Instant,
    /// Limits already hit and logged, one bit per [`Limit::index`].
    hits: u16,
}

impl Connection {
    /// A connection just accepted ([`Dial::Over`]), or one whose outbound dial has
    /// started ([`Dial::Pending`]); neither has seen readiness yet. Its socket is still to be registered
    /// for [`Connection::interest`].
    pub fn new(
        id: ConnId,
        (listener, instance): (usize, usize),
        (socket, peer, transport): (TcpStream, SocketAddr, Transport),
        limits: &Limits,
        dial: Dial,
    ) -> Connection {
        // An accepted socket may already hold bytes; a dialing one must wait for
        // readiness to learn whether the dial worked, which shows as writability.
        let (inbound, outbound, interest) = match dial {
            Dial::Pending => (Inbound::Waiting, Outbound::Blocked, Interest::READABLE | Interest::WRITABLE),
            Dial::Over | Dial::Handshaking => (Inbound::Ready, Outbound::Ready, Interest::READABLE),
        };
        Connection {
            id,
            listener,
            instance,
            socket,
            peer,
            transport,
            rx: Mbuf::with_limit(limits.recv_buffer),
            tx: Mbuf::with_limit(limits.send_buffer),
            phase: Phase::Open,
            dial,
            inbound,
            outbound,
            write_side: WriteSide::Open,
            send_wanted: SendWanted::AsChosen,
            queued: Queued::No,
            interest,
            timers: HashMap::new(),
            idle_arming: 0,
            last_active: Instant::now(),
            hits: 0,
        }
    }

    /// Take in what a readiness event says. An error counts as both directions ready
    /// and the peer closed: the next read or write reports it.
    pub fn on_readiness(&mut self, event: &Event) {
        let trouble = event.is_error();
        self.inbound.on_event(event.is_readable(), event.is_read_closed() || trouble);
        if event.is_writable() || event.is_write_closed() || trouble {
            self.outbound = Outbound::Ready;
        }
    }

    /// Record that `limit` was hit; true the first time for this connection.
    pub fn first_hit(&mut self, limit: Limit) -> bool {
        let bit = 1 << limit.index();
        let first = self.hits & bit == 0;
        self.hits |= bit;
        first
    }

    /// Write the send buffer until it is empty (its storage back in `pool`) or the
    /// socket would block. Returns the bytes written; if any, the connection was
    /// active at `now`.
    pub fn write_out(&mut self, now: Instant, pool: &mut Pool) -> io::Result<usize> {
        if let Transport::Tls(tls) = &mut self.transport {
            let taken = transport::write_out(tls, &self.socket, &mut self.tx, &mut self.outbound, pool)?;
            self.touch(taken, now);
            return Ok(taken);
        }
        let mut total = 0;
        while !self.tx.is_empty() {
            match self.tx.drain_to(&mut Direct(&self.socket), pool) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => total += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.outbound = Outbound::Blocked;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.touch(total, now);
        Ok(total)
    }

    /// Read into the receive buffer (its storage taken from `pool` when bytes come)
    /// until it is full, the socket would block, the peer closed, or `budget` bytes
    /// arrived. Returns the bytes read; if any, the connection was active at `now`.
    ///
    /// A read that returns fewer bytes than it asked for emptied the socket, so the
    /// next one would only say it would block: that system call is skipped, as
    /// edge-triggered readiness brings a new event when more arrives. Not when the
    /// last event said the peer closed: that end of stream must be read now.
    pub fn read_in(&mut self, budget: usize, now: Instant, pool: &mut Pool) -> io::Result<usize> {
        if let Transport::Tls(tls) = &mut self.transport {
            let total = transport::read_in(tls, &self.socket, (&mut self.rx, pool), &mut self.inbound, budget)?;
            self.touch(total, now);
            return Ok(total);
        }
        let total =
            self.pull(budget, |c, max| (c.rx.room() > 0).then(|| c.rx.fill_from(&mut Direct(&c.socket), max, pool)))?;
        self.touch(total, now);
        Ok(total)
    }

    /// Read and throw away what the peer sends, until the socket would block, the peer
    /// closed, or `budget` bytes went.
    pub fn discard_in(&mut self, budget: usize) -> io::Result<()> {
        const SCRATCH: usize = 16 * 1024;
        let mut scratch = [0u8; SCRATCH];
        self.pull(budget, |c, max| {
            let asked = max.min(SCRATCH);
            Some(c.socket.read(&mut scratch[..asked]).map(|n| (n, asked)))
        })?;
        Ok(())
    }

    /// Make `read` calls (`None`: no more room; otherwise the bytes read and asked
    /// for) until the socket would block or is emptied, the peer closed, or `budget`
    /// bytes came; records which. Returns the bytes read.
    fn pull(
        &mut self,
        budget: usize,
        mut read: impl FnMut(&mut Connection, usize) -> Option<io::Result<(usize, usize)>>,
    ) -> io::Result<usize> {
        let mut total = 0;
        while total < budget {
            let Some(result) = read(self, budget - total) else { break };
            match result {
                Ok((0, _)) => {
                    self.inbound = Inbound::Ended;
                    break;
                }
                Ok((n, asked)) => {
                    total += n;
                    if n < asked && self.inbound != Inbound::Ending {
                        self.inbound = Inbound::Waiting;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.inbound = Inbound::Waiting;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Note that `moved` bytes went either way at `now`: the connection is not idle.
    fn touch(&mut self, moved: usize, now: Instant) {
        if moved > 0 {
            self.last_active = now;
        }
    }

    /// Whether reading could get more bytes now.
    pub fn can_read(&self) -> bool {
        self.phase == Phase::Open && self.dial == Dial::Over && self.inbound.is_ready() && self.rx.room() > 0
    }

    /// Whether lingering could discard more bytes now.
    pub fn can_discard(&self) -> bool {
        matches!(self.phase, Phase::Lingering(_)) && self.inbound.is_ready()
    }

    /// Whether the socket still has work this connection could do right now.
    pub fn has_io_pending(&self) -> bool {
        self.can_read() || self.can_write() || self.can_discard()
    }

    /// Whether writing could send more bytes now.
    pub fn can_write(&self) -> bool {
        self.dial == Dial::Over && self.outbound == Outbound::Ready && self.has_output()
    }

    /// Whether bytes wait to go to the socket: the send buffer's, or the TLS
    /// session's own (records, close_notify).
    pub fn has_output(&self) -> bool {
        !self.tx.is_empty() || self.transport.wants_write()
    }

    /// Whether nothing can move either way any more: the peer finished sending,
    /// our side was shut down and written out, and the handler consumed everything.
    pub fn is_spent(&self) -> bool {
        self.inbound.ended() && self.write_side == WriteSide::Shut && self.rx.is_empty()
    }

    /// Whether the events of this phase reach the handler (an open connection is
    /// always its handler's).
    pub fn delivers_events(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The registration its state calls for: WRITABLE only while a dial goes on, or
    /// while there is something to write and the socket last said it would block.
    pub fn wanted_interest(&self) -> Interest {
        let blocked = self.dial == Dial::Pending || (self.has_output() && self.outbound == Outbound::Blocked);
        if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE }
    }
}

/// A socket read and written with the system calls themselves. libc's `recv` and
/// `send` are thread-cancellation points, each wrapped in two atomic updates of the
/// thread's cancellation state; sandport cancels no thread, and on the hot path (one
/// of each per request) the wrappers cost about 2% of a request's CPU.
pub(super) struct Direct<'a>(pub(super) &'a TcpStream);

impl Read for Direct<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::net::recv(self.0, buf, RecvFlags::empty())?.0)
    }
}

impl Write for Direct<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // No SIGPIPE for a peer that went away: an `EPIPE` error instead.
        Ok(rustix::net::send(self.0, buf, SendFlags::NOSIGNAL)?)
    }

    /// One `sendmsg` for all the pieces: rustls writes a TLS flight (a handshake's
    /// four records, say) as pieces, which would otherwise take a system call each.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(self.0, bufs, &mut control, SendFlags::NOSIGNAL)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
