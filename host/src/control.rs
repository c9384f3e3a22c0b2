//! The running server's control surface: what the admin API, SIGHUP and the file
//! watcher use to look at listeners and to replace their plugins.
//!
//! A [`Control`] is a cheap handle (clone it into any thread). It compiles and checks
//! new versions on the calling thread, never on an event loop, and reaches the
//! workers only through their command queues, so a slow compile or a slow reader of
//! `/metrics` never holds up a message.
//!
//! This module owns the version history of every listener and the three routes to a
//! new version: [`Control::swap`] (the admin API), [`Control::reload`] (SIGHUP; with
//! the one way a listener starts, in `reload`) and [`Control::plugin_file_changed`]
//! (the watcher, in `follow`). A new version must pass a pre-flight (`preflight`)
//! before it takes over. It never touches a socket or a guest: serving is the
//! workers' job (see `reactor`), compiling the plugin module's.

mod artifacts;
mod follow;
mod preflight;
mod reload;
mod sites;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tracing::{info, info_span, warn};

use crate::config::Config;
use crate::listener::{InstanceMode, Limits, ListenerSpec, Recycle, Workers};
use crate::plugin::{Plugin, PluginError, PluginFactory, Runtime};
use crate::reactor::{Command, Commands, Counts, FaultNotice, GateCounts, Slots, Swapped, Tallies};

pub use artifacts::ArtifactStatus;
pub(crate) use artifacts::Artifacts;
pub use follow::{pem_hash, watched, watched_certificates};
pub use preflight::PreflightError;
pub(crate) use preflight::preflight;
pub use reload::{AddError, ReloadReport};

/// Versions whose compiled plugin is kept for a rollback; older ones keep only their
/// history entry (so memory stays flat however many swaps there are).
const KEPT_PLUGINS: usize = 4;

/// History entries kept per listener.
const KEPT_HISTORY: usize = 32;

/// Where a new version of a plugin comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A component file on this machine (read when the swap starts).
    File(PathBuf),
    /// A component's bytes (an upload to the admin API).
    Bytes(Vec<u8>),
}

/// One version of a listener's plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// 1 for the version the server started with, then one more for each version
    /// that took over (a rollback takes a new number too).
    pub number: u64,
    /// The component's content hash (SHA-256, lowercase hex).
    pub hash: String,
    /// The file it came from; `None` for bytes uploaded through the API.
    pub path: Option<PathBuf>,
    /// When it took over.
    pub since: SystemTime,
    /// Whether it carries connections over to a next version (exports `migrate`).
    pub migrates: bool,
}

/// A listener as it is now.
#[derive(Debug, Clone)]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// How its connections share instances.
    pub instance: InstanceMode,
    /// The workers that serve it.
    pub workers: Vec<usize>,
    /// Its limits.
    pub limits: Limits,
    /// When its instances are replaced by fresh ones.
    pub recycle: Recycle,
    /// The versions that served it, oldest first; the last one serves new connections.
    pub history: Vec<Version>,
    /// Connections open now, on every version.
    pub open: u64,
    /// What happened on it so far, added up over its workers and versions.
    pub counts: Counts,
    /// Versions that took over (by any route, rollbacks included).
    pub swaps: u64,
    /// Versions refused: they failed to read, compile, link or pass the pre-flight.
    pub failed_swaps: u64,
    /// Versions replaced by the one before them: by the operator, or because they
    /// faulted too often after taking over.
    pub rollbacks: u64,
    /// Why the last refused version was refused, if one was.
    pub last_error: Option<String>,
    /// The server names it serves on a shared address, and whether it is the default.
    pub server_names: Vec<String>,
    /// How it speaks TLS: `none`, `terminate` or `passthrough`.
    pub tls: &'static str,
    /// The certificate it serves, if it ends TLS.
    pub certificate: Option<crate::tls::Certificate>,
    /// Where its plugin is pulled from, if from a registry, and what was pulled.
    pub artifact: Option<ArtifactStatus>,
}

/// What became of a swap or a rollback.
#[derive(Debug, Clone)]
pub struct SwapReport {
    /// The listener.
    pub listener: String,
    /// The version serving new connections now. When the new one was refused, the
    /// old one.
    pub serving: Version,
    /// Whether the new version took over.
    pub took_over: bool,
    /// Why not, when it did not.
    pub refused: Option<String>,
    /// Connections carried over to the new version.
    pub migrated: u64,
    /// Connections left on the old version until they close (or `drain-timeout-ms`).
    pub draining: u64,
}

