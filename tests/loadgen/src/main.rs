//! `sandport-loadgen`: drive running servers over TCP and print throughput and
//! latency; see the library documentation for how the load is made.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sandport_loadgen::{LoadSpec, Mode, ServerNames, Target, TlsVersion};

/// Load-test running echo or HTTP servers, in plaintext or TLS, and compare them.
///
/// With several targets the rounds alternate between them and the last two columns
/// are each target's throughput and server CPU time per request relative to the
/// first target's: on a noisy machine only such same-run ratios are meaningful. The
/// server CPU time is read from /proc (Linux), for the processes listening on the
/// target's address unless --pid names them. With --hold, the connections are held
/// open instead, and the report is the server's memory per connection.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// What each connection does.
    #[arg(value_enum)]
    mode: Mode,

    /// A server to drive, as NAME=ADDR (or just ADDR); NAME=tls://ADDR for one that
    /// speaks TLS. Repeat to compare servers; the first is the baseline.
    #[arg(long = "target", value_name = "NAME=ADDR", required = true)]
    targets: Vec<Target>,

    /// The server name (SNI) the TLS connections of target NAME ask for, or a range
    /// of them that they take in turn: `t{0..9999}.example.com` (quote it from the
    /// shell). [default: none is sent]
    #[arg(long = "server-name", value_name = "NAME=SNI")]
    server_names: Vec<String>,

    /// The only TLS version the TLS connections offer [default: 1.3 and 1.2].
    #[arg(long, value_enum)]
    tls_version: Option<TlsVersion>,

    /// TLS connections resume the sessions of earlier ones (tickets, or session
    /// ids); without it every handshake is a full one.
    #[arg(long)]
    resume: bool,

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

    /// Seconds each round measures (with --hold: holds the connections before the
    /// server's memory is read).
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
    #[arg(long, conflicts_with = "hold")]
    reconnect: bool,

    /// Open --connections connections (32 at a time per thread), make one exchange on
    /// each, hold them idle for --duration, and report how much the server's resident
    /// memory grew per connection. Memory a server frees stays with its allocator, so
    /// run one round per fresh server.
    #[arg(long)]
    hold: bool,

    /// With --hold: make no exchange; each connection is held once connected (a TLS
    /// one once its handshake is done).
    #[arg(long, requires = "hold")]
    silent: bool,

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
        let (target, pid) = for_target(targets, "pid", given)?;
        target.pids.push(pid.parse().map_err(|e| format!("`--pid {given}`: {e}"))?);
    }
    Ok(())
}

/// Gives each `NAME=SNI` of `names` to the target called NAME.
fn assign_server_names(targets: &mut [Target], names: &[String]) -> Result<(), String> {
    for given in names {
        let (target, names) = for_target(targets, "server-name", given)?;
        let names: ServerNames = names.parse().map_err(|e| format!("`--server-name {given}`: {e}"))?;
        target.server_names = Some(names);
    }
    Ok(())
}

/// The target that `NAME=VALUE`, given to `--option`, names, and the value.
fn for_target<'a, 'v>(
    targets: &'a mut [Target],
    option: &str,
    given: &'v str,
) -> Result<(&'a mut Target, &'v str), String> {
    let (name, value) = given.split_once('=').ok_or_else(|| format!("`--{option} {given}`: expected NAME=VALUE"))?;
    let target = targets
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("`--{option} {given}`: no target is named `{name}`"))?;
    Ok((target, value))
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let assigned = assign_pids(&mut cli.targets, &cli.pids)
        .and_then(|()| assign_server_names(&mut cli.targets, &cli.server_names));
    if let Err(e) = assigned {
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
        tls_version: cli.tls_version,
        resume: cli.resume,
        silent: cli.silent,
        ..LoadSpec::new(cli.mode, cli.targets)
    };
    if cli.hold {
        return hold(&spec, cli.json);
    }
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
    finish(sandport_loadgen::run_with_progress(&spec, progress), cli.json)
}

/// Runs `spec` holding connections, and prints the memory report.
fn hold(spec: &LoadSpec, json: bool) -> ExitCode {
    let progress = |target: &Target, round: usize, report: &sandport_loadgen::HoldRound| {
        let kib = report.per_connection.map_or("n/a".to_owned(), |bytes| format!("{:.1} KiB", bytes / 1024.0));
        eprintln!(
            "round {}/{} {}: {} held (opened in {:.2}s, {}), {kib} server memory per connection, {} errors",
            round + 1,
            spec.rounds,
            target.name,
            report.held,
            report.opened_secs,
            report.open_latency,
            report.errors
        );
    };
    finish(sandport_loadgen::hold_with_progress(spec, progress), json)
}

/// Print a run's report (as a table, or with `json` as JSON on stdout and the table
/// on stderr) or its error, and the exit code that goes with it.
fn finish<R: std::fmt::Display + serde::Serialize>(result: anyhow::Result<R>, json: bool) -> ExitCode {
    match result {
        Ok(report) if json => {
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
        assert!(assign_pids(&mut targets, &["a".into()]).unwrap_err().contains("expected NAME=VALUE"));
        assert!(assign_pids(&mut targets, &["a=-1".into()]).is_err());
    }

    #[test]
    fn server_names_go_to_their_targets() {
        let mut targets: Vec<Target> = vec!["a=tls://127.0.0.1:1".parse().unwrap(), "b=127.0.0.1:2".parse().unwrap()];
        assign_server_names(&mut targets, &["a=t{1..3}.example".into()]).unwrap();
        assert_eq!(targets[0].server_names.as_ref().unwrap().count(), 3);
        assert_eq!(targets[1].server_names, None);
        let error = assign_server_names(&mut targets, &["a=t{3..1}.example".into()]).unwrap_err();
        assert!(error.contains("`--server-name a=t{3..1}.example`: server name"), "{error}");
        assert!(assign_server_names(&mut targets, &["c=x.example".into()]).unwrap_err().contains("no target"));
    }
}
