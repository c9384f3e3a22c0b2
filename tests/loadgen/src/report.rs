//! The results of a run, as data, as a table and as JSON.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::client::RoundResult;
use crate::cpu::ServerProcesses;
use crate::spec::{LoadSpec, Mode, Target};
use crate::stats::{Histogram, median};
use crate::tls::TlsVersion;

/// Latency percentiles of the responses counted in a measurement: the time from
/// sending a batch (with [`LoadSpec::reconnect`], from opening its connection) to
/// receiving each of its responses in full.
///
/// In JSON the fields are `p50_us`, `p99_us` and `max_us`, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// The median.
    #[serde(rename = "p50_us", serialize_with = "micros")]
    pub p50: Duration,
    /// The 99th percentile.
    #[serde(rename = "p99_us", serialize_with = "micros")]
    pub p99: Duration,
    /// The slowest response.
    #[serde(rename = "max_us", serialize_with = "micros")]
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `histogram`.
    pub fn of(histogram: &Histogram) -> Self {
        Latency { p50: histogram.percentile(50.0), p99: histogram.percentile(99.0), max: histogram.max() }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p50 {}, p99 {}, max {}", Short(self.p50), Short(self.p99), Short(self.max))
    }
}

/// One round against one target.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    /// Responses received and verified in the measured window.
    pub requests: u64,
    /// Bytes of those responses.
    pub bytes: u64,
    /// Failed responses, connection failures and timeouts, warm-up included.
    pub errors: u64,
    /// What the first error was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// `requests` per second of the measured window.
    pub requests_per_sec: f64,
    /// Megabytes (10^6 bytes) of responses per second.
    pub mb_per_sec: f64,
    /// Latency in this round.
    pub latency: Latency,
    /// CPU time the server used in the measured window, in microseconds; `None`
    /// (`null`) if its processes are unknown or could not be read.
    pub server_cpu_us: Option<f64>,
    /// `server_cpu_us` divided by `requests`; `None` (`null`) without either.
    pub cpu_per_request_us: Option<f64>,
}

impl RoundReport {
    fn new(result: &RoundResult, duration: Duration) -> Self {
        let secs = duration.as_secs_f64();
        let server_cpu_us = result.server_cpu.map(|cpu| cpu.as_secs_f64() * 1e6);
        RoundReport {
            server_cpu_us,
            cpu_per_request_us: server_cpu_us.filter(|_| result.requests > 0).map(|us| us / result.requests as f64),
            requests: result.requests,
            bytes: result.bytes,
            errors: result.errors,
            first_error: result.first_error.clone(),
            requests_per_sec: result.requests as f64 / secs,
            mb_per_sec: result.bytes as f64 / 1e6 / secs,
            latency: Latency::of(&result.latency),
        }
    }
}

/// Everything measured for one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// The target's name.
    pub name: String,
    /// The target's address.
    pub addr: SocketAddr,
    /// Whether its connections spoke TLS.
    pub tls: bool,
    /// The server names they asked for (`t{0..9999}.example` for a range).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_names: Option<String>,
    /// The median over the rounds of requests per second.
    pub requests_per_sec: f64,
    /// The median over the rounds of megabytes of responses per second.
    pub mb_per_sec: f64,
    /// `requests_per_sec` divided by the first target's: the one number comparable
    /// across runs on a noisy machine. 1 for the first target; NaN (`null` in JSON) if
    /// the first target completed no requests.
    pub ratio: f64,
    /// Requests over all rounds.
    pub requests: u64,
    /// Errors over all rounds.
    pub errors: u64,
    /// What the first error was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Latency over all rounds' responses.
    pub latency: Latency,
    /// The processes whose CPU time was read as the server's.
    pub server_pids: Vec<u32>,
    /// Why no server process was found, if none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_missing: Option<String>,
    /// The median over the rounds that have it of the server's CPU time per request,
    /// in microseconds; `None` (`null`) if no round has it.
    pub cpu_per_request_us: Option<f64>,
    /// `cpu_per_request_us` divided by the first target's; `None` (`null`) without
    /// either.
    pub cpu_ratio: Option<f64>,
    /// Each round, in the order they ran.
    pub rounds: Vec<RoundReport>,
}

