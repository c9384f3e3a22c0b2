//! TLS for the connections of a target: the rustls client configuration, and the
//! server names the connections ask for.
//!
//! The client is the host's TLS stack with the host's crypto provider (rustls with
//! aws-lc-rs), so that the client side of a TLS benchmark is the same code against every
//! server it drives. Every handshake checks that the server holds the key of the
//! certificate it presents (its signature over the handshake), but not who issued the
//! certificate or the names it carries: a benchmark drives its own servers with
//! self-signed certificates, as `wrk` and `openssl s_time` do, and a chain check costs
//! the client CPU the servers then compete for.
//!
//! This module never touches a socket: the connections move the bytes.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnection, Resumption};
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;

/// The key exchange groups offered, in the order of OpenSSL 3.0's clients (wrk, curl and
/// `openssl s_time` here): X25519 first. A client sends its first group's key share and
/// a server takes it if it can, so this order, not the server's, picks the exchange;
/// the provider's default would send the post-quantum hybrid, which OpenSSL 3.0 servers
/// answer with a second round trip.
const KX_GROUPS: &[&dyn SupportedKxGroup] = &[kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// The TLS version a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

/// Builds the client configuration every TLS connection of a round shares: the
/// versions `version` allows (both when `None`, and then servers choose 1.3), and, if
/// `resume`, a cache of sessions and tickets so that every handshake after a
/// connection's first resumes (rustls's defaults: tickets, or session ids for a TLS 1.2
/// server without them); otherwise every handshake is a full one.
pub(crate) fn client_config(version: Option<TlsVersion>, resume: bool) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(CryptoProvider { kx_groups: KX_GROUPS.to_vec(), ..aws_lc_rs::default_provider() });
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        None => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
    };
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyHolder(provider)))
        .with_no_client_auth();
    config.resumption = if resume { Resumption::default() } else { Resumption::disabled() };
    Ok(Arc::new(config))
}

/// Accepts any certificate, but only from a server that proves it holds the
/// certificate's key; see the module documentation for why.
#[derive(Debug)]
struct KeyHolder(Arc<CryptoProvider>);

impl ServerCertVerifier for KeyHolder {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server names a target's connections send, in turn: one name, or a numbered
/// range of them written `t{0..9999}.example.com` (both ends included), so that a run
/// can spread its handshakes over the many names one port serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNames {
    prefix: String,
    /// The first number and how many there are; `None` for a single name.
    range: Option<(u64, u64)>,
    suffix: String,
}

impl ServerNames {
    /// How many names there are.
    pub fn count(&self) -> u64 {
        self.range.map_or(1, |(_, count)| count)
    }

    /// The name with index `i`, counted around the range.
    pub fn get(&self, i: u64) -> String {
        match self.range {
            None => self.prefix.clone(),
            Some((first, count)) => format!("{}{}{}", self.prefix, first + i % count, self.suffix),
        }
    }
}

impl FromStr for ServerNames {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let names = match s.split_once('{') {
            None => ServerNames { prefix: s.to_owned(), range: None, suffix: String::new() },
            Some((prefix, rest)) => {
                let (range, suffix) =
                    rest.split_once('}').with_context(|| format!("server name `{s}`: `{{` without `}}`"))?;
                let (first, last) = range
                    .split_once("..")
                    .with_context(|| format!("server name `{s}`: expected a range such as {{0..9999}}"))?;
                let number = |n: &str| n.parse::<u64>().with_context(|| format!("server name `{s}`: `{n}`"));
                let (first, last) = (number(first)?, number(last)?);
                ensure!(first <= last, "server name `{s}`: the range is empty");
                ServerNames {
                    prefix: prefix.to_owned(),
                    range: Some((first, last - first + 1)),
                    suffix: suffix.to_owned(),
                }
            }
        };
        for i in [0, names.count() - 1] {
            let name = names.get(i);
            if ServerName::try_from(name.as_str()).map_or(true, |n| matches!(n, ServerName::IpAddress(_))) {
                bail!("server name `{s}`: `{name}` is not a DNS name");
            }
        }
        Ok(names)
    }
}

impl fmt::Display for ServerNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.range {
            None => f.write_str(&self.prefix),
            Some((first, count)) => write!(f, "{}{{{first}..{}}}{}", self.prefix, first + count - 1, self.suffix),
        }
    }
}

/// Starts the TLS sessions of one client thread's connections to one target: the
/// shared configuration, and the next server name to send.
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
    /// `None`: no server name is sent (rustls sends none for an IP address).
    names: Option<ServerNames>,
    ip: IpAddr,
    /// The index of the next name; threads take every `step`th from their own start,
    /// so that together they go through the names in turn.
    next: Cell<u64>,
    step: u64,
}

impl Connector {
    /// Sessions with `config` to a server at `ip`, asking for `names`, this thread
    /// being number `thread` of `threads`.
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        names: Option<ServerNames>,
        ip: IpAddr,
        thread: usize,
        threads: usize,
    ) -> Self {
        Connector { config, names, ip, next: Cell::new(thread as u64), step: threads as u64 }
    }

    /// A fresh client session, with the next server name.
    pub(crate) fn session(&self) -> io::Result<ClientConnection> {
        let name = match &self.names {
            None => ServerName::IpAddress(self.ip.into()),
            Some(names) => {
                let i = self.next.get();
                self.next.set(i.wrapping_add(self.step));
                ServerName::try_from(names.get(i)).map_err(io::Error::other)?
            }
        };
        ClientConnection::new(Arc::clone(&self.config), name).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_name_and_a_range() {
        let one: ServerNames = "hello.localhost".parse().unwrap();
        assert_eq!((one.count(), one.get(0), one.get(7)), (1, "hello.localhost".into(), "hello.localhost".into()));
        assert_eq!(one.to_string(), "hello.localhost");

        let many: ServerNames = "t{5..9}.bench.localhost".parse().unwrap();
        assert_eq!(many.count(), 5);
        assert_eq!(many.get(0), "t5.bench.localhost");
        assert_eq!(many.get(4), "t9.bench.localhost");
        assert_eq!(many.get(5), "t5.bench.localhost");
        assert_eq!(many.to_string(), "t{5..9}.bench.localhost");
        assert_eq!("n{0..0}".parse::<ServerNames>().unwrap().get(3), "n0");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in ["t{0..9", "t{0-9}.x", "t{9..0}.x", "t{a..b}.x", "127.0.0.1", "bad name", "{0..3}.x..y"] {
            assert!(bad.parse::<ServerNames>().is_err(), "{bad}");
        }
    }

    #[test]
    fn threads_take_turns_through_the_names() {
        let config = client_config(Some(TlsVersion::Tls13), false).unwrap();
        let names: Option<ServerNames> = Some("n{0..3}.x".parse().unwrap());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let second = Connector::new(config, names, ip, 1, 2);
        let sent = |c: &Connector| c.next.get();
        for expected in [1, 3, 5] {
            assert_eq!(sent(&second), expected);
            second.session().unwrap();
        }
    }
}
