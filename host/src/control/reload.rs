//! Listeners coming and going: the one way a listener starts serving, at start-up
//! ([`Control::start`]) and when a reload adds it, and [`Control::reload`], which
//! applies a re-read config file (listeners added, retired, or given a new version).
//!
//! Starting is two steps. [`Control::prepare`] touches no worker: the engine the
//! instance mode takes, the plugin read and compiled, one instance started.
//! [`Control::bind`] binds the socket on the workers the instance mode places the
//! listener on, and records it. A new listener is not pre-flighted: a pre-flight
//! decides between two versions, and a new listener has no old one to keep serving.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::channel;

use tracing::{info, info_span, warn};

use super::artifacts::Patience;
use super::{Control, Record, Route, SwapReport, sites};
use crate::config::Config;
use crate::listener::{InstanceMode, ListenerSpec, Recycle, Workers};
use crate::plugin::{self, Plugin, PluginError, PluginFactory, Pooling, Runtime, content_hash};
use crate::reactor::{Binding, Command, Slots};

/// What a reload of the config file changed.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Listeners new in the file, now listening.
    pub added: Vec<String>,
    /// Listeners gone from the file: no longer listening, their connections draining.
    pub removed: Vec<String>,
    /// Listeners whose plugin, limits or settings changed: what became of each swap.
    pub swapped: Vec<SwapReport>,
    /// Listeners whose TLS changed: a certificate rotated, new server names, ALPN or
    /// client CA.
    pub tls: Vec<String>,
    /// Listeners the reload could not add or rebind, or whose new certificate or TLS
    /// settings were refused (the old ones serve), and why.
    pub failed: Vec<(String, String)>,
    /// Settings that changed in the file but take a restart (e.g. `workers`).
    pub need_restart: Vec<String>,
}

/// Why a listener could not be added, at start-up or by a reload.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// Its plugin is unusable (the message names the file).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Its address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Its certificate, key or an upstream's CA could not be loaded (the message names
    /// the file and why).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Its plugin could not be pulled from its registry (the message names the
    /// reference and why).
    #[error(transparent)]
    Pull(#[from] crate::oci::OciError),
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
}

/// A listener ready to bind: its engine, its plugin and the factory of its instances.
struct Prepared {
    /// The listener's spec, with its plugin file once pulled from a registry.
    spec: ListenerSpec,
    runtime: Arc<Runtime>,
    plugin: Plugin,
    factory: PluginFactory,
    tls: sites::Loaded,
}

