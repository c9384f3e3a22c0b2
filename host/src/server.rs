//! A server built from a [`Config`]: plugins compiled and bound to their listeners.
//!
//! This is the glue between configuration, plugins and the reactors. It does all the
//! fallible work up front (read, compile, check, start one instance, bind) so a bad
//! plugin or a busy port is reported before anything serves, and then hands over to
//! the workers: one [`Reactor`] per thread, sharing nothing on the path of a message.
//!
//! Which workers serve a listener follows from its instance mode. A shared listener
//! lives on one worker (listeners are dealt out in turn), so a handler that keeps
//! state across connections (a chat room) sees all of them: the kernel could
//! otherwise spread its members over workers that share nothing. Per-worker and
//! per-connection listeners are served by every worker, each with its own socket on
//! the same port (`SO_REUSEPORT`), and the kernel spreads their connections. A
//! listener's `max-connections` is one count for all its workers ([`Slots`]).
//!
//! Listeners with shared or per-worker instances use an on-demand engine; listeners
//! with an instance per connection share a pooled one, sized from their
//! `max-connections` and `memory` limits. It also lifts the soft limit on open
//! descriptors to the hard one, and says what that lets the listeners hold.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::channel;

use tracing::{info, warn};

use crate::config::{Config, InstanceMode};
use crate::control::{Control, Record};
use crate::descriptors;
use crate::plugin::{Plugin, PluginError, Runtime};
use crate::reactor::{Binding, Reactor, Slots, Stats, StopHandle};

/// Descriptors the server holds besides its workers, listeners and connections:
/// stdio, the signal thread's, wasmtime's (with room to spare).
const OWN_DESCRIPTORS: u64 = 32;

/// Descriptors each worker holds: its poll instance, its waker, and the spare kept
/// for when descriptors run out.
const WORKER_DESCRIPTORS: u64 = 3;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's plugin is unusable.
    #[error("listener `{listener}`: {error}")]
    Plugin {
        /// The listener's name.
        listener: String,
        /// What is wrong with its plugin: in the message, so not also its source
        /// (which a report of the error's chain would print a second time).
        error: PluginError,
    },
    /// A listener's address cannot be bound.
    #[error("listener `{listener}`: cannot listen on {address}: {source}")]
    Listen {
        /// The listener's name.
        listener: String,
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The plugin engine could not start.
    #[error(transparent)]
    Runtime(PluginError),
    /// The event loop could not be created.
    #[error("cannot create the event loop: {0}")]
    Reactor(io::Error),
}

/// Listeners bound, plugins instantiated, ready to [`run`](Server::run).
///
/// ```no_run
/// let config = sandport::config::Config::from_file("sandport.toml".as_ref())?;
/// let mut server = sandport::server::Server::new(&config)?;
/// for (name, address) in server.local_addrs() {
///     println!("{name} on {address}");
/// }
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    /// One per worker thread; the first runs on the thread that calls [`Server::run`].
    workers: Vec<Reactor>,
    control: Control,
}

impl Server {
    /// Raise the descriptor limit, compile every listener's plugin (each file once
    /// per engine), check that an instance starts, then bind every listener.
    pub fn new(config: &Config) -> Result<Server, ServerError> {
        check_descriptors(config);
        let cache = config.cache_dir.as_deref();
        let shared = Arc::new(Runtime::new().map_err(ServerError::Runtime)?.with_cache(cache));
        let per_connection = config.listeners.iter().filter(|l| l.spec.instance == InstanceMode::PerConnection);
        let (slots, memory) = per_connection.fold((0usize, 0usize), |(slots, memory), l| {
            (slots + l.spec.limits.max_connections, memory.max(l.spec.limits.memory))
        });
        let pooled = match slots {
            0 => None,
            _ => Some(Arc::new(
                Runtime::pooled(u32::try_from(slots).unwrap_or(u32::MAX), memory)
                    .map_err(ServerError::Runtime)?
                    .with_cache(cache),
            )),
        };
        let mut plugins: HashMap<(PathBuf, InstanceMode), Plugin> = HashMap::new();
        let mut loaded = Vec::new();
        for listener in &config.listeners {
            let spec = &listener.spec;
            let fail = |error| ServerError::Plugin { listener: spec.name.clone(), error };
            let runtime = match spec.instance {
                InstanceMode::Shared | InstanceMode::PerWorker => &shared,
                InstanceMode::PerConnection => pooled.as_ref().expect("a pool exists when a listener needs one"),
            };
            let key = (listener.plugin.clone(), spec.instance);
            let plugin = match plugins.get(&key) {
                Some(plugin) => plugin.clone(),
                None => {
                    let load = || runtime.load(&listener.plugin);
                    let plugin = tracing::info_span!("load", listener = %spec.name).in_scope(load).map_err(fail)?;
                    plugins.insert(key, plugin.clone());
                    plugin
                }
            };
            let factory = plugin.factory(spec, &listener.settings, 1);
            factory.instantiate().map_err(fail)?;
            loaded.push((runtime.clone(), plugin, factory));
        }
        let count = config.workers;
        let (faults, fault_notices) = channel();
        let mut workers = (0..count)
            .map(|index| {
                let mut worker = Reactor::worker(index, count)?;
                worker.set_shutdown_grace(config.shutdown_grace);
                worker.report_faults(faults.clone());
                Ok(worker)
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(ServerError::Reactor)?;
        let mut records = Vec::new();
        for (index, (listener, (runtime, plugin, factory))) in config.listeners.iter().zip(loaded).enumerate() {
            let spec = &listener.spec;
            let serving = serving_workers(spec.instance, index, count);
            let mut binding =
                Binding { address: spec.address, shared_port: serving.len() > 1, slots: Slots::default() };
            for worker in serving.clone() {
                let bound = workers[worker].listen_as(spec, binding.clone(), Box::new(factory.clone()));
                // The workers after the first bind the port the first one got.
                binding.address = bound.map_err(|source| ServerError::Listen {
                    listener: spec.name.clone(),
                    address: spec.address,
                    source,
                })?;
            }
            records.push(Record::new(listener.clone(), binding.address, serving, binding.slots, runtime, plugin));
        }
        let commands = workers.iter().map(Reactor::commands).collect();
        let control = Control::new(config, shared, commands, records, fault_notices);
        info!(workers = count, "ready");
        Ok(Server { workers, control })
    }

    /// The handle through which the running server is looked at and changed (swaps,
    /// rollbacks, counts), from any thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The listeners' names and bound addresses.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.control.addresses()
    }

    /// A handle that stops [`Server::run`] (every worker) from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        let mut handles = self.workers.iter().map(Reactor::stop_handle);
        let first = handles.next().expect("a server has at least one worker");
        handles.fold(first, StopHandle::and)
    }

