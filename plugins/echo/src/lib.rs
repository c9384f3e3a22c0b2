//! Echo: every byte received is sent back, with backpressure.
//!
//! Bytes move from the receive buffer to the send buffer in chunks while the send
//! buffer takes them. When it is full they stay in the receive buffer, which stops the
//! host reading from a client that does not read its echo, and the next `send` event
//! (the socket drained some) resumes the copy. So a payload of any size passes through
//! bounded buffers.

use sandport_guest::{Conn, Handler, RecvBuf, log};

/// The most copied per `send` call: big enough that a call's cost is small next to the
/// copy, small enough not to hold much guest memory.
const CHUNK: usize = 64 * 1024;

/// The handler; it keeps no state, the buffers are all in the host.
#[derive(Default)]
struct Echo;

impl Handler for Echo {
    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        pump(conn, rx);
    }

    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        pump(conn, rx);
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