impl Control {
    /// Apply a re-read config file: listeners gone from it stop listening (their
    /// connections drain), new ones start, changed ones get the new plugin, limits and
    /// settings through a swap (a new address or instance mode: the listener is
    /// bound anew). Unchanged listeners are left alone.
    pub fn reload(&self, config: &Config) -> ReloadReport {
        let _one = self.inner.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        let started = &self.inner.started;
        if config.workers != started.workers {
            report.need_restart.push("workers".into());
        }
        if config.cache_dir != started.cache_dir {
            report.need_restart.push("cache-dir".into());
        }
        if config.log_format != started.log_format {
            report.need_restart.push("log-format".into());
        }
        if config.admin != started.admin {
            report.need_restart.push("admin".into());
        }
        // The registry client is made once, at start, from these settings.
        if config.oci != started.oci {
            report.need_restart.push("oci".into());
        }
        let wanted = |name: &str| config.listeners.iter().find(|l| l.name == name);
        let gone: Vec<String> = self
            .records()
            .iter()
            .filter(|r| {
                wanted(r.name()).is_none_or(|l| {
                    l.address != r.spec.address
                        || l.instance != r.spec.instance
                        || sites::routed(l) != sites::routed(&r.spec)
                })
            })
            .map(|r| r.name().to_owned())
            .collect();
        for name in &gone {
            self.retire(name);
            if wanted(name).is_none() {
                report.removed.push(name.clone());
            }
        }
        for (index, spec) in config.listeners.iter().enumerate() {
            let name = &spec.name;
            let current = self.with_record(name, |r| {
                (r.spec.clone(), r.current().hash.clone(), r.current().path.clone(), r.runtime.clone())
            });
            match current {
                Err(_) => match self.prepare(spec, Patience::Once).and_then(|prepared| self.bind(index, prepared)) {
                    Ok(()) => report.added.push(name.clone()),
                    Err(err) => {
                        warn!(listener = %name, "cannot add the listener: {err}");
                        report.failed.push((name.clone(), err.to_string()));
                    }
                },
                Ok((old, hash, serving, runtime)) => {
                    let spec = &match self.refetch(spec, &old, serving.as_deref().unwrap_or(&old.plugin)) {
                        Ok(spec) => spec,
                        Err(err) => {
                            warn!(listener = %name, "the listener's new plugin reference is refused, the old one serves: {err}");
                            report.failed.push((name.clone(), err.to_string()));
                            continue;
                        }
                    };
                    if old.artifact != spec.artifact {
                        self.track(spec);
                    }
                    let bytes = plugin::read_component(&spec.plugin);
                    let same_file = bytes.as_ref().is_ok_and(|b| content_hash(b) == hash);
                    if sites::tls_part(&old) != sites::tls_part(spec) {
                        match self.retarget(spec) {
                            Ok(()) => report.tls.push(name.clone()),
                            Err(err) => {
                                warn!(listener = %name, "the listener's new TLS settings are refused, the old ones serve: {err}");
                                report.failed.push((name.clone(), err.to_string()));
                                continue;
                            }
                        }
                    } else {
                        match self.reload_certificate(name) {
                            Ok(true) => report.tls.push(name.clone()),
                            Ok(false) => {}
                            Err(err) => report.failed.push((name.clone(), err.to_string())),
                        }
                    }
                    if sites::without_tls(&old) == sites::without_tls(spec) && same_file {
                        continue;
                    }
                    let span = info_span!("load", listener = %name);
                    let loaded =
                        bytes.and_then(|bytes| span.in_scope(|| runtime.load_bytes(&bytes, Some(&spec.plugin))));
                    let swapped = match loaded {
                        Ok(plugin) => self.install(spec.clone(), plugin, Some(spec.plugin.clone()), Route::Reload),
                        Err(err) => self.refuse(name, err.into()),
                    };
                    report.swapped.extend(swapped.ok());
                }
            }
        }
        let order = |r: &Record| config.listeners.iter().position(|l| l.name == r.name());
        self.records().sort_by_key(order);
        info!(
            added = report.added.len(),
            removed = report.removed.len(),
            swapped = report.swapped.iter().filter(|s| s.took_over).count(),
            refused = report.swapped.iter().filter(|s| !s.took_over).count() + report.failed.len(),
            "config reloaded"
        );
        if !report.need_restart.is_empty() {
            warn!("changed settings that take a restart to apply: {}", report.need_restart.join(", "));
        }
        report
    }

    /// Stop listening for `name` on its workers and forget its record; its connections
    /// drain.
    fn retire(&self, name: &str) {
        let Ok((workers, spec)) = self.with_record(name, |r| (r.workers.clone(), r.spec.clone())) else { return };
        if sites::routed(&spec) {
            // New connections stop coming first; the others on the address never notice.
            let records = self.records();
            self.rebuild_site(&records, &sites::key_of(&spec), Some(name));
        }
        self.stop_listening(name, workers);
        self.records().retain(|r| r.name() != name);
        if let Some(artifacts) = &self.inner.artifacts {
            artifacts.forget(name);
        }
    }

    /// Tell `workers` to stop listening for `name`, and wait until they have.
    fn stop_listening(&self, name: &str, workers: Workers) {
        let answers: Vec<_> = workers
            .filter_map(|worker| {
                let (reply, answer) = channel();
                self.inner.workers[worker].send(Command::Retire { listener: name.to_owned(), reply }).then_some(answer)
            })
            .collect();
        for answer in answers {
            let _ = answer.recv();
        }
    }

