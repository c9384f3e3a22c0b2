//! A terminating listener's rustls `ServerConfig`, and the certificate it serves,
//! swapped in place for new handshakes.
//!
//! It owns how a listener's TLS is set up (versions, ALPN, resumption, client
//! certificates, no early data) and the one live certificate. It never reads a
//! socket and never decides when to reload; a refused reload changes nothing.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::certificate::{self, Identity};
use super::{Certificate, Role, TlsError, provider};
use crate::listener::{ClientAuth, Termination};

/// TLS 1.3 first, then TLS 1.2 for the clients that have nothing newer.
pub(super) const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Sessions the server remembers per listener for TLS 1.2 clients that resume by
/// session id instead of by ticket (TLS 1.3 and ticket-taking clients resume from the
/// ticket alone, and cost no entry). An entry is a few hundred bytes (more with a
/// client certificate chain), so 4096 is about a MiB at worst, and covers the clients
/// that come back within a ticket's life on a busy tenant; the oldest is dropped
/// first.
const SESSION_CACHE: usize = 4096;

/// A terminating listener's TLS: the `ServerConfig` handshakes run with, and the
/// certificate it serves. Cloning is cheap (two `Arc`s); clones share the certificate,
/// so a [`reload`](ServerTls::reload) through one is seen through all.
///
/// A change of ALPN list or client CA needs a new `ServerTls` ([`ServerTls::load`]);
/// a new certificate and key do not.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    current: Arc<Current>,
}

impl ServerTls {
    /// Reads and checks the certificate and key of `spec` (and its client CA), and
    /// builds the configuration: TLS 1.2 and 1.3, `spec`'s ALPN list, resumption by
    /// tickets (TLS 1.3 and 1.2) and by session id (a cache of 4096), client
    /// certificates as `spec` asks, no early data (0-RTT data can be replayed).
    pub fn load(spec: &Termination) -> Result<ServerTls, TlsError> {
        let provider = provider::get();
        let identity = certificate::identity(&spec.certificate, &spec.key, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(identity)));
        let verifier = match &spec.client_auth {
            Some(client_auth) => client_verifier(client_auth, Arc::clone(&provider))?,
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls { context: "TLS versions", source })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = spec.alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer =
            provider::ticketer().map_err(|source| TlsError::Rustls { context: "session ticket keys", source })?;
        config.max_early_data_size = 0;
        Ok(ServerTls { config: Arc::new(config), current })
    }

    /// Reads and checks the certificate and key of `spec` again and serves them to
    /// every handshake that starts from now on; handshakes under way and open
    /// connections keep the one they have, and sessions and tickets stay valid. On an
    /// error the certificate served until now goes on being served. The ALPN list and
    /// client CA of `spec` are not looked at (see [`ServerTls`]).
    pub fn reload(&self, spec: &Termination) -> Result<Certificate, TlsError> {
        let identity = certificate::identity(&spec.certificate, &spec.key, &self.config.crypto_provider())?;
        let summary = identity.certificate.clone();
        self.current.0.store(Arc::new(identity));
        Ok(summary)
    }

    /// The configuration to start a handshake with (`ServerConnection::new`, or
    /// `Accepted::into_connection` after routing by the ClientHello).
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The certificate served to new handshakes.
    pub fn certificate(&self) -> Certificate {
        self.current.0.load().certificate.clone()
    }
}

fn client_verifier(
    client_auth: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = certificate::roots(Role::ClientCa, &client_auth.ca)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !client_auth.required {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|error| TlsError::ClientCa { path: client_auth.ca.clone(), reason: error.to_string() })
}

