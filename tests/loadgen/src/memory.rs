//! The results of holding connections open ([`crate::hold()`]), as data, as a table and
//! as JSON.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::client::RoundResult;
use crate::cpu::ServerProcesses;
use crate::report::Latency;
use crate::spec::{LoadSpec, Mode};
use crate::stats::median;

/// One round of holding connections against one target.
#[derive(Clone, Debug, Serialize)]
pub struct HoldRound {
    /// Connections open and idle when the memory was read.
    pub held: usize,
    /// Failed connects, handshakes and exchanges, and held connections that failed.
    pub errors: u64,
    /// What the first error was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Seconds from the first connect until every connection was held.
    pub opened_secs: f64,
    /// Time from a connection's connect to the end of its exchange.
    pub open_latency: Latency,
    /// The server's resident memory before the first connection opened, in bytes;
    /// `None` (`null`) if its processes are unknown or could not be read.
    pub rss_before: Option<u64>,
    /// The server's resident memory at the end of the hold, in bytes.
    pub rss_after: Option<u64>,
    /// `(rss_after - rss_before) / held`, in bytes; `None` (`null`) without them.
    pub per_connection: Option<f64>,
}

impl HoldRound {
    pub(crate) fn new(
        held: usize,
        result: &RoundResult,
        opened_in: Duration,
        rss_before: Option<u64>,
        rss_after: Option<u64>,
    ) -> Self {
        let per_connection = rss_before
            .zip(rss_after)
            .filter(|_| held > 0)
            .map(|(before, after)| (after as f64 - before as f64) / held as f64);
        HoldRound {
            held,
            errors: result.errors,
            first_error: result.first_error.clone(),
            opened_secs: opened_in.as_secs_f64(),
            open_latency: Latency::of(&result.latency),
            rss_before,
            rss_after,
            per_connection,
        }
    }
}

/// Everything measured holding connections to one target.
#[derive(Clone, Debug, Serialize)]
pub struct HoldTarget {
    /// The target's name.
    pub name: String,
    /// The target's address, `tls://` in front if it speaks TLS.
    pub address: String,
    /// The median over the rounds of the connections held.
    pub held: usize,
    /// Errors over all rounds.
    pub errors: u64,
    /// What the first error was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The median over the rounds that have it of the server's memory per held
    /// connection, in bytes.
    pub per_connection: Option<f64>,
    /// `per_connection` less the first target's: what a connection of this target
    /// costs beyond one of the first (a TLS session beyond a plaintext connection).
    pub above_first: Option<f64>,
    /// The processes whose memory was read as the server's.
    pub server_pids: Vec<u32>,
    /// Why no server process was found, if none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_missing: Option<String>,
    /// Each round, in the order they ran.
    pub rounds: Vec<HoldRound>,
}

/// The result of [`crate::hold()`]: the settings it ran with and one entry per target.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// The exchange each connection made before it went idle.
    pub mode: Mode,
    /// Connections per target.
    pub connections: usize,
    /// Client threads.
    pub threads: usize,
    /// Requests in the exchange.
    pub pipeline: usize,
    /// Whether the connections made no exchange ([`LoadSpec::silent`]).
    pub silent: bool,
    /// Bytes per echo message; `None` in HTTP mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// How long the connections were held before the memory was read (`held_secs`).
    #[serde(rename = "held_secs")]
    pub hold: f64,
    /// Rounds per target.
    pub rounds: usize,
    /// The targets, the baseline first.
    pub targets: Vec<HoldTarget>,
}

impl MemoryReport {
    pub(crate) fn new(spec: &LoadSpec, servers: Vec<ServerProcesses>, rounds: Vec<Vec<HoldRound>>) -> Self {
        let per_connection = |rounds: &[HoldRound]| {
            let measured: Vec<f64> = rounds.iter().filter_map(|r| r.per_connection).collect();
            (!measured.is_empty()).then(|| median(&measured))
        };
        let first = rounds.first().and_then(|rounds| per_connection(rounds));
        let targets = spec
            .targets
            .iter()
            .zip(servers)
            .zip(rounds)
            .map(|((target, server), rounds)| {
                let mine = per_connection(&rounds);
                let held: Vec<f64> = rounds.iter().map(|r| r.held as f64).collect();
                HoldTarget {
                    name: target.name.clone(),
                    address: target.address(),
                    held: median(&held) as usize,
                    errors: rounds.iter().map(|r| r.errors).sum(),
                    first_error: rounds.iter().find_map(|r| r.first_error.clone()),
                    per_connection: mine,
                    above_first: mine.zip(first).map(|(mine, first)| mine - first),
                    server_pids: server.pids,
                    server_missing: server.missing,
                    rounds,
                }
            })
            .collect();
        MemoryReport {
            mode: spec.mode,
            connections: spec.connections,
            threads: spec.thread_count(),
            pipeline: spec.pipeline,
            silent: spec.silent,
            size: (spec.mode == Mode::Echo).then_some(spec.size),
            hold: spec.duration.as_secs_f64(),
            rounds: spec.rounds,
            targets,
        }
    }
}

