//! chat: a line-based chat room; every client of the listener is in it.
//!
//! Protocol (the tests depend on it exactly; `ID` is the decimal connection id, `NAME`
//! a client's name, `userID` until it picks one):
//!
//! - on connect the client gets `* welcome userID`, everyone else `* userID joined`;
//! - each line `L` a client sends goes to every other client as `NAME: L`;
//! - `/name NEW` renames the client (1 to 32 bytes, no spaces or control characters,
//!   not a name in use): it gets `* you are NEW`, everyone else `* NAME is now NEW`;
//!   otherwise `* name refused`;
//! - `/idle MILLIS` sets the client's idle interval (default 10000) and is answered with
//!   `* idle MILLIS` to that client only;
//! - a client that sends no line for its idle interval gets `* ping`, and again after
//!   each further interval;
//! - a line over 4096 bytes gets `* line too long` and the connection is closed;
//! - `/timer ID MILLIS` arms (or re-arms) the client's timer `ID` (1 or more) and is
//!   answered `* timer ID armed`, then `* timer ID fired` when it fires; `/cancel ID`
//!   answers `* timer ID cancelled`, or `* timer ID not armed`;
//! - `/quit` answers `* bye` and closes after sending; `/drop` closes at once;
//! - when a client leaves, everyone else gets `* NAME left`.
//!
//! Configuration (both optional, under `[listener.config]`): `motd`, a line every new
//! client gets as `* MOTD` after its welcome; `fault-trigger`, a line that makes the
//! chat trap (the conformance suite's way to check that a fault is contained). The
//! timers, `/quit`, `/drop` and the configuration are the part of the chat behaviour
//! that every language's chat implements (`plugins/CONFORMANCE.md`).
//!
//! Lines end with `\n` (a `\r` before it is dropped). A client too slow to take a line
//! misses that line rather than holding up the room.
//!
//! The chat migrates: when the listener is swapped to a new version that migrates too,
//! every member moves with its name and idle interval, and no one is told that anyone
//! joined or left (the room is its members: there is no other state to carry); the new version greets each member with `* VERSION took over, you
//! are still NAME`. Built with the feature `next` (the test fixture `chat-next` is this
//! source built so) it is a visibly different version: it welcomes with `* welcome to
//! chat-next, userID` and relays lines as `<NAME> L`.

use std::time::Duration;

use sandport_guest::{
    ByteSource, Conn, ConnMap, Error, FrameError, Handler, Migrate, Peer, RecvBuf, SendEvents, config, log,
};

/// Longest line accepted, without its `\n`.
const MAX_LINE: usize = 4096;
/// Longest name, in bytes.
const MAX_NAME: usize = 32;
/// The id of each client's idle timer; the ids of `/timer` start at 1.
const IDLE_TIMER: u64 = 0;
/// The id of the timer that resumes reading a client's lines where an event stopped;
/// `/timer` ids stay below it.
const RESUME_TIMER: u64 = u64::MAX;
/// Lines delivered (one line to one member counts one) in one event, at most: a burst
/// of short lines, or a big room, must not push an event past its CPU-time limit,
/// which would fault the instance and so end the whole room. The rest waits in the
/// receive buffer (the host stops reading the client meanwhile) for a timer that fires
/// at once, on the loop's next turn.
const DELIVERIES_PER_EVENT: usize = 4096;
/// Idle interval until a client sets its own.
const DEFAULT_IDLE: Duration = Duration::from_millis(10_000);
/// The first byte of a handed-over member: the layout of what follows (the idle
/// interval in milliseconds as 8 bytes little-endian, then the name).
const STATE_V1: u8 = 1;

/// What differs between the versions; the rest is one source.
#[cfg(not(feature = "next"))]
mod style {
    /// The version's name, as members see it.
    pub const VERSION: &str = "chat";

    /// The first line a new client gets.
    pub fn welcome(name: &str) -> String {
        format!("* welcome {name}\n")
    }

    /// A line `line` from `from`, as the others get it.
    pub fn message(from: &str, line: &[u8]) -> Vec<u8> {
        [from.as_bytes(), b": ", line, b"\n"].concat()
    }
}

#[cfg(feature = "next")]
mod style {
    /// The version's name, as members see it.
    pub const VERSION: &str = "chat-next";

    /// The first line a new client gets.
    pub fn welcome(name: &str) -> String {
        format!("* welcome to chat-next, {name}\n")
    }

