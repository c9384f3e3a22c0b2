//! Stub of the OCI API (replaced by the oci branch at merge).
#![allow(missing_docs, dead_code, unused_variables)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference(String);
impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        if s.starts_with("oci://") { Ok(Reference(s.to_owned())) } else { Err(OciError::Reference(s.to_owned())) }
    }
}
impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) }
}
impl Reference {
    pub fn registry(&self) -> &str { todo!() }
    pub fn digest(&self) -> Option<&str> { todo!() }
    pub fn is_pinned(&self) -> bool { todo!() }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret { Value(String), Env(String), File(PathBuf) }
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth { Basic { username: String, password: Secret }, Bearer(Secret) }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub store: PathBuf,
    pub insecure: Vec<String>,
    pub docker_config: Option<PathBuf>,
    pub auth: BTreeMap<String, Auth>,
    pub timeout: Duration,
}
#[derive(Debug, Clone)]
pub struct Pulled { pub reference: Reference, pub digest: String, pub layer: String, pub path: PathBuf, pub media_type: String }
#[derive(Debug, Default)]
pub struct Annotations { pub source: Option<String>, pub version: Option<String> }
pub struct Client;
pub struct Store;
impl Client {
    pub fn new(settings: Settings) -> Result<Client, OciError> { todo!() }
    pub fn resolve(&self, reference: &Reference) -> Result<String, OciError> { todo!() }
    pub fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> { todo!() }
    pub fn push(&self, file: &Path, reference: &Reference, annotations: &Annotations) -> Result<String, OciError> { todo!() }
    pub fn store(&self) -> &Store { todo!() }
}
impl Store {
    pub fn last_pulled(&self, reference: &Reference) -> Option<Pulled> { todo!() }
}
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("not an oci:// reference: {0}")]
    Reference(String),
    #[error("{0}")]
    Other(String),
}
/// The scheme of a reference.
pub const SCHEME: &str = "oci://";
