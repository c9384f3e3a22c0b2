//! End-to-end tests: the real `sandport` binary (or library), real sockets on
//! 127.0.0.1, real components built from `plugins/` by `sandport-test-artifacts`.

mod harness;

mod backpressure;
mod chat;
mod cli;
mod close;
mod connect;
mod echo;
mod faults;
mod http;
mod instances;
mod isolation;
mod limits;
mod native;
mod proxy;
mod timers;
