//! Certificate, key and CA files: read with a cap, parsed from PEM, and checked before
//! anything serves them (the chain is within its validity, the key is one the provider
//! signs with and the one the leaf was issued for).
//!
//! It owns the reading and the checks, and the [`Certificate`] summary logs and the
//! expiry metric speak of. It never decides what to do with a refused file: the caller
//! keeps what it had.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{FILE_CAP, Role, TlsError, Which};
use crate::regular_file;

/// What a served certificate is, for logs and the expiry metric: the leaf of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The subject's distinguished name (`CN=example.com`).
    pub subject: String,
    /// The subject alternative names: DNS names as written, IP addresses in text.
    pub names: Vec<String>,
    /// When it becomes valid.
    pub not_before: SystemTime,
    /// When it expires: what an operator alerts on.
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's DER, the fingerprint `openssl x509 -fingerprint -sha256`
    /// prints.
    pub sha256: [u8; 32],
}

impl Certificate {
    /// The fingerprint in hex, two digits a byte, colons between (as openssl prints it).
    pub fn fingerprint(&self) -> String {
        let mut hex = String::with_capacity(3 * self.sha256.len());
        for (index, byte) in self.sha256.iter().enumerate() {
            if index > 0 {
                hex.push(':');
            }
            hex.push_str(&format!("{byte:02X}"));
        }
        hex
    }

    fn of(leaf: &X509Certificate<'_>, der: &[u8]) -> Certificate {
        let validity = leaf.validity();
        // A SAN extension that does not parse leaves the names empty; rustls
        // checks names on the client side, this is only for the log.
        let names = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.iter().filter_map(name).collect(),
            _ => Vec::new(),
        };
        Certificate {
            subject: leaf.subject().to_string(),
            names,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            sha256: Sha256::digest(der).into(),
        }
    }
}

impl fmt::Display for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}], expires {}, sha256 {}", self.subject, self.names.join(", "), utc(self.not_after), self.fingerprint())
    }
}

fn name(general: &GeneralName<'_>) -> Option<String> {
    match general {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
            16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// A certificate chain and its key, checked, as the resolver hands them to rustls.
#[derive(Debug)]
pub(super) struct Identity {
    /// What rustls signs with.
    pub key: Arc<CertifiedKey>,
    /// The leaf, summed up.
    pub certificate: Certificate,
}

/// Reads the chain at `certificate` and the key at `key`, and checks that the chain is
/// valid now and that the key is usable and the leaf's.
pub(super) fn identity(certificate: &Path, key: &Path, provider: &CryptoProvider) -> Result<Identity, TlsError> {
    identity_at(certificate, key, provider, SystemTime::now())
}

fn identity_at(
    certificate_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Identity, TlsError> {
    let chain = chain(Role::Certificate, certificate_path)?;
    let mut summary = None;
    for (index, der) in chain.iter().enumerate() {
        let parsed = parse(Role::Certificate, certificate_path, index, der)?;
        check_validity(certificate_path, index, &parsed, now)?;
        if index == 0 {
            summary = Some(Certificate::of(&parsed, der));
        }
    }
    let certificate = summary.ok_or_else(|| TlsError::NoCertificate {
        role: Role::Certificate,
        path: certificate_path.to_owned(),
    })?;
    let private = private_key(key_path)?;
    let signing = provider.key_provider.load_private_key(private).map_err(|error| TlsError::UnsupportedKey {
        path: key_path.to_owned(),
        reason: error.to_string(),
    })?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        // A provider that cannot tell its public key leaves the check to the first
        // handshake; both of rustls's own providers can tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch { certificate: certificate_path.to_owned(), key: key_path.to_owned() });
        }
        Err(error) => {
            return Err(TlsError::BadCertificate {
                role: Role::Certificate,
                path: certificate_path.to_owned(),
                index: 1,
                reason: error.to_string(),
            });
        }
    }
    Ok(Identity { key: Arc::new(key), certificate })
}

/// The CA certificates in the file at `path`, as trust anchors. Each must be one rustls
/// can anchor to; a file without any is refused.
pub(super) fn roots(role: Role, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, der) in chain(role, path)?.into_iter().enumerate() {
        roots.add(der).map_err(|error| TlsError::BadCertificate {
            role,
            path: path.to_owned(),
            index: index + 1,
            reason: error.to_string(),
        })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` section of the file at `path`, in order; at least one.
fn chain(role: Role, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(role, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| malformed(role, path, &error))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { role, path: path.to_owned() });
    }
    Ok(chain)
}

/// The first private key section (PKCS#8, SEC1 or PKCS#1) of the file at `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(Role::Key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned() },
        error => malformed(Role::Key, path, &error),
    })
}

