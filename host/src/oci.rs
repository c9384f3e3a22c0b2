//! Plugins as OCI artifacts: pull a component from a registry into a content store,
//! push one in the CNCF wasm layout.
//!
//! This module owns the talk with registries (through `oci-client`), the checks on what
//! comes back (media types, digests, sizes, that it is a component) and the store the
//! components land in. Its surface is synchronous: each call runs a tokio runtime of its
//! own on the calling thread (or, when that thread is already inside a runtime, on a
//! thread it starts), so it must never be called from a reactor event loop; whoever
//! calls it picks the thread. Every request has a timeout. It never prints a secret.
//!
//! # What is accepted
//!
//! A plugin artifact is one manifest with one config and exactly one layer, the
//! component's bytes:
//!
//! | part | media types accepted |
//! |---|---|
//! | manifest | `application/vnd.oci.image.manifest.v1+json` (OCI image manifest), `application/vnd.docker.distribution.manifest.v2+json` (Docker v2 schema 2) |
//! | config | `application/vnd.wasm.config.v0+json` (CNCF wasm layout), `application/vnd.wasm.config.v1+json`, `application/vnd.oci.image.config.v1+json`, `application/vnd.oci.empty.v1+json`, `application/vnd.unknown.config.v1+json` (oras's default) |
//! | layer | `application/wasm` (CNCF wasm layout), `application/vnd.wasm.content.layer.v1+wasm` (wasm-to-oci), `application/vnd.module.wasm.content.layer.v1+wasm` (Istio/Solo wasm image spec), `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` |
//!
//! The layer must be a component (not a core module), at most [`MAX_LAYER`] bytes; a
//! manifest at most [`MAX_MANIFEST`]. `push` writes the CNCF layout (`oci-wasm`): config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer, and the
//! manifest annotations `org.opencontainers.image.created`, `.source` and `.version`.

mod auth;
pub mod media;
mod reference;
mod registry;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{Auth, Secret};
pub use media::Part;
pub use reference::{Reference, SCHEME};
pub use store::{Pulled, Store};

/// The largest manifest accepted.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The largest component layer accepted.
pub const MAX_LAYER: u64 = 256 << 20;

/// How to reach registries and where pulled components go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The content store's root.
    pub store: PathBuf,
    /// Registries (`host:port`) reached over plain HTTP; every other one over HTTPS.
    pub insecure: Vec<String>,
    /// A Docker `config.json` with credentials. None: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json` (an absent file means anonymous).
    pub docker_config: Option<PathBuf>,
    /// Credentials per registry; they beat the Docker config.
    pub auth: BTreeMap<String, Auth>,
    /// How long one registry request may take.
    pub timeout: Duration,
}

/// What `push` writes into the manifest's annotations besides the creation time.
#[derive(Clone, Debug, Default)]
pub struct Annotations {
    /// `org.opencontainers.image.source`: where the plugin's source lives.
    pub source: Option<String>,
    /// `org.opencontainers.image.version`: the plugin's version.
    pub version: Option<String>,
}

/// A registry client with a content store.
#[derive(Debug)]
pub struct Client {
    settings: Settings,
    store: Store,
}

impl Client {
    /// A client for these settings (nothing is contacted yet).
    pub fn new(settings: Settings) -> Result<Client, OciError> {
        if settings.timeout.is_zero() {
            return Err(OciError::Settings("the timeout must be more than 0 ms".into()));
        }
        Ok(Client { store: Store::new(settings.store.clone()), settings })
    }

    /// The manifest digest the reference points at now (a HEAD/GET of the manifest;
    /// cheap).
    pub fn resolve(&self, reference: &Reference) -> Result<String, OciError> {
        self.run(registry::resolve(&self.settings, reference))
    }

