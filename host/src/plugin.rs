//! WebAssembly plugins: compiling components, checking them against the
//! `sandport:handler` world, and running them as [`Handler`]s.
//!
//! This module is the only one that knows wasmtime. A [`Runtime`] holds the engine
//! (and the thread that ticks its epoch, which is how runaway guests are stopped);
//! [`Runtime::load`] compiles (or takes from the `cache`) and links a component
//! once into a [`Plugin`];
//! [`Plugin::factory`] makes the [`HandlerFactory`] of one listener, which starts
//! instances from the pre-linked component. A trap poisons the whole wasmtime
//! `Store`, so each [`PluginHandler`] is exactly one instance in its own store: when
//! the guest traps, runs out of time or memory, or tries to wait, the handler reports
//! a [`Fault`] and the reactor drops it, closing the connections whose state died. A
//! listener with per-connection instances uses a [`Runtime::pooled`] engine, whose
//! pooling allocator makes starting an instance cheap. A component that also exports
//! the `migrate` interface can hand its connections over to a new version (see
//! `migrate`). It never touches a socket, and nothing a guest calls waits.
//!
//! Plugin files are read with [`read_component`] only, whichever route names them
//! (config, SIGHUP, the admin API, the watcher, the command line): a regular file of
//! at most [`MAX_COMPONENT`] bytes. Inside, the rooms are: `version` (the versions of
//! the WIT contract served: a plugin built against any of them loads); `bindings`
//! (what wasmtime generates from the WIT, alone); `state` (what an instance's store
//! holds, and the host lent to it for a call); `imports` and `wasi` (what a guest can
//! call, as trait implementations over that state); `linker` (which of them a
//! component is linked against); `exports` (the functions the host calls, found once
//! per component at whichever version it exports them); `fit` and `signature` (why a
//! component does not fit, and the types of the exports the host calls); `cache` and
//! `trust` (compiled code kept, and only where no one else could have written it);
//! `migrate`, `output`, `log_rate` and `deadline`.

mod bindings;
mod cache;
mod deadline;
mod exports;
mod fit;
mod imports;
mod linker;
mod log_rate;
mod migrate;
mod output;
mod signature;
mod state;
mod trust;
mod version;
mod wasi;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};
use wasmtime::component::{Component, InstancePre, Linker, Resource};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

use crate::handler::{ConnId, Event, Fault, Handler, HandlerFactory, Host};
use crate::listener::{Limit, ListenerSpec};
use crate::regular_file::{self, Kind, ReadError};
use bindings::sandport::handler::types as wit;
use cache::{Cache, ContentHash};
use deadline::{Budget, CallClock, OverBudget};
use exports::Exports;
pub use fit::Misfit;
use log_rate::LogBudget;
pub use migrate::MAX_STATE;
use output::escape_controls;
use state::{GuestState, RecvView};
use wasi::WouldBlock;

