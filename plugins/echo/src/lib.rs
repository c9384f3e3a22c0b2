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

use sandport_guest::{Conn, ConnMap, Handler, RecvBuf, log};

/// The most copied per `send` call: big enough that a call's cost is small next to the
/// copy, small enough not to hold much guest memory.
const CHUNK: usize = 64 * 1024;

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
    let mut room = match conn.send_room() {
        Ok(room) => room as usize,
        // Closing: nothing more goes out.
        Err(_) => return,
    };
    while room > 0 {
        let chunk = rx.read(0, room.min(CHUNK));
        if chunk.is_empty() {
            return;
        }
        match conn.send(&chunk) {
            Ok(left) => room = left as usize,
            Err(e) => {
                log::warn(&format!("echo {conn}: send failed: {e}"));
                return;
            }
        }
        if let Err(e) = rx.remove(chunk.len()) {
            log::warn(&format!("echo {conn}: remove failed: {e}"));
            return;
        }
    }
}

sandport_guest::export!(Echo);
