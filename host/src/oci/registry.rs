//! The registry side of a pull, push or resolve: the requests (through `oci-client`),
//! their timeouts, and the translation of what went wrong into an [`OciError`] that says
//! why in the reference's terms.
//!
//! This module owns no state between calls: each operation builds its client, reads its
//! credentials, and is done. It never writes outside the store and never lets bytes
//! into the store before their digest was checked.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_wasm::{ToConfig as _, WASM_MANIFEST_MEDIA_TYPE, WasmConfig};
use sha2::{Digest as _, Sha256};

use super::auth::{Credentials, credentials};
use super::media::{self, Misfit, Part};
use super::{Annotations, MAX_LAYER, MAX_MANIFEST, OciError, Pulled, Reference, Settings, Store};

/// The start of every component: magic, then the component-model version and layer.
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";

/// One operation's client, credentials and the words its errors use.
struct Remote<'a> {
    client: oci_client::Client,
    credentials: Credentials,
    reference: &'a Reference,
    target: oci_client::Reference,
    settings: &'a Settings,
}

impl<'a> Remote<'a> {
    fn new(settings: &'a Settings, reference: &'a Reference) -> Result<Remote<'a>, OciError> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(settings.insecure.clone()),
            connect_timeout: Some(settings.timeout),
            read_timeout: Some(settings.timeout),
            // Asked for one artifact by name, not "whatever suits this machine".
            platform_resolver: None,
            ..ClientConfig::default()
        };
        Ok(Remote {
            client: oci_client::Client::new(config),
            credentials: credentials(reference, &settings.auth, settings.docker_config.as_deref())?,
            reference,
            target: reference.to_client(),
            settings,
        })
    }

    fn auth(&self) -> &RegistryAuth {
        &self.credentials.auth
    }

    /// `request`, given the settings' timeout, its error explained.
    async fn timed<T>(&self, request: impl Future<Output = Result<T, OciDistributionError>>) -> Result<T, OciError> {
        match tokio::time::timeout(self.settings.timeout, request).await {
            Ok(outcome) => outcome.map_err(|err| self.explain(err)),
            Err(_) => Err(self.timeout()),
        }
    }

    fn timeout(&self) -> OciError {
        OciError::Timeout {
            reference: self.reference.to_string(),
            registry: self.reference.registry().to_owned(),
            timeout: self.settings.timeout,
        }
    }

    /// What an oci-client error means here.
    fn explain(&self, err: OciDistributionError) -> OciError {
        let reference = self.reference.to_string();
        let registry = self.reference.registry().to_owned();
        let denied = |status: &str| OciError::Denied {
            reference: reference.clone(),
            registry: registry.clone(),
            status: status.to_owned(),
            credentials: self.credentials.describe().to_owned(),
        };
        let by_status = |status: u16, why: String| match status {
            401 => denied("401 Unauthorized"),
            403 => denied("403 Forbidden"),
            404 => OciError::NotFound { reference: reference.clone(), registry: registry.clone(), why },
            _ => OciError::Registry { reference: reference.clone(), registry: registry.clone(), why },
        };
        match err {
            OciDistributionError::RequestError(err) => self.explain_request(&err),
            OciDistributionError::UnauthorizedError { .. } => denied("401 Unauthorized"),
            OciDistributionError::AuthenticationFailure(why) => {
                denied(&format!("its token service refused: {}", why.trim()))
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let why = envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>();
                let why = why.join("; ");
                match envelope.errors.first().map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized) => by_status(401, why),
                    Some(OciErrorCode::Denied) => by_status(403, why),
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => by_status(404, why),
                    _ => by_status(0, why),
                }
            }
            OciDistributionError::ServerError { code, message, .. } => {
                by_status(code, format!("{code}: {}", message.trim()))
            }
            // Its type is private to oci-client: what it says is all there is to go by.
            OciDistributionError::DigestError(err) => {
                let text = err.to_string();
                match text.strip_prefix("Invalid digest. Expected ").and_then(|rest| rest.split_once(", got ")) {
                    Some((expected, got)) => OciError::DigestMismatch {
                        reference,
                        what: "manifest",
                        expected: expected.to_owned(),
                        got: got.to_owned(),
                    },
                    None => OciError::Registry { reference, registry, why: text },
                }
            }
            other => OciError::Registry { reference, registry, why: other.to_string() },
        }
    }

    fn explain_request(&self, err: &reqwest::Error) -> OciError {
        let reference = self.reference.to_string();
        let registry = self.reference.registry().to_owned();
        let why = chain(err);
        if err.is_timeout() {
            return self.timeout();
        }
        if let Some(status) = err.status() {
            return self.explain(OciDistributionError::ServerError {
                code: status.as_u16(),
                url: String::new(),
                message: status.canonical_reason().unwrap_or("").to_owned(),
            });
        }
        if is_tls(err) {
            return OciError::Tls { reference, registry, why };
        }
        if err.is_connect() {
            return OciError::Unreachable { reference, registry, why };
        }
        OciError::Registry { reference, registry, why }
    }
}

