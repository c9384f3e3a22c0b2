//! The seam between the reactor and whatever handles connections.
//!
//! The reactor calls a [`Handler`] with one [`Event`] at a time and lends it a
//! [`Host`]: the few things a handler may do to the connections of its listener.
//! A WebAssembly plugin implements [`Handler`] (the `plugin` module), and so can
//! native Rust code, which is how benchmarks get a baseline. Nothing here knows about
//! wasmtime or sockets.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::listener::Limit;
use crate::mbuf::Mbuf;

/// A connection as handlers name it.
///
/// Ids are scoped to one handler instance (the connections it accepted or dialed) and
/// never reused: a stale or foreign id names no connection at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happened to a connection (Mongoose's event set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The listener accepted the connection from this peer. Always the first event
    /// of an accepted connection.
    Accept(SocketAddr),
    /// An outbound connection from [`Host::connect`] is established, or failed (then
    /// CLOSE follows). Always the first event of a dialed connection.
    Connect(Result<(), HostError>),
    /// This many bytes were appended to the receive buffer. `Recv(0)`: the peer shut
    /// down its sending side. The host does not close the connection for that; the
    /// handler decides when it is done.
    Recv(u32),
    /// This many bytes of the send buffer reached the socket (after every write, or
    /// only when the handler waits for room: see [`SendEvents`]).
    Send(u32),
    /// The listener's periodic tick.
    Poll,
    /// The timer with this id fired.
    Timer(u64),
    /// The connection is gone. Always the last event, exactly once.
    Close,
}

impl Event {
    /// The names of the kinds of event, in the order [`Event::kind`] numbers them.
    pub const KINDS: [&'static str; 7] = ["accept", "connect", "recv", "send", "poll", "timer", "close"];

    /// This event's kind, as an index into [`Event::KINDS`].
    ///
    /// ```
    /// use sandport::handler::Event;
    /// assert_eq!(Event::KINDS[Event::Recv(3).kind()], "recv");
    /// ```
    pub fn kind(&self) -> usize {
        match self {
            Event::Accept(_) => 0,
            Event::Connect(_) => 1,
            Event::Recv(_) => 2,
            Event::Send(_) => 3,
            Event::Poll => 4,
            Event::Timer(_) => 5,
            Event::Close => 6,
        }
    }
}

/// How [`Host::close`] ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Stop reading, write out the send buffer, then close, lingering: the sending
    /// side is shut once the buffer is out ([`Event::Close`] comes then), and what the
    /// peer still sends is read and discarded for up to `linger-ms`, so unread input
    /// does not turn the close into a reset.
    AfterSend,
    /// Close at once, discarding the send buffer.
    Now,
}

/// When a handler gets [`Event::Send`] ([`Host::set_send_events`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendEvents {
    /// After every write of a connection's send buffer to its socket.
    #[default]
    EveryWrite,
    /// Only after the handler was told a connection's send buffer had no room (a
    /// refused [`Host::send`], or a `send` or [`Host::send_room`] answering 0): the
    /// next write to that connection's socket brings one.
    WhenBlocked,
}

/// Why the host refused a handler's request. A refused request changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The connection is closed, closing, or not the handler's to name.
    #[error("connection closed")]
    Closed,
    /// A limit of the listener would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The listener's configuration does not allow this.
    #[error("not allowed")]
    NotAllowed,
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The network refused (an outbound connection failed); the text is why.
    #[error("failed: {0}")]
    Failed(String),
}

/// What a handler may do while it handles an event. The reactor implements it.
///
/// Every method acts on the handler's own listener: a [`ConnId`] of another listener
/// is refused with [`HostError::Closed`]. Output only appends to buffers and records
/// intentions; the reactor does the I/O after the handler returns, so no method
/// calls the handler again.
pub trait Host {
    /// The receive buffer of `conn`: bytes read from the peer and not yet removed.
    fn recv_buffer(&self, conn: ConnId) -> Result<&Mbuf, HostError>;

    /// Append `data` to the send buffer of `conn`, all or nothing. Returns the room
    /// left in the send buffer.
    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<u32, HostError>;

    /// The room left in the send buffer of `conn`: the most one `send` can take now.
    fn send_room(&mut self, conn: ConnId) -> Result<u32, HostError>;

    /// Discard the first `n` bytes of the receive buffer of `conn`.
    fn remove(&mut self, conn: ConnId, n: u32) -> Result<(), HostError>;