    /// Serve until stopped; every connection gets its CLOSE before this returns.
    /// Logs and returns what happened, added up over the workers.
    pub fn run(&mut self) -> io::Result<Stats> {
        let stop = self.stop_handle();
        // A loop that fails stops the others too, rather than leave half the listeners
        // served.
        let run = move |worker: &mut Reactor, stop: &StopHandle| {
            let result = worker.run();
            if result.is_err() {
                stop.stop();
            }
            result
        };
        let mut workers = std::mem::take(&mut self.workers).into_iter();
        let mut first = workers.next().expect("a server has at least one worker");
        let threads = workers
            .enumerate()
            .map(|(index, mut worker)| {
                let stop = stop.clone();
                let name = format!("sandport-worker-{}", index + 1);
                std::thread::Builder::new().name(name).spawn(move || run(&mut worker, &stop))
            })
            .collect::<io::Result<Vec<_>>>()?;
        self.control.set_running(true);
        let mut result = run(&mut first, &stop);
        for thread in threads {
            let stats = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = match (result, stats) {
                (Ok(mine), Ok(theirs)) => Ok(mine.merge(theirs)),
                (Err(err), _) | (_, Err(err)) => Err(err),
            };
        }
        self.control.set_running(false);
        if let Ok(stats) = &mut result {
            // In the config's order, whichever worker saw a listener first.
            let addrs = self.control.addresses();
            let order = |name: &str| addrs.iter().position(|(listener, _)| listener == name);
            stats.listeners.sort_by_key(|(name, _)| order(name));
            stats.log();
        }
        result
    }
}

/// The workers that serve listener `index` (each with a socket of its own): a shared
/// listener one, dealt out in turn, so its state does not split; the others all.
pub(crate) fn serving_workers(instance: InstanceMode, index: usize, workers: usize) -> Range<usize> {
    match instance {
        InstanceMode::Shared => index % workers..index % workers + 1,
        InstanceMode::PerWorker | InstanceMode::PerConnection => 0..workers,
    }
}

/// Lift the soft limit on open descriptors to the hard one, log how many connections
/// that leaves room for, and warn when the listeners' `max-connections` add up to
/// more: past the limit, connections are accepted and closed at once.
fn check_descriptors(config: &Config) {
    let workers = config.workers as u64;
    let limit = match descriptors::raise_limit() {
        Ok(limit) => limit,
        Err(err) => return warn!("cannot raise the limit on open descriptors: {err}"),
    };
    let listeners = config.listeners.iter().enumerate();
    let sockets: u64 =
        listeners.map(|(index, l)| serving_workers(l.spec.instance, index, config.workers).len() as u64).sum();
    let room = limit.saturating_sub(OWN_DESCRIPTORS + WORKER_DESCRIPTORS * workers + sockets);
    let wanted: u64 = config.listeners.iter().map(|l| l.spec.limits.max_connections as u64).sum();
    info!(limit, connections = room, "open descriptors: up to {limit}, room for {room} connections");
    if wanted > room {
        warn!(
            limit,
            connections = room,
            max_connections = wanted,
            "the listeners' max-connections add up to {wanted}, more than the {room} connections the descriptor \
             limit leaves room for; past that, new connections are accepted and closed at once (raise the hard \
             limit, e.g. LimitNOFILE= in a systemd unit)"
        );
    }
}