/// An error and its sources, one after another.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        let line = next.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = next.source();
    }
    text
}

/// Whether TLS itself failed somewhere in the error's sources.
fn is_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(next) = source {
        let inner = next
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &dyn std::error::Error);
        if next.is::<rustls::Error>() || inner.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        source = next.source();
    }
    false
}

/// The manifest digest `reference` points at now.
pub(super) async fn resolve(settings: &Settings, reference: &Reference) -> Result<String, OciError> {
    let remote = Remote::new(settings, reference)?;
    remote.timed(remote.client.fetch_manifest_digest(&remote.target, remote.auth())).await
}

/// Pull `reference`'s component into `store`.
pub(super) async fn pull(settings: &Settings, store: &Store, reference: &Reference) -> Result<Pulled, OciError> {
    let remote = Remote::new(settings, reference)?;
    let subject = reference.to_string();
    let (body, _) =
        remote.timed(remote.client.pull_manifest_raw(&remote.target, remote.auth(), media::MANIFESTS)).await?;
    if body.len() as u64 > MAX_MANIFEST {
        return Err(OciError::TooLarge {
            reference: subject,
            what: "manifest",
            size: body.len() as u64,
            limit: MAX_MANIFEST,
        });
    }
    // Hashed here whatever the registry's header says: the digest recorded is the one of
    // the bytes read.
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    if let Some(expected) = reference.digest()
        && expected != digest
    {
        return Err(OciError::DigestMismatch {
            reference: subject,
            what: "manifest",
            expected: expected.into(),
            got: digest,
        });
    }
    let manifest = parse_manifest(&body, reference)?;
    let layer = &manifest.layers[0];
    if u64::try_from(layer.size).unwrap_or(u64::MAX) > MAX_LAYER {
        let size = u64::try_from(layer.size).unwrap_or(0);
        return Err(OciError::TooLarge { reference: subject, what: "layer", size, limit: MAX_LAYER });
    }
    let path = if store.holds(&layer.digest) {
        store.blob_path(&layer.digest)
    } else {
        download(&remote, store, layer).await?
    };
    let pulled = Pulled {
        reference: reference.clone(),
        digest,
        layer: layer.digest.clone(),
        path,
        media_type: layer.media_type.clone(),
    };
    store.record(&pulled)?;
    Ok(pulled)
}

/// The manifest, if it is a plugin artifact's.
fn parse_manifest(body: &[u8], reference: &Reference) -> Result<OciImageManifest, OciError> {
    let subject = reference.to_string();
    let malformed = |why: String| OciError::Registry {
        reference: subject.clone(),
        registry: reference.registry().to_owned(),
        why: format!("the manifest is not one: {why}"),
    };
    // An index or list names no single artifact: said as its media type, before the
    // parse of an image manifest fails on it.
    let versioned: serde_json::Value = serde_json::from_slice(body).map_err(|err| malformed(err.to_string()))?;
    if let Some(media_type) = versioned.get("mediaType").and_then(|value| value.as_str())
        && !media::MANIFESTS.contains(&media_type)
    {
        return Err(OciError::MediaType { reference: subject, part: Part::Manifest, got: media_type.to_owned() });
    }
    let manifest: OciImageManifest = serde_json::from_value(versioned).map_err(|err| malformed(err.to_string()))?;
    match media::check(&manifest) {
        Ok(()) => Ok(manifest),
        Err(Misfit::MediaType { part, got }) => Err(OciError::MediaType { reference: subject, part, got }),
        Err(Misfit::Layers(count)) => Err(OciError::Layers { reference: subject, count }),
    }
}

