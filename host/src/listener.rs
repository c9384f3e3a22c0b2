//! The vocabulary every part of the host speaks about a listener: its [`ListenerSpec`],
//! its [`Limits`] (and the [`Limit`] a connection hits), its [`InstanceMode`] and the
//! [`Workers`] that mode places it on, its [`Rollback`] rule and when its instances are
//! replaced by fresh ones ([`Recycle`], [`Worn`]).
//!
//! This module sits at the bottom of the house: it imports nothing of ours, so the
//! reactor, the handler seam, the plugin module, the config parser and the control
//! surface can all use it without pointing at each other. It holds plain data and the
//! rules that follow from it alone; it never reads a file, opens a socket or loads a
//! plugin (the config parser turns a file into these types; `control` acts on them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Per-listener bounds. Every one has a default and a key under `[listener.limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Receive buffer cap per connection (`recv-buffer`). When full, the host stops
    /// reading that socket until the handler removes bytes.
    pub recv_buffer: usize,
    /// Send buffer cap per connection (`send-buffer`). A `send` that does not fit is
    /// refused with `limit-exceeded`.
    pub send_buffer: usize,
    /// CPU time a plugin may spend on one event (`event-timeout-ms`).
    pub event_timeout: Duration,
    /// Wall-clock time one event may take whatever the CPU time
    /// (`event-wall-timeout-ms`): the ceiling for a starved or stuck call.
    pub event_wall_timeout: Duration,
    /// Linear memory a plugin instance may grow to (`memory`).
    pub memory: usize,
    /// Timers a connection may have armed at once (`max-timers`).
    pub max_timers: usize,
    /// Connections open at once, accepted and dialed together (`max-connections`).
    /// Beyond it a new connection is accepted and closed at once.
    pub max_connections: usize,
    /// A connection with no bytes read or written for this long is closed
    /// (`idle-timeout-ms`). It also bounds how long an outbound dial may take.
    pub idle_timeout: Duration,
    /// Bytes of guest log output (the `log` import, stdout, stderr) per second,
    /// shared by the listener's instances (`log-rate`); the excess is dropped.
    pub log_rate: usize,
    /// After `close(after-send)` has written out the send buffer, how long the host
    /// goes on reading and discarding what the peer still sends before it closes
    /// (`linger-ms`), so unread input does not turn the close into a reset that
    /// destroys the last response (nginx's `lingering_close`).
    pub linger: Duration,
    /// How long a TLS handshake (or a PROXY header, or the ClientHello a listener is
    /// chosen by) may take from accept (`handshake-timeout-ms`).
    pub handshake_timeout: Duration,
    /// TLS handshakes in flight at once (`max-handshakes`), per worker; beyond it a
    /// new connection is closed at once.
    pub max_handshakes: usize,
    /// Bytes of its own state an instance may hand over to the next version in a live
    /// migration (`migrate-state`); more refuses the new version. The new instance
    /// receives them in its own memory, beside what it builds from them.
    pub migrate_state: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            recv_buffer: 1 << 20,
            send_buffer: 1 << 20,
            event_timeout: Duration::from_millis(100),
            event_wall_timeout: Duration::from_millis(1000),
            memory: 64 << 20,
            max_timers: 64,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            log_rate: 64 << 10,
            linger: Duration::from_millis(5000),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            migrate_state: 32 << 20,
        }
    }
}

/// One of the [`Limits`], as reported when a connection hits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `memory`: the instance trapped growing past it.
    Memory,
    /// `event-timeout-ms`: the instance was interrupted.
    EventTime,
    /// `event-wall-timeout-ms`: the instance was interrupted.
    EventWallTime,
    /// `max-connections`: a connection was refused.
    Connections,
    /// `recv-buffer`: reading paused until the handler removes bytes.
    RecvBuffer,
    /// `send-buffer`: a `send` was refused.
    SendBuffer,
    /// `max-timers`: a `set-timer` was refused.
    Timers,
    /// `idle-timeout-ms`: the connection was closed.
    IdleTimeout,
    /// `log-rate`: guest log output was dropped.
    LogRate,
    /// `linger-ms`: a closing connection stopped discarding input and was closed.
    Linger,
    /// `handshake-timeout-ms`: a connection that had not finished its handshake was
    /// closed.
    HandshakeTimeout,
    /// `max-handshakes`: a connection was refused.
    Handshakes,
    /// `migrate-state`: a new version was refused.
    MigrateState,
}