    /// Move up to `max` bytes from the front of the receive buffer of `from` to the end
    /// of the send buffer of `to` (the same connection for an echo), as many as fit;
    /// returns how many moved. When the room of `to` stops it short, or there is none,
    /// `to` is owed an [`Event::Send`] as after [`send_room`](Host::send_room) answered
    /// 0. A `from` that is gone holds nothing; a `to` that takes no more bytes is
    /// [`HostError::Closed`].
    fn pipe(&mut self, from: ConnId, to: ConnId, max: u32) -> Result<u32, HostError>;

    /// Arm (or re-arm) timer `id` of `conn` to fire once after `after`.
    fn set_timer(&mut self, conn: ConnId, id: u64, after: Duration) -> Result<(), HostError>;

    /// Disarm timer `id` of `conn`; returns whether it was armed.
    fn cancel_timer(&mut self, conn: ConnId, id: u64) -> Result<bool, HostError>;

    /// Close `conn`; its [`Event::Close`] follows from the event loop.
    fn close(&mut self, conn: ConnId, mode: CloseMode) -> Result<(), HostError>;

    /// Shut down the sending side of `conn` once its send buffer is written out, and
    /// keep reading (a TCP half-close). Later sends are refused with
    /// [`HostError::Closed`].
    fn shutdown(&mut self, conn: ConnId) -> Result<(), HostError>;

    /// Dial `address`, if the listener allows it. Returns the new connection at once;
    /// its first event, [`Event::Connect`], tells how the dial ended.
    fn connect(&mut self, address: SocketAddr) -> Result<ConnId, HostError>;

    /// Report that handling `conn` hit a limit only the handler can see (say its log
    /// rate), so it is logged and counted with the others.
    fn limit_hit(&mut self, conn: ConnId, limit: Limit);

    /// Choose when this handler gets [`Event::Send`], for all of its connections from
    /// now on; a handler starts with [`SendEvents::EveryWrite`].
    fn set_send_events(&mut self, mode: SendEvents);

    /// What the TLS handshake of `conn` said, if the host ended TLS on it (an accepted
    /// connection of a listener with a certificate, or one dialed to an upstream the
    /// allow-list marks as TLS); `None` on a plaintext or passed-through connection.
    fn tls_info(&self, conn: ConnId) -> Result<Option<TlsInfo>, HostError>;
}

/// What a connection's TLS handshake said ([`Host::tls_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one; on a dialed
    /// connection, the name the upstream's certificate was checked against.
    pub server_name: Option<String>,
    /// The application protocol agreed by ALPN, if any (`h2`, `http/1.1`).
    pub alpn: Option<Vec<u8>>,
    /// The protocol version, as IANA names it: `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    /// The cipher suite, as IANA names it (`TLS13_AES_128_GCM_SHA256`).
    pub cipher_suite: String,
    /// The peer's certificate (DER), the leaf of its chain: a client's on an accepted
    /// connection when it sent one, the upstream's on a dialed one.
    pub peer_certificate: Option<Vec<u8>>,
}

/// A handler lost its state: every connection it was serving is orphaned.
///
/// Returned when a plugin instance traps, runs past its time limit or exceeds its
/// memory, or cannot be started. The reactor drops the handler, closes the
/// connection being handled and every other connection the handler held, since the
/// state that served them is gone, and asks the listener's [`HandlerFactory`] for a
/// fresh handler when the next connection arrives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Fault {
    /// What went wrong, for the log.
    pub reason: String,
    /// The limit that stopped the handler, if one did.
    pub limit: Option<Limit>,
}

