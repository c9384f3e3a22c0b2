//! Configuration: a TOML file (or command-line pairs) turned into a validated
//! [`Config`], whose listeners are [`ListenerSpec`]s.
//!
//! This module owns parsing and validation, and nothing else: it never opens a socket
//! or loads a plugin, so every mistake in a file is reported before anything starts.
//! The words it parses into (limits, instance modes, rollback rules) are the
//! [`listener`](crate::listener) module's, which the rest of the host speaks too.
//! Its tests, a third of the file, read best beside the parser they try.
//!
//! ```toml
//! workers = 2                                         # event loops; default: one per CPU
//! cache-dir = "/var/cache/sandport"                   # compiled components; false: none
//! watch = false                                       # swap plugins when their files change
//! log-format = "text"                                 # or "json": one JSON object a line
//! shutdown-grace-ms = 5000                            # SIGTERM: let connections finish
//!
//! [admin]                                             # the admin API; off without this table
//! listen = "127.0.0.1:9901"                           # or "unix:/run/sandport/admin.sock" (mode 0600)
//! tls-cert = "/etc/sandport/admin/tls.crt"            # HTTPS with a certificate of its own: required
//! tls-key = "/etc/sandport/admin/tls.key"             #   (with a token) when `listen` is beyond loopback
//! health-address = "0.0.0.0:9902"                    # plain HTTP, /healthz and /readyz only
//! token-env = "SANDPORT_ADMIN_TOKEN"                  # or token = "..."
//!
//! [oci]                                               # plugins pulled from OCI registries
//! store = "/var/lib/sandport/oci"                     # by digest; default: <cache-dir>/oci
//! insecure = ["127.0.0.1:5000"]                       # plain HTTP, for these registries only
//! docker-config = "/etc/sandport/docker/config.json"  # default: $DOCKER_CONFIG, ~/.docker
//! timeout-ms = 30000                                  # one registry request
//! start-timeout-ms = 60000                            # a start retries a registry this long
//!
//! [oci.auth."registry.example.com"]                   # beats the Docker config
//! username = "bot"
//! password-env = "REGISTRY_PASSWORD"                  # or password-file; or token-env, token-file
//!
//! [[listener]]
//! name = "echo"
//! address = "127.0.0.1:7000"
//! plugin = "target/wasm32-wasip2/plugin/echo.wasm"   # relative to this file; or
//!                                                     # "oci://HOST[:PORT]/REPO:TAG" (or @sha256:...)
//! follow-ms = 30000                                   # oci: look at the tag this often
//! offline = "fail"                                    # oci: "last-pulled" serves the stored one
//! poll-interval-ms = 1000                             # optional: POLL events
//! instance = "shared"                                 # or "per-worker", "per-connection"
//! allow-connect = ["127.0.0.1:9000"]                  # outbound `connect` targets
//! watch = true                                        # overrides the top-level `watch`
//! drain-timeout-ms = 30000                            # old versions' connections, after a swap
//! rollback-faults = 10                                # more faults than this after a swap...
//! rollback-window-ms = 60000                          # ...within this: back to the previous version (0: never)
//!
//! [listener.recycle]                                  # replace a worn instance by a fresh one
//! memory = "75%"                                      # of limits.memory; any bound passed is enough
//! events = 1000000
//! age-ms = 3600000
//!
//! [listener.limits]
//! recv-buffer = "1 MiB"
//! send-buffer = "1 MiB"
//! event-timeout-ms = 100                             # CPU time per event
//! event-wall-timeout-ms = 1000                        # wall-clock ceiling per event
//! memory = "64 MiB"
//! max-timers = 64
//! max-connections = 1024
//! idle-timeout-ms = 60000
//! log-rate = "64 KiB"                                 # per second
//! linger-ms = 5000
//!
//! [listener.config]                                   # read by the plugin
//! upstream = "127.0.0.1:9000"
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::listener::{
    Artifact, ClientAuth, DEFAULT_DRAIN_TIMEOUT, InstanceMode, Limits, ListenerSpec, Offline, Recycle, Rollback,
    Termination, Tls, Upstream, UpstreamTls,
};
use crate::oci;
use crate::regular_file::{self, ReadError};

/// The largest config file read: a file of ten thousand listeners fits many times, a
/// device that never ends (or a FIFO, refused before any read) does not.
pub const MAX_CONFIG: u64 = 64 << 20;

/// How log lines are written (`log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The admin API (`[admin]`): where it listens, how, and the token it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the API listens (`listen`, or its old name `address`; default
    /// [`DEFAULT_ADMIN_ADDRESS`]).
    pub listen: AdminListen,
    /// A plain-HTTP address that answers `/healthz` and `/readyz` and nothing else
    /// (`health-address`): for probes that carry no token and no CA, such as the
    /// kubelet's, while the API itself is HTTPS or a Unix socket.
    pub health_address: Option<SocketAddr>,
    /// The bearer token every request must carry (`token`, or the environment
    /// variable named by `token-env`). Required unless the API listens on a loopback
    /// address or a Unix socket.
    pub token: Option<String>,
}

/// Where and how the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A TCP address: plain HTTP on loopback only; beyond it, HTTPS.
    Tcp {
        /// The address.
        address: SocketAddr,
        /// Its own certificate and key (`tls-cert`, `tls-key`), for HTTPS.
        tls: Option<AdminTls>,
    },
    /// A Unix socket (`unix:/path`), made mode 0600: whoever may open it may
    /// administer, so the file's owner is the access control.
    Unix(PathBuf),
}

/// The admin API's own certificate chain and key, PEM files (a Kubernetes
/// `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Where the admin API listens unless `[admin] listen` says otherwise, and where the
/// client subcommands look for it.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// How long SIGTERM lets open connections finish, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Event loops (`workers`), each on its own thread: by default as many as the
    /// process may use CPUs.
    pub workers: usize,
    /// The listeners, in file order. Never empty.
    pub listeners: Vec<ListenerSpec>,
    /// Where compiled components are kept (`cache-dir`): by default
    /// `$XDG_CACHE_HOME/sandport` or `~/.cache/sandport`; `None` (`cache-dir = false`,
    /// or no home to put it in): compile every time.
    pub cache_dir: Option<PathBuf>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// After SIGTERM, how long open connections may go on before they are closed
    /// (`shutdown-grace-ms`).
    pub shutdown_grace: Duration,
    /// The admin API, if the file has an `[admin]` table.
    pub admin: Option<AdminConfig>,
    /// The top-level `watch`: besides being each listener's default, it has the
    /// config file itself followed (a change reloads it, as SIGHUP does).
    pub watch: bool,
    /// How plugins are pulled from OCI registries (`[oci]`); present when the file
    /// has the table or a listener's plugin is an `oci://` reference.
    pub oci: Option<OciConfig>,
}