/// Why a plugin cannot be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path names something other than a regular file (a FIFO, a device, ...).
    #[error("{path}: not a regular file ({kind})")]
    NotRegular {
        /// The plugin path.
        path: PathBuf,
        /// What it names instead.
        kind: Kind,
    },
    /// The file is larger than a plugin may be ([`MAX_COMPONENT`]).
    #[error("{path}: {size} bytes, more than the {} MiB a plugin may have", MAX_COMPONENT >> 20)]
    TooLarge {
        /// The plugin file.
        path: PathBuf,
        /// Its size, in bytes.
        size: u64,
    },
    /// The file is not a WebAssembly component.
    #[error("{path}: not a WebAssembly component: {reason}")]
    NotAComponent {
        /// The plugin file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The component does not fit the `sandport:handler` world.
    #[error("{path}: does not implement the sandport:handler/plugin world:\n{misfit}")]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// Every import and export that does not fit, with the fixes.
        misfit: Misfit,
    },
    /// A precompiled component (`.cwasm`) from another build of sandport.
    #[error("{path}: compiled by an incompatible sandport: run `sandport compile` again")]
    Incompatible {
        /// The precompiled file.
        path: PathBuf,
    },
    /// A precompiled component (`.cwasm`) that does not check out.
    #[error("{path}: damaged precompiled component ({reason}): run `sandport compile` again")]
    Damaged {
        /// The precompiled file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A fresh instance could not be started.
    #[error("{path}: cannot start an instance: {reason}")]
    Instantiate {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Most bytes a plugin file (a component or a `.cwasm`) may have: the same cap as an
/// upload's through the admin API.
pub const MAX_COMPONENT: usize = 256 << 20;

/// The bytes of the plugin file at `path`: a regular file of at most [`MAX_COMPONENT`]
/// bytes, read without waiting on a FIFO or reading a device without end (see
/// [`regular_file`]). Every route that loads a plugin file reads it with this.
pub fn read_component(path: &Path) -> Result<Vec<u8>, PluginError> {
    regular_file::read(path, MAX_COMPONENT as u64).map_err(|err| match err {
        ReadError::Io(source) => PluginError::Read { path: path.to_owned(), source },
        ReadError::NotRegular(kind) => PluginError::NotRegular { path: path.to_owned(), kind },
        ReadError::TooLarge { size, .. } => PluginError::TooLarge { path: path.to_owned(), size },
    })
}

/// Most instances a pooled engine holds at once. Each live instance holds a few
/// memory mappings, and Linux's default `vm.max_map_count` (65530) caps a process
/// near 16k live instances.
pub const MAX_POOLED_INSTANCES: u32 = 10_000;

/// The compilation engine shared by plugins, whose epoch the process's one ticker
/// thread advances (see `deadline`), with its cache of compiled components. Clones
/// share the engine and the cache, on any thread.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    cache: Arc<Cache<Linked>>,
}

// Swaps are compiled off the event loops, on a control thread, with the runtimes
// the server was built with.
const _: fn() = || {
    fn shareable<T: Clone + Send + Sync>() {}
    shareable::<Runtime>();
    shareable::<Plugin>();
};

/// What a plugin's origin is called when its bytes came from no file (an upload).
pub const UPLOADED: &str = "(uploaded component)";

impl Runtime {
    /// An engine for synchronous hosts with epoch interruption, its epoch advanced for
    /// as long as it lives. Instances are allocated on demand: right for a few
    /// long-lived shared instances. Compiled components are kept in memory only
    /// until [`Runtime::with_cache`] gives a directory.
    pub fn new() -> Result<Runtime, PluginError> {
        Runtime::build(wasmtime::Config::new())
    }

    /// Like [`Runtime::new`], with instances taken from a pre-reserved pool of
    /// `instances` slots (at most [`MAX_POOLED_INSTANCES`]) whose linear memories
    /// may grow to `memory` bytes, recycled as `pooling` says: right for an instance
    /// per connection.
    ///
    /// Its code is compatible with [`Runtime::new`]'s (the same compatibility hash)
    /// as long as `pooling` keeps copy-on-write images on, so one cache entry or
    /// `.cwasm` serves every instance mode: the slots keep the default memory
    /// reservation, whose guard regions also spare guest memory accesses their
    /// bounds checks. That is address space, not memory: up to
    /// [`MAX_POOLED_INSTANCES`] times two 4 GiB reservations.
    pub fn pooled(instances: u32, memory: usize, pooling: Pooling) -> Result<Runtime, PluginError> {
        let instances = instances.min(MAX_POOLED_INSTANCES);
        let memory = memory.next_multiple_of(1 << 16).min(MAX_POOLED_MEMORY);
        let mut pool = PoolingAllocationConfig::new();
        // A component instance is several core instances (the program, adapter
        // shims; a componentize-py one about 13: libc, libpython and its modules),
        // each with a table or two, and usually one memory. Core instances are only
        // counted, so their bound costs nothing.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 16)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .max_memory_size(memory)
            .linear_memory_keep_resident(pooling.memory_keep_resident)
            .table_keep_resident(pooling.table_keep_resident)
            .decommit_batch_size(pooling.decommit_batch)
            .pagemap_scan(if pooling.pagemap_scan { Enabled::Auto } else { Enabled::No });
        let mut config = wasmtime::Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.memory_init_cow(pooling.copy_on_write);
        Runtime::build(config)
    }

    fn build(mut config: wasmtime::Config) -> Result<Runtime, PluginError> {
        config.epoch_interruption(true);
        // The host is synchronous; async support would double the cost of every call.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linker = linker::linker(&engine).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        deadline::tick(&engine).map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        let cache = Arc::new(Cache::new(&engine, None));
        Ok(Runtime { engine, linker: Arc::new(linker), cache })
    }

    /// This runtime with its compiled components also kept under `dir` (created if
    /// missing; `None`: in memory only), so that the next process does not compile
    /// them again. A directory that cannot be used is a warning, not an error.
    pub fn with_cache(self, dir: Option<&Path>) -> Runtime {
        Runtime { cache: Arc::new(Cache::new(&self.engine, dir)), ..self }
    }

    /// Compile the component (or read the `.cwasm`) at `path`, unless the cache has
    /// it, and check it against the world.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        self.load_bytes(&read_component(path)?, Some(path))
    }

    /// Like [`Runtime::load`], for bytes read elsewhere (an upload); `origin` names
    /// their file, if they have one. Logs one line saying where the compiled code
    /// came from (compiled, memory, disk or precompiled), with the time it took.
    pub fn load_bytes(&self, bytes: &[u8], origin: Option<&Path>) -> Result<Plugin, PluginError> {
        let started = Instant::now();
        let path = origin.map_or_else(|| PathBuf::from(UPLOADED), Path::to_owned);
        let (content, linked, found) = self.cache.load(bytes, &path, |component| self.link(component, &path))?;
        let hash = content.to_string();
        info!(file = %path.display(), hash = %&hash[..12], from = %found.as_str(), took = ?started.elapsed(), "plugin ready");
        Ok(Plugin { inner: Arc::new(Loaded { engine: self.engine.clone(), linked, path, content, hash }) })
    }

    /// The precompiled file (`.cwasm`) of the component at `path`, checked against
    /// the world first; [`Runtime::load`] reads it back in any runtime of this build.
    pub fn precompile(&self, path: &Path) -> Result<Vec<u8>, PluginError> {
        let plugin = self.load(path)?;
        self.cache
            .encode(plugin.inner.content, &plugin.inner.linked.component)
            .map_err(|e| PluginError::Engine(format!("cannot serialize {}: {}", path.display(), one_line(&e))))
    }

    fn link(&self, component: Component, path: &Path) -> Result<Linked, PluginError> {
        let linked = self.linker.instantiate_pre(&component).and_then(|pre| Ok((Exports::find(&component)?, pre)));
        match linked {
            Ok((exports, pre)) => Ok(Linked { component, pre, exports }),
            // Only now is it worth working out all that does not fit, not just the first.
            Err(err) => {
                let misfit = fit::diagnose(&self.linker, &component, &err);
                Err(PluginError::WrongWorld { path: path.to_owned(), misfit })
            }
        }
    }
}