/// Why a new version of a running listener did not take over.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// It could not be read, compiled or linked (the message names the file).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// It failed its pre-flight.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The CA of an upstream it dials over TLS could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Moving the old version's state and connections to it was called off: a call
    /// faulted or a state was over its bound.
    #[error("its migration was called off, the old version serves every connection on: {0}")]
    Migration(String),
}

/// A control request that names nothing to act on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No listener has this name.
    #[error("no listener is named `{0}`")]
    UnknownListener(String),
    /// A rollback was asked for a listener that has had only one version.
    #[error("listener `{0}` has no previous version to roll back to")]
    NoPreviousVersion(String),
    /// A listener's certificate, key or TLS settings were refused (the old ones
    /// serve).
    #[error("listener `{0}`: {1}")]
    Tls(String, crate::tls::TlsError),
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
}

/// A handle on the running server's listeners: look at them, swap their plugins, roll
/// them back. Clone it freely; every clone is the same server.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    /// One per worker, by index.
    workers: Vec<Commands>,
    /// The settings the server started with that only a restart changes.
    started: Config,
    /// The engine of shared and per-worker listeners (per-connection ones each have a
    /// pooled engine of their own).
    runtime: Arc<Runtime>,
    /// Every listener's record, in config order.
    listeners: Mutex<Vec<Record>>,
    /// Held for the whole of a swap or rollback: one at a time, so versions are
    /// numbered in the order they take over and two swaps never interleave.
    swapping: Mutex<()>,
    /// The workers are serving (set by the server when it runs, cleared when it stops).
    running: AtomicBool,
    /// The addresses that route, and the rule each follows.
    sites: Mutex<std::collections::HashMap<sites::SiteKey, sites::SiteEntry>>,
    /// The registry client, if a listener's plugin may come from one.
    artifacts: Option<Artifacts>,
}

/// What the control surface knows of one listener.
pub(crate) struct Record {
    /// Its configuration as it is now (a swap through the API keeps it; a reload may
    /// change it).
    pub spec: ListenerSpec,
    /// The address its sockets are bound to.
    pub address: SocketAddr,
    /// The workers that serve it.
    pub workers: Workers,
    /// Its connection slots, which also tell how many are open.
    pub slots: Slots,
    /// The engine its versions are compiled for.
    pub runtime: Arc<Runtime>,
    /// The certificate it serves, if it ends TLS.
    pub tls: Option<crate::tls::ServerTls>,
    history: Vec<Entry>,
    swaps: u64,
    failed_swaps: u64,
    rollbacks: u64,
    last_error: Option<String>,
    /// When the current version took over, and its faults since (for the automatic
    /// rollback).
    swapped_at: Option<Instant>,
    faults_since: u64,
}

/// One version in a listener's history.
struct Entry {
    version: Version,
    /// Kept for the last [`KEPT_PLUGINS`] versions, so a rollback needs no compile.
    plugin: Option<Plugin>,
    /// Replaced by a rollback: never the target of another.
    rolled_back: bool,
}

impl Record {
    /// The record of a listener serving its first version, `plugin`.
    fn new(
        spec: ListenerSpec,
        address: SocketAddr,
        workers: Workers,
        slots: Slots,
        runtime: Arc<Runtime>,
        plugin: Plugin,
    ) -> Record {
        let version = Version {
            number: 1,
            hash: plugin.hash().to_owned(),
            path: Some(spec.plugin.clone()),
            since: SystemTime::now(),
            migrates: plugin.migrates(),
        };
        Record {
            spec,
            address,
            workers,
            slots,
            runtime,
            tls: None,
            history: vec![Entry { version, plugin: Some(plugin), rolled_back: false }],
            swaps: 0,
            failed_swaps: 0,
            rollbacks: 0,
            last_error: None,
            swapped_at: None,
            faults_since: 0,
        }
    }

    fn current(&self) -> &Version {
        &self.history.last().expect("a listener has a version").version
    }

    fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Where a version comes from, for the log.
#[derive(Debug, Clone, Copy)]
enum Route {
    Swap,
    Reload,
    Rollback,
    AutoRollback,
}

impl Control {
    /// The control surface of workers reached through `workers`, serving no listener
    /// yet ([`Control::start`] adds those of `config`). Faults reported on `faults` may
    /// roll a new version back.
    pub(crate) fn new(
        config: &Config,
        runtime: Runtime,
        workers: Vec<Commands>,
        faults: Receiver<FaultNotice>,
        artifacts: Option<Artifacts>,
    ) -> Control {
        let control = Control {
            inner: Arc::new(Inner {
                workers,
                started: config.clone(),
                runtime: Arc::new(runtime),
                listeners: Mutex::new(Vec::new()),
                swapping: Mutex::new(()),
                running: AtomicBool::new(false),
                sites: Mutex::new(std::collections::HashMap::new()),
                artifacts,
            }),
        };
        let watcher = control.clone();
        let spawned =
            std::thread::Builder::new().name("sandport-rollback".into()).spawn(move || watcher.watch_faults(faults));
        if let Err(err) = spawned {
            warn!("cannot start the thread that rolls back faulting versions: {err}; automatic rollback is off");
        }
        control
    }

    /// Every listener's name and bound address, in config order.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.records().iter().map(|r| (r.name().to_owned(), r.address)).collect()
    }

    /// The version serving `listener`'s new connections, without asking the workers.
    pub fn serving(&self, listener: &str) -> Option<Version> {
        self.with_record(listener, |r| r.current().clone()).ok()
    }