impl Limit {
    /// Every limit, in the order [`Limit::index`] numbers them.
    pub const ALL: [Limit; 13] = [
        Limit::Memory,
        Limit::EventTime,
        Limit::EventWallTime,
        Limit::Connections,
        Limit::RecvBuffer,
        Limit::SendBuffer,
        Limit::Timers,
        Limit::IdleTimeout,
        Limit::LogRate,
        Limit::Linger,
        Limit::HandshakeTimeout,
        Limit::Handshakes,
        Limit::MigrateState,
    ];

    /// Position in [`Limit::ALL`], for per-limit counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The limit's key under `[listener.limits]`.
    ///
    /// ```
    /// assert_eq!(sandport::listener::Limit::IdleTimeout.key(), "idle-timeout-ms");
    /// ```
    pub fn key(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::EventTime => "event-timeout-ms",
            Limit::EventWallTime => "event-wall-timeout-ms",
            Limit::Connections => "max-connections",
            Limit::RecvBuffer => "recv-buffer",
            Limit::SendBuffer => "send-buffer",
            Limit::Timers => "max-timers",
            Limit::IdleTimeout => "idle-timeout-ms",
            Limit::LogRate => "log-rate",
            Limit::Linger => "linger-ms",
            Limit::HandshakeTimeout => "handshake-timeout-ms",
            Limit::Handshakes => "max-handshakes",
            Limit::MigrateState => "migrate-state",
        }
    }

    /// What the host does when the limit is hit, for the log.
    pub fn outcome(self) -> &'static str {
        match self {
            Limit::Memory | Limit::EventTime | Limit::EventWallTime => "the plugin instance was stopped",
            Limit::Connections => "the connection was refused",
            Limit::RecvBuffer => "reading paused until the handler removes bytes",
            Limit::SendBuffer => "a send was refused",
            Limit::Timers => "a set-timer was refused",
            Limit::IdleTimeout => "the connection was closed",
            Limit::LogRate => "log output was dropped",
            Limit::Linger => "the closing connection was closed with input unread",
            Limit::HandshakeTimeout => "the connection was closed during its handshake",
            Limit::Handshakes => "the connection was refused",
            Limit::MigrateState => "the new version was refused",
        }
    }
}

/// How a listener's connections share plugin instances (`instance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// One instance serves every connection of the listener; it can keep state
    /// shared between them, and a fault closes them all. The listener lives on one
    /// worker, so its state never splits.
    #[default]
    Shared,
    /// One instance per worker, each serving the connections the kernel gives that
    /// worker: for handlers whose state does not span connections (an echo, HTTP),
    /// which then use every core. A fault closes that worker's instance's connections.
    PerWorker,
    /// Each accepted connection gets a fresh instance, dropped after the CLOSE of
    /// the last connection it holds (the accepted one and any it dialed). A fault
    /// closes only that instance's connections.
    PerConnection,
}

/// The workers that serve a listener, by index: each holds a socket of its own for it.
pub type Workers = Range<usize>;

impl InstanceMode {
    /// Where a listener of this mode lives among `workers` event loops, when it is the
    /// `index`th listener of the config. A shared listener lives on one worker, dealt
    /// out in turn, so a handler that keeps state across connections (a chat room)
    /// sees all of them; the others are served by every worker, each with its own
    /// socket on the same port (`SO_REUSEPORT`), and the kernel spreads connections.
    ///
    /// ```
    /// use sandport::listener::InstanceMode;
    /// assert_eq!(InstanceMode::Shared.workers(3, 2), 1..2);
    /// assert_eq!(InstanceMode::PerWorker.workers(3, 2), 0..2);
    /// ```
    pub fn workers(self, index: usize, workers: usize) -> Workers {
        match self {
            InstanceMode::Shared => index % workers..index % workers + 1,
            InstanceMode::PerWorker | InstanceMode::PerConnection => 0..workers,
        }
    }
}

