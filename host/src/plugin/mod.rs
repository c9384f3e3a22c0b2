//! WebAssembly plugins: compiling components, checking them against the
//! `sandport:handler` world, and running them as [`Handler`]s.
//!
//! This module is the only one that knows wasmtime. A [`Runtime`] holds the engine
//! (and the thread that ticks its epoch, which is how runaway guests are stopped);
//! [`Runtime::load`] compiles and links a component once into a [`Plugin`];
//! [`Plugin::instantiate`] makes a [`PluginHandler`] for one listener. A trap poisons
//! the whole wasmtime `Store`, so each handler keeps exactly one instance in its own
//! store: when the guest traps, runs out of time or memory, the handler drops that
//! store, starts a fresh instance, and reports a [`Fault`] so the reactor closes the
//! connections whose state died. It never touches a socket.

mod imports;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Store, Trap};

use crate::config::ListenerSpec;
use crate::handler::{ConnId, Event, Fault, Handler, Host};
use bindings::sandport::handler::types as wit;
use imports::{GuestState, RecvView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        // Every import checks that it runs inside an event, and traps otherwise.
        imports: { default: trappable },
        with: { "sandport:handler/host.mbuf": super::imports::RecvView },
    });
}

/// How often the engine's epoch advances: the resolution of `event-timeout-ms`.
const EPOCH_TICK: Duration = Duration::from_millis(5);

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
    /// The file is not a WebAssembly component.
    #[error("{path}: not a WebAssembly component: {reason}")]
    NotAComponent {
        /// The plugin file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The component does not fit the `sandport:handler` world.
    #[error("{path}: does not implement the sandport:handler/plugin world: {reason}")]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// Which import or export does not fit.
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

/// The compilation engine shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
}

impl Runtime {
    /// An engine for synchronous hosts with epoch interruption, plus a thread that
    /// advances the epoch for as long as the engine lives.
    pub fn new() -> Result<Runtime, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // The host is synchronous; async support would double the cost of every call.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linker = imports::linker(&engine).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sandport-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Runtime { engine, linker })
    }

    /// Compile the component at `path` and check it against the world.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_owned(), source })?;
        let bytes = bytes.as_slice();
        let path = path.to_owned();
        if !is_component(bytes) {
            let reason = if bytes.starts_with(b"\0asm") {
                "this is a core WebAssembly module; build it as a component (e.g. --target wasm32-wasip2)".to_owned()
            } else {
                "the file does not start with the WebAssembly magic bytes".to_owned()
            };
            return Err(PluginError::NotAComponent { path, reason });
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::NotAComponent { path: path.clone(), reason: one_line(&e) })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::WrongWorld { path: path.clone(), reason: one_line(&e) })?;
        let pre = bindings::PluginPre::new(pre)
            .map_err(|e| PluginError::WrongWorld { path: path.clone(), reason: one_line(&e) })?;
        Ok(Plugin { inner: Arc::new(Loaded { engine: self.engine.clone(), component, pre, path }) })
    }
}

/// A compiled, linked plugin, ready to be instantiated any number of times.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Loaded>,
}

struct Loaded {
    engine: Engine,
    component: Component,
    pre: bindings::PluginPre<GuestState>,
    path: PathBuf,
}

impl Plugin {
    /// The file the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The component's imports, by name.
    pub fn imports(&self) -> Vec<String> {
        let ty = self.inner.component.component_type();
        ty.imports(&self.inner.engine).map(|(name, _)| name.to_owned()).collect()
    }

    /// The component's exports, by name.
    pub fn exports(&self) -> Vec<String> {
        let ty = self.inner.component.component_type();
        ty.exports(&self.inner.engine).map(|(name, _)| name.to_owned()).collect()
    }

    /// A handler for the listener `spec`, with a fresh instance bounded by its limits.
    pub fn instantiate(&self, spec: &ListenerSpec) -> Result<PluginHandler, PluginError> {
        let mut handler = PluginHandler {
            plugin: self.clone(),
            listener: Arc::from(spec.name.as_str()),
            memory: spec.limits.memory,
            deadline_ticks: ticks(spec.limits.event_timeout),
            event_timeout: spec.limits.event_timeout,
            live: None,
        };
        handler.live = Some(handler.fresh_instance()?);
        Ok(handler)
    }
}

/// The [`Handler`] of one listener: one plugin instance in its own store.
pub struct PluginHandler {
    plugin: Plugin,
    listener: Arc<str>,
    memory: usize,
    deadline_ticks: u64,
    event_timeout: Duration,
    /// `None` after a fault whose replacement instance failed to start.
    live: Option<Live>,
}

struct Live {
    store: Store<GuestState>,
    bindings: bindings::Plugin,
}

impl PluginHandler {
    fn fresh_instance(&self) -> Result<Live, PluginError> {
        let loaded = &self.plugin.inner;
        let state = GuestState::new(&self.listener, self.memory);
        let mut store = Store::new(&loaded.engine, state);
        store.limiter(|state| state.limits());
        store.set_epoch_deadline(self.deadline_ticks);
        let bindings = loaded
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Instantiate { path: loaded.path.clone(), reason: self.explain(&e) })?;
        Ok(Live { store, bindings })
    }

    /// Say why a call failed in words an operator can act on.
    fn explain(&self, err: &wasmtime::Error) -> String {
        if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
            format!("ran longer than its {:?} per event (limits.event-timeout-ms)", self.event_timeout)
        } else {
            one_line(err)
        }
    }
}

impl Handler for PluginHandler {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        let live = match self.live.take() {
            Some(live) => live,
            None => {
                let live = self.fresh_instance().map_err(|e| Fault { reason: e.to_string() })?;
                info!(listener = %self.listener, plugin = %self.plugin.path().display(), "plugin instance restarted");
                live
            }
        };
        let live = self.live.insert(live);
        live.store.set_epoch_deadline(self.deadline_ticks);
        let event = to_wit(event);
        let rx = Resource::<RecvView>::new_borrow(RecvView::REP);
        let handler = live.bindings.sandport_handler_handler();
        let called =
            imports::with_host(&mut live.store, host, conn, |store| handler.call_handle(store, conn.0, &event, rx));
        let Err(err) = called else { return Ok(()) };
        let reason = format!("plugin {} trapped: {}", self.plugin.path().display(), self.explain(&err));
        // The store is poisoned: every later call would fail. Start over.
        self.live = match self.fresh_instance() {
            Ok(live) => Some(live),
            Err(e) => {
                error!(listener = %self.listener, "{e}");
                None
            }
        };
        Err(Fault { reason })
    }
}

fn to_wit(event: Event) -> wit::Event {
    match event {
        Event::Accept(peer) => wit::Event::Accept(wit::SocketAddress { ip: peer.ip().to_string(), port: peer.port() }),
        Event::Recv(n) => wit::Event::Recv(n),
        Event::Send(n) => wit::Event::Send(n),
        Event::Poll => wit::Event::Poll,
        Event::Timer(id) => wit::Event::Timer(id),
        Event::Close => wit::Event::Close,
    }
}

/// Epoch ticks in `timeout`, rounded up, at least one.
fn ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1)
}

/// Whether `bytes` start like a component (not a core module): same magic, layer 1.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [1, 0]
}

/// An error and its causes on one line, without the wasm backtrace (function
/// indexes mean nothing to an operator; the plugin's own panic message is logged).
fn one_line(err: &wasmtime::Error) -> String {
    err.chain()
        .map(|cause| cause.to_string())
        .filter(|text| !text.starts_with("error while executing at wasm backtrace"))
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(": ")
}
