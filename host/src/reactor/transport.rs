//! How a connection's bytes cross its socket: as they are, or through a TLS session
//! (rustls) that the host ends, so that handlers see plaintext either way.
//!
//! The contract keeps its meaning over TLS: the receive buffer holds plaintext and its
//! limit pauses reading, and so decryption (rustls holds at most one record beyond
//! it); the send buffer holds plaintext and its limit counts it (rustls is given one
//! record's worth at a time, and only once it has written out the one before); a
//! shutdown or a `close(after-send)` sends close_notify after the last byte. A
//! [`Transport`] moves bytes when the connection tells it to and reports what the
//! socket said; it never decides to close and never calls a handler.

use std::io::{self, ErrorKind, Write};

use mio::net::TcpStream;

use super::connection::{Direct, Inbound, Outbound};
use crate::handler::TlsInfo;
use crate::mbuf::{Mbuf, Pool};

/// Plaintext handed to rustls at once: one full TLS record.
const RECORD: usize = 16 * 1024;

/// The bytes of a connection, plain or through TLS.
pub(super) enum Transport {
    /// The socket's bytes are the handler's.
    Plain,
    /// A TLS session ends on this side: the handler's bytes are its plaintext.
    Tls(Box<Tls>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls(tls) => write!(f, "Tls(handshaking: {})", tls.session.is_handshaking()),
        }
    }
}

/// Whether our side said close_notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Farewell {
    /// Not yet: the session may still carry data.
    Unsaid,
    /// Queued (perhaps not yet written out): the session carries nothing more.
    Said,
}

/// A TLS session of a connection.
pub(super) struct Tls {
    /// The server or client side of the session.
    pub(super) session: rustls::Connection,
    farewell: Farewell,
    /// On a dialed connection, the name the upstream's certificate is checked against.
    upstream: Option<String>,
}

/// How far a handshake got on the bytes the socket had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// Done: the session carries data from now on.
    Done,
    /// Waiting for the peer; `blocked` if our last flight could not all be written
    /// (wait for WRITABLE too).
    Waiting {
        /// The socket would not take our bytes.
        blocked: bool,
    },
}

impl Tls {
    /// The server side of a session whose handshake is under way.
    pub(super) fn server(session: rustls::ServerConnection) -> Tls {
        Tls { session: session.into(), farewell: Farewell::Unsaid, upstream: None }
    }

    /// The client side of a session to the upstream `name`, its handshake not yet
    /// begun.
    pub(super) fn client(session: rustls::ClientConnection, name: String) -> Tls {
        Tls { session: session.into(), farewell: Farewell::Unsaid, upstream: Some(name) }
    }

    /// What the handshake said, for [`crate::handler::Host::tls_info`]; `None` while
    /// it goes on.
    pub(super) fn info(&self) -> Option<TlsInfo> {
        match &self.session {
            rustls::Connection::Server(server) => crate::tls::server_info(server),
            rustls::Connection::Client(client) => crate::tls::info(client, self.upstream.as_deref()),
        }
    }
}

impl Transport {
    /// Whether bytes wait to be written to the socket beyond the send buffer (TLS
    /// records, a close_notify).
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(tls) => tls.session.wants_write(),
        }
    }

    /// Queue close_notify (once) and write out what the session holds. True once all of
    /// it is out, so the socket's sending side may be shut; false if the socket would
    /// block. Plaintext needs nothing: always true.
    pub(super) fn say_goodbye(&mut self, socket: &TcpStream) -> io::Result<bool> {
        let Transport::Tls(tls) = self else { return Ok(true) };
        if tls.farewell == Farewell::Unsaid {
            tls.session.send_close_notify();
            tls.farewell = Farewell::Said;
        }
        flush(tls, socket)
    }
}

/// Fill `rx` with plaintext from the socket, through the session: what it already
/// holds first, then records read until `rx` is full, the socket would block, the peer
/// ended the stream or `budget` bytes came; `rx` takes its storage from `pool`.
/// Returns the plaintext bytes added.
///
/// Records are read only when the session holds no plaintext, so rustls never holds
/// more than one record's worth beyond the receive buffer.
pub(super) fn read_in(
    tls: &mut Tls,
    socket: &TcpStream,
    (rx, pool): (&mut Mbuf, &mut Pool),
    inbound: &mut Inbound,
    budget: usize,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        while rx.room() > 0 && total < budget {
            match rx.fill_from(&mut tls.session.reader(), budget - total, pool) {
                // close_notify: a clean end of stream.
                Ok((0, _)) => {
                    *inbound = Inbound::Ended;
                    return Ok(total);
                }
                Ok((n, _)) => total += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The peer closed the socket without close_notify. Many clients do
                // (HTTP/1.1 ones after the response); the handler sees an end of stream
                // as over plaintext, and whether it came too soon is its protocol's to
                // tell.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    *inbound = Inbound::Ended;
                    return Ok(total);
                }
                Err(e) => return Err(e),
            }
        }
        if rx.room() == 0 || total >= budget || !inbound.is_ready() {
            return Ok(total);
        }
        match tls.session.read_tls(&mut Direct(socket)) {
            // At the socket's end of stream the reader says next what it means.
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => *inbound = Inbound::Waiting,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        process(tls, socket)?;
    }
}

/// Write out what the session has to send, then the send buffer through it, one
/// record at a time, until both are out or the socket would block. Returns the
/// plaintext bytes taken from `tx` (whose storage goes back to `pool` once drained).
pub(super) fn write_out(
    tls: &mut Tls,
    socket: &TcpStream,
    tx: &mut Mbuf,
    outbound: &mut Outbound,
    pool: &mut Pool,
) -> io::Result<usize> {
    let mut taken = 0;
    loop {
        if tls.session.wants_write() {
            if !flush(tls, socket)? {
                *outbound = Outbound::Blocked;
                return Ok(taken);
            }
        } else if !tx.is_empty() && !tls.session.is_handshaking() && tls.farewell == Farewell::Unsaid {
            let chunk = tx.len().min(RECORD);
            let n = tls.session.writer().write(&tx.as_slice()[..chunk])?;
            if n == 0 {
                return Ok(taken);
            }
            tx.remove(n, pool).expect("rustls takes no more than it is given");
            taken += n;
        } else {
            return Ok(taken);
        }
    }
}

/// Move a handshake on with what the socket holds: write our flight, read the peer's,
/// until it is done or the socket has nothing more. An error is the handshake's end;
/// the alert that says why has been written where the socket took it.
pub(super) fn handshake(tls: &mut Tls, socket: &TcpStream) -> io::Result<Handshake> {
    loop {
        let blocked = !flush(tls, socket)?;
        if !tls.session.is_handshaking() {
            return Ok(Handshake::Done);
        }
        match tls.session.read_tls(&mut Direct(socket)) {
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the peer closed during the TLS handshake")),
            Ok(_) => process(tls, socket)?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Handshake::Waiting { blocked }),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Let the session decrypt and act on the records it read. On a TLS error, the alert
/// rustls queued goes out (as far as the socket takes it) before the error is returned.
fn process(tls: &mut Tls, socket: &TcpStream) -> io::Result<()> {
    if let Err(err) = tls.session.process_new_packets() {
        let _ = flush(tls, socket);
        return Err(io::Error::new(ErrorKind::InvalidData, err));
    }
    Ok(())
}

/// Write out the session's pending records: true when all went, false when the socket
/// would block.
fn flush(tls: &mut Tls, socket: &TcpStream) -> io::Result<bool> {
    while tls.session.wants_write() {
        match tls.session.write_tls(&mut Direct(socket)) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