    /// Start serving `listeners`, the config's, at start-up: each one
    /// [prepared](Self::prepare) (all at once, each compile and first instance on a
    /// thread of its own), then [bound](Self::bind) in config order. The first that
    /// fails is the error, with its listener's name; those bound before it are left to
    /// the caller to stop with the workers.
    pub(crate) fn start(&self, listeners: &[ListenerSpec]) -> Result<(), (String, AddError)> {
        let bound = std::thread::scope(|scope| {
            let (done, prepared) = channel();
            for (index, spec) in listeners.iter().enumerate() {
                let done = done.clone();
                scope.spawn(move || {
                    // Only a failed start drops the receiver early, and then it is moot.
                    let _ = done.send((index, self.prepare(spec, Patience::Start)));
                });
            }
            drop(done);
            // Bound as each is ready, so that a listener waiting for its registry keeps
            // no other from serving; the first failure is the error all the same.
            let mut failed = None;
            for (index, prepared) in prepared {
                let spec = &listeners[index];
                let bound = prepared.and_then(|prepared| self.bind(index, prepared));
                if let Err(err) = bound {
                    failed = failed.or(Some((index, spec.name.clone(), err)));
                }
            }
            failed
        });
        let order = |r: &Record| listeners.iter().position(|l| l.name == r.name());
        self.records().sort_by_key(order);
        match bound {
            Some((_, name, err)) => Err((name, err)),
            None => Ok(()),
        }
    }

    /// The first steps of starting listener `spec`, which touch no worker: the engine
    /// its instance mode takes, its plugin read and compiled (or taken from the cache),
    /// and one instance started to see that it can be.
    fn prepare(&self, spec: &ListenerSpec, patience: Patience) -> Result<Prepared, AddError> {
        let spec = &self.fetch(spec, patience)?;
        let runtime = match spec.instance {
            InstanceMode::Shared | InstanceMode::PerWorker => self.inner.runtime.clone(),
            InstanceMode::PerConnection => {
                // Beyond a slot per connection: one for a new version's pre-flight, and
                // the fresh instances recycling may have in the making (a reload may turn
                // it on), so that a full listener can still do both. A migration takes
                // a slot per connection it moves from these spare ones too.
                let spare = 1 + Recycle::IN_FLIGHT * self.inner.started.workers;
                let slots = u32::try_from(spec.limits.max_connections.saturating_add(spare)).unwrap_or(u32::MAX);
                let pooled = Runtime::pooled(slots, spec.limits.memory, Pooling::default())?;
                Arc::new(pooled.with_cache(self.inner.started.cache_dir.as_deref()))
            }
        };
        let tls = sites::load(spec)?;
        let plugin = info_span!("load", listener = %spec.name).in_scope(|| runtime.load(&spec.plugin))?;
        let factory = plugin.factory(spec, 1);
        factory.instantiate()?;
        Ok(Prepared { spec: spec.clone(), runtime, plugin, factory, tls })
    }

    /// The last step of starting listener `spec`, the `index`th of the config: bind
    /// its socket on every worker its instance mode places it on (the first picks the
    /// port when the config says 0; the others share it), and record it. A worker
    /// that cannot bind undoes the ones before it.
    fn bind(&self, index: usize, prepared: Prepared) -> Result<(), AddError> {
        let spec = &prepared.spec;
        let serving = spec.instance.workers(index, self.inner.workers.len());
        let routed = sites::routed(spec);
        let address = match routed {
            true => self.open_site(spec).map_err(|source| AddError::Listen { address: spec.address, source })?,
            false => spec.address,
        };
        let mut binding = Binding {
            address,
            shared_port: serving.len() > 1,
            routed,
            upstreams: prepared.tls.upstreams,
            slots: Slots::default(),
        };
        for worker in serving.clone() {
            let (reply, answer) = channel();
            let command = Command::Listen {
                spec: spec.clone(),
                binding: binding.clone(),
                version: 1,
                factory: Box::new(prepared.factory.clone()),
                reply,
            };
            if !self.inner.workers[worker].send(command) {
                return Err(AddError::Stopping);
            }
            let bound = answer.recv().map_err(|_| AddError::Stopping)?;
            binding.address = bound.map_err(|source| {
                self.stop_listening(&spec.name, serving.start..worker);
                AddError::Listen { address: spec.address, source }
            })?;
        }
        info!(listener = %spec.name, address = %binding.address, "listener added");
        let mut record =
            Record::new(spec.clone(), binding.address, serving, binding.slots, prepared.runtime, prepared.plugin);
        record.tls = prepared.tls.server;
        let mut records = self.records();
        records.push(record);
        if routed {
            self.rebuild_site(&records, &sites::key_of(spec), None);
        }
        drop(records);
        self.track(spec);
        Ok(())
    }
}
