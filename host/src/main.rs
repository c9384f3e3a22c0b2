//! The `sandport` command: serve plugins, check or precompile one, or ask a running
//! server's admin API for its listeners and to swap or roll back their plugins.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use sandport::admin;
use sandport::config::{self, Config, DEFAULT_ADMIN_ADDRESS, LogFormat};
use sandport::control::{Control, watched, watched_certificates};
use sandport::plugin::Runtime;
use sandport::reactor::StopHandle;
use sandport::scaffold;
use sandport::server::Server;
use sandport::watch;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// The allocator of the static (musl) build, the one the container image carries:
/// with musl's own malloc a fresh connection cost 1.16-1.30x the server CPU it costs
/// with glibc's, with mimalloc 0.90-0.99x (BENCHMARKS.md, "Container image"). glibc
/// builds keep glibc's.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write a new plugin folder that builds with `make` and starts as an echo that
    /// passes the conformance suite.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        /// The new folder; its name names the plugin.
        folder: PathBuf,
    },
    /// Make a certificate to try TLS with on this machine: a local CA (`ca.pem`) and a
    /// certificate it signed for NAMES (`cert.pem`, `key.pem`), in DIR. Files already
    /// there are kept.
    Cert {
        /// The folder to write them to.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The names the certificate is for.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a running server's listeners (through its admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a listener's plugin on a running server with a component file.
    Swap {
        /// The listener.
        name: String,
        /// The new component (uploaded to the server).
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a listener's previous plugin version back on a running server.
    Rollback {
        /// The listener.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is and how to get in.
#[derive(Args)]
struct AdminArgs {
    /// The admin API's address.
    #[arg(long = "admin", value_name = "ADDR", default_value = DEFAULT_ADMIN_ADDRESS)]
    address: String,
    /// Its bearer token [default: $SANDPORT_ADMIN_TOKEN].
    #[arg(long)]
    token: Option<String>,
}

/// The environment variable the client subcommands take the token from.
const TOKEN_ENV: &str = "SANDPORT_ADMIN_TOKEN";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, plugin } => serve(config, listen, plugin),
        Command::Check { file } => {
            init_logging(LogFormat::Text);
            check(file)
        }
        Command::Status { admin } => AdminClient::new(admin).status(),
        Command::Swap { name, file, admin } => AdminClient::new(admin).swap(&name, &file),
        Command::Rollback { name, admin } => AdminClient::new(admin).rollback(&name),
        Command::Compile { file, output } => {
            init_logging(LogFormat::Text);
            compile(file, output)
        }
        Command::New { lang, folder } => new(lang, &folder),
        Command::Cert { dir, names } => sandport::selfsigned::make_if_missing(&dir, &names)
            .map(|dir| {
                println!("certificate for {}: {}/cert.pem, key.pem; its CA: ca.pem", names.join(", "), dir.display())
            })
            .map_err(Into::into),
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
    init_logging(config.log_format);
    // Caught from here on, by a thread started before the server: a stop signal
    // while it starts (compiling can take seconds) ends the process at once, for
    // nothing has been handed to the workers to finish yet.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let started: Arc<Starting> = Arc::default();
    let handler = started.clone();
    let followed_config = config_file.clone().filter(|_| config.watch);
    std::thread::Builder::new()
        .name("sandport-signals".into())
        .spawn(move || on_signals(signals, config_file, &handler))
        .context("cannot start the signal thread")?;
    let mut server = Server::new(&config)?;
    let control = server.control();
    // Started even with nothing to watch, so that a reload can add listeners to it.
    // Not fatal: the listeners already serve, and SIGHUP and the admin API still swap.
    let watcher = match control.follow(watched(&config)) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!("{err}; plugin files are not watched for changes (SIGHUP and the admin API still swap)");
            None
        }
    };
    let certificates = match control.follow_certificates(watched_certificates(&config)) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!("{err}; certificate files are not watched for changes (SIGHUP and the admin API still reload them)");
            None
        }
    };
    let _ = started.server.set(Started { stop: server.stop_handle(), control, watcher, certificates });
    // With `watch = true` the config file itself is followed too (a ConfigMap mounted as
    // a folder, say): a change is a SIGHUP, taken the same way.
    let _config_watcher = followed_config.and_then(|path| {
        let fingerprint: watch::Fingerprint = Arc::new(|path: &std::path::Path| {
            let bytes = sandport::regular_file::read(path, config::MAX_CONFIG).ok().filter(|b| !b.is_empty())?;
            Some(sandport::plugin::content_hash(&bytes))
        });
        let on_change = |_: &str, file: &std::path::Path, _: &str| {
            info!(config = %file.display(), "config file changed: reloading it");
            if let Err(err) = signal_hook::low_level::raise(SIGHUP) {
                warn!("cannot raise SIGHUP to reload the config: {err}");
            }
        };
        watch::Watcher::start(vec![("config".into(), path)], fingerprint, None, on_change)
            .inspect_err(|err| warn!("{err}; the config file is not watched (SIGHUP still reloads it)"))
            .ok()
    });
    info!(workers = config.workers, "ready");
    // Whoever takes the flag acts on it: this thread, or the signal thread if it set
    // the flag after this looked (it looks at the server again after setting it).
    if started.reload_asked.swap(false, Ordering::SeqCst) {
        // Asked while the server started: now the signal thread can do it.
        signal_hook::low_level::raise(SIGHUP).context("cannot raise SIGHUP")?;
    }
    let admin = config.admin.as_ref().map(|admin| admin::serve(admin, server.control())).transpose()?;
    server.run().context("event loop failed")?;
    if let Some(admin) = admin {
        admin.stop();
    }
    Ok(())
}

