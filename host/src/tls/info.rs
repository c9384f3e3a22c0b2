//! What a finished handshake says, in the words a handler is told
//! ([`TlsInfo`]): server name, ALPN protocol, version, cipher suite, the peer's
//! certificate.
//!
//! It only reads a connection's negotiated state; it never changes it.

use rustls::{CommonState, ServerConnection};

use crate::handler::TlsInfo;

/// What the finished handshake of a server or client connection said, with
/// `server_name` the name to report (a server connection's SNI, [`server_info`]; the
/// name a dialed upstream was checked against, [`ClientTls::info`](super::ClientTls::info)).
/// `None` while the handshake is under way. Version and cipher suite are named as
/// rustls names them (`TLSv1_3`, `TLS13_AES_128_GCM_SHA256`,
/// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`).
pub fn info(connection: &CommonState, server_name: Option<&str>) -> Option<TlsInfo> {
    if connection.is_handshaking() {
        return None;
    }
    let version = connection.protocol_version()?;
    let suite = connection.negotiated_cipher_suite()?.suite();
    Some(TlsInfo {
        server_name: server_name.map(str::to_owned),
        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
        version: version.as_str().map_or_else(|| format!("{version:?}"), str::to_owned),
        cipher_suite: suite.as_str().map_or_else(|| format!("{suite:?}"), str::to_owned),
        peer_certificate: connection.peer_certificates().and_then(|chain| chain.first()).map(|leaf| leaf.to_vec()),
    })
}

/// What the finished handshake of an accepted connection said, its server name the
/// one the client sent (SNI).
pub fn server_info(connection: &ServerConnection) -> Option<TlsInfo> {
    info(connection, connection.server_name())
}
