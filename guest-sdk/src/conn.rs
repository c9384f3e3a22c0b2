//! Connections and what a handler can do to them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::bindings::sandport::handler::host;
use crate::{Error, RecvBuf, TlsInfo};

pub use crate::bindings::sandport::handler::types::CloseMode;

/// A connection of this plugin's listener, accepted or dialed with [`Conn::connect`],
/// named by the id the host chose.
///
/// A `Conn` is only an id: copy it, keep it in maps, send to it from another
/// connection's event. Ids are never reused, so a `Conn` kept past its `close` event
/// names nothing and every call on it fails with [`Error::Closed`].
///
/// ```no_run
/// use sandport_guest::Conn;
///
/// fn shout(conn: Conn) -> Result<(), sandport_guest::Error> {
///     conn.send(b"HELLO\n")?;
///     conn.close_after_send()
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn(u64);

impl Conn {
    /// The connection with this id, e.g. one a client typed in.
    ///
    /// Nothing is checked here: an id that is not a live connection of this listener
    /// makes every call fail with [`Error::Closed`].
    ///
    /// ```
    /// use sandport_guest::Conn;
    ///
    /// assert_eq!(Conn::from_id(7).id(), 7);
    /// ```
    pub const fn from_id(id: u64) -> Self {
        Conn(id)
    }

    /// The host's id for this connection.
    ///
    /// ```
    /// # use sandport_guest::Conn;
    /// let name = format!("user{}", Conn::from_id(3).id());
    /// assert_eq!(name, "user3");
    /// ```
    pub const fn id(self) -> u64 {
        self.0
    }

    /// Dial an outbound TCP connection to `address` (`IP:PORT`, `[IPv6]:PORT`).
    ///
    /// Returns the new connection at once; the dial goes on in the host's event loop.
    /// Its events come to this same handler, the first being
    /// [`Handler::on_connect`](crate::Handler::on_connect) with the outcome (a failure is
    /// followed by [`on_close`](crate::Handler::on_close)). Sending to it before it is
    /// established is fine: the bytes wait in its send buffer.
    ///
    /// Fails with [`Error::NotAllowed`] for an address the listener's `allow-connect`
    /// list lacks, [`Error::Invalid`] for one that does not parse, and
    /// [`Error::LimitExceeded`] when the listener has all the connections it may.
    ///
    /// ```no_run
    /// use sandport_guest::{Conn, Error};
    ///
    /// let upstream = Conn::connect("127.0.0.1:6379")?;
    /// upstream.send(b"PING\r\n")?; // waits in the send buffer until connected
    /// # Ok::<(), Error>(())
    /// ```
    pub fn connect(address: &str) -> Result<Conn, Error> {
        Ok(Conn(host::connect(address)?))
    }