    /// A line `line` from `from`, as the others get it.
    pub fn message(from: &str, line: &[u8]) -> Vec<u8> {
        [b"<", from.as_bytes(), b"> ", line, b"\n"].concat()
    }
}

/// What the room knows about a client.
struct Member {
    /// What the others call it.
    name: String,
    /// How long without a line from the client before it is pinged.
    idle: Duration,
}

impl Member {
    /// The member as `hand_over` passes it on (see [`STATE_V1`]).
    fn encode(&self) -> Vec<u8> {
        let millis = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        [&[STATE_V1][..], &millis.to_le_bytes(), self.name.as_bytes()].concat()
    }

    /// A member from what `encode` made, if it is one.
    fn decode(state: &[u8]) -> Option<Member> {
        let (&STATE_V1, rest) = state.split_first()? else { return None };
        let (millis, name) = rest.split_first_chunk::<8>()?;
        let name = std::str::from_utf8(name).ok().filter(|name| valid_name(name))?;
        Some(Member { name: name.to_owned(), idle: Duration::from_millis(u64::from_le_bytes(*millis)) })
    }
}

/// The room.
#[derive(Default)]
struct Chat {
    members: ConnMap<Member>,
    /// The listener's configuration, read at the first event that needs it (it cannot
    /// change for the life of an instance).
    settings: Option<Settings>,
}

/// What the chat reads from its listener's configuration.
struct Settings {
    /// The whole line a newcomer gets after its welcome.
    motd: Option<Vec<u8>>,
    fault_trigger: Option<Vec<u8>>,
}

impl Chat {
    fn settings(&mut self) -> &Settings {
        self.settings.get_or_insert_with(|| Settings {
            motd: config::get("motd").map(|motd| format!("* {motd}\n").into_bytes()),
            fault_trigger: config::get("fault-trigger").map(String::into_bytes),
        })
    }
}

impl Handler for Chat {
    /// A member whose send buffer is full misses lines; nothing waits for room.
    const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;

    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        let name = format!("user{conn}");
        deliver(conn, style::welcome(&name).as_bytes());
        if let Some(motd) = &self.settings().motd {
            deliver(conn, motd);
        }
        self.broadcast(conn, format!("* {name} joined\n").as_bytes());
        self.members.insert(conn, Member { name, idle: DEFAULT_IDLE });
        arm_idle(conn, DEFAULT_IDLE);
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        self.read_lines(conn, rx);
    }

    fn on_timer(&mut self, conn: Conn, rx: RecvBuf<'_>, timer_id: u64) {
        match (timer_id, self.members.get(conn)) {
            (RESUME_TIMER, _) => self.read_lines(conn, rx),
            (IDLE_TIMER, Some(member)) => {
                deliver(conn, b"* ping\n");
                arm_idle(conn, member.idle);
            }
            (IDLE_TIMER, None) => {}
            (id, _) => deliver(conn, format!("* timer {id} fired\n").as_bytes()),
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        if let Some(member) = self.members.remove(conn) {
            self.broadcast(conn, format!("* {} left\n", member.name).as_bytes());
        }
    }
}

impl Migrate for Chat {
    /// The member leaves this version quietly: the others will find it in the next.
    fn hand_over(&mut self, conn: Conn) -> Vec<u8> {
        // A connection that is not a member (it was refused) carries nothing; the
        // next version closes it. The member stays: if the migration is called off,
        // this version serves it on.
        self.members.get(conn).map_or_else(Vec::new, Member::encode)
    }

    fn take_over(&mut self, conn: Conn, state: &[u8]) {
        let Some(member) = Member::decode(state) else {
            log::warn(&format!("chat: {conn} was handed over with state this version cannot read; closing it"));
            deliver(conn, b"* your session could not be carried over\n");
            let _ = conn.close_after_send();
            return;
        };
        deliver(conn, format!("* {} took over, you are still {}\n", style::VERSION, member.name).as_bytes());
        arm_idle(conn, member.idle);
        self.members.insert(conn, member);
    }
}