    /// Every listener as it is now, in config order.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.status().0
    }

    /// Every listener as it is now, in config order, and what happened at each address
    /// that routes before its connections reached a listener.
    pub fn status(&self) -> (Vec<ListenerStatus>, Vec<(SocketAddr, GateCounts)>) {
        let (counts, gates) = self.gather();
        let mut addresses: Vec<(SocketAddr, GateCounts)> = Vec::new();
        for (address, c) in gates {
            match addresses.iter_mut().find(|(a, _)| *a == address) {
                Some((_, sum)) => sum.add(&c),
                None => addresses.push((address, c)),
            }
        }
        let records = self.records();
        let listeners = records
            .iter()
            .map(|r| {
                let mut total = Counts::default();
                for (_, c) in counts.iter().filter(|(name, _)| name == r.name()) {
                    total.add(c);
                }
                ListenerStatus {
                    name: r.name().to_owned(),
                    address: r.address,
                    instance: r.spec.instance,
                    workers: r.workers.clone().collect(),
                    limits: r.spec.limits.clone(),
                    recycle: r.spec.recycle,
                    history: r.history.iter().map(|e| e.version.clone()).collect(),
                    open: r.slots.taken() as u64,
                    counts: total,
                    swaps: r.swaps,
                    failed_swaps: r.failed_swaps,
                    rollbacks: r.rollbacks,
                    last_error: r.last_error.clone(),
                    server_names: r.spec.server_names.clone(),
                    tls: match r.spec.tls {
                        None => "none",
                        Some(crate::listener::Tls::Terminate(_)) => "terminate",
                        Some(crate::listener::Tls::Passthrough) => "passthrough",
                    },
                    certificate: r.tls.as_ref().map(crate::tls::ServerTls::certificate),
                    artifact: r.spec.artifact.as_ref().zip(self.inner.artifacts.as_ref()).map(
                        |(artifact, artifacts)| artifacts.status(r.name(), artifact, &r.current().hash, r.rollbacks),
                    ),
                }
            })
            .collect();
        (listeners, addresses)
    }

    /// Compile, link and pre-flight a new version of `listener`'s plugin, then make it
    /// serve new connections on every worker. The report says whether it took over or
    /// why not; `Err` only when there is no such listener or the server is stopping.
    pub fn swap(&self, listener: &str, source: Source) -> Result<SwapReport, ControlError> {
        let _one = self.inner.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let (spec, runtime) = self.with_record(listener, |r| (r.spec.clone(), r.runtime.clone()))?;
        let span = info_span!("load", listener = %listener);
        let (loaded, path) = match source {
            Source::File(path) => (span.in_scope(|| runtime.load(&path)), Some(path)),
            Source::Bytes(bytes) => (span.in_scope(|| runtime.load_bytes(&bytes, None)), None),
        };
        match loaded {
            Ok(plugin) => self.install(spec, plugin, path, Route::Swap),
            Err(err) => self.refuse(listener, err.into()),
        }
    }

    /// Put back the version before the current one (skipping those rolled back), and
    /// count the rollback.
    pub fn rollback(&self, listener: &str) -> Result<SwapReport, ControlError> {
        self.roll_back(listener, Route::Rollback)
    }

    /// Whether every worker is serving.
    pub fn ready(&self) -> bool {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// The server's workers started (true) or stopped (false) serving.
    pub(crate) fn set_running(&self, running: bool) {
        self.inner.running.store(running, Ordering::SeqCst);
        if !running && let Some(artifacts) = &self.inner.artifacts {
            artifacts.stop_following();
        }
    }

    fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.inner.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_record<T>(&self, listener: &str, f: impl FnOnce(&mut Record) -> T) -> Result<T, ControlError> {
        let mut records = self.records();
        let record = records.iter_mut().find(|r| r.name() == listener);
        record.map(f).ok_or_else(|| ControlError::UnknownListener(listener.to_owned()))
    }

    /// Every worker's counts, by listener name, and by routing address.
    fn gather(&self) -> Tallies {
        let replies: Vec<_> = self
            .inner
            .workers
            .iter()
            .filter_map(|worker| {
                let (reply, answer) = channel();
                worker.send(Command::Snapshot { reply }).then_some(answer)
            })
            .collect();
        let mut all = (Vec::new(), Vec::new());
        for (listeners, gates) in replies.into_iter().filter_map(|answer| answer.recv().ok()) {
            all.0.extend(listeners);
            all.1.extend(gates);
        }
        all
    }

    fn roll_back(&self, listener: &str, route: Route) -> Result<SwapReport, ControlError> {
        let _one = self.inner.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.with_record(listener, |r| {
            let current = r.history.len() - 1;
            let earlier = r.history[..current].iter().rev().find(|e| !e.rolled_back && e.plugin.is_some());
            earlier.map(|e| (e.plugin.clone().expect("found with a plugin"), e.version.path.clone(), r.spec.clone()))
        })?;
        let Some((plugin, path, spec)) = target else {
            return Err(ControlError::NoPreviousVersion(listener.to_owned()));
        };
        self.install(spec, plugin, path, route)
    }

    /// Make `plugin` serve `spec`'s listener on every worker, if it passes the
    /// pre-flight.
    fn install(
        &self,
        spec: ListenerSpec,
        plugin: Plugin,
        path: Option<PathBuf>,
        route: Route,
    ) -> Result<SwapReport, ControlError> {
        let name = spec.name.clone();
        let (workers, number) = self.with_record(&name, |r| (r.workers.clone(), r.current().number + 1))?;
        let factory = plugin.factory(&spec, number);
        let upstreams = match sites::upstreams(&spec) {
            Ok(upstreams) => upstreams,
            Err(reason) => return self.refuse(&name, reason.into()),
        };
        if let Err(reason) = preflight(&spec, factory.clone()) {
            return self.refuse(&name, reason.into());
        }
        let answers = self.tell_workers(workers, &spec, &factory, number, &upstreams)?;
        if let Some(reason) = answers.iter().find_map(|(_, swapped)| swapped.refused.clone()) {
            let took_over = answers.iter().filter(|(_, swapped)| swapped.refused.is_none()).map(|(worker, _)| *worker);
            self.put_back(&name, took_over.collect())?;
            return self.refuse(&name, Refusal::Migration(reason));
        }
        let swapped = answers.into_iter().fold(Swapped::default(), |all, (_, swapped)| all.and(swapped));
        let version = Version {
            number,
            hash: plugin.hash().to_owned(),
            path,
            since: SystemTime::now(),
            migrates: plugin.migrates(),
        };
        let report = self.with_record(&name, |r| {
            if matches!(route, Route::Rollback | Route::AutoRollback) {
                r.history.last_mut().expect("a listener has a version").rolled_back = true;
                r.rollbacks += 1;
            }
            r.history.push(Entry { version: version.clone(), plugin: Some(plugin), rolled_back: false });
            let kept = r.history.len().saturating_sub(KEPT_PLUGINS);
            r.history[..kept].iter_mut().for_each(|e| e.plugin = None);
            let forgotten = r.history.len().saturating_sub(KEPT_HISTORY);
            r.history.drain(..forgotten);
            r.swaps += 1;
            r.swapped_at = Some(Instant::now());
            r.faults_since = 0;
            r.spec = spec;
            SwapReport {
                listener: name.clone(),
                serving: version.clone(),
                took_over: true,
                refused: None,
                migrated: swapped.migrated,
                draining: swapped.draining,
            }
        })?;
        info!(
            listener = %name,
            version = number,
            hash = %short(&version.hash),
            route = ?route,
            migrated = swapped.migrated,
            draining = swapped.draining,
            "version {number} took over"
        );
        Ok(report)
    }

    /// Hand version `number` (made by `factory`) to `workers`; what each did.
    fn tell_workers(
        &self,
        workers: impl IntoIterator<Item = usize>,
        spec: &ListenerSpec,
        factory: &PluginFactory,
        number: u64,
        upstreams: &[(SocketAddr, crate::tls::ClientTls)],
    ) -> Result<Vec<(usize, Swapped)>, ControlError> {
        let mut answers = Vec::new();
        for worker in workers {
            let (reply, answer) = channel();
            let command = Command::Swap {
                spec: spec.clone(),
                version: number,
                factory: Box::new(factory.clone()),
                upstreams: upstreams.to_vec(),
                reply,
            };
            if !self.inner.workers[worker].send(command) {
                return Err(ControlError::Stopping);
            }
            answers.push((worker, answer));
        }
        answers
            .into_iter()
            .map(|(worker, answer)| answer.recv().map(|swapped| (worker, swapped)).map_err(|_| ControlError::Stopping))
            .collect()
    }

    /// A new version took over on `workers` but was refused on another: put the
    /// current version back on those (their connections migrate back, or drain), so
    /// that every worker serves one version.
    fn put_back(&self, listener: &str, workers: Vec<usize>) -> Result<(), ControlError> {
        if workers.is_empty() {
            return Ok(());
        }
        let current = self.with_record(listener, |r| {
            let entry = r.history.last().expect("a listener has a version");
            entry.plugin.clone().map(|plugin| (plugin, r.spec.clone(), entry.version.number))
        })?;
        let Some((plugin, spec, number)) = current else {
            warn!(listener = %listener, "the version serving elsewhere is no longer held: workers {workers:?} keep the new one");
            return Ok(());
        };
        let upstreams = sites::upstreams(&spec).unwrap_or_default();
        let answers = self.tell_workers(workers, &spec, &plugin.factory(&spec, number), number, &upstreams)?;
        for (worker, swapped) in answers {
            if let Some(reason) = swapped.refused {
                warn!(listener = %listener, worker, "the version before could not be put back: {reason}");
            }
        }
        Ok(())
    }

    /// Record and report a version that did not take over.
    fn refuse(&self, listener: &str, refusal: Refusal) -> Result<SwapReport, ControlError> {
        warn!(listener = %listener, "new version refused, the old one goes on serving: {refusal}");
        let reason = refusal.to_string();
        self.with_record(listener, |r| {
            r.failed_swaps += 1;
            r.last_error = Some(reason.clone());
            SwapReport {
                listener: listener.to_owned(),
                serving: r.current().clone(),
                took_over: false,
                refused: Some(reason),
                migrated: 0,
                draining: 0,
            }
        })
    }

    /// Count the faults of each listener's newest version while its rollback window
    /// lasts; roll back the ones that fault more than they may.
    fn watch_faults(&self, faults: Receiver<FaultNotice>) {
        for notice in faults {
            let over = self.with_record(&notice.listener, |r| {
                let (Some(rule), Some(at)) = (r.spec.rollback, r.swapped_at) else { return None };
                if notice.version != r.current().number || at.elapsed() > rule.window {
                    return None;
                }
                r.faults_since += 1;
                (r.faults_since > rule.faults).then_some((r.faults_since, rule.window, notice.version))
            });
            let Ok(Some((faults, window, version))) = over else { continue };
            warn!(
                listener = %notice.listener,
                version,
                faults,
                "version {version} faulted {faults} times within {window:?} of taking over: rolling back"
            );
            match self.roll_back(&notice.listener, Route::AutoRollback) {
                Ok(report) if report.took_over => {}
                Ok(report) => {
                    warn!(listener = %notice.listener, "rollback refused: {}", report.refused.unwrap_or_default())
                }
                Err(err) => warn!(listener = %notice.listener, "cannot roll back: {err}"),
            }
        }
    }
}

/// The first 12 hex digits of a content hash, for the log.
pub(crate) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