/// How a pooled engine ([`Runtime::pooled`]) recycles the slot of an instance that
/// is dropped, which is most of what starting and dropping one costs: returning
/// dirty pages to the kernel (`madvise`) and faulting fresh ones in at the next start.
/// [`Pooling::default`] is the setting that measured best (`cargo bench -p sandport
/// --bench instances`, which measures each knob against it; BENCHMARKS.md, "Starting
/// an instance"); the other values are there to be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// Bytes of a linear memory's pages that are reset in place when its slot is
    /// returned, instead of being given back to the kernel; they stay resident while
    /// the slot is idle. Which pages: the written ones with `pagemap_scan`, else the
    /// lowest.
    pub memory_keep_resident: usize,
    /// The same for a table's pages.
    pub table_keep_resident: usize,
    /// Slots returned before their pages are given back, in one batch.
    pub decommit_batch: usize,
    /// Find the pages an instance wrote with Linux's `PAGEMAP_SCAN` (6.7 and later;
    /// where it is missing, as if off), so that the ones kept resident are those.
    pub pagemap_scan: bool,
    /// A memory starts as a copy-on-write mapping of the component's initial image,
    /// rather than being written from its data segments at every start.
    pub copy_on_write: bool,
}

impl Pooling {
    /// wasmtime's own defaults: every page given back at once, nothing kept.
    pub const WASMTIME: Pooling = Pooling {
        memory_keep_resident: 0,
        table_keep_resident: 0,
        decommit_batch: 1,
        pagemap_scan: false,
        copy_on_write: true,
    };
}