fn read(role: Role, path: &Path) -> Result<Vec<u8>, TlsError> {
    regular_file::read(path, FILE_CAP).map_err(|source| TlsError::Read { role, path: path.to_owned(), source })
}

fn malformed(role: Role, path: &Path, error: &pem::Error) -> TlsError {
    // pem::Error's own Display prints the offending line as a list of byte values.
    let reason = match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("no `{}` line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed line `{}`", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    };
    TlsError::Pem { role, path: path.to_owned(), reason }
}

fn parse<'a>(role: Role, path: &Path, index: usize, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, parsed)) => Ok(parsed),
        Err(error) => Err(TlsError::BadCertificate { role, path: path.to_owned(), index: index + 1, reason: error.to_string() }),
    }
}

fn check_validity(path: &Path, index: usize, parsed: &X509Certificate<'_>, now: SystemTime) -> Result<(), TlsError> {
    let validity = parsed.validity();
    let not_after = system_time(validity.not_after.timestamp());
    if now > not_after {
        return Err(TlsError::Expired { path: path.to_owned(), which: Which(index), at: utc(not_after) });
    }
    let not_before = system_time(validity.not_before.timestamp());
    if now < not_before {
        return Err(TlsError::NotYetValid { path: path.to_owned(), which: Which(index), at: utc(not_before) });
    }
    Ok(())
}

fn system_time(unix: i64) -> SystemTime {
    let offset = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 { UNIX_EPOCH + offset } else { UNIX_EPOCH - offset }
}

