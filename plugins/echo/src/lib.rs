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
//!
//! Configuration (both optional, under `[listener.config]`): `greeting`, a line sent to
//! each client on accept; `fault-trigger`, bytes that make the echo trap when they
//! arrive (the conformance suite's way to check that a fault is contained; see
//! `plugins/CONFORMANCE.md`).

use sandport_guest::{Conn, ConnMap, Error, Handler, Peer, RecvBuf, SendEvents, config, log};

/// The handler; the bytes are all in the host, it only remembers who has finished.
#[derive(Default)]
struct Echo {
    /// Connections whose client half-closed while part of its echo waited for room.
    ending: ConnMap<()>,
    /// The listener's configuration, read at the first accept (it cannot change for
    /// the life of an instance: a new configuration means a new instance).
    settings: Option<Settings>,
}

/// What the echo reads from its listener's configuration.
struct Settings {
    greeting: Option<Vec<u8>>,
    fault_trigger: Option<Vec<u8>>,
}

impl Echo {
    fn settings(&mut self) -> &Settings {
        self.settings.get_or_insert_with(|| Settings {
            greeting: config::get("greeting").map(|g| [g.as_bytes(), b"\n"].concat()),
            fault_trigger: config::get("fault-trigger").map(String::into_bytes),
        })
    }
}

impl Handler for Echo {
    /// `on_send` only resumes a copy that stopped for lack of room.
    const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;

    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        if let Some(greeting) = &self.settings().greeting {
            let _ = conn.send(greeting);
        }
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        if let Some(trigger) = &self.settings().fault_trigger
            && rx.find(trigger, 0).is_some()
        {
            panic!("echo {conn}: the configured fault trigger arrived");
        }
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