impl Default for Pooling {
    /// A slot keeps up to 64 KiB of the pages its last instance wrote in its memory
    /// and 64 KiB of its tables, reset in place, so the next instance of the same
    /// component starts without a page fault or an `madvise` for them (what a small
    /// guest such as the Rust echo writes fits); returned slots are decommitted 16 at
    /// a time. The price: a slot that served once keeps those pages while idle, up to
    /// about 128 KiB per slot of the pool.
    fn default() -> Pooling {
        Pooling {
            memory_keep_resident: 64 << 10,
            table_keep_resident: 64 << 10,
            decommit_batch: 16,
            pagemap_scan: true,
            ..Pooling::WASMTIME
        }
    }
}

/// Largest linear memory a pooled slot takes: the default memory reservation of a
/// 64-bit host, which [`Runtime::pooled`] keeps (a wasm32 memory cannot grow past
/// it anyway).
const MAX_POOLED_MEMORY: usize = 1 << 32;

/// A compiled, linked plugin, ready to be instantiated any number of times.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Loaded>,
}

struct Loaded {
    engine: Engine,
    linked: Linked,
    path: PathBuf,
    content: ContentHash,
    /// `content` in hex, for [`Plugin::hash`].
    hash: String,
}

/// A compiled component linked against the host's imports: what the cache keeps.
#[derive(Clone)]
struct Linked {
    component: Component,
    pre: InstancePre<GuestState>,
    exports: Exports,
}

impl Plugin {
    /// The file the plugin was loaded from ([`UPLOADED`] for bytes from no file).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The version's content hash: the SHA-256 of the component's bytes, in
    /// lowercase hex (for a `.cwasm`, of the component it was compiled from).
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// The version of the WIT contract the plugin was built against (`0.2.0`): the
    /// version of the `handler` interface it exports.
    pub fn wit_version(&self) -> &'static str {
        self.inner.linked.exports.version().number()
    }

    /// Whether the plugin can hand its connections over to a new version and take
    /// them over from an old one: it exports the WIT `migrate` interface.
    pub fn migrates(&self) -> bool {
        self.inner.linked.exports.migrates()
    }

    /// The component's imports, by name.
    pub fn imports(&self) -> Vec<String> {
        let ty = self.inner.linked.component.component_type();
        ty.imports(&self.inner.engine).map(|(name, _)| name.to_owned()).collect()
    }

    /// The component's exports, by name.
    pub fn exports(&self) -> Vec<String> {
        let ty = self.inner.linked.component.component_type();
        ty.exports(&self.inner.engine).map(|(name, _)| name.to_owned()).collect()
    }

    /// The factory of the handlers of listener `spec`: instances bounded by its
    /// limits, reading `settings` through the `config` import.
    pub fn factory(&self, spec: &ListenerSpec, version: u64) -> PluginFactory {
        PluginFactory {
            tenant: Arc::new(Tenant {
                plugin: self.clone(),
                listener: Arc::from(spec.name.as_str()),
                version,
                memory: spec.limits.memory,
                budget: Budget { cpu: spec.limits.event_timeout, wall: spec.limits.event_wall_timeout },
                settings: Arc::new(spec.settings.clone()),
                log_budget: Arc::new(LogBudget::new(spec.limits.log_rate)),
            }),
        }
    }
}

/// What every instance of one listener shares: the plugin, the limits, the settings,
/// the log budget.
struct Tenant {
    plugin: Plugin,
    listener: Arc<str>,
    /// Which version of the listener's plugin this is (1 at start, then one more per
    /// swap), for the log.
    version: u64,
    memory: usize,
    budget: Budget,
    settings: Arc<BTreeMap<String, String>>,
    log_budget: Arc<LogBudget>,
}