/// What the signal thread and the starting server share.
#[derive(Default)]
struct Starting {
    /// Set once the server has started.
    server: OnceLock<Started>,
    /// A SIGHUP came while the server started: reload once it has.
    reload_asked: AtomicBool,
}

/// What the signal thread acts on once the server has started.
struct Started {
    stop: StopHandle,
    control: Control,
    watcher: Option<watch::Watcher>,
    /// Watches certificate and key files.
    certificates: Option<watch::Watcher>,
}

/// The signal thread: SIGHUP reloads the config; SIGINT or SIGTERM stops the server
/// (a second one, or one before the server has started, exits at once).
fn on_signals(mut signals: Signals, config_file: Option<PathBuf>, starting: &Starting) {
    let mut stopping = false;
    for signal in signals.forever() {
        match (signal, starting.server.get()) {
            (SIGHUP, Some(started)) => reload(config_file.as_deref(), started),
            (SIGHUP, None) => {
                info!("SIGHUP while starting: the config is reloaded once the server has started");
                starting.reload_asked.store(true, Ordering::SeqCst);
                if let Some(started) = starting.server.get()
                    && starting.reload_asked.swap(false, Ordering::SeqCst)
                {
                    reload(config_file.as_deref(), started);
                }
            }
            (_, None) => {
                warn!(signal, "stopping while starting: exiting at once");
                std::process::exit(1);
            }
            _ if stopping => {
                warn!("second signal: exiting at once");
                std::process::exit(130);
            }
            (_, Some(started)) => {
                info!(signal, "stopping: no new connections; open ones may finish within the grace");
                stopping = true;
                started.stop.stop();
            }
        }
    }
}

/// Log to stderr, as text (coloured on a terminal) or as one JSON object a line with
/// each event's fields (listener, conn, ...) at the top level. `RUST_LOG` filters;
/// by default rustls says only errors: its warnings are about one peer's connection
/// (a refused renegotiation), outside the rate limit on lines about connections, and
/// the host counts those peers itself.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    // A log line that cannot be written (stderr closed: whoever read it is gone) is
    // lost, not reported on that same stderr, whose failing `eprintln!` would panic the
    // thread that logged: the signal thread's panic would leave SIGTERM unanswered.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}

/// SIGHUP: re-read the config file and apply it. A file that does not parse changes
/// nothing.
fn reload(config_file: Option<&Path>, started: &Started) {
    let (control, watcher) = (&started.control, started.watcher.as_ref());
    let Some(path) = config_file else {
        return warn!("SIGHUP: nothing to reload (serving --listen/--plugin pairs, not a config file)");
    };
    info!(config = %path.display(), "SIGHUP: reloading the config");
    match Config::from_file(path) {
        Ok(config) => {
            control.reload(&config);
            if let Some(Err(err)) = watcher.map(|watcher| watcher.set(watched(&config))) {
                warn!("cannot watch the reloaded config's plugin files: {err}");
            }
            if let Some(Err(err)) = started.certificates.as_ref().map(|w| w.set(watched_certificates(&config))) {
                warn!("cannot watch the reloaded config's certificate files: {err}");
            }
        }
        Err(err) => error!("reload refused, the running config stays: {err}"),
    }
}

