//! End-to-end tests: the real `sandport` binary (or library), real sockets on
//! 127.0.0.1, real components built from `plugins/` by `sandport-test-artifacts`.

mod harness;

mod admin;
mod admin_bounds;
mod admin_input;
mod backpressure;
mod bounded;
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
mod migrate_modes;
mod native;
mod neighbour;
mod operator;
mod proxy;
mod reload;
mod swap;
mod swap_more;
mod timers;
mod tls;
mod tls_kit;
mod tls_rotation;
mod tls_routing;
mod tls_terminate;
mod watch;
mod wit_versions;
mod workers;
