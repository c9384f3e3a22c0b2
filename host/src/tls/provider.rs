//! The one place that names rustls's crypto provider, so that a change of provider is
//! this file and a Cargo feature.
//!
//! ring, chosen by measurement (tests/tls-providers/README.md). Every configuration
//! is built with this provider explicitly, never with rustls's process-wide default, so
//! that nothing depends on which provider another crate installed first.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;

/// The provider every configuration of this module is built with.
pub(crate) fn get() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The provider's session-ticket maker: random keys, rotated every 6 hours, a ticket
/// lives 12 hours. Both TLS 1.3 and TLS 1.2 tickets use it.
pub(crate) fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    rustls::crypto::ring::Ticketer::new()
}