impl Tenant {
    /// Say why a call failed in words an operator can act on, and which limit (if
    /// any) stopped it.
    fn explain(&self, err: &wasmtime::Error, state: &GuestState) -> (String, Option<Limit>) {
        if let Some(over) = err.downcast_ref::<OverBudget>() {
            (over.to_string(), Some(over.limit()))
        } else if let Some(blocked) = err.downcast_ref::<WouldBlock>() {
            (blocked.to_string(), None)
        } else {
            (one_line(err), state.memory_exceeded().then_some(Limit::Memory))
        }
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let dropped = self.log_budget.dropped();
        if dropped > 0 {
            warn!(listener = %self.listener, dropped, "guest log output dropped in all (limits.log-rate)");
        }
    }
}

/// Starts the plugin instances of one listener (a [`HandlerFactory`]). Its clones
/// (one per worker) share the listener's settings and log budget.
#[derive(Clone)]
pub struct PluginFactory {
    tenant: Arc<Tenant>,
}

impl PluginFactory {
    /// A fresh instance in its own store, as a [`PluginHandler`].
    pub fn instantiate(&self) -> Result<PluginHandler, PluginError> {
        let tenant = &self.tenant;
        let loaded = &tenant.plugin.inner;
        let state =
            GuestState::new(&tenant.listener, tenant.version, tenant.memory, &tenant.settings, &tenant.log_budget);
        let mut store = Store::new(&loaded.engine, state);
        store.limiter(|state| state.limits());
        let budget = tenant.budget;
        // The deadline comes due when the call could have used its budget; it goes
        // on if the guest was only starved of CPU, and ends as a fault if it was not.
        store.epoch_deadline_callback(move |store| match store.data().clock.verdict(&budget) {
            Ok(ticks) => Ok(UpdateDeadline::Continue(ticks)),
            Err(over) => Err(over.into()),
        });
        start_call(&mut store, &budget);
        let instance = loaded.linked.pre.instantiate(&mut store);
        let exports = instance.and_then(|instance| loaded.linked.exports.load(&mut store, &instance));
        let (handle, migrate) = exports.map_err(|e| PluginError::Instantiate {
            path: loaded.path.clone(),
            reason: tenant.explain(&e, store.data()).0,
        })?;
        Ok(PluginHandler { tenant: tenant.clone(), store, handle, migrate })
    }
}

impl HandlerFactory for PluginFactory {
    fn new_handler(&mut self) -> Result<Box<dyn Handler>, Fault> {
        match self.instantiate() {
            Ok(handler) => Ok(Box::new(handler)),
            Err(err) => Err(Fault { reason: err.to_string(), limit: None }),
        }
    }

    fn fork(&self) -> Option<Box<dyn HandlerFactory>> {
        Some(Box::new(self.clone()))
    }
}

/// One plugin instance in its own store, serving one listener's connections (or
/// one connection's, per-connection).
pub struct PluginHandler {
    tenant: Arc<Tenant>,
    store: Store<GuestState>,
    /// The instance's `handler.handle`, at whichever version its component exports it.
    handle: exports::Handle,
    /// The instance's `migrate` export, if its component has one.
    migrate: Option<exports::Migrate>,
}

impl Handler for PluginHandler {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        let event = to_wit(event);
        let rx = Resource::<RecvView>::new_borrow(RecvView::CURRENT);
        let handle = self.handle;
        call(&self.tenant, &mut self.store, host, (conn, 1), "", |store| handle.call(store, (conn.0, event, rx)))
    }

    fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    fn keeps_what_it_hands_over(&self) -> bool {
        self.tenant.plugin.inner.linked.exports.version().hands_over_all_or_nothing()
    }

    fn memory(&self) -> usize {
        self.store.data().largest_memory()
    }

    fn hand_over_instance(&mut self, host: &mut dyn Host, limit: usize) -> Result<Option<Vec<u8>>, Fault> {
        migrate::hand_over_instance(self, host, limit)
    }

    fn take_over_instance(&mut self, host: &mut dyn Host, state: Vec<u8>) -> Result<bool, Fault> {
        migrate::take_over_instance(self, host, state)
    }

    fn hand_over(&mut self, host: &mut dyn Host, conn: ConnId) -> Result<Vec<u8>, Fault> {
        migrate::hand_over(self, host, conn)
    }

    fn take_over(&mut self, host: &mut dyn Host, conn: ConnId, state: Vec<u8>) -> Result<(), Fault> {
        migrate::take_over(self, host, conn, state)
    }
}

