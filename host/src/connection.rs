//! Per-connection state: the socket, its two buffers, readiness, lifecycle, timers,
//! and the limits it has hit.
//!
//! A [`Connection`] moves bytes between its socket and its buffers when the reactor
//! tells it to, within the limits of the buffers. It never calls a handler and never
//! decides on its own to close: it reports what the socket said and the reactor acts.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use rustix::net::{RecvFlags, SendFlags};

use crate::handler::ConnId;
use crate::listener::{Limit, Limits};
use crate::mbuf::Mbuf;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading, writing, delivering events.
    Open,
    /// The handler asked to close after the send buffer drains: no more reading and
    /// no events until CLOSE.
    Draining,
    /// Drained, our write side shut and CLOSE delivered, while the peer had not
    /// finished sending: what still arrives is read and discarded until its EOF, an
    /// error or `linger-ms`, so unread input cannot turn the close into a reset that
    /// destroys the last bytes sent. No handler serves it any more.
    Lingering,
    /// About to be closed and forgotten; only CLOSE remains.
    Closing,
}

/// Our sending side, which a handler may shut down before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteSide {
    /// Sends are accepted.
    Open,
    /// Shut down asked for: no more sends; the socket's sending side is shut once
    /// the send buffer is written out.
    ShutAfterSend,
    /// The peer has been sent end-of-stream.
    Shut,
}

/// One accepted TCP connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub id: ConnId,
    /// Index of the listener that accepted it (or whose handler dialed it).
    pub listener: usize,
    /// The reactor's key of the handler instance that serves it.
    pub instance: usize,
    pub socket: TcpStream,
    pub peer: SocketAddr,
    /// Bytes read from the peer, not yet removed by the handler.
    pub rx: Mbuf,
    /// Bytes the handler sent, not yet written to the socket.
    pub tx: Mbuf,
    /// The socket may have bytes to read (edge-triggered readiness not yet used up).
    pub readable: bool,
    /// The last readiness event said the peer closed its side (or an error): the
    /// socket must be read until it says so itself, since no new event will come.
    pub read_closed: bool,
    /// The socket may accept bytes.
    pub writable: bool,
    /// The peer closed its sending side; nothing more will arrive.
    pub peer_closed: bool,
    /// An outbound dial still in progress.
    pub connecting: bool,
    pub write_side: WriteSide,
    pub phase: Phase,
    /// The listener's handler serves this connection. False once CLOSE was delivered,
    /// or when the handler's instance died and the connection is closing unattended.
    pub attached: bool,
    /// In the reactor's service queue.
    pub queued: bool,
    /// Registered for WRITABLE readiness (only while a write would block).
    pub write_interest: bool,
    /// The handler was told the send buffer had no room: the next write brings a
    /// SEND event whatever the instance's [`SendEvents`](crate::handler::SendEvents).
    pub awaits_room: bool,
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
    /// A connection just accepted, or (`dialing`) one whose outbound dial has
    /// started; neither has seen readiness yet.
    pub fn new(
        id: ConnId,
        (listener, instance): (usize, usize),
        socket: TcpStream,
        peer: SocketAddr,
        limits: &Limits,
        dialing: bool,
    ) -> Connection {
        Connection {
            id,
            listener,
            instance,
            socket,
            peer,
            rx: Mbuf::with_limit(limits.recv_buffer),
            tx: Mbuf::with_limit(limits.send_buffer),
            // An accepted socket may already hold bytes; a dialing one must wait for
            // readiness to learn whether the dial worked.
            readable: !dialing,
            read_closed: false,
            writable: !dialing,
            peer_closed: false,
            connecting: dialing,
            write_side: WriteSide::Open,
            phase: Phase::Open,
            attached: true,
            queued: false,
            write_interest: dialing,
            awaits_room: false,
            timers: HashMap::new(),
            idle_arming: 0,
            last_active: Instant::now(),
            hits: 0,
        }
    }

    /// Record that `limit` was hit; true the first time for this connection.
    pub fn first_hit(&mut self, limit: Limit) -> bool {
        let bit = 1 << limit.index();
        let first = self.hits & bit == 0;
        self.hits |= bit;
        first
    }

    /// Write the send buffer until it is empty or the socket would block. Returns the
    /// bytes written; if any, the connection was active at `now`.
    pub fn write_out(&mut self, now: Instant) -> io::Result<usize> {
        let mut total = 0;
        while !self.tx.is_empty() {
            match self.tx.drain_to(&mut Direct(&self.socket)) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => total += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.touch(total, now);
        Ok(total)
    }

    /// Read into the receive buffer until it is full, the socket would block, the
    /// peer closed, or `budget` bytes arrived. Returns the bytes read; if any, the
    /// connection was active at `now`.
    ///
    /// A read that returns fewer bytes than it asked for emptied the socket, so the
    /// next one would only say it would block: that system call is skipped, as
    /// edge-triggered readiness brings a new event when more arrives. Not when the
    /// last event said the peer closed: that end of stream must be read now.
    pub fn read_in(&mut self, budget: usize, now: Instant) -> io::Result<usize> {
        let total =
            self.pull(budget, |c, max| (c.rx.room() > 0).then(|| c.rx.fill_from(&mut Direct(&c.socket), max)))?;
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
                    self.peer_closed = true;
                    self.readable = false;
                    break;
                }
                Ok((n, asked)) => {
                    total += n;
                    if n < asked && !self.read_closed {
                        self.readable = false;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
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
        self.phase == Phase::Open && !self.connecting && self.readable && !self.peer_closed && self.rx.room() > 0
    }

    /// Whether lingering could discard more bytes now.
    pub fn can_discard(&self) -> bool {
        self.phase == Phase::Lingering && self.readable
    }

    /// Whether the socket still has work this connection could do right now.
    pub fn has_io_pending(&self) -> bool {
        let can_write = !self.connecting && self.writable && !self.tx.is_empty();
        self.can_read() || can_write || self.can_discard()
    }

    /// Whether nothing can move either way any more: the peer finished sending,
    /// our side was shut down and written out, and the handler consumed everything.
    pub fn is_spent(&self) -> bool {
        self.peer_closed && self.write_side == WriteSide::Shut && self.rx.is_empty()
    }

    /// Whether the events of this phase reach the handler.
    pub fn delivers_events(&self) -> bool {
        self.attached && self.phase == Phase::Open
    }
}

/// A socket read and written with the system calls themselves. libc's `recv` and
/// `send` are thread-cancellation points, each wrapped in two atomic updates of the
/// thread's cancellation state; sandport cancels no thread, and on the hot path (one
/// of each per request) the wrappers cost about 2% of a request's CPU.
struct Direct<'a>(&'a TcpStream);

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

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
