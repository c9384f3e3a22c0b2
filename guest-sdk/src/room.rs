//! What the plugin last heard of each connection's send-buffer room, so that
//! [`RecvBuf::pipe_to`](crate::RecvBuf::pipe_to) can move a chunk that fits without
//! first asking the host (`send-room`): a host call less per echo.
//!
//! Why a remembered answer is safe: only this instance appends to its connections' send
//! buffers, and between its calls the host only takes bytes out of them (by writing to
//! the socket), so the room the host last reported for a connection, after a
//! [`Conn::send`](crate::Conn::send) or [`Conn::send_room`](crate::Conn::send_room), is
//! at most its room now. It is only ever used as that lower bound: a chunk larger than
//! it still asks the host. (A plugin that appends through the raw `bindings` bypasses
//! this record; `pipe_to` then meets a refused `send` and asks the host, see there.)
//!
//! A small table indexed by the connection's id, each slot holding the id it is about:
//! no allocation, constant time, and a connection that shares its slot with another is
//! only forgotten (the host is asked again), never mistaken for it. Ids are never
//! reused, so a closed connection's slot cannot answer for a new one.

use std::cell::Cell;

use crate::Conn;

/// Slots in the table (a power of two): enough that the connections of a busy shared
/// instance seldom push each other out.
const SLOTS: usize = 1024;

/// A slot that names no connection: the host's ids start at 1.
const EMPTY: (u64, u32) = (0, 0);

thread_local! {
    // wasm32-wasip2 is single-threaded: a plain global, without `Sync`.
    static KNOWN: [Cell<(u64, u32)>; SLOTS] = const { [const { Cell::new(EMPTY) }; SLOTS] };
}

/// `conn`'s slot. Ids go up in steps of the host's worker count, so the id is mixed
/// (Fibonacci hashing) rather than taken modulo: a step of 2 would use half the slots.
fn slot(conn: Conn) -> usize {
    (conn.id().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The host said `conn` has `room` bytes of room now.
pub(crate) fn heard(conn: Conn, room: u32) {
    KNOWN.with(|known| known[slot(conn)].set((conn.id(), room)));
}

/// What `conn`'s send buffer has room for at least: the last answer heard, or 0 if
/// there is none.
pub(crate) fn at_least(conn: Conn) -> u32 {
    KNOWN.with(|known| match known[slot(conn)].get() {
        (id, room) if id == conn.id() => room,
        _ => 0,
    })
}

/// Forget `conn` (its send buffer refused bytes, or it is gone).
pub(crate) fn forget(conn: Conn) {
    KNOWN.with(|known| {
        let slot = &known[slot(conn)];
        if slot.get().0 == conn.id() {
            slot.set(EMPTY);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_remembered_for_its_connection_only() {
        let a = Conn::from_id(5);
        let b = (6..).map(Conn::from_id).find(|b| slot(*b) == slot(a)).unwrap();
        assert_eq!(at_least(a), 0, "nothing heard yet");
        heard(a, 100);
        assert_eq!(at_least(a), 100);
        assert_eq!(at_least(b), 0, "the same slot, another connection");
        heard(b, 7);
        assert_eq!(at_least(a), 0, "pushed out, so asked again");
        forget(a);
        assert_eq!(at_least(b), 7, "forgetting another connection leaves the slot");
        forget(b);
        assert_eq!(at_least(b), 0);
    }
}
