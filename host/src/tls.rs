//! TLS as a library: certificates checked before they serve, the rustls configurations
//! a terminating listener and a TLS upstream use, routing by server name, and what a
//! finished handshake says.
//!
//! This module owns the rustls side of TLS: [`ServerTls`] (a listener's
//! `ServerConfig`, with a certificate that can be swapped for new handshakes while the
//! sessions and tickets stay), [`ClientTls`] (an upstream's `ClientConfig`), the
//! [`Router`] that picks a listener by the ClientHello's name, and [`info()`], which
//! turns a finished handshake into the [`TlsInfo`](crate::handler::TlsInfo) a handler
//! asks for. Every file is read through [`regular_file`](crate::regular_file) with a
//! cap, and every error names the file and the reason.
//!
//! It must never touch a socket, a reactor or a plugin: the reactor moves the bytes
//! and drives the handshake; control decides when to [`ServerTls::reload`]. The crypto
//! provider is named in one place, `provider.rs`.

mod certificate;
mod client;
mod info;
mod provider;
mod router;
mod server;
#[cfg(test)]
mod testing;

use std::fmt;
use std::path::PathBuf;

pub use certificate::Certificate;
pub use client::{ClientTls, system_roots};
pub use info::{info, server_info};
/// The crypto provider every TLS configuration of sandport is built with, for a
/// client (the admin subcommands) that must make its own.
pub use provider::get as crypto_provider;
pub use router::{Name, Router};
pub use server::ServerTls;

use crate::regular_file::ReadError;

/// The most bytes read from a certificate, key or CA file. A chain of a few
/// certificates is a few KiB and a bundle of every public root about 200 KiB; the cap
/// only keeps a wrong path (a log, a disk image) from being read whole.
pub const FILE_CAP: u64 = 1 << 20;

/// What a file named in a TLS setting is for, as an error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A listener's certificate chain (`certificate`).
    Certificate,
    /// A listener's private key (`key`).
    Key,
    /// The CA certificates client certificates must lead to (`client-ca`).
    ClientCa,
    /// The CA certificates an upstream's certificate must lead to.
    UpstreamCa,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Certificate => "certificate",
            Role::Key => "key",
            Role::ClientCa => "client CA",
            Role::UpstreamCa => "upstream CA",
        })
    }
}

/// Why a certificate, key or TLS configuration was refused. Each message names the
/// file (or the server name) and the reason, for an `error:` line or a refused reload.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, not a regular file, larger than [`FILE_CAP`]).
    #[error("cannot read {role} {path}: {source}")]
    Read {
        /// What the file is for.
        role: Role,
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: ReadError,
    },
    /// The PEM is malformed (a section without its END line, bad base64).
    #[error("{role} {path}: malformed PEM: {reason}")]
    Pem {
        /// What the file is for.
        role: Role,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No `CERTIFICATE` section in the file.
    #[error("{role} {path}: no PEM certificate in it")]
    NoCertificate {
        /// What the file is for.
        role: Role,
        /// The file.
        path: PathBuf,
    },
    /// A `CERTIFICATE` section that is not an X.509 certificate, or one rustls cannot
    /// use as a trust anchor.
    #[error("{role} {path}: certificate {index} of the file is unusable: {reason}")]
    BadCertificate {
        /// What the file is for.
        role: Role,
        /// The file.
        path: PathBuf,
        /// Its place in the file, from 1.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No private key section (PKCS#8, SEC1 or PKCS#1) in the file.
    #[error(
        "key {path}: no PEM private key in it (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; an encrypted key is not supported)"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key the crypto provider cannot sign with.
    #[error(
        "key {path}: unsupported key type or malformed key ({reason}); supported: ECDSA P-256 or P-384, RSA of 2048 bits or more, Ed25519"
    )]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What the provider said.
        reason: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error("key {key} does not match certificate {certificate}")]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate of the chain is past its `notAfter`.
    #[error("certificate {path}{which} expired on {at}")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Empty for the leaf, else which certificate of the chain.
        which: Which,
        /// When, in UTC.
        at: String,
    },
    /// A certificate of the chain is before its `notBefore`.
    #[error("certificate {path}{which} is not valid before {at}")]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Empty for the leaf, else which certificate of the chain.
        which: Which,
        /// When it becomes valid, in UTC.
        at: String,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("client CA {path}: {reason}")]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// `ca` was not given and the system has no usable root certificates.
    #[error("no system root certificates found ({reason}); name a CA file for the upstream instead")]
    SystemRoots {
        /// What was looked at and what failed.
        reason: String,
    },
    /// An upstream's server name that is neither a DNS name nor an IP address.
    #[error("upstream server name {name:?} is not a DNS name or IP address")]
    ServerName {
        /// The name.
        name: String,
    },
    /// rustls refused a configuration or a connection.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// Which certificate of a chain an error is about: nothing for the leaf (the one a
/// listener serves), `(certificate N of the chain)` for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Which(pub usize);

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            index => write!(f, " (certificate {} of the chain)", index + 1),
        }
    }
}