/// Make `call`, a call into the guest about `conn` that may take `budgets` events'
/// budgets (1 but for a whole instance's migration), with the deadline that sets and
/// with `host` reachable from imports. A failure is a fault whose reason
/// says where it happened (`during`, say "in hand-over"; empty for `handle`).
fn call<R>(
    tenant: &Tenant,
    store: &mut Store<GuestState>,
    host: &mut dyn Host,
    (conn, budgets): (ConnId, u32),
    during: &str,
    call: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<R>,
) -> Result<R, Fault> {
    start_call(store, &tenant.budget.times(budgets));
    if budgets != 1 {
        let clock = store.data().clock.stretched(budgets);
        store.data_mut().clock = clock;
    }
    let called = state::with_host(store, host, conn, call);
    if tenant.log_budget.take_dropped() {
        host.limit_hit(conn, Limit::LogRate);
    }
    // On an error the store is poisoned: every later call would fail. The reactor
    // drops this handler and asks the factory for a fresh one when it needs one.
    called.map_err(|err| {
        let (why, limit) = tenant.explain(&err, store.data());
        let space = if during.is_empty() { "" } else { " " };
        Fault { reason: format!("plugin {} trapped{space}{during}: {why}", tenant.plugin.path().display()), limit }
    })
}

/// Before every call into the guest: note when it starts, and set the epoch deadline
/// (relative, so it must be set each time) at which its budget could be used up.
fn start_call(store: &mut Store<GuestState>, budget: &Budget) {
    store.data_mut().clock = CallClock::start();
    store.set_epoch_deadline(budget.first_deadline());
}

fn to_wit(event: Event) -> wit::Event {
    match event {
        Event::Accept(peer) => wit::Event::Accept(wit::SocketAddress { ip: peer.ip().to_string(), port: peer.port() }),
        Event::Connect(result) => wit::Event::Connect(result.map_err(Into::into)),
        Event::Recv(n) => wit::Event::Recv(n),
        Event::Send(n) => wit::Event::Send(n),
        Event::Poll => wit::Event::Poll,
        Event::Timer(id) => wit::Event::Timer(id),
        Event::Close => wit::Event::Close,
    }
}

/// The content hash of a plugin file's bytes, as [`Plugin::hash`] will say it: the
/// SHA-256 of a component, or for a precompiled file the one of the component it was
/// compiled from.
pub fn content_hash(bytes: &[u8]) -> String {
    cache::claimed_content(bytes).unwrap_or_else(|| cache::ContentHash::of(bytes)).to_string()
}

/// Whether `bytes` start like a component (not a core module): same magic, layer 1.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [1, 0]
}

/// An error and its causes on one line, without the wasm backtrace (function
/// indexes mean nothing to an operator; the plugin's own panic message is logged),
/// and with any control character a component put in a name escaped.
fn one_line(err: &wasmtime::Error) -> String {
    let text = err
        .chain()
        .map(|cause| cause.to_string())
        .filter(|text| !text.starts_with("error while executing at wasm backtrace"))
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(": ");
    escape_controls(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_path_that_is_not_a_file_of_a_plugins_size_is_refused_by_name() {
        let error = |path: &Path| read_component(path).unwrap_err().to_string();
        assert_eq!(error(Path::new("/dev/zero")), "/dev/zero: not a regular file (a character device)");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big).unwrap().set_len(MAX_COMPONENT as u64 + 1).unwrap();
        let size = MAX_COMPONENT + 1;
        assert_eq!(error(&big), format!("{}: {size} bytes, more than the 256 MiB a plugin may have", big.display()));
        let error = Runtime::new().unwrap().load(dir.path()).err().unwrap().to_string();
        assert_eq!(error, format!("{}: not a regular file (a directory)", dir.path().display()));
    }
}