/// Handles the events of the connections of one instance: all of a listener's, or
/// one accepted connection's (see [`crate::listener::InstanceMode`]).
///
/// ```
/// use sandport::handler::{ConnId, Event, Fault, Handler, Host};
///
/// /// Echo, natively: the benchmark baseline for the echo plugin.
/// struct Echo;
///
/// impl Handler for Echo {
///     fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
///         if let Event::Recv(_) | Event::Send(_) = event {
///             let Ok(rx) = host.recv_buffer(conn) else { return Ok(()) };
///             if rx.is_empty() {
///                 return Ok(());
///             }
///             let bytes = rx.as_slice().to_vec();
///             if host.send(conn, &bytes).is_ok() {
///                 let _ = host.remove(conn, bytes.len() as u32);
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send {
    /// Handle one event of `conn`. Events of a connection arrive in order, never
    /// re-entrantly, starting with [`Event::Accept`] and ending with [`Event::Close`].
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault>;

    /// Whether this handler can hand its connections over to a new version of itself
    /// and take them over from an old one ([`Handler::hand_over`],
    /// [`Handler::take_over`]). Handlers that cannot drain instead: their connections
    /// stay on the old version until they close.
    fn migrates(&self) -> bool {
        false
    }

    /// Whether this handler keeps serving a connection it handed over until the
    /// migration commits, so that calling a migration off needs nothing of it. True for
    /// plugins of the WIT 0.3.0 and later; a plugin built before forgets a connection it
    /// hands over, and a migration called off gives the connection back to it through
    /// its own [`Handler::take_over`].
    fn keeps_what_it_hands_over(&self) -> bool {
        true
    }

    /// The size in bytes of the handler's largest linear memory, which only grows: what
    /// its `memory` limit bounds, and what recycling watches (see
    /// [`Recycle`](crate::listener::Recycle)). 0 for a handler with no such memory.
    fn memory(&self) -> usize {
        0
    }

    /// The old version's side of a live migration, first: the handler's own state to
    /// carry over (not its connections'), without changing it; `None` when the handler
    /// has no such state to give. More than `limit` bytes is a fault.
    fn hand_over_instance(&mut self, host: &mut dyn Host, limit: usize) -> Result<Option<Vec<u8>>, Fault> {
        let _ = (host, limit);
        Ok(None)
    }

    /// The new version's side, first: start from `state`, which the old version's
    /// [`Handler::hand_over_instance`] returned, before any other call. False when the
    /// handler takes no such state (it was not given to it).
    fn take_over_instance(&mut self, host: &mut dyn Host, state: Vec<u8>) -> Result<bool, Fault> {
        let _ = (host, state);
        Ok(false)
    }

    /// The old version's side of a live migration: the state of `conn` to carry over.
    /// The handler keeps serving `conn` until the migration commits (see
    /// [`Handler::keeps_what_it_hands_over`]); then it is dropped.
    fn hand_over(&mut self, host: &mut dyn Host, conn: ConnId) -> Result<Vec<u8>, Fault> {
        let _ = (host, conn);
        Err(Fault { reason: "this handler does not migrate connections".into(), limit: None })
    }

    /// The new version's side: serve `conn` from now on, starting from `state`, which
    /// the old version's [`Handler::hand_over`] returned. The connection's next event
    /// comes to this handler if the migration commits.
    fn take_over(&mut self, host: &mut dyn Host, conn: ConnId, state: Vec<u8>) -> Result<(), Fault> {
        let _ = (host, conn, state);
        Err(Fault { reason: "this handler does not migrate connections".into(), limit: None })
    }
}

/// Makes the handlers of one listener: the one shared by all its connections, or one
/// per accepted connection. After a [`Fault`] the reactor asks for a fresh one.
///
/// Any `FnMut() -> Result<Box<dyn Handler>, Fault>` closure is a factory:
///
/// ```
/// use sandport::handler::{ConnId, Event, Fault, Handler, HandlerFactory, Host};
///
/// struct Silent;
/// impl Handler for Silent {
///     fn handle(&mut self, _: &mut dyn Host, _: ConnId, _: Event) -> Result<(), Fault> {
///         Ok(())
///     }
/// }
///
/// let mut factory = || Ok(Box::new(Silent) as Box<dyn Handler>);
/// assert!(factory.new_handler().is_ok());
/// ```
pub trait HandlerFactory: Send {
    /// A fresh handler, or why none can be made now (the reactor refuses the
    /// connection that needed it).
    fn new_handler(&mut self) -> Result<Box<dyn Handler>, Fault>;

    /// Another factory making the same handlers, to make one on another thread (a
    /// fresh instance for recycling, made while the worker serves on); `None` when it
    /// cannot be copied, and the worker makes that instance itself.
    fn fork(&self) -> Option<Box<dyn HandlerFactory>> {
        None
    }
}

impl<F> HandlerFactory for F
where
    F: FnMut() -> Result<Box<dyn Handler>, Fault> + Send,
{
    fn new_handler(&mut self) -> Result<Box<dyn Handler>, Fault> {
        self()
    }
}
