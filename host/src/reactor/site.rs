//! An address that chooses: several TLS listeners on one port, routed by the server
//! name of each ClientHello, or one listener behind load balancers that speak the PROXY
//! protocol. The [`Site`] is the rule for one address; control builds it and replaces
//! it whole when a tenant comes, goes or changes, and every worker that listens on the
//! address reads the current one for each new connection.
//!
//! It is plain data: no socket, no handler. What a worker does with a connection by it
//! is `reactor/greeting.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::listener::Workers;
use crate::tls::Router;

/// The rule of one address: who may send a PROXY header, and which listener serves
/// which server name.
#[derive(Debug)]
pub struct Site {
    /// The address, as bound.
    pub address: SocketAddr,
    /// The load balancers allowed to send a PROXY protocol header; empty: no header
    /// is read, and any client may connect.
    pub proxy_protocol: Vec<ipnet::IpNet>,
    /// How long a connection may take to reach its listener, handshake included.
    pub handshake_timeout: Duration,
    /// Whether a ClientHello is read to choose (a TLS address), or every connection
    /// goes to the default route as it is (plaintext behind a load balancer).
    pub reads_hello: bool,
    /// The listeners by server name, and the default.
    pub router: Router<Target>,
}

/// The current rule of an address, replaced whole while workers read it.
pub type SharedSite = Arc<ArcSwap<Site>>;

/// Where a server name leads: a listener, and how its connections speak.
#[derive(Debug, Clone)]
pub struct Target {
    /// The listener's name.
    pub listener: String,
    /// The workers that serve it; a connection that arrives at another is handed to
    /// the first of these.
    pub workers: Workers,
    /// What the host does with the connection's TLS.
    pub handling: Handling,
}

/// What the host does with the TLS of a routed connection.
#[derive(Debug, Clone)]
pub enum Handling {
    /// Ends it with this configuration (the listener's certificate, ALPN, client
    /// certificates).
    Terminate(Arc<rustls::ServerConfig>),
    /// Hands the raw bytes on, ClientHello first.
    Passthrough,
    /// No TLS at all: plaintext after the PROXY header.
    Plain,
}