/// One listener's configuration: where and how it listens, its bounds, and the plugin
/// that handles it. A config file's `[[listener]]` table is one; so is a native
/// handler's listener (with no plugin file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Unique name, used in logs.
    pub name: String,
    /// Address to listen on, IPv4 or IPv6. Port 0 picks a free port.
    pub address: SocketAddr,
    /// The plugin component, resolved against the config file's folder; empty for a
    /// native handler. For a plugin pulled from a registry, the component file in the
    /// store, set once it has been pulled (empty until then).
    pub plugin: PathBuf,
    /// Where the plugin comes from when it is pulled from an OCI registry
    /// (`plugin = "oci://..."`).
    pub artifact: Option<Artifact>,
    /// The plugin's settings (`[listener.config]`), as text: strings as they are,
    /// numbers and booleans as written. Handlers read them through the `config` import.
    pub settings: BTreeMap<String, String>,
    /// Swap the plugin when its file changes (`watch`, or the top-level default).
    pub watch: bool,
    /// Interval of POLL events, if the listener wants them.
    pub poll_interval: Option<Duration>,
    /// The listener's bounds.
    pub limits: Limits,
    /// Whether connections share one handler instance.
    pub instance: InstanceMode,
    /// Addresses the handler may `connect` to, each plain or over TLS. Empty: none.
    pub allow_connect: Vec<Upstream>,
    /// The server names (SNI) it serves on an address it shares with other listeners
    /// (`server-names`): exact names, and `*.example.com` for any one label in front.
    pub server_names: Vec<String>,
    /// It serves a ClientHello without a server name, or with one no listener of its
    /// address names (`default`). Without a default such a hello is refused with the
    /// `unrecognized_name` alert.
    pub default_server: bool,
    /// How it speaks TLS (`[listener.tls]`); `None`: plaintext.
    pub tls: Option<Tls>,
    /// The load balancers allowed to send a PROXY protocol header (v1 or v2) before
    /// the client's first byte (`proxy-protocol`); empty: no header is read. A
    /// connection from elsewhere, or with a malformed header, is closed.
    pub proxy_protocol: Vec<ipnet::IpNet>,
    /// After a swap, how long connections may stay on the version they started with
    /// before they are closed (`drain-timeout-ms`).
    pub drain_timeout: Duration,
    /// When a new version rolls itself back (`rollback-faults`,
    /// `rollback-window-ms`); `None`: never.
    pub rollback: Option<Rollback>,
    /// When an instance is replaced by a fresh one of the same version
    /// (`[listener.recycle]`); by default, never.
    pub recycle: Recycle,
}

/// When an instance of a listener is worn enough to be replaced by a fresh instance of
/// the same version (`[listener.recycle]`): its state and connections move to the fresh
/// one if the plugin migrates, or new connections go to the fresh one while the worn one
/// drains. Any bound passed is enough; with none set, instances serve until they fault.
///
/// What a runtime that leaks needs: a Python or JavaScript instance whose memory only
/// grows is replaced before it reaches its `memory` limit, which would fault it and close
/// every connection it holds.
///
/// ```
/// use sandport::listener::{Recycle, Worn};
/// let recycle = Recycle { memory: Some(0.75), ..Recycle::default() };
/// assert_eq!(recycle.memory_mark(64 << 20), Some(48 << 20));
/// assert_eq!(Worn::Memory.key(), "memory");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Recycle {
    /// A share of the `memory` limit (0 to 1): an instance whose largest linear memory
    /// has grown to it is replaced (`memory = "75%"`).
    pub memory: Option<f64>,
    /// Events an instance may handle (`events`).
    pub events: Option<u64>,
    /// How long an instance may serve (`age-ms`), looked at when it handles an event.
    pub age: Option<Duration>,
}

impl Recycle {
    /// Fresh instances one worker has asked for and not yet put in place, at most: a
    /// pooled engine (a per-connection listener's) keeps this many slots per worker
    /// beyond one per connection (and one for a pre-flight), so that a full listener
    /// can still recycle.
    pub const IN_FLIGHT: usize = 8;

    /// Whether any bound is set.
    pub fn is_set(&self) -> bool {
        self.memory.is_some() || self.events.is_some() || self.age.is_some()
    }

    /// The memory, in bytes, at which an instance under a `memory` limit of `limit`
    /// bytes is replaced.
    pub fn memory_mark(&self, limit: usize) -> Option<usize> {
        self.memory.map(|share| (limit as f64 * share) as usize)
    }
}

impl Eq for Recycle {}

/// Which bound of [`Recycle`] an instance passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worn {
    /// Its memory reached the mark.
    Memory,
    /// It handled its share of events.
    Events,
    /// It served long enough.
    Age,
}