/// The `[oci]` table: the registry client's settings, and how long a start waits for
/// a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciConfig {
    /// Where components are stored by digest, how registries are reached and with what
    /// credentials.
    pub settings: oci::Settings,
    /// At start, how long a listener whose registry fails keeps retrying before the
    /// server gives up (`start-timeout-ms`), unless it may serve its last pull.
    pub start_timeout: Duration,
}

/// How long one registry request may take, by default.
pub const DEFAULT_OCI_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a start retries a registry, by default.
pub const DEFAULT_OCI_START_TIMEOUT: Duration = Duration::from_secs(60);

/// What is wrong with a configuration. The message names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: missing, not a regular file, larger than
    /// [`MAX_CONFIG`], or not UTF-8.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: ReadError,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the mistake.
        line: usize,
        /// 1-based column of the mistake.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The shape is right but a value is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The config file, or `command line`.
        path: PathBuf,
        /// What is wrong, naming the listener.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "kebab-case")]
struct FileToml {
    workers: Option<usize>,
    cache_dir: Option<CacheDirToml>,
    #[serde(default)]
    watch: bool,
    #[serde(default)]
    log_format: LogFormat,
    shutdown_grace_ms: Option<u64>,
    admin: Option<AdminToml>,
    oci: Option<OciToml>,
    #[serde(default)]
    listener: Vec<ListenerToml>,
}

/// `[oci]`: where pulled plugins are kept and how registries are reached.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct OciToml {
    store: Option<PathBuf>,
    #[serde(default)]
    insecure: Vec<String>,
    docker_config: Option<PathBuf>,
    timeout_ms: Option<u64>,
    start_timeout_ms: Option<u64>,
    #[serde(default)]
    auth: BTreeMap<String, AuthToml>,
}

/// `[oci.auth."REGISTRY"]`: a user and password, or a bearer token, each given in the
/// environment or in a file (never in the config itself, which is often world-readable).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AuthToml {
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

/// `cache-dir = "path"`, or `cache-dir = false` for none.
#[derive(Deserialize)]
#[serde(untagged)]
enum CacheDirToml {
    Path(PathBuf),
    Enabled(bool),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AdminToml {
    #[serde(alias = "address")]
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    health_address: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ListenerToml {
    name: String,
    address: String,
    plugin: String,
    follow_ms: Option<u64>,
    offline: Option<Offline>,
    poll_interval_ms: Option<u64>,
    #[serde(default)]
    instance: InstanceMode,
    #[serde(default)]
    allow_connect: Vec<UpstreamToml>,
    #[serde(default)]
    server_names: Vec<String>,
    #[serde(default)]
    default: bool,
    tls: Option<TlsToml>,
    #[serde(default)]
    proxy_protocol: Vec<String>,
    watch: Option<bool>,
    drain_timeout_ms: Option<u64>,
    rollback_faults: Option<u64>,
    rollback_window_ms: Option<u64>,
    #[serde(default)]
    limits: LimitsToml,
    #[serde(default)]
    recycle: RecycleToml,
    #[serde(default)]
    config: toml::Table,
}

/// `[listener.recycle]`: when an instance is replaced by a fresh one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RecycleToml {
    memory: Option<String>,
    events: Option<u64>,
    age_ms: Option<u64>,
}

impl RecycleToml {
    fn validate(self, name: &str) -> Result<Recycle, String> {
        let memory = self
            .memory
            .map(|text| {
                let share = text.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok());
                match share {
                    Some(percent) if percent > 0.0 && percent <= 100.0 => Ok(percent / 100.0),
                    _ => Err(format!(
                        "listener `{name}`: recycle.memory must be a share of limits.memory above 0% and at most 100% (e.g. \"75%\"), not `{text}`"
                    )),
                }
            })
            .transpose()?;
        let positive = |key: &str, value: Option<u64>| match value {
            Some(0) => Err(format!("listener `{name}`: recycle.{key} must be greater than 0")),
            value => Ok(value),
        };
        Ok(Recycle {
            memory,
            events: positive("events", self.events)?,
            age: positive("age-ms", self.age_ms)?.map(Duration::from_millis),
        })
    }
}

/// `[listener.tls]`: a certificate to end TLS with, or `passthrough = true`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsToml {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    alpn: Vec<String>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuthToml>,
    #[serde(default)]
    passthrough: bool,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum ClientAuthToml {
    Required,
    Optional,
}

