//! The content store: pulled components by digest, and what each reference last gave.
//!
//! This module owns the folder layout under the store's root:
//!
//! | path | holds |
//! |---|---|
//! | `blobs/sha256/<hex>` | a layer's bytes, whose sha256 is `<hex>` |
//! | `pulls/<sha256 of the reference>.json` | the last successful pull of a reference |
//!
//! Every file is written to a temporary name in its folder and renamed into place, so a
//! reader never sees half a file. It never trusts a blob by its name: a blob is handed
//! out only after its bytes were hashed again and match.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{OciError, Reference};

/// What a pull gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The reference pulled.
    pub reference: Reference,
    /// The manifest's digest, `sha256:...` (what a pinned reference names).
    pub digest: String,
    /// The component layer's digest.
    pub layer: String,
    /// The component file in the store (the layer's bytes, verified).
    pub path: PathBuf,
    /// The layer media type it came as.
    pub media_type: String,
}

/// The record of a pull, as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    reference: String,
    digest: String,
    layer: String,
    media_type: String,
}

/// Components by digest under one root folder.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `sha256:HEX` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// Whether the store holds `digest` with bytes that still hash to it.
    pub fn holds(&self, digest: &str) -> bool {
        hash_file(&self.blob_path(digest)).is_ok_and(|got| got == digest)
    }

    /// What the last successful pull of `reference` gave, if its blob is still there
    /// and still matches its digest (for the offline fallback: `offline = "last-pulled"`).
    pub fn last_pulled(&self, reference: &Reference) -> Option<Pulled> {
        let bytes = crate::regular_file::read(&self.record_path(reference), 64 << 10).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        if record.reference != reference.to_string() || !self.holds(&record.layer) {
            return None;
        }
        Some(Pulled {
            reference: reference.clone(),
            digest: record.digest,
            path: self.blob_path(&record.layer),
            layer: record.layer,
            media_type: record.media_type,
        })
    }

    /// Remember `pulled` as its reference's last pull.
    pub(super) fn record(&self, pulled: &Pulled) -> Result<(), OciError> {
        let record = Record {
            reference: pulled.reference.to_string(),
            digest: pulled.digest.clone(),
            layer: pulled.layer.clone(),
            media_type: pulled.media_type.clone(),
        };
        let path = self.record_path(&pulled.reference);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|err| store_error(&path, err.into()))?;
        let mut file = self.temporary(path.parent().unwrap_or(&self.root))?;
        file.write_all(&bytes).map_err(|err| store_error(&path, err))?;
        file.persist(&path).map_err(|err| store_error(&path, err.error))?;
        Ok(())
    }

    /// A new blob's file, to be [`NewBlob::finish`]ed once all its bytes are in.
    pub(super) fn new_blob(&self) -> Result<NewBlob, OciError> {
        let file = self.temporary(&self.root.join("blobs/sha256"))?;
        Ok(NewBlob { file, hasher: Sha256::new(), written: 0 })
    }

    fn record_path(&self, reference: &Reference) -> PathBuf {
        let name = format!("{:x}", Sha256::digest(reference.to_string().as_bytes()));
        self.root.join("pulls").join(format!("{name}.json"))
    }

    fn temporary(&self, dir: &Path) -> Result<tempfile::NamedTempFile, OciError> {
        std::fs::create_dir_all(dir).map_err(|err| store_error(dir, err))?;
        tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(|err| store_error(dir, err))
    }
}

/// A blob being written: its bytes so far and their running hash.
pub(super) struct NewBlob {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
}

impl NewBlob {
    /// Append `bytes`.
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), OciError> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file.write_all(bytes).map_err(|err| store_error(self.file.path(), err))
    }

    /// How many bytes were written.
    pub(super) fn len(&self) -> u64 {
        self.written
    }

    /// The digest of the bytes written, `sha256:...`.
    pub(super) fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }

    /// Move it into place under its digest; returns the path.
    pub(super) fn finish(self, store: &Store) -> Result<PathBuf, OciError> {
        let path = store.blob_path(&self.digest());
        self.file.as_file().sync_all().map_err(|err| store_error(&path, err))?;
        self.file.persist(&path).map_err(|err| store_error(&path, err.error))?;
        Ok(path)
    }
}

fn store_error(path: &Path, why: std::io::Error) -> OciError {
    OciError::Store { path: path.to_owned(), why }
}

/// The sha256 digest of a file's bytes, `sha256:...`.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 << 10];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_pull_comes_back_only_while_its_blob_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let reference: Reference = "oci://r.example/echo:v1".parse().unwrap();
        assert_eq!(store.last_pulled(&reference), None);
        let mut blob = store.new_blob().unwrap();
        blob.write(b"\0asm\x0d\0\x01\0").unwrap();
        let layer = blob.digest();
        let path = blob.finish(&store).unwrap();
        assert_eq!(path, store.blob_path(&layer));
        let pulled = Pulled {
            reference: reference.clone(),
            digest: "sha256:feed".into(),
            layer: layer.clone(),
            path,
            media_type: "application/wasm".into(),
        };
        store.record(&pulled).unwrap();
        assert_eq!(store.last_pulled(&reference), Some(pulled.clone()));
        let other: Reference = "oci://r.example/echo:v2".parse().unwrap();
        assert_eq!(store.last_pulled(&other), None);
        std::fs::write(&pulled.path, b"altered").unwrap();
        assert!(!store.holds(&layer));
        assert_eq!(store.last_pulled(&reference), None);
    }
}
