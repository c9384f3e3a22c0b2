//! The compiled-component cache, and the checked file format it shares with
//! `sandport compile`'s `.cwasm`.
//!
//! A component is compiled once: a swap back to a version this process compiled
//! takes it from memory (the [`RECENT`] last ones, per engine), and a restart or a
//! swap to a version some earlier process compiled reads it from a file under
//! `cache-dir`. Entries are keyed by the component's content hash (SHA-256 of its
//! bytes) and the engine's compatibility hash, so code compiled by another wasmtime
//! or for another engine configuration is never looked up.
//!
//! Loading native code is `unsafe` in wasmtime because it trusts its bytes. This
//! module never hands wasmtime bytes that do not carry our header (magic, format
//! version, engine key, content hash) and a matching SHA-256 of the artifact; an
//! entry that does not check out is recompiled and rewritten, with a warning naming
//! the file. The header proves only that an entry is whole, not who wrote it: so, as
//! OpenSSH refuses a key file others can write, a cache directory is used only if it
//! is owned by this server's effective user (or root) and not writable by group or
//! others, and an entry only if its open descriptor says the same of it (see `trust`).
//! Anything else is not read nor written: plugins are compiled in memory, with one
//! warning per directory naming the fix. The directory's parents are not checked: no one
//! else can make a file this user owns, so whatever directory they could put in its
//! place holds no entry that passes. A directory the cache creates is made `0700`.
//! Entries are written to a temporary file and renamed, so no reader ever
//! sees half an entry. An unusable directory costs a warning and a compile, never a
//! failed load. This module does not link components and knows nothing of the world
//! they implement.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tracing::warn;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::trust::{first_report, judge};
use super::{PluginError, is_component, one_line};
use crate::regular_file;

/// How many compiled components each engine keeps in memory after their last
/// plugin is gone, so that a swap back is immediate without memory growing with
/// every version ever loaded.
pub const RECENT: usize = 8;

/// The first bytes of a precompiled component file (cache entry or `.cwasm`).
const MAGIC: [u8; 8] = *b"\0sp-cwsm";

/// The layout of the header below; a file of another format version is rebuilt.
const FORMAT: u32 = 1;

/// Header: magic, format (u32 LE), engine key, content hash, artifact SHA-256,
/// artifact length (u64 LE); the artifact follows.
const HEADER: usize = 8 + 4 + 32 + 32 + 32 + 8;

/// Most bytes a cache entry may have: compiled code is a few times larger than the
/// component it comes from, which has at most `MAX_COMPONENT` bytes.
const MAX_ENTRY: u64 = 1 << 30;

/// SHA-256 of a component's bytes: the identity of a plugin version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The hash of these component bytes.
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for ContentHash {
    /// Lowercase hex, all 64 digits (`{:.12}` for a short form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0.iter().map(|byte| format!("{byte:02x}")).collect();
        f.pad(&hex)
    }
}

/// SHA-256 of an engine's compatibility hash: equal keys load each other's code.
#[derive(Clone, Copy, PartialEq, Eq)]
struct EngineKey([u8; 32]);

impl EngineKey {
    fn of(engine: &Engine) -> EngineKey {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        EngineKey(hasher.0.finalize().into())
    }
}

/// Feeds what a `Hash` implementation writes into SHA-256, for a key that is the
/// same in every process of this build (std's hashers promise no such thing).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
    }
}

/// Why a precompiled file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// Not our format, or damaged in its header.
    #[error("not a sandport precompiled component")]
    Magic,
    /// Written in another layout, by another sandport.
    #[error("format version {0}, this sandport reads version {FORMAT}")]
    Format(u32),
    /// Compiled by an engine whose code this one cannot run.
    #[error("compiled by an incompatible sandport")]
    Engine,
    /// Cut off inside its header.
    #[error("truncated: shorter than its header")]
    Truncated,
    /// Shorter or longer than its header says.
    #[error("{0} bytes of compiled code where the header says {1}")]
    Length(usize, u64),
    /// The compiled code changed since it was written.
    #[error("the compiled code does not match its checksum")]
    Checksum,
    /// A cache entry filed under another component's hash.
    #[error("compiled from another component")]
    Content,
}

