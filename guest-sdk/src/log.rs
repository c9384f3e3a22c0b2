//! Writing to the host's log.
//!
//! Lines go to the host's own log, tagged with the listener's name, rather than to a
//! WASI stream: the operator sees them next to the host's messages, with levels.
//!
//! ```no_run
//! use sandport_guest::log;
//!
//! log::info("room opened");
//! log::warn(&format!("client {} is slow", 7));
//! ```

use crate::bindings::sandport::handler::{host, types::LogLevel};

/// Severity of a log line.
///
/// ```no_run
/// sandport_guest::log::log(sandport_guest::log::Level::Debug, "state dumped");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Step-by-step detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation worth noting.
    Info,
    /// Something went wrong but was handled.
    Warn,
    /// Something went wrong and was not handled.
    Error,
}

/// Write `message` at `level`.
///
/// ```no_run
/// use sandport_guest::log::{Level, log};
///
/// log(Level::Info, "started");
/// ```
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    host::log(level, message);
}

/// Write `message` at [`Level::Trace`].
///
/// ```no_run
/// sandport_guest::log::trace("entering on_recv");
/// ```
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Write `message` at [`Level::Debug`].
///
/// ```no_run
/// sandport_guest::log::debug("parsed a request");
/// ```
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Write `message` at [`Level::Info`].
///
/// ```no_run
/// sandport_guest::log::info("client joined");
/// ```
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Write `message` at [`Level::Warn`].
///
/// ```no_run
/// sandport_guest::log::warn("send buffer full; message dropped");
/// ```
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Write `message` at [`Level::Error`].
///
/// ```no_run
/// sandport_guest::log::error("state lost");
/// ```
pub fn error(message: &str) {
    log(Level::Error, message);
}
