//! The `sandport` command: serve plugins, check or precompile one, push one to or pull
//! one from an OCI registry, or ask a running server's admin API for its listeners and
//! to swap or roll back their plugins.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sandport::admin;
use sandport::config::{self, Config, LogFormat};
use sandport::control::{Control, watched, watched_certificates};
use sandport::oci;
use sandport::plugin::Runtime;
use sandport::reactor::StopHandle;
use sandport::scaffold;
use sandport::server::Server;
use sandport::watch;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use admin_client::{AdminArgs, AdminClient};

mod admin_client;

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
    /// Publish a component to an OCI registry in the CNCF wasm layout; prints the
    /// manifest digest.
    Push {
        /// The component to publish (checked to be a component first).
        file: PathBuf,
        /// Where: `oci://HOST[:PORT]/REPOSITORY:TAG`.
        reference: String,
        /// The `org.opencontainers.image.source` annotation: where its source lives.
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// The `org.opencontainers.image.version` annotation.
        #[arg(long = "plugin-version", value_name = "VERSION")]
        version: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Fetch a component from an OCI registry into the store, verify its digests and
    /// check that it implements the handler world.
    Pull {
        /// What: `oci://HOST[:PORT]/REPOSITORY:TAG` or `...@sha256:DIGEST`.
        reference: String,
        /// Also copy the component here.
        #[arg(short, long, value_name = "OUT.wasm")]
        output: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
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

/// How `push` and `pull` reach a registry: the `[oci]` table of a config file, or the
/// defaults, with these flags on top.
#[derive(Args)]
struct RegistryArgs {
    /// Take the `[oci]` table (store, insecure, credentials) from this config file.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Talk plain HTTP to the reference's registry (a registry on loopback, say).
    #[arg(long)]
    insecure: bool,
    /// Where pulled components are kept [default: the config's, else <cache>/oci].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// A Docker `config.json` with credentials [default: $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Log in as this user, with --password-env or --password-file.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// The environment variable holding the password.
    #[arg(long, value_name = "VAR", group = "password")]
    password_env: Option<String>,
    /// The file holding the password.
    #[arg(long, value_name = "FILE", group = "password")]
    password_file: Option<PathBuf>,
    /// The environment variable holding a bearer token.
    #[arg(long, value_name = "VAR", conflicts_with_all = ["username", "token_file"])]
    token_env: Option<String>,
    /// The file holding a bearer token.
    #[arg(long, value_name = "FILE", conflicts_with = "username")]
    token_file: Option<PathBuf>,
    /// How long one registry request may take.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

impl RegistryArgs {
    /// A client for `reference`'s registry, and the reference parsed.
    fn client(self, reference: &str) -> anyhow::Result<(oci::Client, oci::Reference)> {
        let reference: oci::Reference = reference.parse()?;
        let mut settings = match &self.config {
            Some(file) => {
                Config::from_file(file)?
                    .oci
                    .with_context(|| format!("{}: has no [oci] table", file.display()))?
                    .settings
            }
            None => config::OciConfig::defaults()?.settings,
        };
        let registry = reference.registry().to_owned();
        if self.insecure && !settings.insecure.contains(&registry) {
            settings.insecure.push(registry.clone());
        }
        if let Some(store) = self.store {
            settings.store = store;
        }
        if self.docker_config.is_some() {
            settings.docker_config = self.docker_config;
        }
        let secret =
            |env: Option<String>, file: Option<PathBuf>| env.map(oci::Secret::Env).or(file.map(oci::Secret::File));
        if let Some(username) = self.username {
            let password = secret(self.password_env, self.password_file).context("--username needs a password")?;
            settings.auth.insert(registry, oci::Auth::Basic { username, password });
        } else if let Some(token) = secret(self.token_env, self.token_file) {
            settings.auth.insert(registry, oci::Auth::Bearer(token));
        }
        if let Some(ms) = self.timeout_ms {
            settings.timeout = Duration::from_millis(ms);
        }
        Ok((oci::Client::new(settings)?, reference))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, plugin } => serve(config, listen, plugin),
        Command::Check { file } => {
            init_logging(LogFormat::Text);
            check(file)
        }
        Command::Push { file, reference, source, version, registry } => {
            init_logging(LogFormat::Text);
            push(&file, &reference, oci::Annotations { source, version }, registry)
        }
        Command::Pull { reference, output, registry } => {
            init_logging(LogFormat::Text);
            pull(&reference, output, registry)
        }
        Command::Status { admin } => AdminClient::new(admin).and_then(|client| client.status()),
        Command::Swap { name, file, admin } => AdminClient::new(admin).and_then(|client| client.swap(&name, &file)),
        Command::Rollback { name, admin } => AdminClient::new(admin).and_then(|client| client.rollback(&name)),
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

fn push(file: &Path, reference: &str, annotations: oci::Annotations, registry: RegistryArgs) -> anyhow::Result<()> {
    let (client, reference) = registry.client(reference)?;
    // A component that would not load is refused here, not on every node that pulls it;
    // compiled through the default cache, as `check` does.
    let plugin = Runtime::new()?.with_cache(config::default_cache_dir().as_deref()).load(file)?;
    let digest = client.push(file, &reference, &annotations)?;
    eprintln!("{}: pushed to {reference} (sandport:handler/plugin@{})", file.display(), plugin.wit_version());
    println!("{digest}");
    Ok(())
}

fn pull(reference: &str, output: Option<PathBuf>, registry: RegistryArgs) -> anyhow::Result<()> {
    let (client, reference) = registry.client(reference)?;
    let pulled = client.pull(&reference)?;
    let plugin = Runtime::new()?
        .with_cache(config::default_cache_dir().as_deref())
        .load(&pulled.path)
        .with_context(|| format!("{reference} ({}): pulled, but it is not a plugin", pulled.digest))?;
    println!("{reference}: {}", pulled.digest);
    println!("  layer {} ({})", pulled.layer, pulled.media_type);
    println!("  stored at {}", pulled.path.display());
    println!("  implements sandport:handler/plugin@{}", plugin.wit_version());
    if let Some(output) = output {
        std::fs::copy(&pulled.path, &output).with_context(|| format!("{}: cannot write", output.display()))?;
        println!("  copied to {}", output.display());
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
