//! In-memory rustls handshakes and records, for comparing crypto providers.
//!
//! The bench (`benches/handshakes.rs`) runs the same client and server `Connection`s
//! with each provider; this library builds them and moves their bytes through `Vec`s,
//! so that what is measured is the cryptography and rustls's state machine, never a
//! socket. It is a measuring tool only: nothing in the host depends on it.

use std::sync::Arc;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

/// The server name every certificate here is made for.
pub const SERVER_NAME: &str = "bench.example";

/// A provider under test, with what the server needs from it besides the
/// [`CryptoProvider`] (its session ticketer).
pub struct Provider {
    /// How the results name it.
    pub name: &'static str,
    /// The rustls provider.
    pub provider: Arc<CryptoProvider>,
    /// Makes the provider's recommended ticketer.
    pub ticketer: fn() -> Result<Arc<dyn ProducesTickets>, rustls::Error>,
}

/// The providers compared, each held to one key exchange so that the rows compare
/// like with like: ring and aws-lc-rs with X25519 (what browsers, curl and openssl
/// offer first, apart from the post-quantum hybrid), and aws-lc-rs with the hybrid
/// X25519MLKEM768 first (what it negotiates with a client that offers it, as browsers
/// do; X25519 second, for TLS 1.2, which has no hybrid; ring has no post-quantum key
/// exchange). Both providers' defaults put P-384 before X25519, which a
/// rustls client then offers first: see README.md for what that costs.
///
/// rustls 0.23.48 deprecates ring's provider for its lack of post-quantum key
/// exchange; it is measured here all the same.
#[expect(deprecated, reason = "ring is one of the two providers compared")]
pub fn providers() -> Vec<Provider> {
    use rustls::crypto::{aws_lc_rs, ring};
    let aws_lc = aws_lc_rs::default_provider();
    vec![
        Provider {
            name: "ring",
            provider: Arc::new(CryptoProvider { kx_groups: vec![ring::kx_group::X25519], ..ring::default_provider() }),
            ticketer: ring::Ticketer::new,
        },
        Provider {
            name: "aws-lc-rs",
            provider: Arc::new(CryptoProvider { kx_groups: vec![aws_lc_rs::kx_group::X25519], ..aws_lc.clone() }),
            ticketer: aws_lc_rs::Ticketer::new,
        },
        Provider {
            name: "aws-lc-rs+mlkem",
            provider: Arc::new(CryptoProvider {
                kx_groups: vec![aws_lc_rs::kx_group::X25519MLKEM768, aws_lc_rs::kx_group::X25519],
                ..aws_lc
            }),
            ticketer: aws_lc_rs::Ticketer::new,
        },
    ]
}

/// Each provider as it comes (`default_provider()`), with its own order of key
/// exchanges, for the primitives example.
#[expect(deprecated, reason = "ring is one of the two providers compared")]
pub fn defaults() -> Vec<Provider> {
    use rustls::crypto::{aws_lc_rs, ring};
    vec![
        Provider { name: "ring", provider: Arc::new(ring::default_provider()), ticketer: ring::Ticketer::new },
        Provider {
            name: "aws-lc-rs",
            provider: Arc::new(aws_lc_rs::default_provider()),
            ticketer: aws_lc_rs::Ticketer::new,
        },
    ]
}

/// The kind of key a server certificate is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// RSA, 2048 bits, PKCS#1 v1.5 with SHA-256 in the certificate.
    Rsa2048,
}

/// A self-signed server certificate for [`SERVER_NAME`] and its key.
pub struct Identity {
    /// The certificate (DER).
    pub certificate: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh certificate with a key of `kind`.
    pub fn new(kind: KeyKind) -> Identity {
        let key = match kind {
            KeyKind::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyKind::Rsa2048 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        }
        .expect("key generation");
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("certificate parameters");
        let certificate = params.self_signed(&key).expect("self-signed certificate");
        Identity { certificate: certificate.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
    }
}

/// Which protocol versions a configuration allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.3 only.
    Tls13,
    /// TLS 1.2 only.
    Tls12,
}

impl Version {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        match self {
            Version::Tls13 => &TLS13,
            Version::Tls12 => &TLS12,
        }
    }
}

/// A server configuration as the host builds one: `identity`'s certificate, the
/// provider's ticketer and a session cache.
pub fn server_config(provider: &Provider, identity: &Identity, version: Version) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider.provider.clone())
        .with_protocol_versions(version.versions())
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate.clone()], PrivateKeyDer::Pkcs8(identity.key.clone_key()))
        .expect("server certificate");
    config.ticketer = (provider.ticketer)().expect("ticketer");
    config.session_storage = ServerSessionMemoryCache::new(4096);
    Arc::new(config)
}

/// A client configuration that trusts `identity`, resuming sessions or not.
pub fn client_config(provider: &Provider, identity: &Identity, version: Version, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.certificate.clone()).expect("root certificate");
    let mut config = ClientConfig::builder_with_provider(provider.provider.clone())
        .with_protocol_versions(version.versions())
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A client and a server connection, not yet started.
pub fn pair(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (Connection, Connection) {
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    let client = ClientConnection::new(client.clone(), name).expect("client connection");
    let server = ServerConnection::new(server.clone()).expect("server connection");
    (Connection::Client(client), Connection::Server(server))
}

/// The CPU time this thread has used. The machine this runs on is shared (other
/// builds run beside it), so the server's cost is measured as CPU time, which a
/// preempted thread does not accrue, rather than as wall time.
pub fn thread_cpu() -> Duration {
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// Moves everything `from` has to write into `to`, and lets `to` process it.
/// Answers the CPU time `from` took to write and `to` to process.
pub fn pump(from: &mut Connection, to: &mut Connection, wire: &mut Vec<u8>) -> (Duration, Duration) {
    wire.clear();
    let start = thread_cpu();
    while from.wants_write() {
        from.write_tls(wire).expect("write_tls");
    }
    let middle = thread_cpu();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls");
        to.process_new_packets().expect("process_new_packets");
    }
    (middle - start, thread_cpu() - middle)
}

/// Runs the handshake of `client` and `server` to its end; answers the CPU time the
/// server side spent in rustls (reading, processing and writing its flights).
pub fn handshake(client: &mut Connection, server: &mut Connection) -> Duration {
    let mut wire = Vec::with_capacity(8 << 10);
    let mut server_time = Duration::ZERO;
    while client.is_handshaking() || server.is_handshaking() || client.wants_write() || server.wants_write() {
        let (_, processed) = pump(client, server, &mut wire);
        let (written, _) = pump(server, client, &mut wire);
        server_time += processed + written;
    }
    server_time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_completes_and_resumes() {
        let identity = Identity::new(KeyKind::EcdsaP256);
        for provider in providers() {
            let server = server_config(&provider, &identity, Version::Tls12);
            let client = client_config(&provider, &identity, Version::Tls12, true);
            let (mut c, mut s) = pair(&client, &server);
            handshake(&mut c, &mut s);
            assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full), "{}", provider.name);
            let (mut c, mut s) = pair(&client, &server);
            handshake(&mut c, &mut s);
            assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{}", provider.name);
        }
    }
}