impl Chat {
    /// Handle the complete lines `conn` has sent, up to [`DELIVERIES_PER_EVENT`]; the
    /// [`RESUME_TIMER`] brings the rest.
    fn read_lines(&mut self, conn: Conn, mut rx: RecvBuf<'_>) {
        let mut deliveries = 0;
        loop {
            if deliveries >= DELIVERIES_PER_EVENT {
                if let Err(e) = conn.set_timer(RESUME_TIMER, Duration::ZERO) {
                    log::warn(&format!("chat: cannot resume reading user{conn}: {e}"));
                }
                return;
            }
            match rx.next_line(MAX_LINE) {
                Ok(Some(line)) => {
                    deliveries += self.members.len().max(1);
                    self.on_line(conn, &line);
                }
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

    /// A complete line from `from`: a command, or a message for the others.
    fn on_line(&mut self, from: Conn, line: &[u8]) {
        if self.settings().fault_trigger.as_deref() == Some(line) {
            panic!("chat {from}: the configured fault trigger arrived");
        }
        let (word, arg) = match line.iter().position(|&b| b == b' ') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        if word == b"/quit" {
            deliver(from, b"* bye\n");
            let _ = from.close_after_send();
            return;
        } else if word == b"/drop" {
            let _ = from.close_now();
            return;
        } else if word == b"/timer" {
            user_timer(from, arg);
        } else if word == b"/cancel" {
            cancel_user_timer(from, arg);
        } else if word == b"/idle" {
            match (parse_millis(arg), self.members.get_mut(from)) {
                (Some(millis), Some(member)) => {
                    member.idle = Duration::from_millis(millis);
                    deliver(from, format!("* idle {millis}\n").as_bytes());
                }
                _ => deliver(from, b"* usage: /idle <millis>\n"),
            }
        } else if word == b"/name" {
            self.rename(from, arg);
        } else if let Some(member) = self.members.get(from) {
            self.broadcast(from, &style::message(&member.name, line));
        }
        if let Some(member) = self.members.get(from) {
            arm_idle(from, member.idle);
        }
    }

    /// `/name NEW` from `from`.
    fn rename(&mut self, from: Conn, new: &[u8]) {
        let new = std::str::from_utf8(new).ok().filter(|new| valid_name(new));
        let taken = |name: &str| self.members.iter().any(|(_, member)| member.name == name);
        let Some(new) = new.filter(|new| !taken(new)).map(str::to_owned) else {
            deliver(from, b"* name refused\n");
            return;
        };
        let Some(member) = self.members.get_mut(from) else { return };
        let old = std::mem::replace(&mut member.name, new.clone());
        deliver(from, format!("* you are {new}\n").as_bytes());
        self.broadcast(from, format!("* {old} is now {new}\n").as_bytes());
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

/// `/timer ID MILLIS` from `conn`.
fn user_timer(conn: Conn, arg: &[u8]) {
    let mut words = std::str::from_utf8(arg).unwrap_or("").split(' ');
    let (Some(id), Some(millis), None) = (words.next(), words.next(), words.next()) else {
        deliver(conn, b"* usage: /timer ID MILLIS\n");
        return;
    };
    match (parse_positive(id), parse_positive(millis)) {
        (Some(id), Some(millis)) => match conn.set_timer(id, Duration::from_millis(millis)) {
            Ok(()) => deliver(conn, format!("* timer {id} armed\n").as_bytes()),
            Err(e) => deliver(conn, format!("* timer {id}: {e}\n").as_bytes()),
        },
        _ => deliver(conn, b"* usage: /timer ID MILLIS\n"),
    }
}

/// `/cancel ID` from `conn`.
fn cancel_user_timer(conn: Conn, arg: &[u8]) {
    let Some(id) = std::str::from_utf8(arg).ok().and_then(parse_positive) else {
        deliver(conn, b"* usage: /cancel ID\n");
        return;
    };
    match conn.cancel_timer(id) {
        Ok(true) => deliver(conn, format!("* timer {id} cancelled\n").as_bytes()),
        Ok(false) => deliver(conn, format!("* timer {id} not armed\n").as_bytes()),
        Err(e) => deliver(conn, format!("* timer {id}: {e}\n").as_bytes()),
    }
}

/// A decimal number of at least 1 and below [`RESUME_TIMER`] (so, as a `/timer` id,
/// never one of the chat's own).
fn parse_positive(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&n| n > 0 && n < RESUME_TIMER)
}

/// A positive number of milliseconds; zero would ping without pause.
fn parse_millis(arg: &[u8]) -> Option<u64> {
    parse_positive(std::str::from_utf8(arg).ok()?.trim())
}

/// Whether `name` can name a member: short, and nothing in it that would make a line
/// ambiguous or garble a terminal.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

sandport_guest::export_migrating!(Chat);