/// Bytes in KiB with a decimal, or `n/a`.
fn kib(bytes: Option<f64>) -> String {
    bytes.map_or("n/a".to_owned(), |b| format!("{:.1} KiB", b / 1024.0))
}

/// Bytes in MiB with a decimal, or `n/a`.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".to_owned(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
}

/// The human-readable summary: the settings, then one line per target.
impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exchange = match (self.mode, self.size) {
            _ if self.silent => "silent once connected (and TLS handshakes done)".to_owned(),
            (Mode::Echo, Some(size)) => format!("idle after {} echo of {size} bytes", self.pipeline),
            _ => format!("idle after {} HTTP request", self.pipeline),
        };
        writeln!(
            f,
            "hold: {} connections per target on {} threads, each {exchange}, held {}s; {} rounds",
            self.connections, self.threads, self.hold, self.rounds
        )?;
        let name_width = self.targets.iter().map(|t| t.name.len()).max().unwrap_or(0).max(6);
        let addr_width = self.targets.iter().map(|t| t.address.len()).max().unwrap_or(0).max(7);
        let baseline = self.targets.first().map_or("", |t| &t.name);
        writeln!(
            f,
            "{:name_width$}  {:addr_width$}  {:>6}  {:>6}  {:>9}  {:>11}  {:>11}  {:>14}  above {baseline}",
            "target", "address", "held", "errors", "opened in", "RSS before", "RSS after", "per connection",
        )?;
        for t in &self.targets {
            // The RSS and opening time of the round whose figure is the median's, or the
            // first round's when there is no figure.
            let shown = t
                .rounds
                .iter()
                .find(|r| r.per_connection.is_some() && r.per_connection == t.per_connection)
                .or_else(|| t.rounds.first());
            writeln!(
                f,
                "{:name_width$}  {:addr_width$}  {:>6}  {:>6}  {:>8.2}s  {:>11}  {:>11}  {:>14}  {}",
                t.name,
                t.address,
                t.held,
                t.errors,
                shown.map_or(0.0, |r| r.opened_secs),
                mib(shown.and_then(|r| r.rss_before)),
                mib(shown.and_then(|r| r.rss_after)),
                kib(t.per_connection),
                kib(t.above_first),
            )?;
        }
        for t in &self.targets {
            if let Some(error) = &t.first_error {
                writeln!(f, "{}: {} errors, the first: {error}", t.name, t.errors)?;
            }
        }
        let servers: Vec<String> = self
            .targets
            .iter()
            .map(|t| match (&t.server_pids[..], &t.server_missing) {
                ([], Some(why)) => format!("{}: n/a, {why}", t.name),
                (pids, _) => {
                    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                    format!("{} = pid {}", t.name, pids.join(" "))
                }
            })
            .collect();
        writeln!(f, "server memory (RSS, /proc) of {}", servers.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(held: usize, before: u64, after: u64) -> HoldRound {
        HoldRound::new(held, &RoundResult::default(), Duration::from_millis(1500), Some(before), Some(after))
    }

    #[test]
    fn per_connection_and_above_the_first() {
        let targets = vec!["plain=127.0.0.1:1".parse().unwrap(), "tls=tls://127.0.0.1:2".parse().unwrap()];
        let spec = LoadSpec { connections: 100, rounds: 3, ..LoadSpec::new(Mode::Echo, targets) };
        let servers = vec![ServerProcesses::given(vec![7]), ServerProcesses::given(vec![8])];
        let rounds = vec![
            vec![round(100, 1 << 20, (1 << 20) + 100 * 1024), round(100, 0, 300 * 1024), round(100, 0, 0)],
            vec![round(100, 1 << 20, (1 << 20) + 100 * 4096), round(0, 0, 1), round(50, 0, 50 * 8192)],
        ];
        let report = MemoryReport::new(&spec, servers, rounds);
        let [plain, tls] = &report.targets[..] else { panic!("two targets") };
        assert_eq!(plain.per_connection, Some(1024.0));
        assert_eq!(plain.above_first, Some(0.0));
        // The round with nothing held has no figure: the median of the other two.
        assert_eq!(tls.per_connection, Some(6144.0));
        assert_eq!(tls.above_first, Some(5120.0));
        assert_eq!((tls.held, tls.address.as_str()), (50, "tls://127.0.0.1:2"));

        let table = report.to_string();
        assert!(table.starts_with("hold: 100 connections per target on"), "{table}");
        assert!(table.contains("each idle after 1 echo of 64 bytes, held 5s; 3 rounds"), "{table}");
        let line = table.lines().find(|l| l.starts_with("tls ")).unwrap();
        assert!(line.ends_with("6.0 KiB  5.0 KiB"), "{table}");
        assert!(table.ends_with("of plain = pid 7; tls = pid 8\n"), "{table}");

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["held_secs"], 5.0);
        assert_eq!(json["targets"][1]["above_first"], 5120.0);
        assert_eq!(json["targets"][1]["rounds"][1]["per_connection"], serde_json::Value::Null);
    }
}
