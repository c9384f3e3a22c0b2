//! Echo: every byte received is sent back, with backpressure, and none is lost at the end.
//!
//! Bytes move from the receive buffer to the send buffer in chunks while the send
//! buffer takes them. When it is full they stay in the receive buffer, which stops the
//! host reading from a client that does not read its echo, and the next `send` event
//! (the socket drained some) resumes the copy. So a payload of any size passes through
//! bounded buffers.
//!
//! When the client half-closes, bytes may still wait in the receive buffer for room:
//! echo remembers the end-of-stream and closes (after sending) only once the last of
//! them is in the send buffer, so the client reads its whole echo before EOF.

use sandport_guest::{Conn, ConnMap, Error, Handler, RecvBuf, log};

/// The handler; the bytes are all in the host, it only remembers who has finished.
#[derive(Default)]
struct Echo {
    /// Connections whose client half-closed while part of its echo waited for room.
    ending: ConnMap<()>,
}

impl Handler for Echo {
    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        pump(conn, rx);
    }

    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        pump(conn, rx);
        // `ending` first: the common case then makes no host call for `rx.len()`.
        if self.ending.contains(conn) && rx.is_empty() {
            self.ending.remove(conn);
            let _ = conn.close_after_send();
        }
    }

    fn on_eof(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        pump(conn, rx);
        if rx.is_empty() {
            let _ = conn.close_after_send();
        } else {
            self.ending.insert(conn, ());
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        self.ending.remove(conn);
    }
}

/// Copy from `rx` to the send buffer until one of them is full or empty.
fn pump(conn: Conn, rx: RecvBuf<'_>) {
    match rx.pipe_to(conn) {
        // Closing: nothing more goes out.
        Ok(_) | Err(Error::Closed) => {}
        Err(e) => log::warn(&format!("echo {conn}: {e}")),
    }
}

sandport_guest::export!(Echo);
