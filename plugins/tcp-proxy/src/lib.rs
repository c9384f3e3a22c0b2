//! tcp-proxy: forwards every accepted connection to one upstream, both ways.
//!
//! Configuration: `upstream = "IP:PORT"` in the listener's `[listener.config]` table,
//! and the same address in its `allow-connect` list. Each accepted client gets its own
//! upstream connection, dialed at once; the client's first bytes wait in the upstream's
//! send buffer until the dial completes. A missing `upstream` or a refused dial is
//! logged and the client is closed.
//!
//! Design:
//!
//! - **Pairs.** Each connection's [`Side`] names its peer, so either side finds the other.
//! - **Backpressure both ways.** Bytes move from a side's receive buffer to its peer's
//!   send buffer only as far as the peer's room allows (`RecvBuf::pipe_to`, one host
//!   call that moves them inside the host); the rest stays in the receive buffer,
//!   which (once full) makes the host stop reading that side. So a slow
//!   reader on one side pauses the writer on the other, with bounded buffers and no
//!   copy kept in the guest.
//! - **Resuming a stalled side.** Room for a stalled side's bytes appears in its peer's
//!   `send` event; that event reads the stalled side's receive buffer through
//!   [`Conn::with_recv_buffer`] and resumes the copy.
//! - **Half-close.** When a side reaches end-of-stream and everything it sent is
//!   forwarded, its peer is `shutdown`: the other party reads end-of-stream too and may
//!   still answer. When both directions are finished, both connections close after
//!   sending.
//! - **Either side gone** (reset, error, a failed dial): what is still readable from it
//!   is forwarded as far as room allows, and its peer is closed after sending.

use sandport_guest::{Conn, ConnMap, Error, Handler, Peer, RecvBuf, SendEvents, config, log};

/// One connection of a pair, as the proxy sees it.
struct Side {
    /// The other connection of the pair.
    peer: Conn,
    /// This side's party sent end-of-stream: nothing more arrives in its receive buffer.
    eof: bool,
    /// Bytes wait in this side's receive buffer for room in the peer's send buffer.
    stalled: bool,
    /// Everything this side will send is forwarded and the peer is shut down.
    done: bool,
}

impl Side {
    fn new(peer: Conn) -> Self {
        Side { peer, eof: false, stalled: false, done: false }
    }
}

/// The handler: a [`Side`] for every connection, client and upstream alike.
#[derive(Default)]
struct Proxy {
    sides: ConnMap<Side>,
}

impl Handler for Proxy {
    /// `on_send` only resumes a side that stalled for lack of room on the other.
    const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;

    fn on_accept(&mut self, client: Conn, peer: Peer) {
        let Some(address) = config::get("upstream") else {
            log::error(&format!("tcp-proxy: client {client} ({peer}) refused: no `upstream` configured"));
            let _ = client.close_now();
            return;
        };
        match Conn::connect(&address) {
            Ok(upstream) => {
                self.sides.insert(client, Side::new(upstream));
                self.sides.insert(upstream, Side::new(client));
            }
            Err(e) => {
                log::error(&format!("tcp-proxy: client {client} ({peer}) refused: upstream {address}: {e}"));
                let _ = client.close_now();
            }
        }
    }

    /// Only a failure matters here; `on_close` follows it and closes the client.
    fn on_connect(&mut self, upstream: Conn, result: Result<(), Error>) {
        if let (Err(e), Some(side)) = (result, self.sides.get(upstream)) {
            log::error(&format!("tcp-proxy: upstream {upstream} for client {} failed: {e}", side.peer));
        }
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        self.forward(conn, rx);
    }

    /// Room in `conn`'s send buffer: move what its peer has waiting.
    fn on_send(&mut self, conn: Conn, _rx: RecvBuf<'_>, _n: u32) {
        let Some(peer) = self.sides.get(conn).map(|side| side.peer) else { return };
        if self.sides.get(peer).is_some_and(|side| side.stalled) {
            let _ = peer.with_recv_buffer(|rx| self.forward(peer, rx));
        }
    }

    fn on_eof(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        if let Some(side) = self.sides.get_mut(conn) {
            side.eof = true;
        }
        self.forward(conn, rx);
    }

    fn on_close(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        if let Some(side) = self.sides.remove(conn) {
            self.sides.remove(side.peer);
            copy(rx, side.peer);
            let _ = side.peer.close_after_send();
        }
    }
}

impl Proxy {
    /// Copy what fits from `conn`'s receive buffer to its peer, and pass end-of-stream
    /// on once the last byte is across.
    fn forward(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        let Some(side) = self.sides.get_mut(conn) else { return };
        side.stalled = !copy(rx, side.peer);
        if !side.eof || side.stalled || side.done {
            return;
        }
        side.done = true;
        let peer = side.peer;
        if let Err(e) = peer.shutdown() {
            log::warn(&format!("tcp-proxy: shutdown of {peer} failed: {e}"));
        }
        if self.sides.get(peer).is_some_and(|other| other.done) {
            let _ = conn.close_after_send();
            let _ = peer.close_after_send();
        }
    }
}

/// Move what fits from `rx` to `to`; returns whether `rx` is now empty. A closing
/// `to` takes nothing more: its `close` event follows.
fn copy(rx: RecvBuf<'_>, to: Conn) -> bool {
    let _ = rx.pipe_to(to);
    rx.is_empty()
}

sandport_guest::export!(Proxy);