    /// Run `f` with this connection's receive buffer, from any event of the instance:
    /// say a proxy moving one side's waiting bytes in the other side's
    /// [`on_send`](crate::Handler::on_send), when room appeared there. (In this
    /// connection's own events, use the `rx` they bring: it costs no host call.)
    ///
    /// Fails with [`Error::Closed`] if the connection is not this instance's, or gone.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Error};
    /// # let (client, upstream) = (Conn::from_id(1), Conn::from_id(2));
    /// // Room in the upstream's send buffer: move what the client sent.
    /// let room = upstream.send_room()? as usize;
    /// client.with_recv_buffer(|rx| {
    ///     let bytes = rx.read(0, room);
    ///     upstream.send(&bytes).and_then(|_| rx.remove(bytes.len()))
    /// })??;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn with_recv_buffer<R>(self, f: impl FnOnce(RecvBuf<'_>) -> R) -> Result<R, Error> {
        let mbuf = host::recv_buffer(self.0)?;
        Ok(f(RecvBuf::new(self, &mbuf)))
    }

    /// Append `data` to this connection's send buffer; returns the room left, in bytes.
    ///
    /// All or nothing: when the buffer cannot hold all of `data` this fails with
    /// [`Error::LimitExceeded`] and appends nothing. Retry on the next `send` event
    /// ([`Handler::on_send`](crate::Handler::on_send)).
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Error};
    /// # let conn = Conn::from_id(1);
    /// match conn.send(b"pong\n") {
    ///     Ok(room) => assert!(room < u32::MAX),
    ///     Err(Error::LimitExceeded) => { /* slow reader: wait for on_send */ }
    ///     Err(_) => {}
    /// }
    /// ```
    pub fn send(self, data: &[u8]) -> Result<u32, Error> {
        Ok(host::send(self.0, data)?)
    }

    /// The room left in this connection's send buffer, in bytes: the most one
    /// [`send`](Conn::send) can take now.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// # let backlog: Vec<u8> = Vec::new();
    /// let room = conn.send_room().unwrap_or(0) as usize;
    /// let _ = conn.send(&backlog[..room.min(backlog.len())]);
    /// ```
    pub fn send_room(self) -> Result<u32, Error> {
        Ok(host::send_room(self.0)?)
    }

    /// Discard the first `n` bytes of this connection's receive buffer.
    ///
    /// Call it for the bytes the handler has consumed; removing makes room, so a paused
    /// reader resumes. Fails with [`Error::Invalid`] if fewer than `n` bytes are
    /// buffered. [`RecvBuf::remove`](crate::RecvBuf::remove) does the same.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// conn.remove(4).expect("4 bytes were buffered");
    /// ```
    pub fn remove(self, n: usize) -> Result<(), Error> {
        let n =
            u32::try_from(n).map_err(|_| Error::Invalid(format!("remove: {n} bytes is more than a buffer holds")))?;
        Ok(host::remove(self.0, n)?)
    }

    /// Arm timer `id` to fire once after `after`, delivered to
    /// [`Handler::on_timer`](crate::Handler::on_timer).
    ///
    /// The id is the handler's own choice; a connection may have several timers, and
    /// arming an id that is already armed re-arms it. The host counts whole
    /// milliseconds: a sub-millisecond part is dropped.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # use std::time::Duration;
    /// # let conn = Conn::from_id(1);
    /// const IDLE: u64 = 1;
    /// conn.set_timer(IDLE, Duration::from_secs(30))?;
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn set_timer(self, id: u64, after: Duration) -> Result<(), Error> {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        Ok(host::set_timer(self.0, id, millis)?)
    }

    /// Disarm timer `id`; returns whether it was armed.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// let was_armed = conn.cancel_timer(1)?;
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn cancel_timer(self, id: u64) -> Result<bool, Error> {
        Ok(host::cancel_timer(self.0, id)?)
    }

    /// Close this connection. Its `close` event follows later, from the event loop.
    ///
    /// ```no_run
    /// # use sandport_guest::{CloseMode, Conn};
    /// # let conn = Conn::from_id(1);
    /// conn.close(CloseMode::AfterSend)?;
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn close(self, mode: CloseMode) -> Result<(), Error> {
        Ok(host::close(self.0, mode)?)
    }

    /// Stop reading, write out what the send buffer holds, then close.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// conn.send(b"bye\n")?;
    /// conn.close_after_send()?;
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn close_after_send(self) -> Result<(), Error> {
        self.close(CloseMode::AfterSend)
    }

    /// Close at once, discarding whatever the send buffer still holds.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// conn.close_now()?;
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn close_now(self) -> Result<(), Error> {
        self.close(CloseMode::Now)
    }

    /// Shut down the sending side once the send buffer is written out, and keep
    /// reading: a TCP half-close, so the peer reads end-of-stream.
    ///
    /// Further [`send`](Conn::send)s fail with [`Error::Closed`]; events, including
    /// `recv`, go on until the connection is closed. What a proxy does when one side
    /// finished sending, or a client that has sent its whole request.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// conn.send(b"that is all\n")?;
    /// conn.shutdown()?; // the peer reads EOF after this line, and may still answer
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn shutdown(self) -> Result<(), Error> {
        Ok(host::shutdown(self.0)?)
    }

    /// What this connection's TLS handshake said, if the host ended TLS on it (an
    /// accepted connection of a listener with a certificate, or one dialed to an
    /// upstream the allow-list marks as TLS); `None` on a plaintext connection, and on
    /// one whose TLS the listener passes through (the handler then reads the encrypted
    /// bytes themselves).
    ///
    /// Either way the handler reads and sends plaintext: ask only to act on the name,
    /// protocol or client certificate. Fails with [`Error::Closed`] if the connection
    /// is not this instance's, or gone.
    ///
    /// ```no_run
    /// # use sandport_guest::Conn;
    /// # let conn = Conn::from_id(1);
    /// match conn.tls_info()? {
    ///     Some(tls) if tls.peer_certificate.is_some() => { /* a client certificate */ }
    ///     Some(tls) => sandport_guest::log::info(&format!("{conn}: TLS for {:?}", tls.server_name)),
    ///     None => { /* plaintext */ }
    /// }
    /// # Ok::<(), sandport_guest::Error>(())
    /// ```
    pub fn tls_info(self) -> Result<Option<TlsInfo>, Error> {
        Ok(host::tls_info(self.0)?.map(TlsInfo::from))
    }
}

/// Shows the bare id, which is what protocols and log lines usually want.
impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The remote address of an accepted connection, as the host reports it.
///
/// ```
/// use sandport_guest::Peer;
///
/// let peer = Peer { ip: "::1".into(), port: 4000 };
/// assert_eq!(peer.to_string(), "[::1]:4000");
/// assert_eq!(peer.socket_addr().unwrap().port(), 4000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The IP address in its usual text form (`127.0.0.1`, `::1`).
    pub ip: String,
    /// The TCP port.
    pub port: u16,
}

impl Peer {
    /// The address as a [`SocketAddr`], or `None` if the host's text does not parse.
    ///
    /// ```
    /// # use sandport_guest::Peer;
    /// let peer = Peer { ip: "127.0.0.1".into(), port: 80 };
    /// assert!(peer.socket_addr().unwrap().is_ipv4());
    /// ```
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.ip.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

/// `ip:port`, with brackets around an IPv6 address.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_formats_like_a_socket_address() {
        let v4 = Peer { ip: "10.0.0.1".into(), port: 9 };
        assert_eq!(v4.to_string(), "10.0.0.1:9");
        assert_eq!(v4.socket_addr().unwrap().to_string(), v4.to_string());
        let v6 = Peer { ip: "fe80::1".into(), port: 9 };
        assert_eq!(v6.socket_addr().unwrap().to_string(), v6.to_string());
        assert_eq!(Peer { ip: "nonsense".into(), port: 1 }.socket_addr(), None);
    }

    #[test]
    fn conn_is_its_id() {
        assert_eq!(Conn::from_id(42).to_string(), "42");
        assert!(Conn::from_id(1) < Conn::from_id(2));
    }
}