/// The result of [`crate::run`]: the settings it ran with and one entry per target.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// Connections per target.
    pub connections: usize,
    /// Client threads.
    pub threads: usize,
    /// Requests per batch.
    pub pipeline: usize,
    /// Whether every batch ran on a fresh connection, closed once it was answered.
    pub reconnect: bool,
    /// The TLS version the TLS targets' connections offered; `None` (`null`): 1.3 and 1.2.
    pub tls_version: Option<TlsVersion>,
    /// Whether TLS connections resumed earlier sessions.
    pub resume: bool,
    /// Bytes per echo message; `None` in HTTP mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Measured time per round (`duration_secs` in JSON).
    #[serde(rename = "duration_secs", serialize_with = "secs")]
    pub duration: Duration,
    /// Warm-up per round (`warmup_secs` in JSON).
    #[serde(rename = "warmup_secs", serialize_with = "secs")]
    pub warmup: Duration,
    /// Rounds per target.
    pub rounds: usize,
    /// The targets, the baseline first.
    pub targets: Vec<TargetReport>,
}

/// Collects the rounds of one target as they complete.
pub(crate) struct TargetRounds {
    target: Target,
    server: ServerProcesses,
    rounds: Vec<RoundReport>,
    latency: Histogram,
}

impl TargetRounds {
    pub(crate) fn new(target: Target, server: ServerProcesses) -> Self {
        TargetRounds { target, server, rounds: Vec::new(), latency: Histogram::new() }
    }

    /// The processes whose CPU time is the target's.
    pub(crate) fn server(&self) -> &ServerProcesses {
        &self.server
    }

    /// Adds a round and returns its report.
    pub(crate) fn push(&mut self, result: &RoundResult, duration: Duration) -> &RoundReport {
        self.latency.merge(&result.latency);
        self.rounds.push(RoundReport::new(result, duration));
        self.rounds.last().expect("just pushed")
    }

    /// The median over the rounds of requests per second.
    fn requests_per_sec(&self) -> f64 {
        median(&self.rounds.iter().map(|r| r.requests_per_sec).collect::<Vec<_>>())
    }

    /// The median over the rounds that have it of the server's CPU time per request.
    fn cpu_per_request_us(&self) -> Option<f64> {
        let measured: Vec<f64> = self.rounds.iter().filter_map(|r| r.cpu_per_request_us).collect();
        (!measured.is_empty()).then(|| median(&measured))
    }

    fn finish(self, baseline: f64, cpu_baseline: Option<f64>) -> TargetReport {
        let requests_per_sec = self.requests_per_sec();
        let cpu_per_request_us = self.cpu_per_request_us();
        let throughputs: Vec<f64> = self.rounds.iter().map(|r| r.mb_per_sec).collect();
        TargetReport {
            name: self.target.name,
            addr: self.target.addr,
            tls: self.target.tls,
            server_names: self.target.server_names.as_ref().map(ToString::to_string),
            requests_per_sec,
            mb_per_sec: median(&throughputs),
            ratio: if baseline > 0.0 { requests_per_sec / baseline } else { f64::NAN },
            requests: self.rounds.iter().map(|r| r.requests).sum(),
            errors: self.rounds.iter().map(|r| r.errors).sum(),
            first_error: self.rounds.iter().find_map(|r| r.first_error.clone()),
            latency: Latency::of(&self.latency),
            server_pids: self.server.pids,
            server_missing: self.server.missing,
            cpu_per_request_us,
            cpu_ratio: cpu_per_request_us.zip(cpu_baseline.filter(|&b| b > 0.0)).map(|(cpu, base)| cpu / base),
            rounds: self.rounds,
        }
    }
}

impl Report {
    pub(crate) fn new(spec: &LoadSpec, targets: Vec<TargetRounds>) -> Self {
        let baseline = targets.first().map_or(f64::NAN, TargetRounds::requests_per_sec);
        let cpu_baseline = targets.first().and_then(TargetRounds::cpu_per_request_us);
        Report {
            mode: spec.mode,
            connections: spec.connections,
            threads: spec.thread_count(),
            pipeline: spec.pipeline,
            reconnect: spec.reconnect,
            tls_version: spec.tls_version,
            resume: spec.resume,
            size: (spec.mode == Mode::Echo).then_some(spec.size),
            duration: spec.duration,
            warmup: spec.warmup,
            rounds: spec.rounds,
            targets: targets.into_iter().map(|t| t.finish(baseline, cpu_baseline)).collect(),
        }
    }
}