/// A precompiled file whose header and checksum checked out.
struct Checked<'a> {
    content: ContentHash,
    artifact: &'a [u8],
}

/// Whether these bytes claim to be a precompiled component (checked or not).
pub fn is_precompiled(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The content hash a precompiled file says it was compiled from (unchecked: for
/// telling whether a file changed, never for trusting it), or `None` for anything
/// else.
pub fn claimed_content(bytes: &[u8]) -> Option<ContentHash> {
    let hash = bytes.get(8 + 4 + 32..8 + 4 + 32 + 32).filter(|_| is_precompiled(bytes))?;
    Some(ContentHash(hash.try_into().expect("sliced to 32")))
}

/// How a load was served, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Compiled now.
    Compiled,
    /// Already compiled by this process.
    Memory,
    /// Read from a cache entry on disk.
    Disk,
    /// Read from a `.cwasm` given as the plugin.
    Precompiled,
}

impl Found {
    /// The word the load's log line uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Compiled => "compiled",
            Found::Memory => "memory",
            Found::Disk => "disk",
            Found::Precompiled => "precompiled",
        }
    }
}

/// One engine's compiled components: the recent ones in memory (as `V`, the
/// component ready to instantiate), all of them on disk under the cache directory.
pub struct Cache<V> {
    engine: Engine,
    key: EngineKey,
    dir: Option<PathBuf>,
    /// Most recently loaded last; at most [`RECENT`].
    recent: Mutex<VecDeque<(ContentHash, V)>>,
}

