//! What a connection's TLS handshake said, as a Rust type ([`TlsInfo`], from
//! [`Conn::tls_info`](crate::Conn::tls_info)).
//!
//! This module only carries the host's answer; it never looks inside a certificate
//! (parse the DER with a crate of your choice when you need to).

use crate::bindings::sandport::handler::types::TlsHandshake;

/// What the TLS handshake of a connection said: the host ended TLS on it, and the
/// handler sees its plaintext.
///
/// Mirrors the WIT `tls-handshake` record of `sandport:handler/types`, so plugins get
/// `Clone`, `PartialEq` and the helpers below without depending on generated code.
///
/// ```
/// use sandport_guest::TlsInfo;
///
/// let info = TlsInfo {
///     server_name: Some("echo.localhost".into()),
///     alpn: Some(b"h2".to_vec()),
///     version: "TLSv1_3".into(),
///     cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
///     peer_certificate: None,
/// };
/// assert_eq!(info.alpn_str(), Some("h2"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one; on a dialed
    /// connection, the name the upstream's certificate was checked against.
    pub server_name: Option<String>,
    /// The application protocol agreed by ALPN, if any (`h2`, `http/1.1`).
    pub alpn: Option<Vec<u8>>,
    /// The protocol version: `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    /// The cipher suite, by its IANA name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher_suite: String,
    /// The peer's certificate (DER), the leaf of its chain: the client's on an
    /// accepted connection when it sent one, the upstream's on a dialed one.
    pub peer_certificate: Option<Vec<u8>>,
}

impl TlsInfo {
    /// The ALPN protocol as text, if one was agreed and it is UTF-8 (every registered
    /// protocol name is ASCII).
    ///
    /// ```
    /// # use sandport_guest::TlsInfo;
    /// # let mut info = TlsInfo { server_name: None, alpn: None, version: "TLSv1_2".into(),
    /// #     cipher_suite: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(), peer_certificate: None };
    /// info.alpn = Some(b"http/1.1".to_vec());
    /// assert_eq!(info.alpn_str(), Some("http/1.1"));
    /// ```
    pub fn alpn_str(&self) -> Option<&str> {
        self.alpn.as_deref().and_then(|alpn| std::str::from_utf8(alpn).ok())
    }
}

impl From<TlsHandshake> for TlsInfo {
    fn from(info: TlsHandshake) -> TlsInfo {
        let TlsHandshake { server_name, alpn, version, cipher_suite, peer_certificate } = info;
        TlsInfo { server_name, alpn, version, cipher_suite, peer_certificate }
    }
}
