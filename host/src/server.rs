//! A server built from a [`Config`]: the workers started, every listener added through
//! the control surface, ready to [`run`](Server::run).
//!
//! This is where the event loops are started and joined, and nothing else: one
//! [`Reactor`] per thread, sharing nothing on the path of a message. Listeners are
//! added the one way there is, `Control::start`, which a reload uses too (compile,
//! check, start an instance, bind on the workers its instance mode places it on), so a
//! bad plugin or a busy port is reported before the server is handed back, in the
//! words a reload would use.
//!
//! It also lifts the soft limit on open descriptors to the hard one, and says what
//! that lets the listeners hold.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::channel;
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::config::Config;
use crate::control::{AddError, Artifacts, Control};
use crate::plugin::{PluginError, Runtime};
use crate::reactor::descriptors;
use crate::reactor::{Reactor, Stats, StopHandle};

/// Descriptors the server holds besides its workers, listeners and connections:
/// stdio, the signal thread's, wasmtime's (with room to spare).
const OWN_DESCRIPTORS: u64 = 32;

/// Descriptors each worker holds: its poll instance, its waker, and the spare kept
/// for when descriptors run out.
const WORKER_DESCRIPTORS: u64 = 3;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be added: its plugin is unusable or its address taken.
    #[error("listener `{listener}`: {error}")]
    Listener {
        /// The listener's name.
        listener: String,
        /// What went wrong: in the message, so not also its source (which a report
        /// of the error's chain would print a second time).
        error: AddError,
    },
    /// The plugin engine could not start.
    #[error(transparent)]
    Runtime(PluginError),
    /// The registry client of `[oci]` could not be made.
    #[error("cannot set up the registry client: {0}")]
    Registry(crate::oci::OciError),
    /// An event loop could not be created or started.
    #[error("cannot start the event loops: {0}")]
    Reactor(io::Error),
}

/// Workers running, listeners bound, plugins instantiated: serving, until
/// [`run`](Server::run) returns.
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
    /// One per worker, each on a thread of its own.
    threads: Vec<JoinHandle<io::Result<Stats>>>,
    stop: StopHandle,
    control: Control,
}

impl Server {
    /// Raise the descriptor limit, start the workers, then add every listener (its
    /// plugin compiled once per engine, an instance started, bound on its workers).
    /// A listener that cannot be added stops the workers again and is the error.
    pub fn new(config: &Config) -> Result<Server, ServerError> {
        check_descriptors(config);
        let runtime = Runtime::new().map_err(ServerError::Runtime)?.with_cache(config.cache_dir.as_deref());
        let artifacts = config.oci.as_ref().map(Artifacts::new).transpose().map_err(ServerError::Registry)?;
        let (faults, fault_notices) = channel();
        let count = config.workers;
        let workers = (0..count)
            .map(|index| {
                let mut worker = Reactor::worker(index, count)?;
                worker.set_shutdown_grace(config.shutdown_grace);
                worker.report_faults(faults.clone());
                Ok(worker)
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(ServerError::Reactor)?;
        let commands: Vec<_> = workers.iter().map(Reactor::commands).collect();
        let mut workers = workers;
        for worker in &mut workers {
            worker.set_peers(commands.clone());
        }
        let stop = workers.iter().map(Reactor::stop_handle).reduce(StopHandle::and).expect("at least one worker");
        let mut server = Server {
            threads: Vec::new(),
            stop: stop.clone(),
            control: Control::new(config, runtime, commands, fault_notices, artifacts),
        };
        for (index, mut worker) in workers.into_iter().enumerate() {
            let stop = stop.clone();
            // A loop that fails stops the others too, rather than leave half the
            // listeners served.
            let run = move || {
                let result = worker.run();
                if result.is_err() {
                    stop.stop();
                }
                result
            };
            let thread = std::thread::Builder::new().name(format!("sandport-worker-{index}")).spawn(run);
            match thread {
                Ok(thread) => server.threads.push(thread),
                Err(err) => {
                    server.halt();
                    return Err(ServerError::Reactor(err));
                }
            }
        }
        if let Err((listener, error)) = server.control.start(&config.listeners) {
            server.halt();
            return Err(ServerError::Listener { listener, error });
        }
        server.control.set_running(true);
        Ok(server)
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
        self.stop.clone()
    }

    /// Serve until stopped; every connection gets its CLOSE before this returns.
    /// Logs and returns what happened, added up over the workers.
    pub fn run(&mut self) -> io::Result<Stats> {
        let mut result = self.join();
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

    /// Wait for every worker and add up what they did; the first error wins.
    fn join(&mut self) -> io::Result<Stats> {
        let mut result = Ok(Stats::default());
        for thread in self.threads.drain(..) {
            let stats = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = match (result, stats) {
                (Ok(mine), Ok(theirs)) => Ok(mine.merge(theirs)),
                (Err(err), _) | (_, Err(err)) => Err(err),
            };
        }
        result
    }

    /// Stop the workers and wait for them, for a server that will never run.
    fn halt(&mut self) {
        self.stop.stop();
        let _ = self.join();
    }
}

impl Drop for Server {
    /// A server dropped without [`run`](Server::run) stops its workers first.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.halt();
        }
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
    let sockets: u64 = listeners.map(|(index, l)| l.instance.workers(index, config.workers).len() as u64).sum();
    let room = limit.saturating_sub(OWN_DESCRIPTORS + WORKER_DESCRIPTORS * workers + sockets);
    let wanted: u64 = config.listeners.iter().map(|l| l.limits.max_connections as u64).sum();
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