impl<V: Clone> Cache<V> {
    /// A cache for `engine`'s code, on disk under `dir` if given (created if
    /// missing, readable by this user only: its files are trusted native code).
    pub fn new(engine: &Engine, dir: Option<&Path>) -> Cache<V> {
        let dir = dir.and_then(|dir| match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => Some(dir.to_owned()),
            Err(err) => {
                warn!(dir = %dir.display(), "cannot create the cache directory ({err}); plugins are compiled every time");
                None
            }
        });
        Cache { engine: engine.clone(), key: EngineKey::of(engine), dir, recent: Mutex::new(VecDeque::new()) }
    }

    /// The component in `bytes` (a component, or a precompiled file) made ready by
    /// `link`, from memory, disk, or the compiler; its content hash, and where it
    /// came from. `path` names the bytes in errors and warnings.
    pub fn load(
        &self,
        bytes: &[u8],
        path: &Path,
        link: impl FnOnce(Component) -> Result<V, PluginError>,
    ) -> Result<(ContentHash, V, Found), PluginError> {
        if is_precompiled(bytes) {
            return self.load_precompiled(bytes, path, link);
        }
        if !is_component(bytes) {
            let reason = if bytes.starts_with(b"\0asm") {
                "this is a core WebAssembly module; build it as a component (e.g. --target wasm32-wasip2)"
            } else {
                "the file does not start with the WebAssembly magic bytes"
            };
            return Err(PluginError::NotAComponent { path: path.to_owned(), reason: reason.to_owned() });
        }
        let content = ContentHash::of(bytes);
        if let Some(ready) = self.recall(content) {
            return Ok((content, ready, Found::Memory));
        }
        let (component, found) = match self.read(content) {
            Some(component) => (component, Found::Disk),
            None => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| PluginError::NotAComponent { path: path.to_owned(), reason: one_line(&e) })?;
                self.write(content, &component);
                (component, Found::Compiled)
            }
        };
        let ready = link(component)?;
        self.remember(content, ready.clone());
        Ok((content, ready, found))
    }

    /// A `.cwasm`: checked, then taken from memory if this process has its
    /// component already, else deserialized.
    fn load_precompiled(
        &self,
        bytes: &[u8],
        path: &Path,
        link: impl FnOnce(Component) -> Result<V, PluginError>,
    ) -> Result<(ContentHash, V, Found), PluginError> {
        let checked = self.check(bytes, None).map_err(|why| match why {
            Unusable::Engine | Unusable::Format(_) => PluginError::Incompatible { path: path.to_owned() },
            why => PluginError::Damaged { path: path.to_owned(), reason: why.to_string() },
        })?;
        if let Some(ready) = self.recall(checked.content) {
            return Ok((checked.content, ready, Found::Memory));
        }
        let component = self
            .deserialize(&checked)
            .map_err(|e| PluginError::Damaged { path: path.to_owned(), reason: one_line(&e) })?;
        let ready = link(component)?;
        self.remember(checked.content, ready.clone());
        Ok((checked.content, ready, Found::Precompiled))
    }

    /// The bytes of a precompiled file (our header, then the artifact) for
    /// `component`, compiled by this cache's engine from bytes hashing to `content`.
    pub fn encode(&self, content: ContentHash, component: &Component) -> wasmtime::Result<Vec<u8>> {
        let artifact = component.serialize()?;
        let mut file = Vec::with_capacity(HEADER + artifact.len());
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&FORMAT.to_le_bytes());
        file.extend_from_slice(&self.key.0);
        file.extend_from_slice(&content.0);
        file.extend_from_slice(&Sha256::digest(&artifact));
        file.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        file.extend_from_slice(&artifact);
        Ok(file)
    }

    /// Check a precompiled file's header and checksum against this engine (and,
    /// for a cache entry, the content hash it is filed under).
    fn check<'a>(&self, bytes: &'a [u8], content: Option<ContentHash>) -> Result<Checked<'a>, Unusable> {
        let Some((header, artifact)) = bytes.split_at_checked(HEADER) else {
            return Err(if is_precompiled(bytes) { Unusable::Truncated } else { Unusable::Magic });
        };
        let (magic, rest) = header.split_at(8);
        let (format, rest) = rest.split_at(4);
        let (engine, rest) = rest.split_at(32);
        let (hash, rest) = rest.split_at(32);
        let (checksum, length) = rest.split_at(32);
        let field = |bytes: &[u8]| <[u8; 32]>::try_from(bytes).expect("split at 32");
        if magic != MAGIC {
            return Err(Unusable::Magic);
        }
        let format = u32::from_le_bytes(format.try_into().expect("split at 4"));
        if format != FORMAT {
            return Err(Unusable::Format(format));
        }
        if EngineKey(field(engine)) != self.key {
            return Err(Unusable::Engine);
        }
        let length = u64::from_le_bytes(length.try_into().expect("split at 8"));
        if artifact.len() as u64 != length {
            return Err(Unusable::Length(artifact.len(), length));
        }
        if Sha256::digest(artifact).as_slice() != checksum {
            return Err(Unusable::Checksum);
        }
        let found = ContentHash(field(hash));
        if content.is_some_and(|content| content != found) {
            return Err(Unusable::Content);
        }
        Ok(Checked { content: found, artifact })
    }

    fn deserialize(&self, checked: &Checked<'_>) -> wasmtime::Result<Component> {
        // SAFETY: wasmtime requires bytes that `Component::serialize` produced for a
        // compatible engine. These come from a file with our header, whose engine
        // key is this engine's and whose SHA-256 matches the bytes: the bytes are
        // exactly what `encode` wrote from `serialize` for an engine compatible with
        // this one. Only a file the operator's own account forged (the cache
        // directory is theirs alone, a `.cwasm` is theirs to choose, like this
        // binary) could be otherwise, and wasmtime checks its compatibility again.
        unsafe { Component::deserialize(&self.engine, checked.artifact) }
    }

    /// The cache entry of `content`, if there is a good one; a bad one is
    /// reported, and left for [`Cache::write`] to replace.
    fn read(&self, content: ContentHash) -> Option<Component> {
        let file = self.entry(content)?;
        let opened = regular_file::open(&file).and_then(|(opened, metadata)| match judge(&metadata) {
            Ok(()) => regular_file::read_open(opened, &metadata, MAX_ENTRY).map(Ok),
            Err(distrust) => Ok(Err(distrust)),
        });
        let bytes = match opened {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(distrust)) => {
                if first_report(&file) {
                    warn!(
                        file = %file.display(),
                        "cache entry not loaded: {distrust}; compiling instead, and replacing it"
                    );
                }
                return None;
            }
            Err(regular_file::ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn!(file = %file.display(), "cannot read a cache entry ({err}); compiling");
                return None;
            }
        };
        let loaded = self.check(&bytes, Some(content)).map_err(|why| why.to_string());
        match loaded.and_then(|checked| self.deserialize(&checked).map_err(|e| one_line(&e))) {
            Ok(component) => Some(component),
            Err(why) => {
                warn!(file = %file.display(), "cache entry is stale or damaged ({why}); recompiling");
                None
            }
        }
    }

    /// Write the cache entry of `content`: to a temporary file renamed into place,
    /// so that a crash, or another server sharing the directory, never leaves half
    /// an entry under its name (and the checksum catches what a power cut leaves).
    fn write(&self, content: ContentHash, component: &Component) {
        let Some(file) = self.entry(content) else { return };
        let dir = file.parent().expect("an entry is in the cache directory");
        let written = self.encode(content, component).map_err(|e| one_line(&e)).and_then(|bytes| {
            let mut temporary =
                tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(|e| e.to_string())?;
            temporary.write_all(&bytes).map_err(|e| e.to_string())?;
            temporary.persist(&file).map_err(|e| e.error.to_string())?;
            Ok(())
        });
        if let Err(why) = written {
            warn!(file = %file.display(), "cannot write a cache entry ({why}); the next start compiles again");
        }
    }

    /// Where the entry of `content` for this engine lives, if there is a directory
    /// and it may be trusted (see [`Cache::trusted_dir`]).
    fn entry(&self, content: ContentHash) -> Option<PathBuf> {
        let engine: String = self.key.0[..8].iter().map(|byte| format!("{byte:02x}")).collect();
        Some(self.trusted_dir()?.join(format!("{content}-{engine}.cwasm")))
    }

    /// The cache directory, if there is one and it may hold code this server runs
    /// (see `trust`); else `None`, with one warning per directory naming the fix. Asked
    /// at every use, so that a directory fixed while the server runs serves again.
    fn trusted_dir(&self) -> Option<&Path> {
        let dir = self.dir.as_deref()?;
        let judged = std::fs::metadata(dir).map_err(|err| err.to_string()).and_then(|metadata| {
            judge(&metadata).map_err(|distrust| format!("{distrust}; fix: {}", distrust.fix(dir)))
        });
        match judged {
            Ok(()) => Some(dir),
            Err(why) => {
                if first_report(dir) {
                    warn!(
                        dir = %dir.display(),
                        "cache directory not used: {why} (anyone who can write there could plant code this \
                         server runs); plugins are compiled in memory"
                    );
                }
                None
            }
        }
    }

    fn recall(&self, content: ContentHash) -> Option<V> {
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = recent.iter().position(|(hash, _)| *hash == content)?;
        let entry = recent.remove(index).expect("the position is in range");
        let ready = entry.1.clone();
        recent.push_back(entry);
        Some(ready)
    }

    fn remember(&self, content: ContentHash, ready: V) {
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.retain(|(hash, _)| *hash != content);
        recent.push_back((content, ready));
        while recent.len() > RECENT {
            recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::plugin::{Pooling, Runtime};

    /// The smallest component: the magic, version 0x0d, layer 1.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    /// Another small component for each `n`: [`EMPTY`] with a custom section.
    fn component(n: u8) -> Vec<u8> {
        [EMPTY, &[0, 2, 1, n]].concat()
    }

    fn load(cache: &Cache<Component>, bytes: &[u8]) -> Found {
        cache.load(bytes, Path::new("test.wasm"), Ok).unwrap().2
    }

    #[test]
    fn a_component_is_compiled_once_then_taken_from_memory_or_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = Cache::new(&engine, Some(dir.path()));
        assert_eq!(load(&cache, EMPTY), Found::Compiled);
        assert_eq!(load(&cache, EMPTY), Found::Memory);
        assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Disk);
        let memory_only = Cache::new(&engine, None);
        assert_eq!(load(&memory_only, EMPTY), Found::Compiled);
        assert_eq!(load(&memory_only, EMPTY), Found::Memory);
    }

    #[test]
    fn memory_keeps_the_most_recent_components_only() {
        let cache = Cache::new(&Engine::default(), None);
        for n in 0..=RECENT as u8 {
            assert_eq!(load(&cache, &component(n)), Found::Compiled);
        }
        assert_eq!(load(&cache, &component(RECENT as u8)), Found::Memory);
        assert_eq!(load(&cache, &component(1)), Found::Memory);
        assert_eq!(load(&cache, &component(0)), Found::Compiled, "the oldest was forgotten");
    }

    #[test]
    fn a_file_that_does_not_check_out_is_refused_with_the_reason() {
        let engine = Engine::default();
        let cache: Cache<Component> = Cache::new(&engine, None);
        let content = ContentHash::of(EMPTY);
        let good = cache.encode(content, &Component::new(&engine, EMPTY).unwrap()).unwrap();
        assert!(cache.check(&good, Some(content)).is_ok());
        let damaged = |damage: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            damage(&mut bytes);
            cache.check(&bytes, Some(content)).err().unwrap()
        };
        assert!(matches!(damaged(&|b| b[0] = b'x'), Unusable::Magic));
        assert!(matches!(damaged(&|b| b[8] = 2), Unusable::Format(2)));
        assert!(matches!(damaged(&|b| b[12] ^= 1), Unusable::Engine));
        assert!(matches!(damaged(&|b| b[HEADER - 8] ^= 1), Unusable::Length(..)));
        assert!(matches!(damaged(&|b| b.truncate(b.len() - 1)), Unusable::Length(..)));
        assert!(matches!(damaged(&|b| b.truncate(HEADER - 1)), Unusable::Truncated));
        assert!(matches!(damaged(&|b| *b.last_mut().unwrap() ^= 1), Unusable::Checksum));
        let other = ContentHash::of(&component(0));
        assert!(matches!(cache.check(&good, Some(other)), Err(Unusable::Content)));
    }

    /// The cache entries in `dir`.
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let files = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path());
        files.filter(|path| path.extension().is_some_and(|ext| ext == "cwasm")).collect()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_neither_read_nor_written() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o777);
        let engine = Engine::default();
        assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Compiled);
        assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Compiled);
        assert!(entries(dir.path()).is_empty());
        chmod(dir.path(), 0o755);
        assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Compiled, "fixed, it serves again");
        assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Disk);
    }

    #[test]
    fn a_directory_of_another_user_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let metadata = std::fs::metadata(dir.path()).unwrap();
        assert!(matches!(judge(&metadata), Err(crate::plugin::trust::Distrust::Owner { owner: 65534, .. })));
        assert_eq!(load(&Cache::new(&Engine::default(), Some(dir.path())), EMPTY), Found::Compiled);
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn an_entry_others_can_write_or_own_is_not_loaded_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let untrusted: [&dyn Fn(&Path); 2] =
            [&|entry| chmod(entry, 0o666), &|entry| std::os::unix::fs::chown(entry, Some(65534), None).unwrap()];
        for make_untrusted in untrusted {
            load(&Cache::new(&engine, Some(dir.path())), EMPTY);
            let entry = entries(dir.path()).pop().unwrap();
            make_untrusted(&entry);
            assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Compiled);
            let metadata = std::fs::metadata(&entry).unwrap();
            assert_eq!(judge(&metadata), Ok(()), "replaced by a good entry");
            assert_eq!(load(&Cache::new(&engine, Some(dir.path())), EMPTY), Found::Disk);
        }
    }

    #[test]
    fn a_directory_the_cache_creates_is_its_users_alone() {
        let dir = tempfile::tempdir().unwrap();
        let created = dir.path().join("a/b");
        let _: Cache<Component> = Cache::new(&Engine::default(), Some(&created));
        for made in [dir.path().join("a"), created] {
            assert_eq!(std::fs::metadata(&made).unwrap().mode() & 0o777, 0o700, "{}", made.display());
        }
    }

    #[test]
    fn the_engines_of_every_instance_mode_share_their_code() {
        let shared = Runtime::new().unwrap();
        let pooled = Runtime::pooled(4, 1 << 20, Pooling::default()).unwrap();
        assert!(EngineKey::of(&shared.engine) == EngineKey::of(&pooled.engine));
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(false);
        let other = Engine::new(&config).unwrap();
        assert!(EngineKey::of(&shared.engine) != EngineKey::of(&other), "a setting that matters changes the key");
    }
}