/// An `allow-connect` entry: `"IP:PORT"`, or a table for an upstream over TLS.
#[derive(Deserialize)]
#[serde(untagged)]
enum UpstreamToml {
    Plain(String),
    Table(UpstreamTableToml),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UpstreamTableToml {
    address: String,
    #[serde(default)]
    tls: bool,
    server_name: Option<String>,
    ca: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LimitsToml {
    recv_buffer: Option<ByteSize>,
    send_buffer: Option<ByteSize>,
    event_timeout_ms: Option<u64>,
    event_wall_timeout_ms: Option<u64>,
    memory: Option<ByteSize>,
    max_timers: Option<u64>,
    max_connections: Option<u64>,
    idle_timeout_ms: Option<u64>,
    log_rate: Option<ByteSize>,
    linger_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_handshakes: Option<u64>,
    migrate_state: Option<ByteSize>,
}

impl Config {
    /// Read and validate a config file. Plugin paths are resolved against the
    /// file's folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_owned(), source };
        let bytes = regular_file::read(path, MAX_CONFIG).map_err(read)?;
        let text = String::from_utf8(bytes)
            .map_err(|err| read(ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, err))))?;
        Config::from_toml(&text, path)
    }

    /// Validate config text as if it were read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: FileToml = toml::from_str(text).map_err(|err| {
            let (line, column) = err.span().map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Syntax { path: path.to_owned(), line, column, message: err.message().trim().to_owned() }
        })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let base = path.parent().unwrap_or(Path::new(""));
        let watch = file.watch;
        let listeners = file
            .listener
            .into_iter()
            .map(|l| l.validate(base, watch).map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = Config::new(listeners).map_err(invalid)?;
        match file.workers {
            Some(0) => return Err(invalid("workers must be greater than 0".into())),
            Some(workers) => config.workers = workers,
            None => {}
        }
        config.cache_dir = match file.cache_dir {
            None | Some(CacheDirToml::Enabled(true)) => default_cache_dir(),
            Some(CacheDirToml::Enabled(false)) => None,
            Some(CacheDirToml::Path(dir)) => Some(base.join(dir)),
        };
        config.log_format = file.log_format;
        config.watch = watch;
        if let Some(ms) = file.shutdown_grace_ms {
            config.shutdown_grace = Duration::from_millis(ms);
        }
        config.admin = file.admin.map(|admin| admin.validate(base)).transpose().map_err(invalid)?;
        let pulls = config.listeners.iter().any(|l| l.artifact.is_some());
        if file.oci.is_some() || pulls {
            let oci = file.oci.unwrap_or_default().validate(base, config.cache_dir.as_deref()).map_err(invalid)?;
            config.oci = Some(oci);
        }
        Ok(config)
    }

    /// Listeners from `--listen ADDR --plugin FILE` pairs, with default limits. Each
    /// is named after its plugin file.
    pub fn from_pairs(pairs: &[(String, PathBuf)]) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: "command line".into(), message };
        let mut listeners = Vec::new();
        for (address, plugin) in pairs {
            let stem = plugin.file_stem().and_then(|s| s.to_str()).unwrap_or("listener");
            let free = |name: &String| !listeners.iter().any(|l: &ListenerSpec| l.name == *name);
            let name = std::iter::once(stem.to_owned())
                .chain((2..).map(|n| format!("{stem}-{n}")))
                .find(free)
                .expect("some numbered name is free");
            let address = parse_address(&name, address).map_err(invalid)?;
            let text = plugin.to_string_lossy();
            let (plugin, artifact) = plugin_source(&name, &text, Path::new(""), None, None).map_err(invalid)?;
            listeners.push(ListenerSpec { plugin, artifact, ..ListenerSpec::new(&name, address) });
        }
        let mut config = Config::new(listeners).map_err(invalid)?;
        if config.listeners.iter().any(|l| l.artifact.is_some()) {
            let oci = OciToml::default().validate(Path::new(""), config.cache_dir.as_deref()).map_err(invalid)?;
            config.oci = Some(oci);
        }
        Ok(config)
    }

    fn new(listeners: Vec<ListenerSpec>) -> Result<Config, String> {
        if listeners.is_empty() {
            return Err("no listeners: add a [[listener]] table".into());
        }
        let mut names = HashSet::new();
        for l in &listeners {
            if !names.insert(&l.name) {
                return Err(format!("listener name `{}` is used twice", l.name));
            }
        }
        check_shared_addresses(&listeners)?;
        Ok(Config {
            workers: default_workers(),
            listeners,
            cache_dir: default_cache_dir(),
            log_format: LogFormat::Text,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            admin: None,
            watch: false,
            oci: None,
        })
    }
}

/// Listeners share an address only to be chosen by the TLS server name: each with
/// [`Tls`], each naming its `server-names` or being the default, no name served twice,
/// one default at most, and one PROXY protocol rule for the address.
fn check_shared_addresses(listeners: &[ListenerSpec]) -> Result<(), String> {
    let mut by_address: HashMap<SocketAddr, Vec<&ListenerSpec>> = HashMap::new();
    for l in listeners.iter().filter(|l| l.address.port() != 0) {
        by_address.entry(l.address).or_default().push(l);
    }
    for (address, sharing) in by_address.iter().filter(|(_, sharing)| sharing.len() > 1) {
        let first = sharing[0];
        for l in sharing {
            if l.tls.is_none() {
                return Err(format!(
                    "listeners `{}` and `{}` both use address {address}: an address is shared only by TLS listeners chosen by server name ([listener.tls] and server-names)",
                    sharing[0].name, sharing[1].name
                ));
            }
            if l.server_names.is_empty() && !l.default_server {
                return Err(format!(
                    "listener `{}` shares address {address} with `{}`: give it server-names, or make it the default",
                    l.name, first.name
                ));
            }
            if l.proxy_protocol != first.proxy_protocol {
                return Err(format!(
                    "listeners `{}` and `{}` share address {address} but not proxy-protocol: the header comes before the server name, so the address has one rule",
                    first.name, l.name
                ));
            }
        }
        let mut served: HashMap<&str, &str> = HashMap::new();
        let mut default: Option<&str> = None;
        for l in sharing {
            for server in &l.server_names {
                if let Some(other) = served.insert(server, &l.name) {
                    return Err(format!(
                        "server name `{server}` is served by both `{other}` and `{}` on address {address}",
                        l.name
                    ));
                }
            }
            if l.default_server
                && let Some(other) = default.replace(&l.name)
            {
                return Err(format!("listeners `{other}` and `{}` are both the default of address {address}", l.name));
            }
        }
    }
    Ok(())
}

/// The compiled-component cache a config without `cache-dir` uses:
/// `$XDG_CACHE_HOME/sandport`, else `$HOME/.cache/sandport`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from);
    let home = || std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(|home| Path::new(&home).join(".cache"));
    xdg.or_else(home).map(|dir| dir.join("sandport"))
}

impl AdminToml {
    fn validate(self, base: &Path) -> Result<AdminConfig, String> {
        let text = self.listen.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS).trim();
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(certificate), Some(key)) => {
                Some(AdminTls { certificate: base.join(certificate), key: base.join(key) })
            }
            (None, None) => None,
            _ => return Err("admin: give tls-cert and tls-key together".into()),
        };
        let listen = match text.strip_prefix("unix:") {
            Some("") => return Err("admin.listen `unix:` names no socket: give unix:/path/to/admin.sock".into()),
            Some(_) if tls.is_some() => {
                return Err("admin: tls-cert and tls-key are for a TCP address, not a unix: socket".into());
            }
            Some(path) => AdminListen::Unix(base.join(path)),
            None => {
                let address = text.parse().map_err(|_| {
                    format!(
                        "admin.listen `{text}` is neither IP:PORT (e.g. {DEFAULT_ADMIN_ADDRESS}) nor unix:/path/to/admin.sock"
                    )
                })?;
                AdminListen::Tcp { address, tls }
            }
        };
        let health_address = self
            .health_address
            .map(|text| {
                text.trim()
                    .parse()
                    .map_err(|_| format!("admin.health-address `{text}` is not IP:PORT (e.g. 0.0.0.0:9902)"))
            })
            .transpose()?;
        let token =
            match (self.token, self.token_env) {
                (Some(_), Some(_)) => return Err("admin: give token or token-env, not both".into()),
                (Some(token), None) => Some(token),
                (None, Some(var)) => Some(std::env::var(&var).map_err(|_| {
                    format!("admin.token-env: the environment variable `{var}` is not set (or not UTF-8)")
                })?),
                (None, None) => None,
            };
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("admin: the token is empty".into());
        }
        if let AdminListen::Tcp { address, tls } = &listen
            && !address.ip().is_loopback()
        {
            // A bearer token sent in plain HTTP can be read by anyone on the way.
            if tls.is_none() {
                return Err(format!(
                    "admin.listen {address} is reachable beyond this machine over plain HTTP, where the token \
                     would cross the network in the clear: give admin.tls-cert and admin.tls-key (HTTPS), or \
                     listen on a loopback address or a unix:/path socket"
                ));
            }
            if token.is_none() {
                return Err(format!(
                    "admin.listen {address} is reachable beyond this machine: set admin.token or admin.token-env"
                ));
            }
        }
        Ok(AdminConfig { listen, health_address, token })
    }
}