/// The human-readable summary: the settings, then one line per target.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Echo => "echo",
            Mode::Http => "http",
        };
        write!(f, "{mode}: {} connections on {} threads, pipeline {}", self.connections, self.threads, self.pipeline)?;
        if let Some(size) = self.size {
            write!(f, ", {size}-byte messages")?;
        }
        if self.reconnect {
            write!(f, ", a fresh connection per batch")?;
        }
        if self.targets.iter().any(|t| t.tls) {
            let version = match self.tls_version {
                None => "TLS",
                Some(TlsVersion::Tls12) => "TLS 1.2",
                Some(TlsVersion::Tls13) => "TLS 1.3",
            };
            let handshakes = if self.resume { "resumed sessions" } else { "full handshakes" };
            write!(f, ", {version} with {handshakes}")?;
        }
        writeln!(
            f,
            "; {} rounds of {}s after {}s warm-up",
            self.rounds,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        )?;

        let name_width = self.targets.iter().map(|t| t.name.len()).max().unwrap_or(0).max(6);
        let address = |t: &TargetReport| if t.tls { format!("tls://{}", t.addr) } else { t.addr.to_string() };
        let addr_width = self.targets.iter().map(|t| address(t).len()).max().unwrap_or(0).max(7);
        let baseline = self.targets.first().map_or("", |t| &t.name);
        let vs = format!("vs {baseline}");
        let vs_width = vs.len().max(6);
        writeln!(
            f,
            "{:name_width$}  {:addr_width$}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}  {vs:>vs_width$}  cpu vs {baseline}",
            "target", "address", "req/s", "cpu/req", "MB/s", "p50", "p99", "max", "errors",
        )?;
        let ratio = |r: Option<f64>| r.filter(|r| r.is_finite()).map_or("n/a".to_owned(), |r| format!("{r:.3}"));
        for t in &self.targets {
            writeln!(
                f,
                "{:name_width$}  {:addr_width$}  {:>10.0}  {:>8}  {:>8.2}  {:>8}  {:>8}  {:>8}  {:>6}  {:>vs_width$}  {}",
                t.name,
                address(t),
                t.requests_per_sec,
                cpu_us(t.cpu_per_request_us),
                t.mb_per_sec,
                Short(t.latency.p50).to_string(),
                Short(t.latency.p99).to_string(),
                Short(t.latency.max).to_string(),
                t.errors,
                ratio(Some(t.ratio)),
                ratio(t.cpu_ratio),
            )?;
        }
        for t in &self.targets {
            if let Some(names) = &t.server_names {
                writeln!(f, "{}: server names {names}", t.name)?;
            }
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
                ([pid], _) => format!("{} = pid {pid}", t.name),
                (pids, _) => {
                    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                    format!("{} = pids {}", t.name, pids.join(" "))
                }
            })
            .collect();
        writeln!(f, "server CPU (user+system, /proc) of {}", servers.join("; "))
    }
}

/// A CPU time per request in microseconds, with a digit more than [`Short`] gives,
/// since these are compared to a few percent.
fn cpu_us(us: Option<f64>) -> String {
    match us {
        Some(us) if us < 100.0 => format!("{us:.2}µs"),
        Some(us) => format!("{us:.1}µs"),
        None => "n/a".to_owned(),
    }
}

/// A duration in the unit that suits it, with three significant digits or so.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_secs_f64() * 1e6;
        match us {
            _ if us < 10.0 => write!(f, "{us:.1}µs"),
            _ if us < 1e3 => write!(f, "{us:.0}µs"),
            _ if us < 1e6 => write!(f, "{:.2}ms", us / 1e3),
            _ => write!(f, "{:.2}s", us / 1e6),
        }
    }
}

fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // From whole nanoseconds, so that the value prints without binary noise.
    s.serialize_f64(d.as_nanos() as f64 / 1e3)
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(requests: u64, latency_us: u64) -> RoundResult {
        // A server CPU time of `latency_us` per request.
        let server_cpu = Some(Duration::from_micros(requests * latency_us));
        let mut result = RoundResult { requests, bytes: requests * 100, server_cpu, ..RoundResult::default() };
        for _ in 0..requests {
            result.latency.record(Duration::from_micros(latency_us));
        }
        result
    }

    #[test]
    fn ratios_use_the_median_round() {
        let spec = LoadSpec { duration: Duration::from_secs(2), rounds: 3, ..LoadSpec::new(Mode::Echo, vec![]) };
        let mut base = TargetRounds::new("base=127.0.0.1:1".parse().unwrap(), ServerProcesses::given(vec![7]));
        let mut other = TargetRounds::new("other=127.0.0.1:2".parse().unwrap(), ServerProcesses::given(vec![8, 9]));
        for (b, o) in [(1000, 3000), (2000, 1000), (9000, 4000)] {
            base.push(&round(b, 100), spec.duration);
            other.push(&round(o, 200), spec.duration);
        }
        let report = Report::new(&spec, vec![base, other]);
        let [base, other] = &report.targets[..] else { panic!("two targets") };
        assert_eq!(base.requests_per_sec, 1000.0);
        assert_eq!(base.mb_per_sec, 0.1);
        assert_eq!(other.requests_per_sec, 1500.0);
        assert_eq!(base.ratio, 1.0);
        assert_eq!(other.ratio, 1.5);
        assert_eq!(other.requests, 8000);
        assert_eq!(other.latency.max, Duration::from_micros(200));
        assert_eq!((base.cpu_per_request_us, other.cpu_per_request_us), (Some(100.0), Some(200.0)));
        assert_eq!(other.cpu_ratio, Some(2.0));

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "echo");
        assert_eq!(json["reconnect"], false);
        assert_eq!(json["size"], 64);
        assert_eq!(json["duration_secs"], 2.0);
        assert_eq!(json["targets"][1]["ratio"], 1.5);
        assert_eq!(json["targets"][1]["addr"], "127.0.0.1:2");
        let p50 = json["targets"][1]["latency"]["p50_us"].as_f64().unwrap();
        assert!((p50 - 200.0).abs() < 200.0 / 64.0);

        let table = report.to_string();
        assert!(table.contains("vs base"), "{table}");
        assert!(!table.contains("fresh connection"), "{table}");
        let other_line = table.lines().find(|l| l.starts_with("other ")).unwrap();
        let columns: Vec<&str> = other_line.split_whitespace().collect();
        assert_eq!((columns[2], columns[3]), ("1500", "200.0µs"), "{table}");
        assert!(other_line.ends_with("1.500  2.000"), "{table}");
        assert!(table.ends_with("server CPU (user+system, /proc) of base = pid 7; other = pids 8 9\n"), "{table}");
        assert_eq!(json["targets"][1]["cpu_per_request_us"], 200.0);
        assert_eq!(json["targets"][1]["rounds"][0]["server_cpu_us"], 3000.0 * 200.0);
    }

    #[test]
    fn a_silent_baseline_has_no_ratio() {
        let spec = LoadSpec::new(Mode::Http, vec![]);
        let unknown = ServerProcesses { pids: vec![], missing: Some("nobody listens".into()) };
        let mut base = TargetRounds::new("127.0.0.1:1".parse().unwrap(), unknown);
        base.push(&RoundResult::default(), spec.duration);
        let report = Report::new(&spec, vec![base]);
        assert!(report.targets[0].ratio.is_nan());
        assert_eq!(report.targets[0].cpu_per_request_us, None);
        let table = report.to_string();
        let columns: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!((columns[3], &columns[columns.len() - 2..]), ("n/a", &["n/a", "n/a"][..]), "{table}");
        assert!(table.ends_with("of 127.0.0.1:1: n/a, nobody listens\n"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["targets"][0]["ratio"], serde_json::Value::Null);
        assert_eq!(json["targets"][0]["cpu_per_request_us"], serde_json::Value::Null);
        assert_eq!(json["targets"][0]["server_missing"], "nobody listens");
    }

    #[test]
    fn reconnect_is_reported() {
        let spec = LoadSpec { reconnect: true, ..LoadSpec::new(Mode::Http, vec![]) };
        let mut base = TargetRounds::new("127.0.0.1:1".parse().unwrap(), ServerProcesses::default());
        base.push(&round(10, 100), spec.duration);
        let report = Report::new(&spec, vec![base]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["reconnect"], true);
        assert_eq!(json.get("size"), None);
        let table = report.to_string();
        let settings = table.lines().next().unwrap();
        assert!(
            settings.starts_with("http: 16 connections") && settings.contains(", a fresh connection per batch;"),
            "{table}"
        );
    }

    #[test]
    fn tls_is_reported() {
        let mut edge: Target = "edge=tls://127.0.0.1:8443".parse().unwrap();
        edge.server_names = Some("t{0..9}.example".parse().unwrap());
        let spec = LoadSpec { tls_version: Some(TlsVersion::Tls12), resume: true, ..LoadSpec::new(Mode::Http, vec![]) };
        let mut base = TargetRounds::new(edge, ServerProcesses::default());
        base.push(&round(10, 100), spec.duration);
        let report = Report::new(&spec, vec![base]);
        let table = report.to_string();
        assert!(table.lines().next().unwrap().contains(", TLS 1.2 with resumed sessions;"), "{table}");
        assert!(table.lines().nth(2).unwrap().starts_with("edge    tls://127.0.0.1:8443 "), "{table}");
        assert!(table.contains("\nedge: server names t{0..9}.example\n"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!((&json["tls_version"], &json["resume"]), (&serde_json::json!("1.2"), &serde_json::json!(true)));
        assert_eq!(json["targets"][0]["tls"], true);
        assert_eq!(json["targets"][0]["server_names"], "t{0..9}.example");
    }

    #[test]
    fn short_durations() {
        let show = |d| Short(d).to_string();
        assert_eq!(show(Duration::from_nanos(4_240)), "4.2µs");
        assert_eq!(show(Duration::from_micros(185)), "185µs");
        assert_eq!(show(Duration::from_micros(2_104)), "2.10ms");
        assert_eq!(show(Duration::from_secs(5)), "5.00s");
    }
}
