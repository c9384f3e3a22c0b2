//! A certificate to try TLS with on this machine (`sandport cert`): a local CA and a
//! certificate it signed for the names asked, written as PEM files, so that `curl
//! --cacert ca.pem` and `openssl s_client -CAfile ca.pem` check it as they would a real
//! one.
//!
//! Files that are there already are kept, so the command can run before every start.
//! It never serves anything and is no substitute for a certificate from a real CA.
//!
//! ```no_run
//! let made = sandport::selfsigned::make_if_missing("target/tls".as_ref(), &["hello.localhost".into()])?;
//! println!("{}", made.display());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// How long the certificates are valid.
const DAYS: i64 = 90;

/// Why the certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name is not one a certificate can carry, or key generation failed.
    #[error("cannot make the certificate: {0}")]
    Make(#[from] rcgen::Error),
}

/// Write `ca.pem`, `cert.pem` and `key.pem` (ECDSA P-256) under `dir` for `names`,
/// unless `cert.pem` and `key.pem` are there. Returns the folder.
pub fn make_if_missing(dir: &Path, names: &[String]) -> Result<PathBuf, SelfSignedError> {
    let (cert, key, ca) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    if cert.exists() && key.exists() {
        return Ok(dir.to_owned());
    }
    let now = time_now();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "sandport example CA (this machine only)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(DAYS);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    leaf_params.not_before = ca_params.not_before;
    leaf_params.not_after = ca_params.not_after;
    let leaf_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    fs::create_dir_all(dir).map_err(|source| SelfSignedError::Write { path: dir.to_owned(), source })?;
    write(&ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&cert, leaf.pem().as_bytes(), 0o644)?;
    write(&key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(dir.to_owned())
}

/// Now, as rcgen counts time.
fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SelfSignedError> {
    let failed = |source| SelfSignedError::Write { path: path.to_owned(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(failed)?;
    file.write_all(bytes).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_the_files_once_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["hello.localhost".to_owned(), "echo.localhost".to_owned()];
        make_if_missing(dir.path(), &names).unwrap();
        let first = fs::read(dir.path().join("cert.pem")).unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("-----BEGIN CERTIFICATE-----"));
        make_if_missing(dir.path(), &names).unwrap();
        assert_eq!(fs::read(dir.path().join("cert.pem")).unwrap(), first, "kept, not made again");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's alone");
    }
}