/// As many workers as the process may use CPUs (at least one).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ListenerToml {
    fn validate(self, base: &Path, watch: bool) -> Result<ListenerSpec, String> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err("a listener has an empty name".into());
        }
        let defaults = Limits::default();
        let l = self.limits;
        let positive = |key: &str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(format!("listener `{name}`: limits.{key} must be greater than 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let millis = |key: &str, value: Option<u64>, default: Duration| {
            positive(key, value, default.as_millis() as u64).map(Duration::from_millis)
        };
        let bytes = |key: &str, value: Option<ByteSize>, default: usize| {
            let v = positive(key, value.map(|b| b.as_u64()), default as u64)?;
            usize::try_from(v).map_err(|_| format!("listener `{name}`: limits.{key} is too large"))
        };
        let limits = Limits {
            recv_buffer: bytes("recv-buffer", l.recv_buffer, defaults.recv_buffer)?,
            send_buffer: bytes("send-buffer", l.send_buffer, defaults.send_buffer)?,
            event_timeout: millis("event-timeout-ms", l.event_timeout_ms, defaults.event_timeout)?,
            event_wall_timeout: millis("event-wall-timeout-ms", l.event_wall_timeout_ms, defaults.event_wall_timeout)?,
            memory: bytes("memory", l.memory, defaults.memory)?,
            max_timers: positive("max-timers", l.max_timers, defaults.max_timers as u64)? as usize,
            max_connections: positive("max-connections", l.max_connections, defaults.max_connections as u64)? as usize,
            idle_timeout: millis("idle-timeout-ms", l.idle_timeout_ms, defaults.idle_timeout)?,
            log_rate: bytes("log-rate", l.log_rate, defaults.log_rate)?,
            linger: millis("linger-ms", l.linger_ms, defaults.linger)?,
            handshake_timeout: millis("handshake-timeout-ms", l.handshake_timeout_ms, defaults.handshake_timeout)?,
            max_handshakes: positive("max-handshakes", l.max_handshakes, defaults.max_handshakes as u64)? as usize,
            migrate_state: bytes("migrate-state", l.migrate_state, defaults.migrate_state)?,
        };
        for (key, value) in [("recv-buffer", limits.recv_buffer), ("send-buffer", limits.send_buffer)] {
            if value > u32::MAX as usize {
                return Err(format!("listener `{name}`: limits.{key} must be below 4 GiB"));
            }
        }
        let poll_interval = match self.poll_interval_ms {
            Some(0) => return Err(format!("listener `{name}`: poll-interval-ms must be greater than 0")),
            ms => ms.map(Duration::from_millis),
        };
        let allow_connect = self
            .allow_connect
            .into_iter()
            .map(|entry| entry.validate(&name, base))
            .collect::<Result<Vec<Upstream>, String>>()?;
        let tls = self.tls.map(|tls| tls.validate(&name, base)).transpose()?;
        let server_names = self
            .server_names
            .iter()
            .map(|server| server_name(&name, server))
            .collect::<Result<Vec<String>, String>>()?;
        if tls.is_none() && (!server_names.is_empty() || self.default) {
            return Err(format!(
                "listener `{name}`: server-names and default choose by the TLS server name: add [listener.tls]"
            ));
        }
        let proxy_protocol = self
            .proxy_protocol
            .iter()
            .map(|from| {
                let from = from.trim();
                from.parse::<ipnet::IpNet>()
                    .or_else(|_| from.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("listener `{name}`: proxy-protocol entry `{from}` is not an IP address or a CIDR block (e.g. 10.0.0.0/8)")
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let settings = self
            .config
            .into_iter()
            .map(|(key, value)| match value {
                toml::Value::String(text) => Ok((key, text)),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    Ok((key, value.to_string()))
                }
                _ => Err(format!("listener `{name}`: config.{key} must be a string, a number or a boolean")),
            })
            .collect::<Result<_, String>>()?;
        let rollback = match (self.rollback_faults, self.rollback_window_ms) {
            (_, Some(0)) => None,
            (faults, window) => {
                let defaults = Rollback::default();
                Some(Rollback {
                    faults: faults.unwrap_or(defaults.faults),
                    window: window.map_or(defaults.window, Duration::from_millis),
                })
            }
        };
        let recycle = self.recycle.validate(&name)?;
        let (plugin, artifact) = plugin_source(&name, &self.plugin, base, self.follow_ms, self.offline)?;
        Ok(ListenerSpec {
            address: parse_address(&name, &self.address)?,
            plugin,
            artifact,
            settings,
            watch: self.watch.unwrap_or(watch),
            poll_interval,
            limits,
            instance: self.instance,
            allow_connect,
            server_names,
            default_server: self.default,
            tls,
            proxy_protocol,
            drain_timeout: self.drain_timeout_ms.map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_millis),
            rollback,
            recycle,
            name,
        })
    }
}

/// A listener's `plugin`: a file, resolved against `base`, or an `oci://` reference
/// (whose file is known once pulled), with `follow-ms` and `offline`, which only a
/// reference takes.
fn plugin_source(
    name: &str,
    plugin: &str,
    base: &Path,
    follow_ms: Option<u64>,
    offline: Option<Offline>,
) -> Result<(PathBuf, Option<Artifact>), String> {
    if !plugin.starts_with(oci::SCHEME) {
        if let Some(key) = [("follow-ms", follow_ms.is_some()), ("offline", offline.is_some())].iter().find(|k| k.1) {
            return Err(format!("listener `{name}`: {} is for a plugin pulled from a registry (oci://...)", key.0));
        }
        return Ok((base.join(plugin), None));
    }
    let reference: oci::Reference = plugin.parse().map_err(|err| format!("listener `{name}`: {err}"))?;
    let follow = match follow_ms {
        Some(0) => return Err(format!("listener `{name}`: follow-ms must be greater than 0")),
        Some(_) if reference.is_pinned() => {
            return Err(format!(
                "listener `{name}`: follow-ms follows a tag, but `{reference}` names a digest, which never moves"
            ));
        }
        ms => ms.map(Duration::from_millis),
    };
    Ok((PathBuf::new(), Some(Artifact { reference, follow, offline: offline.unwrap_or_default() })))
}

