//! `sandport-loadgen`: drive running servers over TCP and print throughput and
//! latency; see the library documentation for how the load is made.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sandport_loadgen::{LoadSpec, Mode, Target};

/// Load-test running echo or HTTP servers and compare them.
///
/// With several targets the rounds alternate between them and the last two columns
/// are each target's throughput and server CPU time per request relative to the
/// first target's: on a noisy machine only such same-run ratios are meaningful. The
/// server CPU time is read from /proc (Linux), for the processes listening on the
/// target's address unless --pid names them.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// What each connection does.
    #[arg(value_enum)]
    mode: Mode,

    /// A server to drive, as NAME=ADDR (or just ADDR). Repeat to compare servers;
    /// the first is the baseline.
    #[arg(long = "target", value_name = "NAME=ADDR", required = true)]
    targets: Vec<Target>,

    /// A process of the server of target NAME, whose CPU time (user and system)
    /// counts as the server's; repeat for a server of several processes.
    /// [default: every process other than this one holding a socket that listens on
    /// the target's address]
    #[arg(long = "pid", value_name = "NAME=PID")]
    pids: Vec<String>,

    /// Concurrent connections per target.
    #[arg(long, default_value_t = LoadSpec::DEFAULT_CONNECTIONS)]
    connections: usize,

    /// Client threads [default: one per CPU, at most one per connection].
    #[arg(long)]
    threads: Option<usize>,

    /// Seconds each round measures.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    duration: Duration,

    /// Seconds each round runs before measuring.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds)]
    warmup: Duration,

    /// Bytes per echo message.
    #[arg(long, value_name = "BYTES", default_value_t = LoadSpec::DEFAULT_SIZE)]
    size: usize,

    /// Requests each connection sends before reading their responses.
    #[arg(long, value_name = "K", default_value_t = LoadSpec::DEFAULT_PIPELINE)]
    pipeline: usize,

    /// Close each connection once its batch is answered and open a fresh one, so that
    /// every exchange (with the default --pipeline) pays for connection setup and
    /// teardown.
    #[arg(long)]
    reconnect: bool,

    /// Rounds per target.
    #[arg(long, value_name = "R", default_value_t = LoadSpec::DEFAULT_ROUNDS)]
    rounds: usize,

    /// Seconds a connection may make no progress before it counts an error and
    /// reconnects.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    timeout: Duration,

    /// Print the report as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{e}"))
}

/// Gives each `NAME=PID` of `pids` to the target called NAME.
fn assign_pids(targets: &mut [Target], pids: &[String]) -> Result<(), String> {
    for given in pids {
        let (name, pid) = given.split_once('=').ok_or_else(|| format!("`--pid {given}`: expected NAME=PID"))?;
        let pid: u32 = pid.parse().map_err(|e| format!("`--pid {given}`: {e}"))?;
        let target = targets
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("`--pid {given}`: no target is named `{name}`"))?;
        target.pids.push(pid);
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(e) = assign_pids(&mut cli.targets, &cli.pids) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let spec = LoadSpec {
        connections: cli.connections,
        threads: cli.threads,
        duration: cli.duration,
        warmup: cli.warmup,
        size: cli.size,
        pipeline: cli.pipeline,
        reconnect: cli.reconnect,
        rounds: cli.rounds,
        timeout: cli.timeout,
        ..LoadSpec::new(cli.mode, cli.targets)
    };
    let progress = |target: &Target, round: usize, report: &sandport_loadgen::RoundReport| {
        let cpu = report.cpu_per_request_us.map_or("n/a".to_owned(), |us| format!("{us:.2} µs"));
        eprintln!(
            "round {}/{} {}: {:.0} req/s, {cpu} server CPU per request, {:.2} MB/s, {}, {} errors",
            round + 1,
            spec.rounds,
            target.name,
            report.requests_per_sec,
            report.mb_per_sec,
            report.latency,
            report.errors
        );
    };
    match sandport_loadgen::run_with_progress(&spec, progress) {
        Ok(report) if cli.json => {
            eprint!("{report}");
            println!("{}", serde_json::to_string_pretty(&report).expect("a report serialises"));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_go_to_their_targets() {
        let mut targets: Vec<Target> = vec!["a=127.0.0.1:1".parse().unwrap(), "b=127.0.0.1:2".parse().unwrap()];
        assign_pids(&mut targets, &["b=7".into(), "b=8".into()]).unwrap();
        assert_eq!((&targets[0].pids[..], &targets[1].pids[..]), (&[][..], &[7, 8][..]));
        assert!(assign_pids(&mut targets, &["c=1".into()]).unwrap_err().contains("no target is named `c`"));
        assert!(assign_pids(&mut targets, &["a".into()]).unwrap_err().contains("expected NAME=PID"));
        assert!(assign_pids(&mut targets, &["a=-1".into()]).is_err());
    }
}
