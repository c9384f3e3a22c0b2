//! Certificates made at test time (rcgen), written as PEM files the way operators
//! have them, and in-memory handshakes: what the tests of the `tls` modules share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::{ClientConnection, ServerConnection};

/// The kinds of key a test certificate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
}

/// How a key file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `PRIVATE KEY`.
    Pkcs8,
    /// `EC PRIVATE KEY`.
    Sec1,
    /// `RSA PRIVATE KEY`.
    Pkcs1,
}

impl KeyKind {
    /// The encodings a key of this kind comes in.
    pub fn encodings(self) -> &'static [Encoding] {
        match self {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => &[Encoding::Pkcs8, Encoding::Sec1],
            KeyKind::Rsa2048 => &[Encoding::Pkcs8, Encoding::Pkcs1],
        }
    }

    fn generate(self) -> KeyPair {
        match self {
            KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        }
        .unwrap()
    }

    /// The named curve's OID (DER, tag and length included), for a SEC1 key's
    /// parameters.
    fn curve(self) -> &'static [u8] {
        match self {
            KeyKind::EcdsaP256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            KeyKind::EcdsaP384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            KeyKind::Rsa2048 => &[],
        }
    }
}

/// A certificate and its key.
pub struct Leaf {
    pub certificate: rcgen::Certificate,
    pub key: KeyPair,
    pub kind: KeyKind,
}

fn params(names: &[&str], not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> CertificateParams {
    let mut params = CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    params
}

/// A self-signed certificate for `names` (the first is also the CN), valid from 2020
/// to 2100.
pub fn leaf(kind: KeyKind, names: &[&str]) -> Leaf {
    let key = kind.generate();
    let certificate = params(names, (2020, 1, 1), (2100, 1, 1)).self_signed(&key).unwrap();
    Leaf { certificate, key, kind }
}

/// A certificate that expired on 2021-01-01.
pub fn expired() -> Leaf {
    let key = KeyKind::EcdsaP256.generate();
    let certificate = params(&["old.example"], (2020, 1, 1), (2021, 1, 1)).self_signed(&key).unwrap();
    Leaf { certificate, key, kind: KeyKind::EcdsaP256 }
}

/// A certificate valid from 2099-01-01.
pub fn not_yet_valid() -> Leaf {
    let key = KeyKind::EcdsaP256.generate();
    let certificate = params(&["new.example"], (2099, 1, 1), (2100, 1, 1)).self_signed(&key).unwrap();
    Leaf { certificate, key, kind: KeyKind::EcdsaP256 }
}

/// A certificate authority that issues client certificates.
pub struct Ca {
    pub certificate: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyKind::EcdsaP256.generate();
        let mut params = params(&[name], (2020, 1, 1), (2100, 1, 1));
        params.subject_alt_names.clear();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key).unwrap();
        Ca { certificate, issuer: Issuer::new(params, key) }
    }

    /// A client certificate for `name`, issued by this CA.
    pub fn client(&self, name: &str) -> Leaf {
        let key = KeyKind::EcdsaP256.generate();
        let mut params = params(&[name], (2020, 1, 1), (2100, 1, 1));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { certificate, key, kind: KeyKind::EcdsaP256 }
    }
}

/// A certificate file and a key file.
#[derive(Debug, Clone)]
pub struct Files {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// Writes `leaf` into `dir` as `cert.pem` and `key.pem`, the key in `encoding`.
    pub fn write(dir: &Path, leaf: &Leaf, encoding: Encoding) -> Files {
        let files = Files { certificate: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.certificate, leaf.certificate.pem()).unwrap();
        std::fs::write(&files.key, key_pem(leaf, encoding)).unwrap();
        files
    }
}

fn key_pem(leaf: &Leaf, encoding: Encoding) -> String {
    let pkcs8 = leaf.key.serialized_der();
    match encoding {
        Encoding::Pkcs8 => pem("PRIVATE KEY", pkcs8),
        Encoding::Pkcs1 => pem("RSA PRIVATE KEY", inner_key(pkcs8)),
        Encoding::Sec1 => pem("EC PRIVATE KEY", &sec1_with_curve(inner_key(pkcs8), leaf.kind.curve())),
    }
}

/// The key a PKCS#8 `PrivateKeyInfo` wraps: the content of its third element, an
/// OCTET STRING (for RSA a PKCS#1 key, for ECDSA a SEC1 key).
fn inner_key(pkcs8: &[u8]) -> &[u8] {
    let (_, info, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(info);
    let (_, _algorithm, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    key
}

/// A SEC1 `ECPrivateKey` with the named curve's parameters put in (`[0]`), as openssl
/// writes it; the keys in PKCS#8 leave them out, since the algorithm names the curve.
fn sec1_with_curve(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
    let (_, body, _) = tlv(sec1);
    let (_, version, rest) = tlv(body);
    let (_, private, rest) = tlv(rest);
    let mut content = encode(0x02, version);
    content.extend(encode(0x04, private));
    content.extend(encode(0xa0, curve));
    // What follows: the optional [1] public key, whole.
    let (tag, _, _) = tlv(rest);
    assert_eq!(tag, 0xa1);
    content.extend_from_slice(rest);
    encode(0x30, &content)
}

/// One DER element: its tag, its content and what follows it.
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (length, header) = match der[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let octets = usize::from(long & 0x7f);
            (der[2..2 + octets].iter().fold(0, |length, byte| length << 8 | usize::from(*byte)), 2 + octets)
        }
    };
    (tag, &der[header..header + length], &der[header + length..])
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut der = vec![tag];
    match content.len() {
        short @ 0..0x80 => der.push(short as u8),
        long @ 0x80..0x100 => der.extend([0x81, long as u8]),
        long => der.extend([0x82, (long >> 8) as u8, long as u8]),
    }
    der.extend_from_slice(content);
    der
}

/// `der` as a PEM section labelled `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = String::new();
    for chunk in der.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (index, byte)| bits | u32::from(*byte) << (16 - 8 * index));
        for index in 0..4 {
            if index <= chunk.len() {
                base64.push(char::from(ALPHABET[(bits >> (18 - 6 * index) & 63) as usize]));
            } else {
                base64.push('=');
            }
        }
    }
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// `leaf`'s certificate and key as a client presents them.
pub fn client_identity(leaf: &Leaf) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
    (vec![leaf.certificate.der().clone()], PrivatePkcs8KeyDer::from(leaf.key.serialize_der()).into())
}

/// Runs a handshake between `client` and `server` in memory, to its end or to the
/// first error of either side.
pub fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    let mut wire = Vec::new();
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() && !server.wants_write() {
            return Ok(());
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let (mut rest, mut server_error) = (&wire[..], None);
        while !rest.is_empty() && server_error.is_none() {
            server.read_tls(&mut rest).unwrap();
            server_error = server.process_new_packets().err();
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut rest = &back[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets()?;
        }
        if let Some(error) = server_error {
            return Err(error);
        }
    }
    panic!("the handshake did not end in 16 round trips");
}

/// A client configuration that trusts `roots`, offers `alpn`, and presents `identity`
/// when given.
pub fn client_config(
    roots: &[&rcgen::Certificate],
    alpn: &[&str],
    identity: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.der().clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider::get())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut config = match identity {
        Some(leaf) => {
            let (chain, key) = client_identity(leaf);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
    Arc::new(config)
}
