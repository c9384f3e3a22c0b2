//! A server built from a [`Config`]: plugins compiled and bound to their listeners.
//!
//! This is the glue between configuration, plugins and the reactor. It does all the
//! fallible work up front (read, compile, check, start one instance, bind) so a bad
//! plugin or a busy port is reported before anything serves, and then hands over to
//! the [`Reactor`]. Listeners with shared instances use an on-demand engine;
//! listeners with an instance per connection share a pooled one, sized from their
//! `max-connections` and `memory` limits. It also lifts the soft limit on open
//! descriptors to the hard one, and says what that lets the listeners hold.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tracing::{info, warn};

use crate::config::{Config, InstanceMode};
use crate::descriptors;
use crate::plugin::{Plugin, PluginError, Runtime};
use crate::reactor::{Reactor, Stats, StopHandle};

/// Descriptors the server holds besides its listeners and connections: stdio, the
/// poll instance and its waker, the spare kept for when descriptors run out, and
/// those of wasmtime and the signal thread (13 measured, with room to spare).
const OWN_DESCRIPTORS: u64 = 32;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's plugin is unusable.
    #[error("listener `{listener}`: {source}")]
    Plugin {
        /// The listener's name.
        listener: String,
        /// What is wrong with its plugin.
        source: PluginError,
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
    reactor: Reactor,
}

impl Server {
    /// Raise the descriptor limit, compile every listener's plugin (each file once
    /// per engine), check that an instance starts, then bind every listener.
    pub fn new(config: &Config) -> Result<Server, ServerError> {
        check_descriptors(config);
        let shared = Runtime::new().map_err(ServerError::Runtime)?;
        let per_connection = config.listeners.iter().filter(|l| l.spec.instance == InstanceMode::PerConnection);
        let (slots, memory) = per_connection.fold((0usize, 0usize), |(slots, memory), l| {
            (slots + l.spec.limits.max_connections, memory.max(l.spec.limits.memory))
        });
        let pooled = match slots {
            0 => None,
            _ => Some(Runtime::pooled(u32::try_from(slots).unwrap_or(u32::MAX), memory).map_err(ServerError::Runtime)?),
        };
        let mut plugins: HashMap<(PathBuf, InstanceMode), Plugin> = HashMap::new();
        let mut factories = Vec::new();
        for listener in &config.listeners {
            let spec = &listener.spec;
            let fail = |source| ServerError::Plugin { listener: spec.name.clone(), source };
            let runtime = match spec.instance {
                InstanceMode::Shared => &shared,
                InstanceMode::PerConnection => pooled.as_ref().expect("a pool exists when a listener needs one"),
            };
            let key = (listener.plugin.clone(), spec.instance);
            let plugin = match plugins.get(&key) {
                Some(plugin) => plugin.clone(),
                None => {
                    let plugin = runtime.load(&listener.plugin).map_err(fail)?;
                    plugins.insert(key, plugin.clone());
                    plugin
                }
            };
            let factory = plugin.factory(spec, &listener.settings);
            factory.instantiate().map_err(fail)?;
            factories.push(factory);
        }
        let mut reactor = Reactor::new().map_err(ServerError::Reactor)?;
        for (listener, factory) in config.listeners.iter().zip(factories) {
            let spec = &listener.spec;
            reactor.listen(spec, Box::new(factory)).map_err(|source| ServerError::Listen {
                listener: spec.name.clone(),
                address: spec.address,
                source,
            })?;
        }
        Ok(Server { reactor })
    }

    /// The listeners' names and bound addresses.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.reactor.local_addrs()
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.reactor.stop_handle()
    }

    /// Serve until stopped; every connection gets its CLOSE before this returns.
    pub fn run(&mut self) -> io::Result<Stats> {
        self.reactor.run()
    }
}

/// Lift the soft limit on open descriptors to the hard one, log how many connections
/// that leaves room for, and warn when the listeners' `max-connections` add up to
/// more: past the limit, connections are accepted and closed at once.
fn check_descriptors(config: &Config) {
    let limit = match descriptors::raise_limit() {
        Ok(limit) => limit,
        Err(err) => return warn!("cannot raise the limit on open descriptors: {err}"),
    };
    let listeners = config.listeners.len() as u64;
    let room = limit.saturating_sub(OWN_DESCRIPTORS + listeners);
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
