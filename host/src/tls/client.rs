//! The rustls `ClientConfig` a handler's TLS upstream is dialed with, and the system's
//! root certificates, loaded once per process.
//!
//! It owns how an upstream's certificate is checked (the allow-list entry's CA file,
//! or the system roots) and the name it is checked against. It never dials: the
//! reactor connects the socket and moves the bytes of the [`ClientConnection`].

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::server::VERSIONS;
use super::{Role, TlsError, certificate, provider};
use crate::handler::TlsInfo;
use crate::listener::UpstreamTls;

/// How the host speaks TLS to one upstream: TLS 1.2 and 1.3, the upstream's
/// certificate checked against the CA file or the system roots and the server name,
/// sessions resumed (rustls's in-memory cache of 256 names, kept in the
/// configuration: load a `ClientTls` once per allow-list entry, not per connection).
/// Cloning is cheap.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl ClientTls {
    /// The configuration for `spec`: its CA file's certificates as roots, or the
    /// system's (see [`system_roots`]) when it names none.
    pub fn load(spec: &UpstreamTls) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(spec.server_name.clone())
            .map_err(|_| TlsError::ServerName { name: spec.server_name.clone() })?;
        let roots = match &spec.ca {
            Some(path) => Arc::new(certificate::roots(Role::UpstreamCa, path)?),
            None => system_roots()?,
        };
        let config = ClientConfig::builder_with_provider(provider::get())
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls { context: "TLS versions", source })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// A new client connection to the upstream, its ClientHello ready to be written.
    pub fn connect(&self) -> Result<ClientConnection, TlsError> {
        ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map_err(|source| TlsError::Rustls { context: "a TLS connection to an upstream", source })
    }

    /// The name the upstream's certificate is checked against, sent as SNI (an IP
    /// address is checked but, as RFC 6066 says, not sent).
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// What the finished handshake of `connection` (made by [`ClientTls::connect`])
    /// said; `None` while it is under way.
    pub fn info(&self, connection: &ClientConnection) -> Option<TlsInfo> {
        super::info(connection, Some(&self.server_name.to_str()))
    }

    /// The configuration connections are made with.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

/// The system's root certificates (rustls-native-certs: `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, else the platform's bundle), read the first time an upstream
/// needs them and kept for the life of the process; how many were found is logged
/// then. None found is an error that says where it looked, every time it is asked.
pub fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            let errors = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>();
            if added == 0 {
                let reason = match errors.is_empty() {
                    true => format!("{ignored} unusable, none usable"),
                    false => errors.join("; "),
                };
                return Err(reason);
            }
            tracing::info!(roots = added, unusable = ignored, errors = errors.len(), "loaded the system's root certificates");
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(|reason| TlsError::SystemRoots { reason })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::ServerConnection;

    use super::*;
    use crate::listener::Termination;
    use crate::tls::ServerTls;
    use crate::tls::testing::{self, Encoding, KeyKind};

    fn upstream(dir: &Path, leaf: &testing::Leaf, server_name: &str) -> UpstreamTls {
        let ca = dir.join("upstream-ca.pem");
        std::fs::write(&ca, leaf.certificate.pem()).unwrap();
        UpstreamTls { server_name: server_name.into(), ca: Some(ca) }
    }

    fn server(dir: &Path, leaf: &testing::Leaf) -> ServerTls {
        let files = testing::Files::write(dir, leaf, Encoding::Pkcs8);
        let spec = Termination { certificate: files.certificate, key: files.key, alpn: Vec::new(), client_auth: None };
        ServerTls::load(&spec).unwrap()
    }

    #[test]
    fn an_upstream_is_checked_against_its_ca_and_name_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["upstream.example"]);
        let server = server(dir.path(), &leaf);
        let tls = ClientTls::load(&upstream(dir.path(), &leaf, "upstream.example")).unwrap();
        for expected in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let mut client = tls.connect().unwrap();
            let mut connection = ServerConnection::new(Arc::clone(server.config())).unwrap();
            assert_eq!(tls.info(&client), None);
            testing::handshake(&mut client, &mut connection).unwrap();
            assert_eq!(client.handshake_kind(), Some(expected));
            let info = tls.info(&client).unwrap();
            assert_eq!(info.server_name.as_deref(), Some("upstream.example"));
            assert_eq!(info.peer_certificate.as_deref(), Some(leaf.certificate.der().as_ref()));
            assert_eq!(info.alpn, None);
        }
    }

    #[test]
    fn another_name_or_ca_fails_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["upstream.example"]);
        let server = server(dir.path(), &leaf);
        let wrong_name = ClientTls::load(&upstream(dir.path(), &leaf, "other.example")).unwrap();
        let other = testing::leaf(KeyKind::EcdsaP256, &["upstream.example"]);
        let wrong_ca = ClientTls::load(&upstream(dir.path(), &other, "upstream.example")).unwrap();
        for tls in [wrong_name, wrong_ca] {
            let mut client = tls.connect().unwrap();
            let mut connection = ServerConnection::new(Arc::clone(server.config())).unwrap();
            let error = testing::handshake(&mut client, &mut connection).unwrap_err();
            assert!(matches!(error, rustls::Error::InvalidCertificate(_)), "{error}");
        }
    }

    #[test]
    fn names_and_ca_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["upstream.example"]);
        let error = ClientTls::load(&upstream(dir.path(), &leaf, "not a name")).unwrap_err().to_string();
        assert_eq!(error, "upstream server name \"not a name\" is not a DNS name or IP address");
        let spec = UpstreamTls { server_name: "upstream.example".into(), ca: Some(dir.path().join("none.pem")) };
        let error = ClientTls::load(&spec).unwrap_err().to_string();
        assert!(error.starts_with("cannot read upstream CA "), "{error}");
        assert_eq!(ClientTls::load(&upstream(dir.path(), &leaf, "10.0.0.1")).unwrap().server_name(), "10.0.0.1");
    }

    #[test]
    fn the_system_roots_are_loaded_once() {
        // Where the platform has a CA bundle (Debian's ca-certificates) it must load;
        // where it has none the error says so, and says it again.
        let spec = UpstreamTls { server_name: "example.com".into(), ca: None };
        match ClientTls::load(&spec) {
            Ok(_) => assert!(Arc::ptr_eq(&system_roots().unwrap(), &system_roots().unwrap())),
            Err(error) => {
                assert!(!Path::new("/etc/ssl/certs/ca-certificates.crt").exists(), "{error}");
                assert!(matches!(ClientTls::load(&spec), Err(TlsError::SystemRoots { .. })));
            }
        }
    }
}