impl OciConfig {
    /// The `[oci]` settings of a config without the table: the store under the
    /// default cache folder, every registry over HTTPS, the Docker config's credentials.
    pub fn defaults() -> Result<OciConfig, ConfigError> {
        OciToml::default()
            .validate(Path::new(""), default_cache_dir().as_deref())
            .map_err(|message| ConfigError::Invalid { path: "command line".into(), message })
    }
}

impl OciToml {
    fn validate(self, base: &Path, cache_dir: Option<&Path>) -> Result<OciConfig, String> {
        let store = match (self.store, cache_dir) {
            (Some(store), _) => base.join(store),
            (None, Some(cache)) => cache.join("oci"),
            (None, None) => {
                return Err(
                    "oci: plugins pulled from a registry are kept in a store: set oci.store (there is no cache-dir to put it in)"
                        .into(),
                );
            }
        };
        let millis = |key: &str, value: Option<u64>, default: Duration| match value {
            Some(0) => Err(format!("oci.{key} must be greater than 0")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(default),
        };
        let auth = self
            .auth
            .into_iter()
            .map(|(registry, auth)| Ok((registry.clone(), auth.validate(&registry, base)?)))
            .collect::<Result<_, String>>()?;
        Ok(OciConfig {
            settings: oci::Settings {
                store,
                insecure: self.insecure,
                docker_config: self.docker_config.map(|file| base.join(file)),
                auth,
                timeout: millis("timeout-ms", self.timeout_ms, DEFAULT_OCI_TIMEOUT)?,
            },
            start_timeout: millis("start-timeout-ms", self.start_timeout_ms, DEFAULT_OCI_START_TIMEOUT)?,
        })
    }
}

impl AuthToml {
    fn validate(self, registry: &str, base: &Path) -> Result<oci::Auth, String> {
        let secret = |env: Option<String>, file: Option<PathBuf>, what: &str| match (env, file) {
            (Some(var), None) => Ok(Some(oci::Secret::Env(var))),
            (None, Some(file)) => Ok(Some(oci::Secret::File(base.join(file)))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(format!("oci.auth.\"{registry}\": give {what}-env or {what}-file, not both")),
        };
        let password = secret(self.password_env, self.password_file, "password")?;
        let token = secret(self.token_env, self.token_file, "token")?;
        match (self.username, password, token) {
            (Some(username), Some(password), None) => Ok(oci::Auth::Basic { username, password }),
            (None, None, Some(token)) => Ok(oci::Auth::Bearer(token)),
            _ => Err(format!(
                "oci.auth.\"{registry}\": give username with password-env or password-file, or token-env or token-file"
            )),
        }
    }
}

impl TlsToml {
    fn validate(self, name: &str, base: &Path) -> Result<Tls, String> {
        if self.passthrough {
            let extra = [
                ("certificate", self.certificate.is_some()),
                ("key", self.key.is_some()),
                ("alpn", !self.alpn.is_empty()),
                ("client-ca", self.client_ca.is_some()),
                ("client-auth", self.client_auth.is_some()),
            ];
            if let Some((key, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "listener `{name}`: tls.{key} has no meaning with tls.passthrough: the upstream ends TLS"
                ));
            }
            return Ok(Tls::Passthrough);
        }
        let (Some(certificate), Some(key)) = (self.certificate, self.key) else {
            return Err(format!(
                "listener `{name}`: [listener.tls] needs certificate and key (PEM files), or passthrough = true"
            ));
        };
        if let Some(protocol) = self.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            return Err(format!("listener `{name}`: tls.alpn entry `{protocol}` must be 1 to 255 bytes"));
        }
        let client_auth = match (self.client_ca, self.client_auth) {
            (None, None) => None,
            (None, Some(_)) => return Err(format!("listener `{name}`: tls.client-auth needs tls.client-ca")),
            (Some(ca), auth) => {
                Some(ClientAuth { ca: base.join(ca), required: !matches!(auth, Some(ClientAuthToml::Optional)) })
            }
        };
        Ok(Tls::Terminate(Termination {
            certificate: base.join(certificate),
            key: base.join(key),
            alpn: self.alpn,
            client_auth,
        }))
    }
}

impl UpstreamToml {
    fn validate(self, name: &str, base: &Path) -> Result<Upstream, String> {
        let parse = |address: &str| {
            address.trim().parse::<SocketAddr>().map_err(|_| {
                format!("listener `{name}`: allow-connect entry `{address}` is not IP:PORT (e.g. 127.0.0.1:9000)")
            })
        };
        match self {
            UpstreamToml::Plain(address) => parse(&address).map(Upstream::from),
            UpstreamToml::Table(table) => {
                let address = parse(&table.address)?;
                if !table.tls {
                    if table.server_name.is_some() || table.ca.is_some() {
                        return Err(format!(
                            "listener `{name}`: allow-connect entry {address}: server-name and ca need tls = true"
                        ));
                    }
                    return Ok(Upstream::from(address));
                }
                let Some(server) = table.server_name else {
                    return Err(format!(
                        "listener `{name}`: allow-connect entry {address}: tls = true needs server-name (the name its certificate must carry)"
                    ));
                };
                let server_name = server_name(name, &server)?;
                if server_name.starts_with("*.") {
                    return Err(format!(
                        "listener `{name}`: allow-connect entry {address}: server-name `{server}` cannot be a wildcard"
                    ));
                }
                Ok(Upstream { address, tls: Some(UpstreamTls { server_name, ca: table.ca.map(|ca| base.join(ca)) }) })
            }
        }
    }
}

/// A server name as a listener or an upstream gives it: a DNS name, or `*.` and one,
/// in lower case (names compare without regard to case).
fn server_name(listener: &str, name: &str) -> Result<String, String> {
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "listener `{listener}`: server name `{name}` is not a DNS name (e.g. hello.example.com or *.example.com)"
        ));
    }
    Ok(lower)
}

