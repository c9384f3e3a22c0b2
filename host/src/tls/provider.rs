//! The one place that names rustls's crypto provider, so that a change of provider is
//! this file and a Cargo feature.
//!
//! aws-lc-rs, chosen by measurement (tests/tls-providers/README.md): on the same
//! machine, like for like, a server's full TLS 1.3 handshake costs it 10-15% less CPU
//! than ring's with an ECDSA P-256 certificate and 40% less with RSA-2048, records
//! seal and open 1.6 times as fast, and it has the post-quantum hybrid key exchange
//! browsers offer first (rustls deprecates ring's provider for lacking it). It costs
//! about a minute more of a cold build, once. Every configuration is built with this
//! provider explicitly, never with rustls's process-wide default, so that nothing
//! depends on which provider another crate installed first.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::server::ProducesTickets;

/// The provider every configuration of this module is built with: aws-lc-rs's
/// defaults, but with the key exchanges in the order an edge server wants them.
pub fn get() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        // The default puts P-384 before X25519; P-384 costs about six times as much
        // CPU for the same handshake, so it comes last, for a client that offers
        // nothing else. The post-quantum hybrid stays first: a client that sends its
        // share gets it without a second round trip.
        let kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        Arc::new(CryptoProvider { kx_groups, ..aws_lc_rs::default_provider() })
    });
    Arc::clone(provider)
}

/// The provider's session-ticket maker: random keys, rotated every 6 hours, a ticket
/// lives 12 hours. Both TLS 1.3 and TLS 1.2 tickets use it.
pub(crate) fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    aws_lc_rs::Ticketer::new()
}
