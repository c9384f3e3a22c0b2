//! The receive buffer a handler sees with every event.

use std::fmt;

use crate::bindings::sandport::handler::host::Mbuf;
use crate::{ByteSource, Conn, Error};

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

    /// Move bytes from this buffer to `to`'s send buffer, as many as fit; returns how
    /// many moved. What does not fit stays here (which, once the buffer is full, pauses
    /// reading this connection) until the next `send` event of `to`, which comes once
    /// room appears. The heart of an echo (`to` is [`conn`](Self::conn)) or a proxy.
    ///
    /// One host call (`mbuf.pipe-to`): the bytes move inside the host, never through
    /// the plugin's memory.
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
        self.pipe_at_most(to, usize::MAX)
    }

    /// [`pipe_to`](Self::pipe_to), moving no more than `max` bytes: say the rest of a
    /// body whose length a header gave, with the next request behind it.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, RecvBuf};
    /// # fn f(rx: RecvBuf<'_>, upstream: Conn, body_left: usize) -> Result<(), sandport_guest::Error> {
    /// let moved = rx.pipe_at_most(upstream, body_left)?;
    /// # Ok(()) }
    /// ```
    pub fn pipe_at_most(&self, to: Conn, max: usize) -> Result<usize, Error> {
        Ok(self.mbuf.pipe_to(to.id(), saturate(max))? as usize)
    }
}

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
