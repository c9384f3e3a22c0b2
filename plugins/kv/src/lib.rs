//! kv: a key-value store that speaks the Redis protocol (RESP), for `redis-cli` and
//! any Redis client library.
//!
//! Commands: PING, ECHO, GET, SET (with EX, PX, NX, XX), DEL, EXISTS, INCR, INCRBY,
//! DECR, DECRBY, MGET, MSET, EXPIRE, TTL, PTTL, DBSIZE, FLUSHALL, QUIT (and COMMAND,
//! answered with an empty table). Values are strings only. Errors use Redis's words
//! (`commands`); a stream that is not RESP gets `-ERR Protocol error: ...` and is
//! closed, as Redis does (`resp`).
//!
//! This module owns the connections: it reads whole commands out of the receive buffer
//! (a partial one stays there, is not read again until the bytes it needs have arrived,
//! and then only from where the last look stopped), answers every complete command in
//! order (pipelining), and holds replies the send buffer has no room for, reading no
//! further commands from that client until they are out. It never parses RESP or
//! touches keys itself.
//!
//! One key space per plugin instance. Under the listener's default `instance = "shared"`
//! every client of the listener sees the same keys; under `per-worker` each worker's
//! instance would have a key space of its own, and under `per-connection` each client,
//! which is seldom what a cache wants.
//!
//! A swap to a version that migrates too keeps the whole key space (deadlines as time
//! left) and every client with the replies it is owed; the listener's `migrate-state`
//! limit (32 MiB by default) bounds the key space handed over, so raise it with
//! `maxmemory`.
//!
//! Expiry is lazy (a key past its deadline is missing to every command from then on,
//! and its memory goes when a write meets it) and swept: while keys have deadlines, a
//! timer on one of the connections wakes the instance every 100 ms to remove the ones
//! due. Time is the guest's monotonic clock
//! (`std::time::Instant`, WASI's monotonic clock, which the host answers at once).
//!
//! Configuration (`[listener.config]`, both optional; sizes in bytes or as "N KiB",
//! "N MiB", "N GiB"):
//! - `maxmemory`, default 32 MiB: the bytes keys and values may hold, by the store's
//!   estimate (their bytes plus a per-entry overhead). Writes past it get `-OOM`, as
//!   Redis's `maxmemory` with `noeviction`. The guest cannot see its listener's
//!   `memory` limit, so the default is half of that limit's default (64 MiB): the other
//!   half is headroom for the hash table's growth, the commands being read and the
//!   replies being sent. Set it to about half of `memory` when you change that.
//! - `max-command`, default 512 KiB: the longest command (and so value) accepted; a
//!   longer one is a protocol error. Keep it below the listener's `recv-buffer` (1 MiB
//!   by default): a command must fit in the receive buffer whole before it runs.

mod commands;
mod resp;
mod store;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandport_guest::{Conn, ConnMap, Error, Handler, Migrate, Peer, RecvBuf, SendEvents, config, log};

use crate::commands::{After, Kv};
use crate::resp::{Parse, Partial, ProtocolError, Resume, Scan};
use crate::store::Store;

/// `maxmemory` when the configuration has none: half of the default `memory` limit.
const DEFAULT_MAXMEMORY: usize = 32 << 20;
/// `max-command` when the configuration has none: half of the default `recv-buffer`.
const DEFAULT_MAX_COMMAND: usize = 512 << 10;

/// Bytes read from the receive buffer at once, unless one command needs more: enough
/// for many pipelined commands per host call, little for a guest to hold.
const READ_CHUNK: usize = 64 << 10;
/// The capacity the reply buffer keeps between events: what a batch of replies to a
/// `READ_CHUNK` of small commands takes; a bigger one is given back.
const REPLIES_KEPT: usize = 64 << 10;

/// The timer id of the expiry sweep.
const SWEEP_TIMER: u64 = 1;
/// How often the sweep runs while keys have deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// When a sweep had more due keys than its budget: soon again.
const SWEEP_AGAIN: Duration = Duration::from_millis(1);
/// Keys one sweep may remove, so that one event stays short.
const SWEEP_BUDGET: usize = 2000;

/// The handler: the key space and each connection's progress.
#[derive(Default)]
struct Server {
    /// Made at the first event, from the listener's configuration.
    kv: Option<Kv>,
    /// The longest command, from the configuration (read with `kv`).
    max_command: usize,
    sessions: ConnMap<Session>,
    /// The connection whose timer runs the sweep, if one is armed.
    sweeper: Option<Conn>,
    /// Where a batch's replies are written; empty between events, kept for its
    /// capacity (growing a fresh one per batch showed in pipelined GETs).
    replies: Vec<u8>,
}

/// One client's state between events.
#[derive(Default)]
struct Session {
    /// Replies the send buffer had no room for yet.
    pending: Vec<u8>,
    /// Bytes the receive buffer must hold before the command at its start can be whole.
    need: usize,
    /// How far that partial command was checked: the next look starts there.
    resume: Option<Resume>,
    /// The client half-closed: close once its last command is answered.
    eof: bool,
    /// QUIT or a protocol error: read nothing more, close once `pending` is out.
    quit: bool,
}

