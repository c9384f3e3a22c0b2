//! sandport: a WebAssembly plugin host for sandboxed connection handlers.
//!
//! A single-threaded [`reactor`] owns every socket and byte buffer. Each listener is
//! bound to a [`handler::Handler`]; usually a WebAssembly component exporting the
//! `sandport:handler` world ([`plugin`]), though native Rust handlers work the same
//! way. Handlers receive Mongoose-style events (accept, recv, send, poll, timer,
//! close), read the receive buffer ([`mbuf`]) and act through imports that only
//! append and record; the reactor does all I/O.
//!
//! Data flows one way: socket -> [`reactor`] -> [`mbuf`] -> [`plugin`] -> imports ->
//! [`reactor`]. [`listener`] holds the words every part speaks about a listener; [`config`] turns
//! TOML into them and [`server`] wires them up.

pub mod admin;
pub mod config;
pub mod control;
pub mod handler;
pub mod listener;
pub mod mbuf;
pub mod oci;
pub mod plugin;
pub mod reactor;
pub mod regular_file;
pub mod scaffold;
pub mod selfsigned;
pub mod server;
pub mod tls;
pub mod proxy_header;
mod throttle;
pub mod watch;