/// `time` in UTC as `2026-01-01 00:00:00 UTC`.
pub(super) fn utc(time: SystemTime) -> String {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), so that a date prints without a calendar crate.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tls::provider;
    use crate::tls::testing::{self, KeyKind};

    fn load(files: &testing::Files) -> Result<Identity, TlsError> {
        identity(&files.certificate, &files.key, &provider::get())
    }

    #[test]
    fn dates_print_in_utc() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(system_time(1_767_225_600)), "2026-01-01 00:00:00 UTC");
        assert_eq!(utc(system_time(951_782_400 + 3661)), "2000-02-29 01:01:01 UTC");
        assert_eq!(utc(system_time(-86_400)), "1969-12-31 00:00:00 UTC");
    }

    #[test]
    fn ecdsa_and_rsa_keys_in_every_encoding_load() {
        for kind in [KeyKind::EcdsaP256, KeyKind::EcdsaP384, KeyKind::Rsa2048] {
            for encoding in kind.encodings() {
                let dir = tempfile::tempdir().unwrap();
                let files = testing::Files::write(dir.path(), &testing::leaf(kind, &["a.example"]), *encoding);
                let loaded = load(&files).unwrap_or_else(|error| panic!("{kind:?} {encoding:?}: {error}"));
                assert_eq!(loaded.certificate.names, ["a.example"]);
                assert_eq!(loaded.certificate.subject, "CN=a.example");
            }
        }
    }

    #[test]
    fn the_summary_has_the_fingerprint_and_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = testing::leaf(KeyKind::EcdsaP256, &["a.example", "127.0.0.1"]);
        let files = testing::Files::write(dir.path(), &leaf, testing::Encoding::Pkcs8);
        let summary = load(&files).unwrap().certificate;
        assert_eq!(summary.names, ["a.example", "127.0.0.1"]);
        let expected: [u8; 32] = Sha256::digest(leaf.certificate.der()).into();
        assert_eq!(summary.sha256, expected);
        assert_eq!(summary.fingerprint().len(), 32 * 3 - 1);
        assert_eq!(utc(summary.not_after), "2100-01-01 00:00:00 UTC");
        assert!(summary.to_string().contains("CN=a.example [a.example, 127.0.0.1], expires 2100-01-01"));
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_is_refused_with_its_date() {
        let dir = tempfile::tempdir().unwrap();
        let expired = testing::Files::write(dir.path(), &testing::expired(), testing::Encoding::Pkcs8);
        let error = load(&expired).unwrap_err().to_string();
        assert_eq!(error, format!("certificate {} expired on 2021-01-01 00:00:00 UTC", expired.certificate.display()));

        let dir = tempfile::tempdir().unwrap();
        let early = testing::Files::write(dir.path(), &testing::not_yet_valid(), testing::Encoding::Pkcs8);
        let error = load(&early).unwrap_err().to_string();
        assert_eq!(error, format!("certificate {} is not valid before 2099-01-01 00:00:00 UTC", early.certificate.display()));
    }

    #[test]
    fn an_expired_intermediate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8);
        let mut chain = std::fs::read_to_string(&files.certificate).unwrap();
        chain.push_str(&testing::expired().certificate.pem());
        std::fs::write(&files.certificate, chain).unwrap();
        let error = load(&files).unwrap_err().to_string();
        assert!(error.ends_with("(certificate 2 of the chain) expired on 2021-01-01 00:00:00 UTC"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8);
        let other = tempfile::tempdir().unwrap();
        files.key = testing::Files::write(other.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8).key;
        let error = load(&files).unwrap_err().to_string();
        assert_eq!(error, format!("key {} does not match certificate {}", files.key.display(), files.certificate.display()));
    }

    #[test]
    fn files_without_a_certificate_or_key_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8);
        let swapped = testing::Files { certificate: files.key.clone(), key: files.certificate.clone() };
        let error = load(&swapped).unwrap_err().to_string();
        assert_eq!(error, format!("certificate {}: no PEM certificate in it", files.key.display()));

        let only_certificate = testing::Files { certificate: files.certificate.clone(), key: files.certificate.clone() };
        let error = load(&only_certificate).unwrap_err().to_string();
        assert!(error.starts_with(&format!("key {}: no PEM private key in it", files.certificate.display())), "{error}");
    }

    #[test]
    fn unreadable_and_malformed_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8);
        let missing = testing::Files { certificate: dir.path().join("missing.pem"), key: files.key.clone() };
        let error = load(&missing).unwrap_err().to_string();
        assert!(error.starts_with(&format!("cannot read certificate {}: ", missing.certificate.display())), "{error}");

        let directory = testing::Files { certificate: files.certificate.clone(), key: dir.path().to_owned() };
        let error = load(&directory).unwrap_err().to_string();
        assert!(error.ends_with("not a regular file (a directory)"), "{error}");

        let truncated = dir.path().join("truncated.pem");
        let pem = std::fs::read_to_string(&files.certificate).unwrap();
        std::fs::write(&truncated, &pem[..pem.len() / 2]).unwrap();
        let error = load(&testing::Files { certificate: truncated.clone(), key: files.key.clone() }).unwrap_err().to_string();
        assert!(error.starts_with(&format!("certificate {}: malformed PEM: no `-----END CERTIFICATE-----`", truncated.display())), "{error}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let error = load(&testing::Files { certificate: garbage.clone(), key: files.key }).unwrap_err().to_string();
        assert!(error.starts_with(&format!("certificate {}: certificate 1 of the file is unusable", garbage.display())), "{error}");
    }

    #[test]
    fn a_key_the_provider_cannot_sign_with_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = testing::Files::write(dir.path(), &testing::leaf(KeyKind::EcdsaP256, &["a.example"]), testing::Encoding::Pkcs8);
        // An X25519 key (RFC 8410): a key-agreement key, which signs nothing.
        let mut x25519 = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
        x25519.extend([7; 32]);
        let key = dir.path().join("x25519.pem");
        std::fs::write(&key, testing::pem("PRIVATE KEY", &x25519)).unwrap();
        let error = load(&testing::Files { certificate: files.certificate, key: key.clone() }).unwrap_err().to_string();
        assert!(error.starts_with(&format!("key {}: unsupported key type", key.display())), "{error}");
    }

    #[test]
    fn ca_files_become_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ca = testing::Ca::new("Test CA");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.certificate.pem()).unwrap();
        assert_eq!(roots(Role::ClientCa, &path).unwrap().len(), 1);
        let error = roots(Role::ClientCa, &PathBuf::from("/nonexistent/ca.pem")).unwrap_err().to_string();
        assert!(error.starts_with("cannot read client CA /nonexistent/ca.pem: "), "{error}");
    }
}