/// Why serving a connection stopped.
#[derive(PartialEq, Eq)]
enum Stop {
    /// Every whole command is answered; waiting for bytes.
    Idle,
    /// Replies wait for send-buffer room (a `send` event will come).
    Blocked,
    /// The connection is closing.
    Closing,
}

impl Server {
    /// The key space, made with the configuration's settings at the first call.
    fn kv(&mut self) -> &mut Kv {
        if self.kv.is_none() {
            self.max_command = size("max-command", DEFAULT_MAX_COMMAND);
        }
        self.kv.get_or_insert_with(|| Kv::new(size("maxmemory", DEFAULT_MAXMEMORY)))
    }

    /// Send what waits, then answer every whole command in `rx` while replies fit.
    fn serve(&mut self, conn: Conn, rx: RecvBuf<'_>) -> Stop {
        self.kv();
        let max_command = self.max_command;
        let (Some(kv), Some(session)) = (self.kv.as_mut(), self.sessions.get_mut(conn)) else { return Stop::Closing };
        let stop = serve_session(kv, max_command, conn, rx, session, &mut self.replies);
        if self.replies.capacity() > REPLIES_KEPT {
            self.replies = Vec::new();
        }
        self.arm_sweep(conn);
        stop
    }

    /// Make sure a sweep is armed while any key has a deadline.
    fn arm_sweep(&mut self, conn: Conn) {
        let has_deadlines = self.kv.as_mut().is_some_and(|kv| kv.store().has_deadlines());
        if self.sweeper.is_none() && has_deadlines && conn.set_timer(SWEEP_TIMER, SWEEP_EVERY).is_ok() {
            self.sweeper = Some(conn);
        }
    }

    /// After a `send` or end-of-stream: close if nothing is left to do.
    fn close_if_done(&mut self, conn: Conn, stop: Stop) {
        let Some(session) = self.sessions.get(conn) else { return };
        let done = (session.eof && stop == Stop::Idle) || (session.quit && session.pending.is_empty());
        if done {
            let _ = conn.close_after_send();
        }
    }
}

/// Serve one connection: its pending replies first, then its whole commands, their
/// replies written to `out` (left empty).
fn serve_session(
    kv: &mut Kv,
    max_command: usize,
    conn: Conn,
    rx: RecvBuf<'_>,
    session: &mut Session,
    out: &mut Vec<u8>,
) -> Stop {
    match flush(conn, &mut session.pending) {
        Ok(true) => {}
        Ok(false) => return Stop::Blocked,
        Err(_) => return Stop::Closing,
    }
    if session.quit {
        return Stop::Closing;
    }
    loop {
        let available = rx.len();
        if available == 0 || available < session.need {
            return Stop::Idle;
        }
        let room = match conn.send_room() {
            Ok(0) => return Stop::Blocked,
            Ok(room) => room as usize,
            Err(_) => return Stop::Closing,
        };
        if let Some(from) = session.resume.take() {
            // A partial command waited for more: look only at what is new since.
            let start = from.offset();
            let tail = rx.read(start, (available - start).min(READ_CHUNK.max(session.need - start)));
            match resp::resume(&tail, from, max_command) {
                Ok(Scan::Whole(len)) => session.need = len,
                Ok(Scan::Incomplete(partial)) => {
                    wait_for(session, partial);
                    continue;
                }
                Err(ProtocolError(message)) => {
                    resp::error_reply(out, &format!("ERR {message}"));
                    session.quit = true;
                }
            }
        }
        let buf = if session.quit { Vec::new() } else { rx.read(0, available.min(READ_CHUNK.max(session.need))) };
        let now = now();
        // One list for every command's arguments in the batch, not one per command.
        let mut args = Vec::new();
        let mut at = 0;
        session.need = 0;
        while at < buf.len() && out.len() < room {
            match resp::parse(&buf[at..], max_command, &mut args) {
                Ok(Parse::Command { len }) => {
                    at += len;
                    if !args.is_empty() && kv.execute(&args, now, out) == After::Close {
                        session.quit = true;
                        break;
                    }
                }
                Ok(Parse::Incomplete(partial)) => {
                    wait_for(session, partial);
                    break;
                }
                Err(ProtocolError(message)) => {
                    resp::error_reply(out, &format!("ERR {message}"));
                    session.quit = true;
                    break;
                }
            }
        }
        if let Err(e) = rx.remove(at) {
            log::warn(&format!("kv {conn}: {e}"));
            out.clear();
            return Stop::Closing;
        }
        let sent = send_some(conn, out);
        if let Ok(sent) = sent {
            session.pending.extend_from_slice(&out[sent..]);
        }
        out.clear();
        match sent {
            Err(_) => return Stop::Closing,
            Ok(_) if !session.pending.is_empty() => return Stop::Blocked,
            Ok(_) if session.quit => {
                let _ = conn.close_after_send();
                return Stop::Closing;
            }
            Ok(_) => {}
        }
    }
}