/// The certificate new handshakes get. The listener's name routing happened before
/// (the [`Router`](super::Router)), so the ClientHello is not looked at here.
#[derive(Debug)]
struct Current(ArcSwap<Identity>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.load().key))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::tls::testing::{self, Ca, Encoding, KeyKind};

    fn termination(files: &testing::Files) -> Termination {
        Termination { certificate: files.certificate.clone(), key: files.key.clone(), alpn: Vec::new(), client_auth: None }
    }

    fn connect(config: Arc<rustls::ClientConfig>, server: &ServerTls) -> (ClientConnection, ServerConnection) {
        let client = ClientConnection::new(config, ServerName::try_from("a.example").unwrap()).unwrap();
        (client, ServerConnection::new(Arc::clone(server.config())).unwrap())
    }

    fn write_ca(dir: &Path, ca: &Ca) -> std::path::PathBuf {
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, ca.certificate.pem()).unwrap();
        path
    }

    #[test]
    fn a_full_handshake_with_alpn_and_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["a.example"]);
        let files = testing::Files::write(dir.path(), &leaf, Encoding::Sec1);
        let ca = Ca::new("Client CA");
        let client_leaf = ca.client("client.example");
        let spec = Termination {
            alpn: vec!["h2".into(), "http/1.1".into()],
            client_auth: Some(ClientAuth { ca: write_ca(dir.path(), &ca), required: true }),
            ..termination(&files)
        };
        let server = ServerTls::load(&spec).unwrap();
        let config = testing::client_config(&[&leaf.certificate], &["http/1.1"], Some(&client_leaf));
        let (mut client, mut connection) = connect(config, &server);
        testing::handshake(&mut client, &mut connection).unwrap();
        let info = crate::tls::server_info(&connection).unwrap();
        assert_eq!(info.server_name.as_deref(), Some("a.example"));
        assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(info.version, "TLSv1_3");
        assert!(info.cipher_suite.starts_with("TLS13_"), "{}", info.cipher_suite);
        assert_eq!(info.peer_certificate.as_deref(), Some(client_leaf.certificate.der().as_ref()));
    }

    #[test]
    fn client_certificates_required_optional_and_from_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["a.example"]);
        let files = testing::Files::write(dir.path(), &leaf, Encoding::Pkcs8);
        let ca = Ca::new("Client CA");
        let required = ServerTls::load(&Termination {
            client_auth: Some(ClientAuth { ca: write_ca(dir.path(), &ca), required: true }),
            ..termination(&files)
        })
        .unwrap();
        let optional = ServerTls::load(&Termination {
            client_auth: Some(ClientAuth { ca: write_ca(dir.path(), &ca), required: false }),
            ..termination(&files)
        })
        .unwrap();

        let anonymous = testing::client_config(&[&leaf.certificate], &[], None);
        let (mut client, mut connection) = connect(Arc::clone(&anonymous), &required);
        let error = testing::handshake(&mut client, &mut connection).unwrap_err();
        assert!(error.to_string().contains("certificate required"), "{error}");

        let (mut client, mut connection) = connect(anonymous, &optional);
        testing::handshake(&mut client, &mut connection).unwrap();
        assert_eq!(crate::tls::server_info(&connection).unwrap().peer_certificate, None);

        let stranger = Ca::new("Another CA").client("client.example");
        let config = testing::client_config(&[&leaf.certificate], &[], Some(&stranger));
        let (mut client, mut connection) = connect(config, &optional);
        assert!(testing::handshake(&mut client, &mut connection).is_err());
    }

    #[test]
    fn rsa_handshakes_resume_in_tls13_and_tls12() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::Rsa2048, &["a.example"]);
        let files = testing::Files::write(dir.path(), &leaf, Encoding::Pkcs1);
        let server = ServerTls::load(&termination(&files)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(leaf.certificate.der().clone()).unwrap();
        for (version, name) in [(&rustls::version::TLS13, "TLSv1_3"), (&rustls::version::TLS12, "TLSv1_2")] {
            let config = rustls::ClientConfig::builder_with_provider(provider::get())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let config = Arc::new(config);
            for expected in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
                let (mut client, mut connection) = connect(Arc::clone(&config), &server);
                testing::handshake(&mut client, &mut connection).unwrap();
                assert_eq!(connection.handshake_kind(), Some(expected), "{name}");
                assert_eq!(crate::tls::server_info(&connection).unwrap().version, name);
            }
        }
    }

    #[test]
    fn a_reload_serves_new_handshakes_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let first = testing::leaf(KeyKind::EcdsaP256, &["a.example"]);
        let files = testing::Files::write(dir.path(), &first, Encoding::Pkcs8);
        let server = ServerTls::load(&termination(&files)).unwrap();
        let clone = server.clone();
        let second = testing::leaf(KeyKind::EcdsaP384, &["a.example"]);
        // A new client configuration has no session to resume, so the server sends
        // its certificate.
        let fresh = || testing::client_config(&[&first.certificate, &second.certificate], &[], None);
        let resuming = fresh();

        let (mut client, mut before) = connect(Arc::clone(&resuming), &server);
        testing::handshake(&mut client, &mut before).unwrap();
        assert_eq!(client.peer_certificates().unwrap()[0], *first.certificate.der());

        // A handshake under way when the certificate changes keeps the one it started with.
        let (mut client_under_way, mut under_way) = connect(fresh(), &server);
        let mut hello = Vec::new();
        client_under_way.write_tls(&mut hello).unwrap();
        under_way.read_tls(&mut &hello[..]).unwrap();
        under_way.process_new_packets().unwrap();

        testing::Files::write(dir.path(), &second, Encoding::Sec1);
        let summary = server.reload(&termination(&files)).unwrap();
        assert_eq!(summary, clone.certificate());
        assert_eq!(summary.sha256, <[u8; 32]>::from(Sha256::digest(second.certificate.der())));

        let (mut client, mut after) = connect(fresh(), &clone);
        testing::handshake(&mut client, &mut after).unwrap();
        assert_eq!(client.peer_certificates().unwrap()[0], *second.certificate.der());
        testing::handshake(&mut client_under_way, &mut under_way).unwrap();
        assert_eq!(client_under_way.peer_certificates().unwrap()[0], *first.certificate.der());

        // A session from before the rotation still resumes after it.
        let (mut client, mut resumed) = connect(resuming, &server);
        testing::handshake(&mut client, &mut resumed).unwrap();
        assert_eq!(resumed.handshake_kind(), Some(rustls::HandshakeKind::Resumed));

        // A key that does not match, then an expired certificate: refused, the second stays.
        let stray = tempfile::tempdir().unwrap();
        let mismatched = testing::Files {
            certificate: files.certificate.clone(),
            key: testing::Files::write(stray.path(), &first, Encoding::Pkcs8).key,
        };
        assert!(matches!(server.reload(&termination(&mismatched)), Err(TlsError::KeyMismatch { .. })));
        testing::Files::write(dir.path(), &testing::expired(), Encoding::Pkcs8);
        assert!(matches!(server.reload(&termination(&files)), Err(TlsError::Expired { .. })));
        assert_eq!(server.certificate().sha256, summary.sha256);
        let (mut client, mut connection) = connect(fresh(), &server);
        testing::handshake(&mut client, &mut connection).unwrap();
        assert_eq!(client.peer_certificates().unwrap()[0], *second.certificate.der());
    }

    #[test]
    fn a_bad_client_ca_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), Encoding::Pkcs8);
        let spec = Termination {
            client_auth: Some(ClientAuth { ca: files.key.clone(), required: true }),
            ..termination(&files)
        };
        let error = ServerTls::load(&spec).unwrap_err().to_string();
        assert_eq!(error, format!("client CA {}: no PEM certificate in it", files.key.display()));
    }
}
