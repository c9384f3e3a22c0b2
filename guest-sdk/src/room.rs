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
//! One entry per connection the plugin sent to, dropped at its `close` event (see
//! `__private::dispatch`) or when a `send` to it fails. Ids are never reused, so an
//! entry cannot answer for another connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::Conn;

thread_local! {
    // wasm32-wasip2 is single-threaded: a plain global, without `Sync`.
    static KNOWN: RefCell<HashMap<u64, u32, BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
}

/// Hashes a connection id by one multiplication (Fibonacci hashing): the ids are the
/// host's sequence numbers, which no peer chooses, so nothing can be made to collide,
/// and a hasher with a random seed would need `wasi:random` for nothing. The product's
/// high half is folded into the low one, where the table takes its bucket from (ids go
/// up in steps of the host's worker count, and a product's low bits follow the id's).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The host said `conn` has `room` bytes of room now.
pub(crate) fn heard(conn: Conn, room: u32) {
    KNOWN.with_borrow_mut(|known| known.insert(conn.id(), room));
}

/// What `conn`'s send buffer has room for at least: the last answer heard, or 0 if
/// there is none.
pub(crate) fn at_least(conn: Conn) -> u32 {
    KNOWN.with_borrow(|known| known.get(&conn.id()).copied().unwrap_or(0))
}

/// Forget `conn` (its send buffer refused bytes, or it is gone).
pub(crate) fn forget(conn: Conn) {
    KNOWN.with_borrow_mut(|known| known.remove(&conn.id()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_remembered_for_its_connection_until_forgotten() {
        let (a, b) = (Conn::from_id(5), Conn::from_id(7));
        assert_eq!(at_least(a), 0, "nothing heard yet");
        heard(a, 100);
        heard(b, 7);
        assert_eq!((at_least(a), at_least(b)), (100, 7));
        heard(a, 3);
        assert_eq!(at_least(a), 3, "the last answer");
        forget(a);
        assert_eq!((at_least(a), at_least(b)), (0, 7));
    }
}
