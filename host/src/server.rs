//! A server built from a [`Config`]: plugins compiled and bound to their listeners.
//!
//! This is the glue between configuration, plugins and the reactor. It does all the
//! fallible work up front (read, compile, check, start one instance, bind) so a bad
//! plugin or a busy port is reported before anything serves, and then hands over to
//! the [`Reactor`]. Listeners with shared instances use an on-demand engine;
//! listeners with an instance per connection share a pooled one, sized from their
//! `max-connections` and `memory` limits.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, InstanceMode};
use crate::plugin::{Plugin, PluginError, Runtime};
use crate::reactor::{Reactor, Stats, StopHandle};

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
    /// Compile every listener's plugin (each file once per engine), check that an
    /// instance starts, then bind every listener.
    pub fn new(config: &Config) -> Result<Server, ServerError> {
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
