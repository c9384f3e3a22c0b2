//! The receive buffer a handler sees with every event.

use std::fmt;

use crate::bindings::sandport::handler::host::Mbuf;
use crate::{ByteSource, Conn, Error, room};

/// A read-only view of a connection's receive buffer, which stays in the host.
///
/// Reading copies bytes out; [`find`](Self::find) scans in the host without copying.
/// Nothing leaves the buffer until the handler [`remove`](Self::remove)s it (or a
/// [`ByteSource`] helper such as [`next_line`](ByteSource::next_line) consumes it), so a
/// handler may look at a partial message, return, and look again on the next `recv`.
///
/// The view lives for one event: the borrow checker stops a handler from keeping it.
///
/// ```no_run
/// use sandport_guest::{Conn, RecvBuf};
///
/// // Answer "pong" once a whole "ping" has arrived.
/// fn on_recv(conn: Conn, rx: RecvBuf<'_>) -> Result<(), sandport_guest::Error> {
///     if rx.len() >= 4 && rx.read(0, 4) == b"ping" {
///         rx.remove(4)?;
///         conn.send(b"pong")?;
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy)]
pub struct RecvBuf<'a> {
    conn: Conn,
    mbuf: &'a Mbuf,
}

impl<'a> RecvBuf<'a> {
    pub(crate) fn new(conn: Conn, mbuf: &'a Mbuf) -> Self {
        RecvBuf { conn, mbuf }
    }

    /// The connection whose buffer this is.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// let conn = rx.conn();
    /// # }
    /// ```
    pub fn conn(&self) -> Conn {
        self.conn
    }

    /// Bytes currently buffered.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// let waiting = rx.len();
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.mbuf.len() as usize
    }

    /// Whether no bytes are buffered.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// if rx.is_empty() {
    ///     return;
    /// }
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy out up to `len` bytes starting at `offset`: fewer near the end, none past it.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// let header = rx.read(0, 4);
    /// if header.len() < 4 {
    ///     return; // wait for more
    /// }
    /// # }
    /// ```
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        self.mbuf.read(saturate(offset), saturate(len))
    }

    /// Copy out everything buffered.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// let all = rx.read_all();
    /// # }
    /// ```
    pub fn read_all(&self) -> Vec<u8> {
        self.read(0, usize::MAX)
    }

    /// The offset of the first occurrence of `needle` at or after `from`.
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) {
    /// if let Some(end) = rx.find(b"\r\n\r\n", 0) {
    ///     let head = rx.read(0, end);
    /// }
    /// # }
    /// ```
    pub fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        self.mbuf.find(needle, saturate(from)).map(|at| at as usize)
    }

    /// Discard the first `n` bytes: the bytes the handler has consumed.
    ///
    /// Same as [`Conn::remove`] on [`conn`](Self::conn).
    ///
    /// ```no_run
    /// # fn f(rx: sandport_guest::RecvBuf<'_>) -> Result<(), sandport_guest::Error> {
    /// let chunk = rx.read(0, 1024);
    /// rx.remove(chunk.len())?;
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, n: usize) -> Result<(), Error> {
        self.conn.remove(n)
    }

    /// Move bytes from this buffer to `to`'s send buffer, as many as fit, in chunks of
    /// at most 64 KiB; returns how many moved. What does not fit stays here (which,
    /// once the buffer is full, pauses reading this connection) for the next `send`
    /// event of `to`. The heart of an echo (`to` is [`conn`](Self::conn)) or a proxy.
    ///
    /// Host calls: a `read`, `send` and `remove` per chunk, and `send-room` only when
    /// the room `to`'s send buffer was last reported to have (by a `send` or
    /// `send-room` of this plugin) cannot be shown to hold the chunk: the host only
    /// drains a send buffer between events, so that answer is a lower bound of the room
    /// now. A chunk shorter than asked emptied this buffer (bytes arrive only between
    /// events), so it is the last: no further `read` only to find nothing.
    ///
    /// Fails with [`Error::Closed`] when `to` takes no more bytes (it is closing).
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, RecvBuf};
    /// // Echo with backpressure: on every recv and every send event.
    /// fn pump(rx: RecvBuf<'_>) {
    ///     let _ = rx.pipe_to(rx.conn());
    /// }
    /// ```
    pub fn pipe_to(&self, to: Conn) -> Result<usize, Error> {
        // `room` is at most the room `to` has; `exact` once the host said it this call.
        let (mut room, mut exact) = (room::at_least(to) as usize, false);
        let mut moved = 0;
        loop {
            if room == 0 && !exact {
                (room, exact) = (to.send_room()? as usize, true);
            }
            if room == 0 {
                break;
            }
            // Knowing the room, read no more than fits (as the host's answer of 0 is
            // what makes it send a `send` event); knowing only a lower bound, read a
            // whole chunk and ask only if it does not fit.
            let want = if exact { room.min(PIPE_CHUNK) } else { PIPE_CHUNK };
            let mut chunk = self.read(0, want);
            if chunk.is_empty() {
                break;
            }
            if chunk.len() > room {
                (room, exact) = (to.send_room()? as usize, true);
                chunk.truncate(room);
                if chunk.is_empty() {
                    break;
                }
            }
            room = match to.send(&chunk) {
                Ok(left) => left as usize,
                // The lower bound was wrong (bytes appended through the raw bindings):
                // ask, and read again what fits.
                Err(Error::LimitExceeded) if !exact => {
                    (room, exact) = (to.send_room()? as usize, true);
                    continue;
                }
                Err(err) => return Err(err),
            };
            exact = true;
            self.remove(chunk.len())?;
            moved += chunk.len();
            if chunk.len() < want {
                break;
            }
        }
        Ok(moved)
    }
}

/// The most [`RecvBuf::pipe_to`] copies per `send`: big enough that a call's cost is
/// small next to the copy, small enough not to hold much guest memory.
const PIPE_CHUNK: usize = 64 * 1024;

/// Why saturating is right: the host's buffers are bounded by `u32`, so an offset or
/// length beyond it means "past the end" or "as much as there is" either way.
fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Shows only the connection: printing must not call into the host.
impl fmt::Debug for RecvBuf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBuf").field("conn", &self.conn).finish_non_exhaustive()
    }
}

impl ByteSource for RecvBuf<'_> {
    fn available(&self) -> usize {
        self.len()
    }

    fn peek(&self, offset: usize, len: usize) -> Vec<u8> {
        self.read(offset, len)
    }

    fn find_from(&self, needle: &[u8], from: usize) -> Option<usize> {
        self.find(needle, from)
    }

    fn consume(&mut self, n: usize) -> Result<(), Error> {
        self.remove(n)
    }
}
