//! The running server's control surface: what the admin API, SIGHUP and the file
//! watcher use to look at listeners and to replace their plugins.
//!
//! A [`Control`] is a cheap handle (clone it into any thread). It compiles and checks
//! new versions on the calling thread, never on an event loop, and reaches the
//! workers only through their command queues, so a slow compile or a slow reader of
//! `/metrics` never holds up a message.
//!
//! This module owns the version history of every listener. It never touches a socket
//! or a guest: swapping is the workers' job (see `reactor`), compiling the plugin
//! module's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::config::{InstanceMode, Limits};
use crate::reactor::Counts;

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

/// A control request that names nothing to act on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No listener has this name.
    #[error("no listener is named `{0}`")]
    UnknownListener(String),
    /// A rollback was asked for a listener that has had only one version.
    #[error("listener `{0}` has no previous version to roll back to")]
    NoPreviousVersion(String),
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
}
