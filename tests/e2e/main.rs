//! End-to-end tests: the real `sandport` binary (or library), real sockets on
//! 127.0.0.1, real components built from `plugins/` by `sandport-test-artifacts`.

mod harness;

mod admin;
mod admin_bounds;
mod backpressure;
mod cache;
mod cache_trust;
mod chaos;
mod chat;
mod cli;
mod close;
mod conformance;
mod connect;
mod descriptors;
mod echo;
mod faults;
mod host_log;
mod hostile;
mod http;
mod instances;
mod isolation;
mod limits;
mod linger;
mod load;
mod migrate;
mod native;
mod neighbour;
mod proxy;
mod swap;
mod timers;
mod watch;
mod workers;