/// Fetch `layer` into the store: checked against its size cap, its digest and the
/// component header before it takes its name there.
async fn download(
    remote: &Remote<'_>,
    store: &Store,
    layer: &oci_client::manifest::OciDescriptor,
) -> Result<PathBuf, OciError> {
    let subject = remote.reference.to_string();
    let too_large = |size| OciError::TooLarge { reference: subject.clone(), what: "layer", size, limit: MAX_LAYER };
    let mut stream = remote.timed(remote.client.pull_blob_stream(&remote.target, layer)).await?;
    if let Some(length) = stream.content_length.filter(|&length| length > MAX_LAYER) {
        return Err(too_large(length));
    }
    let mut blob = store.new_blob()?;
    let mut head = Vec::with_capacity(COMPONENT_HEADER.len());
    loop {
        let chunk = match tokio::time::timeout(remote.settings.timeout, stream.next()).await {
            Err(_) => return Err(remote.timeout()),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk,
        };
        match chunk {
            Ok(bytes) => {
                if blob.len() + bytes.len() as u64 > MAX_LAYER {
                    return Err(too_large(blob.len() + bytes.len() as u64));
                }
                let wanted = COMPONENT_HEADER.len().saturating_sub(head.len()).min(bytes.len());
                head.extend_from_slice(&bytes[..wanted]);
                blob.write(&bytes)?;
            }
            // oci-client's own check fails the stream's end on a mismatch; the bytes
            // are all here, so the mismatch is said with both digests.
            Err(_) if blob.digest() != layer.digest && blob.len() as i64 >= layer.size => break,
            Err(err) => {
                return Err(OciError::Unreachable {
                    reference: subject,
                    registry: remote.reference.registry().to_owned(),
                    why: format!("the layer download broke off: {err}"),
                });
            }
        }
    }
    let got = blob.digest();
    if got != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: subject,
            what: "layer",
            expected: layer.digest.clone(),
            got,
        });
    }
    check_component(&head).map_err(|why| OciError::NotAComponent { subject, why })?;
    blob.finish(store)
}

/// Whether bytes starting with `head` are a component.
fn check_component(head: &[u8]) -> Result<(), String> {
    if head == COMPONENT_HEADER {
        Ok(())
    } else if head.starts_with(b"\0asm") {
        Err("a core WebAssembly module; sandport loads components (wasm32-wasip2, or `wasm-tools component new`)"
            .into())
    } else {
        Err("not WebAssembly at all".into())
    }
}

/// Push `file` to `reference`; the manifest digest.
pub(super) async fn push(
    settings: &Settings,
    file: &Path,
    reference: &Reference,
    annotations: &Annotations,
) -> Result<String, OciError> {
    let bytes = crate::regular_file::read(file, MAX_LAYER).map_err(|why| OciError::File { path: file.into(), why })?;
    let not_component = |why: String| OciError::NotAComponent { subject: file.display().to_string(), why };
    check_component(&bytes[..bytes.len().min(COMPONENT_HEADER.len())]).map_err(not_component)?;
    let (config, layer) =
        WasmConfig::from_raw_component(bytes, None).map_err(|err| not_component(format!("{err:#}")))?;
    let mut values = BTreeMap::from([("org.opencontainers.image.created".to_owned(), config.created.to_rfc3339())]);
    if let Some(source) = &annotations.source {
        values.insert("org.opencontainers.image.source".into(), source.clone());
    }
    if let Some(version) = &annotations.version {
        values.insert("org.opencontainers.image.version".into(), version.clone());
    }
    let config = config.to_config().map_err(|err| not_component(format!("{err:#}")))?;
    let remote = Remote::new(settings, reference)?;
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(values));
    manifest.media_type = Some(WASM_MANIFEST_MEDIA_TYPE.to_owned());
    remote.timed(remote.client.auth(&remote.target, remote.auth(), RegistryOperation::Push)).await?;
    remote.timed(remote.client.push_blob(&remote.target, layer.data.clone(), &layer.sha256_digest())).await?;
    remote.timed(remote.client.push_blob(&remote.target, config.data.clone(), &manifest.config.digest)).await?;
    // Serialised here so that the digest returned is the one of the bytes sent.
    let body = serde_json::to_vec(&manifest).map_err(|err| OciError::Registry {
        reference: reference.to_string(),
        registry: reference.registry().to_owned(),
        why: format!("cannot write the manifest: {err}"),
    })?;
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    let content_type = hyper::header::HeaderValue::from_static(WASM_MANIFEST_MEDIA_TYPE);
    remote.timed(remote.client.push_manifest_raw(&remote.target, body, content_type)).await?;
    Ok(digest)
}