fn check(file: PathBuf) -> anyhow::Result<()> {
    // Through the default cache: a server started next loads what `check` compiled.
    let plugin = Runtime::new()?.with_cache(config::default_cache_dir().as_deref()).load(&file)?;
    println!("{}: ok, implements sandport:handler/plugin@{}", file.display(), plugin.wit_version());
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

fn new(lang: scaffold::Lang, folder: &Path) -> anyhow::Result<()> {
    let name = scaffold::create(lang, folder)?;
    println!("{}: a {lang} plugin `{name}`, an echo to start from. Next:", folder.display());
    println!("  cd {} && make && sandport serve --config sandport.toml", folder.display());
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

/// The client side of the admin API, for the `status`, `swap` and `rollback`
/// subcommands.
struct AdminClient {
    address: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    fn new(args: AdminArgs) -> AdminClient {
        let config = ureq::Agent::config_builder()
            // Every answer is read: a refusal's body says why.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build();
        let token = args.token.or_else(|| std::env::var(TOKEN_ENV).ok()).filter(|token| !token.is_empty());
        AdminClient { address: args.address, token, agent: config.into() }
    }

    fn status(&self) -> anyhow::Result<()> {
        let answer = self.answer(self.authorize(self.agent.get(self.url("/listeners"))).call(), "/listeners")?;
        let listeners = answer.ok()?;
        let listeners = listeners.as_array().context("the admin API's /listeners is not a list")?;
        for l in listeners {
            let hash = l["hash"].as_str().unwrap_or("");
            let connections = &l["connections"];
            let total = connections["accepted"].as_u64().unwrap_or(0) + connections["dialed"].as_u64().unwrap_or(0);
            println!(
                "{name}  {address}  v{version} {hash}  {instance}  open {open}/{total}  swaps {swaps}",
                name = text(&l["name"]),
                address = text(&l["address"]),
                version = l["version"],
                hash = &hash[..hash.len().min(12)],
                instance = text(&l["instance"]),
                open = l["open"],
                swaps = l["swaps"],
            );
        }
        Ok(())
    }

    fn swap(&self, name: &str, file: &Path) -> anyhow::Result<()> {
        let bytes = sandport::plugin::read_component(file)?;
        let path = format!("/listeners/{name}/plugin");
        let request = self.authorize(self.agent.put(self.url(&path))).header("Content-Type", "application/wasm");
        self.answer(request.send(&bytes[..]), &path)?.report(name)
    }

    fn rollback(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/listeners/{name}/rollback");
        self.answer(self.authorize(self.agent.post(self.url(&path))).send_empty(), &path)?.report(name)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// The JSON answer to a request sent to `path`.
    fn answer(
        &self,
        outcome: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        path: &str,
    ) -> anyhow::Result<Answer> {
        let no_api = || format!("no admin API at {}: is the server running with an [admin] table?", self.address);
        let mut response = outcome.with_context(no_api)?;
        let status = response.status().as_u16();
        if status == 401 {
            bail!("the admin API at {} wants its token: give --token or set {TOKEN_ENV}", self.address);
        }
        let body = response
            .body_mut()
            .read_json()
            .with_context(|| format!("{}{path}: the answer ({status}) is not JSON", self.address))?;
        Ok(Answer { status, body })
    }
}

/// A status code and the JSON that came with it.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Answer {
    /// The body of a 200, or the error the API gave.
    fn ok(self) -> anyhow::Result<serde_json::Value> {
        match self.status {
            200 => Ok(self.body),
            _ => Err(self.error()),
        }
    }

    /// The error the API gave, with its status.
    fn error(&self) -> anyhow::Error {
        anyhow!("the admin API answered {}: {}", self.status, text(&self.body["error"]))
    }

    /// Print what became of a swap or rollback; an error when it did not take over.
    fn report(self, name: &str) -> anyhow::Result<()> {
        let serving = &self.body["serving"];
        let hash = serving["hash"].as_str().unwrap_or("");
        let version = format!("version {} ({})", serving["number"], &hash[..hash.len().min(12)]);
        match self.status {
            200 => {
                let (migrated, draining) = (&self.body["migrated"], &self.body["draining"]);
                println!("{name}: {version} took over; {migrated} connections migrated, {draining} draining");
                Ok(())
            }
            422 => bail!("{name}: refused: {}; {version} still serving", text(&self.body["refused"])),
            _ => Err(self.error()),
        }
    }
}

/// A JSON string as text (other values as JSON).
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