    /// Fetch the manifest (its digest verified when the reference is pinned), check the
    /// media types, fetch the layer unless the store already holds its digest, verify
    /// it, store it; record it as this reference's last pull.
    pub fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        self.run(registry::pull(&self.settings, &self.store, reference))
    }

    /// Publish `file` (a component: a core module or anything else is refused) in the
    /// CNCF layout with the annotations `org.opencontainers.image.created` (now),
    /// `.source` and `.version`; returns the manifest digest.
    pub fn push(&self, file: &Path, reference: &Reference, annotations: &Annotations) -> Result<String, OciError> {
        self.run(registry::push(&self.settings, file, reference, annotations))
    }

    /// The content store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Run `work` to its end on a runtime of its own.
    fn run<T: Send>(&self, work: impl Future<Output = Result<T, OciError>> + Send) -> Result<T, OciError> {
        let block_on = move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| OciError::Settings(format!("cannot start a runtime for the registry client: {err}")))?
                .block_on(work)
        };
        // Blocking inside a runtime would panic: a caller there gets a thread of its own.
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                scope.spawn(block_on).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            block_on()
        }
    }
}

/// Why a pull, push or resolve failed. Every message names the reference (which names
/// the registry) and says why.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Not an `oci://` reference.
    #[error("`{text}` is not an OCI reference: {why}")]
    Reference {
        /// The text given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// Settings that cannot work.
    #[error("OCI settings: {0}")]
    Settings(String),
    /// Credentials that could not be read.
    #[error("{reference}: credentials: {why}")]
    Credentials {
        /// The reference.
        reference: String,
        /// What could not be read, and where it was looked for.
        why: String,
    },
    /// No connection to the registry.
    #[error("{reference}: cannot reach the registry {registry}: {why}")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What the network said.
        why: String,
    },
    /// TLS with the registry failed (often: it serves plain HTTP).
    #[error(
        "{reference}: TLS with the registry {registry} failed ({why}); a registry that serves plain HTTP must be listed in `insecure`"
    )]
    Tls {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What TLS said.
        why: String,
    },
    /// The registry did not answer in time.
    #[error("{reference}: timeout: the registry {registry} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// 401 or 403.
    #[error("{reference}: the registry {registry} refused access ({status}); credentials tried: {credentials}")]
    Denied {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// `401 Unauthorized` or `403 Forbidden` (or what the token service said).
        status: String,
        /// Which credentials were tried (never the secret).
        credentials: String,
    },
    /// The repository, tag, digest or blob is not there.
    #[error("{reference}: not found in the registry {registry} ({why})")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What the registry said.
        why: String,
    },
    /// A part came with a media type outside its list.
    #[error("{reference}: the {part} has media type `{got}`, which is not accepted; accepted: {}", part.accepted().join(", "))]
    MediaType {
        /// The reference.
        reference: String,
        /// Which part.
        part: Part,
        /// The media type it has.
        got: String,
    },
    /// Not exactly one layer.
    #[error("{reference}: the manifest has {count} layers; a plugin artifact has exactly one (the component)")]
    Layers {
        /// The reference.
        reference: String,
        /// How many it has.
        count: usize,
    },
    /// Bytes that do not hash to the digest they were asked for by.
    #[error("{reference}: digest mismatch in the {what}: expected {expected}, got {got}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// `manifest` or `layer`.
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        got: String,
    },
    /// More bytes than allowed.
    #[error("{reference}: the {what} is too large: {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The reference.
        reference: String,
        /// `manifest` or `layer`.
        what: &'static str,
        /// Its size (at least).
        size: u64,
        /// The most allowed.
        limit: u64,
    },
    /// The layer or file is not a WebAssembly component.
    #[error("{subject}: not a component: {why}")]
    NotAComponent {
        /// The reference or file.
        subject: String,
        /// What it is instead.
        why: String,
    },
    /// Any other refusal or malformed answer from the registry.
    #[error("{reference}: the registry {registry} failed: {why}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What happened.
        why: String,
    },
    /// The file to push could not be read.
    #[error("{}: cannot read: {why}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: crate::regular_file::ReadError,
    },
    /// The content store could not be written.
    #[error("the OCI store at {}: {why}", path.display())]
    Store {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        why: std::io::Error,
    },
}
