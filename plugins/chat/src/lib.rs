//! chat: a line-based chat room; every client of the listener is in it.
//!
//! Protocol (the tests depend on it exactly; `ID` is the decimal connection id):
//!
//! - on connect the client gets `* welcome userID`, everyone else `* userID joined`;
//! - each line `L` a client sends goes to every other client as `userID: L`;
//! - `/idle MILLIS` sets the client's idle interval (default 10000) and is answered with
//!   `* idle MILLIS` to that client only;
//! - a client that sends no line for its idle interval gets `* ping`, and again after
//!   each further interval;
//! - a line over 4096 bytes gets `* line too long` and the connection is closed;
//! - when a client leaves, everyone else gets `* userID left`.
//!
//! Lines end with `\n` (a `\r` before it is dropped). A client too slow to take a line
//! misses that line rather than holding up the room.

use std::time::Duration;

use sandport_guest::{ByteSource, Conn, ConnMap, Error, FrameError, Handler, Peer, RecvBuf, log};

/// Longest line accepted, without its `\n`.
const MAX_LINE: usize = 4096;
/// The id of each client's idle timer.
const IDLE_TIMER: u64 = 1;
/// Idle interval until a client sets its own.
const DEFAULT_IDLE: Duration = Duration::from_millis(10_000);

/// What the room knows about a client.
struct Member {
    /// How long without a line from the client before it is pinged.
    idle: Duration,
}

/// The room.
#[derive(Default)]
struct Chat {
    members: ConnMap<Member>,
}

impl Handler for Chat {
    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        deliver(conn, format!("* welcome user{conn}\n").as_bytes());
        self.broadcast(conn, format!("* user{conn} joined\n").as_bytes());
        self.members.insert(conn, Member { idle: DEFAULT_IDLE });
        arm_idle(conn, DEFAULT_IDLE);
    }

    fn on_recv(&mut self, conn: Conn, mut rx: RecvBuf<'_>, _n: u32) {
        loop {
            match rx.next_line(MAX_LINE) {
                Ok(Some(line)) => self.on_line(conn, &line),
                Ok(None) => return,
                Err(FrameError::TooLong) => {
                    deliver(conn, b"* line too long\n");
                    let _ = conn.close_after_send();
                    return;
                }
                // The connection is closing; its `close` event will follow.
                Err(FrameError::Source(_)) => return,
            }
        }
    }

    fn on_timer(&mut self, conn: Conn, _rx: RecvBuf<'_>, timer_id: u64) {
        if let (IDLE_TIMER, Some(member)) = (timer_id, self.members.get(conn)) {
            deliver(conn, b"* ping\n");
            arm_idle(conn, member.idle);
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        if self.members.remove(conn).is_some() {
            self.broadcast(conn, format!("* user{conn} left\n").as_bytes());
        }
    }
}

impl Chat {
    /// A complete line from `from`: a command, or a message for the others.
    fn on_line(&mut self, from: Conn, line: &[u8]) {
        let (word, arg) = match line.iter().position(|&b| b == b' ') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        if word == b"/idle" {
            match (parse_millis(arg), self.members.get_mut(from)) {
                (Some(millis), Some(member)) => {
                    member.idle = Duration::from_millis(millis);
                    deliver(from, format!("* idle {millis}\n").as_bytes());
                }
                _ => deliver(from, b"* usage: /idle <millis>\n"),
            }
        } else {
            let message = [format!("user{from}: ").as_bytes(), line, b"\n"].concat();
            self.broadcast(from, &message);
        }
        if let Some(member) = self.members.get(from) {
            arm_idle(from, member.idle);
        }
    }

    /// Send `message` to every client but `except`.
    fn broadcast(&self, except: Conn, message: &[u8]) {
        for to in self.members.ids().filter(|&to| to != except) {
            deliver(to, message);
        }
    }
}

/// Send `message` to `to`, giving up on it rather than waiting: a full send buffer
/// means a client that is not reading, and the room must not stall for it.
fn deliver(to: Conn, message: &[u8]) {
    match to.send(message) {
        // A closing client gets its `close` event soon; nothing to report.
        Ok(_) | Err(Error::Closed) => {}
        Err(Error::LimitExceeded) => {
            log::warn(&format!("chat: user{to} is not reading; dropped a line for it"));
        }
        Err(e) => log::warn(&format!("chat: send to user{to} failed: {e}")),
    }
}

/// (Re)start `conn`'s idle timer.
fn arm_idle(conn: Conn, idle: Duration) {
    if let Err(e) = conn.set_timer(IDLE_TIMER, idle) {
        log::warn(&format!("chat: idle timer of user{conn}: {e}"));
    }
}

/// A positive number of milliseconds; zero would ping without pause.
fn parse_millis(arg: &[u8]) -> Option<u64> {
    let millis: u64 = std::str::from_utf8(arg).ok()?.trim().parse().ok()?;
    (millis > 0).then_some(millis)
}

sandport_guest::export!(Chat);