impl Worn {
    /// Every reason, in the order [`Worn::index`] numbers them.
    pub const ALL: [Worn; 3] = [Worn::Memory, Worn::Events, Worn::Age];

    /// Position in [`Worn::ALL`], for per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its key under `[listener.recycle]` (`age-ms` as `age`), in logs and metrics.
    pub fn key(self) -> &'static str {
        match self {
            Worn::Memory => "memory",
            Worn::Events => "events",
            Worn::Age => "age",
        }
    }
}

/// A listener's plugin as an OCI artifact: the reference, and how closely to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `oci://HOST[:PORT]/REPOSITORY:TAG`, or `...@sha256:DIGEST`.
    pub reference: crate::oci::Reference,
    /// How often the tag is looked at (`follow-ms`); a new digest goes through the
    /// swap pipeline. `None`: pulled once, at start or by a reload.
    pub follow: Option<Duration>,
    /// What a start does when the registry cannot be reached (`offline`).
    pub offline: Offline,
}

/// What a start does when the registry cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offline {
    /// The listener cannot start, and neither can the server (`"fail"`, the default).
    #[default]
    Fail,
    /// The version last pulled for this reference serves, with a warning, while the
    /// pull is retried (`"last-pulled"`).
    LastPulled,
}

/// How a listener speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// The host ends TLS with this certificate: handlers see plaintext.
    Terminate(Termination),
    /// Routed by the ClientHello's server name but not ended: handlers receive the raw
    /// bytes, ClientHello first (nginx's `ssl_preread`).
    Passthrough,
}

/// A terminating listener's certificate and handshake settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// The certificate chain, PEM, leaf first (`certificate`).
    pub certificate: PathBuf,
    /// Its private key, PEM: PKCS#8, SEC1 (EC) or PKCS#1 (RSA) (`key`).
    pub key: PathBuf,
    /// Application protocols offered by ALPN, in order of preference (`alpn`).
    pub alpn: Vec<String>,
    /// Client certificates, if asked for (`client-ca`, `client-auth`).
    pub client_auth: Option<ClientAuth>,
}

/// Client certificates a terminating listener asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client's chain must lead to.
    pub ca: PathBuf,
    /// A client without a certificate is refused (`client-auth = "required"`), or
    /// served without one (`"optional"`).
    pub required: bool,
}

/// An address a handler may dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where.
    pub address: SocketAddr,
    /// Over TLS, checked this way; `None`: plaintext.
    pub tls: Option<UpstreamTls>,
}

impl From<SocketAddr> for Upstream {
    fn from(address: SocketAddr) -> Upstream {
        Upstream { address, tls: None }
    }
}

/// How the host checks an upstream it dials over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name its certificate must carry (and the SNI sent).
    pub server_name: String,
    /// The CA certificates (PEM) its chain must lead to; `None`: the system's roots.
    pub ca: Option<PathBuf>,
}

/// A new version that faults more than `faults` times within `window` of taking over
/// is replaced by the version before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    /// Faults tolerated.
    pub faults: u64,
    /// How long after the swap they count.
    pub window: Duration,
}

impl Default for Rollback {
    fn default() -> Rollback {
        Rollback { faults: 10, window: Duration::from_secs(60) }
    }
}

/// How long connections may stay on an old version after a swap, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl ListenerSpec {
    /// A listener with default limits, no POLL events and no plugin file (a native
    /// handler's; a config file names the plugin).
    ///
    /// ```
    /// let spec = sandport::listener::ListenerSpec::new("echo", "127.0.0.1:0".parse().unwrap());
    /// assert_eq!(spec.limits, sandport::listener::Limits::default());
    /// ```
    pub fn new(name: &str, address: SocketAddr) -> ListenerSpec {
        ListenerSpec {
            name: name.to_owned(),
            address,
            plugin: PathBuf::new(),
            artifact: None,
            settings: BTreeMap::new(),
            watch: false,
            poll_interval: None,
            limits: Limits::default(),
            instance: InstanceMode::default(),
            allow_connect: Vec::new(),
            server_names: Vec::new(),
            default_server: false,
            tls: None,
            proxy_protocol: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            rollback: Some(Rollback::default()),
            recycle: Recycle::default(),
        }
    }
}
