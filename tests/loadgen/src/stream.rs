//! A connection's byte stream, plaintext or TLS, over a non-blocking socket.
//!
//! [`Stream`] reads and writes like the socket does (`WouldBlock` when it must wait),
//! whichever it is, so that the connection logic is the same for both. It owns the
//! TLS records' way to and from the socket; it never registers the socket with a poll
//! or decides when to read: the connection does, asking [`Stream::pending`] whether it
//! must wait for the socket to become writable.
//!
//! TLS records are read from the socket [`INBOUND`] bytes at a time into a scratch
//! buffer of the thread, and handed to the session from there: rustls reads a socket
//! at most 4 KiB at a time, five system calls for a 16 KiB record, which would make
//! the client, not the server, the cost of a large TLS echo.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ClientConnection;

use crate::tls::Connector;

/// Bytes read from a TLS connection's socket at a time: a few full records.
const INBOUND: usize = 64 * 1024;

thread_local! {
    /// Where records read from a socket wait for the session to take them.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; INBOUND].into_boxed_slice());
}

/// A socket, with a TLS session over it or not.
pub(crate) struct Stream {
    socket: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// Records read from the socket that the session could not take yet, because it
    /// had plaintext to hand out first; empty (and unallocated) nearly always.
    leftover: Vec<u8>,
}

impl Stream {
    /// A stream over `socket`: plaintext, or TLS with a fresh session from `tls`, whose
    /// handshake goes on as the stream is read and written (what is written before it
    /// ends waits in the session).
    pub(crate) fn new(socket: TcpStream, tls: Option<&Connector>) -> io::Result<Stream> {
        let tls = tls.map(|connector| connector.session().map(Box::new)).transpose()?;
        Ok(Stream { socket, tls, leftover: Vec::new() })
    }

    /// The socket, to register with a poll or to ask about the connect.
    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    /// Whether a TLS handshake is still under way (never, in plaintext).
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Whether TLS records wait for the socket to take them.
    pub(crate) fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes waiting TLS records until the socket would block.
    pub(crate) fn flush_records(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => write_records(tls, &mut self.socket),
            None => Ok(()),
        }
    }

    /// Ends a TLS session as a well-behaved client does, with a `close_notify` alert,
    /// as far as the socket takes it now; the socket closes when the stream drops.
    pub(crate) fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = write_records(tls, &mut self.socket);
        }
    }
}

/// Writes `tls`'s waiting records to `socket` until it would block.
fn write_records(tls: &mut ClientConnection, socket: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for Stream {
    /// Reads plaintext: what the session has decrypted, else records from the socket
    /// until some plaintext comes or the socket would block. Handshake messages the
    /// records carry are answered on the way. `Ok(0)` is the end of the stream (a
    /// TLS session's `close_notify`, or the socket's end after it).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Stream { socket, tls, leftover } = self;
        let Some(tls) = tls else {
            return socket.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            if !leftover.is_empty() {
                let mut rest = &leftover[..];
                feed(tls, &mut rest, socket)?;
                let taken = leftover.len() - rest.len();
                leftover.drain(..taken);
                continue;
            }
            let ended = SCRATCH.with_borrow_mut(|scratch| -> io::Result<bool> {
                let n = socket.read(scratch)?;
                let mut rest = &scratch[..n];
                feed(tls, &mut rest, socket)?;
                leftover.extend_from_slice(rest);
                Ok(n == 0)
            })?;
            if ended {
                // The socket's end: the reader now says whether a close_notify came first.
                tls.read_tls(&mut io::empty())?;
            }
        }
    }
}

/// Hands `tls` the records at the front of `rest` until it has plaintext to give or
/// `rest` is used up, answering the handshake messages among them.
fn feed(tls: &mut ClientConnection, rest: &mut &[u8], socket: &mut TcpStream) -> io::Result<()> {
    while !rest.is_empty() {
        if tls.read_tls(rest)? == 0 {
            // Nothing more after a close_notify.
            *rest = &[];
            break;
        }
        let state = match tls.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // rustls queued an alert that tells the server why.
                let _ = write_records(tls, socket);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        write_records(tls, socket)?;
        if state.plaintext_bytes_to_read() > 0 {
            break;
        }
    }
    Ok(())
}

impl Write for Stream {
    /// Writes plaintext: into the session (which holds it while the handshake lasts,
    /// up to its buffer limit), then as records to the socket as far as it takes them.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.socket.write(buf);
        };
        write_records(tls, &mut self.socket)?;
        let n = tls.writer().write(buf)?;
        write_records(tls, &mut self.socket)?;
        if n == 0 && !buf.is_empty() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}