fn parse_address(name: &str, address: &str) -> Result<SocketAddr, String> {
    address.trim().parse().map_err(|_| {
        format!("listener `{name}`: address `{address}` is not IP:PORT (e.g. 127.0.0.1:7000 or [::1]:7000)")
    })
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/sandport/x.toml"))
    }

    #[test]
    fn full_listener_with_limits() {
        let config = parse(
            r#"
            [[listener]]
            name = "echo"
            address = "[::1]:7000"
            plugin = "plugins/echo.wasm"
            poll-interval-ms = 250
            [listener.limits]
            recv-buffer = "64 KiB"
            send-buffer = 4096
            event-timeout-ms = 20
            "#,
        )
        .unwrap();
        assert_eq!(config.listeners[0].plugin, Path::new("/etc/sandport/plugins/echo.wasm"));
        let l = &config.listeners[0];
        assert_eq!(l.address, "[::1]:7000".parse().unwrap());
        assert_eq!(l.poll_interval, Some(Duration::from_millis(250)));
        assert_eq!(l.limits.recv_buffer, 64 * 1024);
        assert_eq!(l.limits.send_buffer, 4096);
        assert_eq!(l.limits.event_timeout, Duration::from_millis(20));
        assert_eq!(l.limits.memory, Limits::default().memory);
        assert_eq!(l.instance, InstanceMode::Shared);
        assert!(l.allow_connect.is_empty());
        assert!(config.listeners[0].settings.is_empty());
    }

    #[test]
    fn workers_and_per_worker_instances() {
        let listener = "[[listener]]\nname = \"e\"\naddress = \"127.0.0.1:0\"\nplugin = \"e.wasm\"\n";
        let config = parse(&format!("workers = 3\n{listener}instance = \"per-worker\"\n")).unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.listeners[0].instance, InstanceMode::PerWorker);
        assert!(parse(listener).unwrap().workers >= 1, "a default that uses the machine");
        let zero = parse(&format!("workers = 0\n{listener}")).unwrap_err().to_string();
        assert!(zero.contains("workers must be greater than 0"), "{zero}");
    }

    #[test]
    fn isolation_keys() {
        let config = parse(
            r#"
            [[listener]]
            name = "proxy"
            address = "127.0.0.1:7002"
            plugin = "tcp_proxy.wasm"
            instance = "per-connection"
            allow-connect = ["127.0.0.1:7000", "[::1]:9000"]
            [listener.limits]
            max-connections = 10
            idle-timeout-ms = 1500
            log-rate = "1 KiB"
            [listener.config]
            upstream = "127.0.0.1:7000"
            retries = 3
            verbose = true
            "#,
        )
        .unwrap();
        let listener = &config.listeners[0];
        let l = listener;
        assert_eq!(l.instance, InstanceMode::PerConnection);
        let plain = |address: &str| Upstream::from(address.parse::<SocketAddr>().unwrap());
        assert_eq!(l.allow_connect, [plain("127.0.0.1:7000"), plain("[::1]:9000")]);
        assert_eq!(l.limits.max_connections, 10);
        assert_eq!(l.limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(l.limits.log_rate, 1024);
        let settings: Vec<(&str, &str)> = listener.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(settings, [("retries", "3"), ("upstream", "127.0.0.1:7000"), ("verbose", "true")]);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[[listener]]\nname = \"a\"\nadress = \"x\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/sandport/x.toml:3:1: unknown field `adress`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("", "no listeners"),
            ("[[listener]]\nname='a'\naddress='localhost'\nplugin='a.wasm'", "is not IP:PORT"),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n[listener.limits]\nsend-buffer=0",
                "limits.send-buffer must be greater than 0",
            ),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n[[listener]]\nname='a'\naddress='127.0.0.1:2'\nplugin='a.wasm'",
                "used twice",
            ),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n[[listener]]\nname='b'\naddress='127.0.0.1:1'\nplugin='a.wasm'",
                "listeners `a` and `b` both use address 127.0.0.1:1",
            ),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n[listener.limits]\nmemory='lots'",
                "/etc/sandport/x.toml:6:",
            ),
            ("[[listener]\n", "/etc/sandport/x.toml:1:"),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\ninstance='pooled'",
                "/etc/sandport/x.toml:5:",
            ),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\nallow-connect=['example.com:80']",
                "allow-connect entry `example.com:80` is not IP:PORT",
            ),
            (
                "[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n[listener.config]\nx={y=1}",
                "config.x must be a string, a number or a boolean",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn recycle_bounds() {
        let listener = |table: &str| format!("[[listener]]\nname='a'\naddress='127.0.0.1:1'\nplugin='a.wasm'\n{table}");
        let config = parse(&listener("[listener.recycle]\nmemory = ' 75 % '\nevents = 1000\nage-ms = 60000")).unwrap();
        let recycle = config.listeners[0].recycle;
        assert_eq!(recycle.memory_mark(64 << 20), Some(48 << 20));
        assert_eq!(recycle.events, Some(1000));
        assert_eq!(recycle.age, Some(Duration::from_secs(60)));
        assert!(!parse(&listener("")).unwrap().listeners[0].recycle.is_set());
        let refused = [
            ("[listener.recycle]\nmemory = '0%'", "recycle.memory must be a share"),
            ("[listener.recycle]\nmemory = '101%'", "recycle.memory must be a share"),
            ("[listener.recycle]\nmemory = '48 MiB'", "not `48 MiB`"),
            ("[listener.recycle]\nmemory = 'NaN%'", "recycle.memory must be a share"),
            ("[listener.recycle]\nevents = 0", "recycle.events must be greater than 0"),
            ("[listener.recycle]\nage-ms = 0", "recycle.age-ms must be greater than 0"),
            ("[listener.recycle]\nrequests = 5", "unknown field `requests`"),
        ];
        for (table, expected) in refused {
            let err = parse(&listener(table)).unwrap_err().to_string();
            assert!(err.contains(expected), "{table:?}: {err}");
        }
    }

    #[test]
    fn operator_keys() {
        let config = parse(
            r#"
            cache-dir = "cache"
            watch = true
            log-format = "json"
            shutdown-grace-ms = 250
            [admin]
            listen = "0.0.0.0:9000"
            tls-cert = "admin/tls.crt"
            tls-key = "admin/tls.key"
            health-address = "0.0.0.0:9001"
            token = "secret"
            [[listener]]
            name = "a"
            address = "127.0.0.1:1"
            plugin = "a.wasm"
            drain-timeout-ms = 700
            rollback-faults = 3
            [[listener]]
            name = "b"
            address = "127.0.0.1:2"
            plugin = "b.wasm"
            watch = false
            rollback-window-ms = 0
            "#,
        )
        .unwrap();
        assert_eq!(config.cache_dir.as_deref(), Some(Path::new("/etc/sandport/cache")));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
        let admin = config.admin.as_ref().unwrap();
        let tls =
            AdminTls { certificate: "/etc/sandport/admin/tls.crt".into(), key: "/etc/sandport/admin/tls.key".into() };
        assert_eq!(admin.listen, AdminListen::Tcp { address: "0.0.0.0:9000".parse().unwrap(), tls: Some(tls) });
        assert_eq!(
            (admin.health_address, admin.token.as_deref()),
            (Some("0.0.0.0:9001".parse().unwrap()), Some("secret"))
        );
        let (a, b) = (&config.listeners[0], &config.listeners[1]);
        assert!(a.watch && !b.watch, "the top-level watch is a default a listener overrides");
        assert_eq!(a.drain_timeout, Duration::from_millis(700));
        assert_eq!(a.rollback, Some(Rollback { faults: 3, window: Rollback::default().window }));
        assert_eq!(b.rollback, None);
        assert_eq!(b.drain_timeout, DEFAULT_DRAIN_TIMEOUT);

        let listener = "[[listener]]\nname = \"e\"\naddress = \"127.0.0.1:0\"\nplugin = \"e.wasm\"\n";
        let quiet = parse(&format!("cache-dir = false\n{listener}")).unwrap();
        assert_eq!(quiet.cache_dir, None);
        assert_eq!(quiet.log_format, LogFormat::Text);
        assert_eq!(quiet.admin, None);
        let loopback = parse(&format!("[admin]\n{listener}")).unwrap().admin.unwrap();
        let default = AdminListen::Tcp { address: DEFAULT_ADMIN_ADDRESS.parse().unwrap(), tls: None };
        assert_eq!((loopback.listen, loopback.health_address, loopback.token), (default, None, None));
        let old_name = parse(&format!("[admin]\naddress = \"127.0.0.2:9\"\n{listener}")).unwrap().admin.unwrap();
        assert_eq!(old_name.listen, AdminListen::Tcp { address: "127.0.0.2:9".parse().unwrap(), tls: None });
        let socket = parse(&format!("[admin]\nlisten = \"unix:run/admin.sock\"\n{listener}")).unwrap().admin.unwrap();
        assert_eq!((socket.listen, socket.token), (AdminListen::Unix("/etc/sandport/run/admin.sock".into()), None));
        let admin = |keys: &str| parse(&format!("[admin]\n{keys}\n{listener}")).unwrap_err().to_string();
        let plain = admin("listen = \"0.0.0.0:9901\"\ntoken = \"t\"");
        assert!(plain.contains("over plain HTTP, where the token would cross the network in the clear"), "{plain}");
        let open = admin("listen = \"0.0.0.0:9901\"\ntls-cert = \"c\"\ntls-key = \"k\"");
        assert!(open.contains("set admin.token or admin.token-env"), "{open}");
        let half = admin("tls-cert = \"c\"");
        assert!(half.contains("give tls-cert and tls-key together"), "{half}");
        let unix_tls = admin("listen = \"unix:/a.sock\"\ntls-cert = \"c\"\ntls-key = \"k\"");
        assert!(unix_tls.contains("not a unix: socket"), "{unix_tls}");
        let nothing = admin("listen = \"unix:\"");
        assert!(nothing.contains("names no socket"), "{nothing}");
        let bad_health = admin("health-address = \"healthy\"");
        assert!(bad_health.contains("admin.health-address `healthy` is not IP:PORT"), "{bad_health}");
        let unset =
            parse(&format!("[admin]\ntoken-env = \"SANDPORT_NO_SUCH_VARIABLE\"\n{listener}")).unwrap_err().to_string();
        assert!(unset.contains("`SANDPORT_NO_SUCH_VARIABLE` is not set"), "{unset}");
    }

    #[test]
    fn pairs_get_names_from_plugin_files() {
        let config = Config::from_pairs(&[
            ("127.0.0.1:0".into(), "a/echo.wasm".into()),
            ("127.0.0.1:0".into(), "b/echo.wasm".into()),
            ("127.0.0.1:0".into(), "echoes.wasm".into()),
            ("127.0.0.1:0".into(), "c/echo.wasm".into()),
        ])
        .unwrap();
        let names: Vec<_> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["echo", "echo-2", "echoes", "echo-3"]);
    }

    /// A TLS listener on `address` serving `names`, with extra lines before its table.
    fn tls_listener(name: &str, address: &str, names: &[&str], extra: &str) -> String {
        let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\nplugin = \"p.wasm\"\nserver-names = [{}]\n{extra}\n[listener.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
            names.join(", ")
        )
    }

    fn invalid(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { message, .. }) => message,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn a_tls_listener_with_everything() {
        let text = r#"
            [[listener]]
            name = "web"
            address = "127.0.0.1:8443"
            plugin = "p.wasm"
            server-names = ["Hello.Example.com.", "*.example.com"]
            default = true
            proxy-protocol = ["10.0.0.0/8", "192.0.2.1"]
            allow-connect = ["127.0.0.1:9000", { address = "127.0.0.1:9443", tls = true, server-name = "up.internal", ca = "ca.pem" }]
            [listener.tls]
            certificate = "c.pem"
            key = "k.pem"
            alpn = ["h2", "http/1.1"]
            client-ca = "clients.pem"
            client-auth = "optional"
            [listener.limits]
            handshake-timeout-ms = 3000
            max-handshakes = 8
        "#;
        let l = &parse(text).unwrap().listeners[0];
        assert_eq!(l.server_names, ["hello.example.com", "*.example.com"], "lower case, no trailing dot");
        assert!(l.default_server);
        assert_eq!(l.proxy_protocol, ["10.0.0.0/8".parse().unwrap(), "192.0.2.1/32".parse().unwrap()]);
        let Some(Tls::Terminate(t)) = &l.tls else { panic!("terminates: {:?}", l.tls) };
        assert_eq!(t.certificate, Path::new("/etc/sandport/c.pem"));
        assert_eq!(t.alpn, ["h2", "http/1.1"]);
        assert_eq!(t.client_auth, Some(ClientAuth { ca: "/etc/sandport/clients.pem".into(), required: false }));
        let upstream = &l.allow_connect[1];
        assert_eq!(
            upstream.tls,
            Some(UpstreamTls { server_name: "up.internal".into(), ca: Some("/etc/sandport/ca.pem".into()) })
        );
        assert_eq!(l.allow_connect[0].tls, None);
        assert_eq!((l.limits.handshake_timeout, l.limits.max_handshakes), (Duration::from_millis(3000), 8));
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused() {
        let base = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nplugin = \"p.wasm\"\n";
        let cases = [
            (
                "[listener.tls]\npassthrough = true\ncertificate = \"c.pem\"",
                "tls.certificate has no meaning with tls.passthrough",
            ),
            ("[listener.tls]\ncertificate = \"c.pem\"", "needs certificate and key"),
            (
                "[listener.tls]\ncertificate = \"c\"\nkey = \"k\"\nclient-auth = \"required\"",
                "tls.client-auth needs tls.client-ca",
            ),
            ("server-names = [\"a.test\"]", "add [listener.tls]"),
            ("server-names = [\"a b\"]\n[listener.tls]\npassthrough = true", "is not a DNS name"),
            ("server-names = [\"*.*.test\"]\n[listener.tls]\npassthrough = true", "is not a DNS name"),
            ("proxy-protocol = [\"somewhere\"]", "is not an IP address or a CIDR block"),
            ("allow-connect = [{ address = \"127.0.0.1:1\", tls = true }]", "needs server-name"),
            ("allow-connect = [{ address = \"127.0.0.1:1\", ca = \"x\" }]", "need tls = true"),
        ];
        for (extra, wanted) in cases {
            let message = invalid(&format!("{base}{extra}\n"));
            assert!(message.contains(wanted), "{extra}: {message}");
        }
    }

    #[test]
    fn an_address_is_shared_only_by_tls_listeners_each_with_its_names() {
        let at = "127.0.0.1:8443";
        let two =
            tls_listener("a", at, &["a.test"], "") + &tls_listener("b", at, &["b.test", "*.b.test"], "default = true");
        assert_eq!(parse(&two).unwrap().listeners.len(), 2);

        let same_name = tls_listener("a", at, &["x.test"], "") + &tls_listener("b", at, &["x.test"], "");
        assert!(invalid(&same_name).contains("server name `x.test` is served by both `a` and `b`"));

        let two_defaults = tls_listener("a", at, &["a.test"], "default = true")
            + &tls_listener("b", at, &["b.test"], "default = true");
        assert!(invalid(&two_defaults).contains("listeners `a` and `b` are both the default"));

        let plain = format!("[[listener]]\nname = \"p\"\naddress = \"{at}\"\nplugin = \"p.wasm\"\n");
        assert!(invalid(&(tls_listener("a", at, &["a.test"], "") + &plain)).contains("shared only by TLS listeners"));

        let unnamed = tls_listener("a", at, &["a.test"], "") + &tls_listener("b", at, &[], "");
        assert!(invalid(&unnamed).contains("give it server-names, or make it the default"));

        let proxies = tls_listener("a", at, &["a.test"], "proxy-protocol = [\"10.0.0.1\"]")
            + &tls_listener("b", at, &["b.test"], "");
        assert!(invalid(&proxies).contains("but not proxy-protocol"));
    }

    #[test]
    fn a_plugin_from_a_registry_takes_follow_ms_offline_and_the_oci_table() {
        let tagged = "oci://registry.test:5000/tenants/echo:stable";
        let listener = |plugin: &str, extra: &str| {
            format!("[[listener]]\nname = \"e\"\naddress = \"127.0.0.1:7000\"\nplugin = \"{plugin}\"\n{extra}")
        };
        let config = parse(&format!(
            "cache-dir = \"/var/cache/sp\"\n{}",
            listener(tagged, "follow-ms = 2000\noffline = \"last-pulled\"")
        ))
        .unwrap();
        let artifact = config.listeners[0].artifact.clone().expect("an artifact");
        assert_eq!(artifact.reference.to_string(), tagged);
        assert_eq!(artifact.follow, Some(Duration::from_millis(2000)));
        assert_eq!(artifact.offline, Offline::LastPulled);
        let oci = config.oci.expect("[oci] is implied by an oci:// plugin");
        assert_eq!(oci.settings.store, Path::new("/var/cache/sp/oci"), "the store defaults to beside the cache");
        assert_eq!(oci.settings.timeout, DEFAULT_OCI_TIMEOUT);
        assert_eq!(oci.start_timeout, DEFAULT_OCI_START_TIMEOUT);

        let table = "[oci]\nstore = \"store\"\ninsecure = [\"127.0.0.1:5000\"]\ndocker-config = \"docker.json\"\ntimeout-ms = 500\nstart-timeout-ms = 900\n\n[oci.auth.\"registry.test:5000\"]\nusername = \"bot\"\npassword-file = \"secret\"\n\n[oci.auth.\"ghcr.test\"]\ntoken-env = \"GHCR_TOKEN\"\n";
        let config = parse(&format!("{table}\n{}", listener(tagged, ""))).unwrap();
        let oci = config.oci.unwrap();
        assert_eq!(oci.settings.store, Path::new("/etc/sandport/store"));
        assert_eq!(oci.settings.insecure, ["127.0.0.1:5000"]);
        assert_eq!(oci.settings.docker_config.as_deref(), Some(Path::new("/etc/sandport/docker.json")));
        assert_eq!((oci.settings.timeout, oci.start_timeout), (Duration::from_millis(500), Duration::from_millis(900)));
        assert_eq!(
            oci.settings.auth["registry.test:5000"],
            oci::Auth::Basic { username: "bot".into(), password: oci::Secret::File("/etc/sandport/secret".into()) }
        );
        assert_eq!(oci.settings.auth["ghcr.test"], oci::Auth::Bearer(oci::Secret::Env("GHCR_TOKEN".into())));
        assert_eq!(config.listeners[0].artifact.as_ref().unwrap().offline, Offline::Fail);

        let local = parse(&listener("echo.wasm", "")).unwrap();
        assert!(local.oci.is_none() && local.listeners[0].artifact.is_none());
        for (text, wanted) in [
            (listener("echo.wasm", "follow-ms = 100"), "follow-ms is for a plugin pulled from a registry"),
            (listener("echo.wasm", "offline = \"last-pulled\""), "offline is for a plugin pulled from a registry"),
            (listener(tagged, "follow-ms = 0"), "follow-ms must be greater than 0"),
            (
                listener(&format!("oci://registry.test/echo@sha256:{}", "ab".repeat(32)), "follow-ms = 100"),
                "names a digest, which never moves",
            ),
            (format!("cache-dir = false\n{}", listener(tagged, "")), "set oci.store"),
            (format!("[oci]\ntimeout-ms = 0\n{}", listener(tagged, "")), "oci.timeout-ms must be greater than 0"),
            (
                format!("[oci.auth.\"r\"]\nusername = \"u\"\n{}", listener(tagged, "")),
                "give username with password-env or password-file",
            ),
            (
                format!("[oci.auth.\"r\"]\ntoken-env = \"T\"\ntoken-file = \"t\"\n{}", listener(tagged, "")),
                "give token-env or token-file, not both",
            ),
        ] {
            let message = parse(&text).unwrap_err().to_string();
            assert!(message.contains(wanted), "{text}\n=> {message}");
        }
    }
}