/// Remember a partial command at the start of the receive buffer.
fn wait_for(session: &mut Session, partial: Partial) {
    session.need = partial.need;
    session.resume = partial.resume;
}

/// Send `pending` as far as the send buffer takes it: true when all of it went.
fn flush(conn: Conn, pending: &mut Vec<u8>) -> Result<bool, Error> {
    let sent = send_some(conn, pending)?;
    pending.drain(..sent);
    Ok(pending.is_empty())
}

/// Send `bytes` as far as the send buffer takes them: how many it took (the rest
/// waits for `send` events).
fn send_some(conn: Conn, bytes: &[u8]) -> Result<usize, Error> {
    if bytes.is_empty() {
        return Ok(0);
    }
    // Mostly it all fits: one host call.
    match conn.send(bytes) {
        Ok(_) => return Ok(bytes.len()),
        Err(Error::LimitExceeded) => {}
        Err(e) => return Err(e),
    }
    // More than the room: a piece now.
    let room = (conn.send_room()? as usize).min(bytes.len());
    if room > 0 {
        conn.send(&bytes[..room])?;
    }
    Ok(room)
}

impl Handler for Server {
    /// `on_send` only resumes a client whose replies waited for room.
    const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;

    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        self.sessions.insert(conn, Session::default());
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        self.serve(conn, rx);
    }

    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        let stop = self.serve(conn, rx);
        self.close_if_done(conn, stop);
    }

    fn on_eof(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        if let Some(session) = self.sessions.get_mut(conn) {
            session.eof = true;
        }
        let stop = self.serve(conn, rx);
        self.close_if_done(conn, stop);
    }

    fn on_timer(&mut self, conn: Conn, _rx: RecvBuf<'_>, timer_id: u64) {
        if timer_id != SWEEP_TIMER {
            return;
        }
        self.sweeper = None;
        let swept = self.kv().store().sweep(now(), SWEEP_BUDGET);
        if swept == SWEEP_BUDGET && conn.set_timer(SWEEP_TIMER, SWEEP_AGAIN).is_ok() {
            self.sweeper = Some(conn);
        } else {
            self.arm_sweep(conn);
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        self.sessions.remove(conn);
        // Its timer went with it; the next connection served arms another.
        if self.sweeper == Some(conn) {
            self.sweeper = None;
        }
    }
}

/// Milliseconds since the instance first asked: the clock of every deadline.
fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// A size from the listener's configuration, or `default` (a bad value is logged).
fn size(key: &str, default: usize) -> usize {
    let Some(text) = config::get(key) else { return default };
    match parse_size(&text) {
        Some(bytes) => bytes,
        None => {
            log::error(&format!(
                "kv: config `{key}` = {text:?} is not a size (bytes, or N KiB/MiB/GiB); using {default}"
            ));
            default
        }
    }
}

/// `"1024"`, `"64 KiB"`, `"16MiB"`, `"1 GiB"`.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: usize = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// The first byte of a handed-over connection: the layout of what follows (a byte of
/// flags, [`EOF`] and [`QUIT`], then the replies still pending).
const SESSION_V1: u8 = 1;
const EOF: u8 = 1;
const QUIT: u8 = 2;

/// The key space moves with a swap to a version that migrates too, and so do the
/// clients, with the replies they are still owed; a partial command stays in the
/// receive buffer, which the host keeps, and is read again from its start.
impl Migrate for Server {
    fn hand_over_instance(&mut self) -> Vec<u8> {
        let now = now();
        self.kv.as_mut().map_or_else(Vec::new, |kv| kv.store().handed_over(now))
    }

    fn take_over_instance(&mut self, state: &[u8]) {
        if state.is_empty() {
            return;
        }
        let now = now();
        match Store::taken_over(state, now) {
            Some(store) => *self.kv().store() = store,
            None => log::error("kv: the key space handed over is not one this version reads; starting empty"),
        }
    }

    fn hand_over(&mut self, conn: Conn) -> Vec<u8> {
        let Some(session) = self.sessions.get(conn) else { return Vec::new() };
        let flags = (u8::from(session.eof) * EOF) | (u8::from(session.quit) * QUIT);
        [&[SESSION_V1, flags][..], &session.pending].concat()
    }

    fn take_over(&mut self, conn: Conn, state: &[u8]) {
        let Some((&[SESSION_V1, flags], pending)) = state.split_first_chunk::<2>() else {
            let _ = conn.close_after_send();
            return;
        };
        let session =
            Session { pending: pending.to_vec(), eof: flags & EOF != 0, quit: flags & QUIT != 0, ..Session::default() };
        self.sessions.insert(conn, session);
        if let Some(session) = self.sessions.get_mut(conn)
            && flush(conn, &mut session.pending).is_err()
        {
            let _ = conn.close_after_send();
        }
        self.kv();
        self.arm_sweep(conn);
    }
}

sandport_guest::export_migrating!(Server);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_host_writes_them() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1 GB"), None);
        assert_eq!(parse_size("lots"), None);
    }
}
