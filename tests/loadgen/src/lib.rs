//! A load generator for whole servers: it drives running servers over real TCP, in
//! plaintext or TLS, and reports throughput and latency, or, holding connections
//! open, the memory each costs.
//!
//! The `sandport-loadgen` binary is a thin command line over [`run`]; tests and
//! benches can call it directly:
//!
//! ```no_run
//! use sandport_loadgen::{LoadSpec, Mode};
//!
//! let targets = vec!["wasm=127.0.0.1:7000".parse()?, "native=127.0.0.1:7100".parse()?];
//! let report = sandport_loadgen::run(&LoadSpec::new(Mode::Echo, targets))?;
//! println!("{report}");
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! # How the load is made
//!
//! Every connection runs a closed loop: it sends a batch of [`LoadSpec::pipeline`]
//! requests (echo messages or HTTP `GET`s), waits for all their responses, verifies
//! them and sends the next batch. A few client threads share the connections, each
//! running a [mio] event loop: a connection reads while it is still writing, so even
//! batches larger than the socket buffers cannot deadlock against the server.
//!
//! With [`LoadSpec::reconnect`] a connection is closed once its batch is answered and
//! a fresh one, connected without blocking the thread, sends the next: throughput
//! then includes connection setup and teardown, and latency counts from the connect.
//!
//! A target given as `NAME=tls://ADDR` is driven over TLS (see [`tls`]), every
//! connection with a rustls client session: with [`LoadSpec::reconnect`] every batch
//! pays for a handshake, full or (with [`LoadSpec::resume`]) resumed, and
//! [`Target::server_names`] spreads them over the names one port serves.
//!
//! Each round connects, runs [`LoadSpec::warmup`] unmeasured, then measures for
//! [`LoadSpec::duration`]. With several targets the rounds alternate (t1, t2, t1,
//! t2, ...), so that slow drifts of a shared, noisy machine hit every target alike;
//! a target's throughput is the median of its rounds, and its
//! [`ratio`](TargetReport::ratio) to the first target's is the number to compare
//! across runs, because absolute numbers on such machines are not.
//!
//! # Server CPU per request
//!
//! When the client and the server share the cores, rates squeeze toward each other.
//! So each round also reads the CPU time (user and system, from `/proc/PID/stat`) the
//! server's processes use in the measured window, and divides it by the requests
//! served: [`RoundReport::cpu_per_request_us`]. The server is [`Target::pids`], or,
//! by default, every other process that holds a socket listening on the target's
//! address (see [`cpu`]). The clock tick of `/proc` is 10 ms, so a round should
//! last seconds for this figure to be precise to a percent.
//!
//! # Memory per connection
//!
//! [`hold()`] opens the connections, makes one exchange on each and holds them idle,
//! and reports the growth of the server's resident memory per connection (see there
//! for how, and why one round per fresh server).

mod client;
mod conn;
pub mod cpu;
mod hold;
pub mod http;
mod memory;
mod report;
mod spec;
pub mod stats;
mod stream;
pub mod tls;

use anyhow::{Context, Result, ensure};

pub use hold::{hold, hold_with_progress};
pub use memory::{HoldRound, HoldTarget, MemoryReport};
pub use report::{Latency, Report, RoundReport, TargetReport};
pub use spec::{LoadSpec, Mode, Target};
pub use tls::{ServerNames, TlsVersion};

use report::TargetRounds;

/// Runs `spec` and reports what each target achieved.
///
/// Fails if the spec is invalid or a target refuses connections at the start of a
/// round; failures during a round are counted as errors in the report instead.
pub fn run(spec: &LoadSpec) -> Result<Report> {
    run_with_progress(spec, |_, _, _| {})
}

/// [`run`], calling `progress` with the target, the round number (from 0) and the
/// round's report after every round.
pub fn run_with_progress(spec: &LoadSpec, mut progress: impl FnMut(&Target, usize, &RoundReport)) -> Result<Report> {
    spec.validate()?;
    ensure!(!spec.silent, "silent connections exchange nothing to measure: only held ones may be silent");
    let mut targets: Vec<TargetRounds> =
        spec.targets.iter().map(|target| TargetRounds::new(target.clone(), target.server())).collect();
    for round in 0..spec.rounds {
        for (target, rounds) in spec.targets.iter().zip(&mut targets) {
            let result = client::run_round(spec, target, rounds.server())
                .with_context(|| format!("round {} of target `{}`", round + 1, target.name))?;
            progress(target, round, rounds.push(&result, spec.duration));
        }
    }
    Ok(Report::new(spec, targets))
}
