//! The `sandport` command: serve plugins, check one, or precompile one.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sandport::config::Config;
use sandport::plugin::Runtime;
use sandport::server::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// A WebAssembly plugin host for sandboxed connection handlers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the listeners of a config file, or of --listen/--plugin pairs.
    Serve {
        /// TOML config file with one [[listener]] table per listener.
        #[arg(long, conflicts_with_all = ["listen", "plugin"])]
        config: Option<PathBuf>,
        /// Address for a listener (pairs with the --plugin at the same position).
        #[arg(long, value_name = "ADDR")]
        listen: Vec<String>,
        /// Plugin component for a listener (pairs with the --listen at the same position).
        #[arg(long, value_name = "FILE.wasm")]
        plugin: Vec<PathBuf>,
    },
    /// Check that a component implements the sandport:handler world; list its
    /// imports and exports.
    Check {
        /// The component (or precompiled .cwasm) to check.
        file: PathBuf,
    },
    /// Precompile a component into a .cwasm that `serve` and `check` accept as a
    /// plugin, for this build of sandport only.
    Compile {
        /// The component to compile.
        file: PathBuf,
        /// Where to write it; by default FILE with the extension .cwasm.
        #[arg(short, long, value_name = "OUT.cwasm")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, plugin } => serve(config, listen, plugin),
        Command::Check { file } => check(file),
        Command::Compile { file, output } => compile(file, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_file: Option<PathBuf>, listen: Vec<String>, plugin: Vec<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_file {
        Some(path) => Config::from_file(path)?,
        None if listen.is_empty() && plugin.is_empty() => {
            bail!("nothing to serve: give --config FILE.toml, or --listen ADDR --plugin FILE.wasm pairs")
        }
        None if listen.len() != plugin.len() => {
            bail!("{} --listen but {} --plugin: give them in pairs", listen.len(), plugin.len())
        }
        None => Config::from_pairs(&listen.into_iter().zip(plugin).collect::<Vec<_>>())?,
    };
    // Caught from here on: a signal that comes while the server starts (it may
    // already listen) waits for the signal thread instead of killing the process.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let mut server = Server::new(&config)?;
    let stop = server.stop_handle();
    let control = server.control();
    std::thread::Builder::new()
        .name("sandport-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                match signal {
                    SIGHUP => reload(config_file.as_deref(), &control),
                    _ if stopping => {
                        warn!("second signal: exiting at once");
                        std::process::exit(130);
                    }
                    _ => {
                        info!(signal, "stopping: no new connections; open ones may finish within the grace");
                        stopping = true;
                        stop.stop();
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    server.run().context("event loop failed")?;
    Ok(())
}

/// SIGHUP: re-read the config file and apply it. A file that does not parse changes
/// nothing.
fn reload(config_file: Option<&std::path::Path>, control: &sandport::control::Control) {
    let Some(path) = config_file else {
        return warn!("SIGHUP: nothing to reload (serving --listen/--plugin pairs, not a config file)");
    };
    info!(config = %path.display(), "SIGHUP: reloading the config");
    match Config::from_file(path) {
        Ok(config) => {
            control.reload(&config);
        }
        Err(err) => error!("reload refused, the running config stays: {err}"),
    }
}

fn check(file: PathBuf) -> anyhow::Result<()> {
    let plugin = Runtime::new()?.load(&file)?;
    println!("{}: ok, implements sandport:handler/plugin", file.display());
    let migration = if plugin.migrates() { "migrates open connections" } else { "drains on a swap" };
    println!("live migration: {migration}");
    println!("imports:");
    for name in plugin.imports() {
        println!("  {name}");
    }
    println!("exports:");
    for name in plugin.exports() {
        println!("  {name}");
    }
    Ok(())
}

fn compile(file: PathBuf, output: Option<PathBuf>) -> anyhow::Result<()> {
    let output = output.unwrap_or_else(|| file.with_extension("cwasm"));
    let precompiled = Runtime::new()?.precompile(&file)?;
    // Renamed into place, so a server never reads half a file.
    let dir = output.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".partial-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot write", output.display()))?;
    temporary.write_all(&precompiled).with_context(|| format!("{}: cannot write", output.display()))?;
    temporary.persist(&output).with_context(|| format!("{}: cannot write", output.display()))?;
    println!("{}: compiled to {} ({} bytes)", file.display(), output.display(), precompiled.len());
    Ok(())
}
