//! Per-connection state: the socket, its two buffers, readiness, lifecycle, timers.
//!
//! A [`Connection`] moves bytes between its socket and its buffers when the reactor
//! tells it to, within the limits of the buffers. It never calls a handler and never
//! decides on its own to close: it reports what the socket said and the reactor acts.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;

use mio::net::TcpStream;

use crate::handler::ConnId;
use crate::mbuf::Mbuf;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading, writing, delivering events.
    Open,
    /// The handler asked to close after the send buffer drains: no more reading and
    /// no events until CLOSE.
    Draining,
    /// About to be closed and forgotten; only CLOSE remains.
    Closing,
}

/// One accepted TCP connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub id: ConnId,
    /// Index of the listener that accepted it.
    pub listener: usize,
    pub socket: TcpStream,
    pub peer: SocketAddr,
    /// Bytes read from the peer, not yet removed by the handler.
    pub rx: Mbuf,
    /// Bytes the handler sent, not yet written to the socket.
    pub tx: Mbuf,
    /// The socket may have bytes to read (edge-triggered readiness not yet used up).
    pub readable: bool,
    /// The socket may accept bytes.
    pub writable: bool,
    /// The peer closed its sending side; nothing more will arrive.
    pub peer_closed: bool,
    pub phase: Phase,
    /// The listener's handler serves this connection. False once CLOSE was delivered,
    /// or when the handler's instance died and the connection is closing unattended.
    pub attached: bool,
    /// In the reactor's service queue.
    pub queued: bool,
    /// Registered for WRITABLE readiness (only while a write would block).
    pub write_interest: bool,
    /// Armed handler timers: timer id -> arming number in the reactor's queue.
    pub timers: HashMap<u64, u64>,
}

impl Connection {
    pub fn new(
        id: ConnId,
        listener: usize,
        socket: TcpStream,
        peer: SocketAddr,
        limits: &crate::config::Limits,
    ) -> Connection {
        Connection {
            id,
            listener,
            socket,
            peer,
            rx: Mbuf::with_limit(limits.recv_buffer),
            tx: Mbuf::with_limit(limits.send_buffer),
            readable: true,
            writable: true,
            peer_closed: false,
            phase: Phase::Open,
            attached: true,
            queued: false,
            write_interest: false,
            timers: HashMap::new(),
        }
    }

    /// Write the send buffer until it is empty or the socket would block. Returns the
    /// bytes written.
    pub fn write_out(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.tx.is_empty() {
            match self.tx.drain_to(&mut self.socket) {
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
        Ok(total)
    }

    /// Read into the receive buffer until it is full, the socket would block, the
    /// peer closed, or `budget` bytes arrived. Returns the bytes read.
    pub fn read_in(&mut self, budget: usize) -> io::Result<usize> {
        let mut total = 0;
        while total < budget && self.rx.room() > 0 {
            match self.rx.fill_from(&mut self.socket, budget - total) {
                Ok(0) => {
                    self.peer_closed = true;
                    self.readable = false;
                    break;
                }
                Ok(n) => total += n,
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

    /// Whether the socket still has work this connection could do right now.
    pub fn has_io_pending(&self) -> bool {
        let can_read = self.phase == Phase::Open && self.readable && !self.peer_closed && self.rx.room() > 0;
        let can_write = self.writable && !self.tx.is_empty();
        can_read || can_write
    }

    /// Whether the events of this phase reach the handler.
    pub fn delivers_events(&self) -> bool {
        self.attached && self.phase == Phase::Open
    }
}
