//! What to run: the mode, the targets and the shape of the load.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::cpu::ServerProcesses;
use crate::tls::{ServerNames, TlsVersion};

/// What each connection does, over and over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Write a message of [`LoadSpec::size`] bytes and read the same bytes back.
    #[value(help = "Write a message of --size bytes and read the same bytes back")]
    Echo,
    /// Send `GET / HTTP/1.1` on a kept-alive connection and read one response, which
    /// must have status 200 and a `Content-Length`.
    #[value(help = "Send GET / on a kept-alive connection and read a 200 response")]
    Http,
}

/// A server to drive, with the name the report gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Label in the report (`wasm`, `native`, ...).
    pub name: String,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The processes whose CPU time is the server's; empty to use those that hold a
    /// socket listening on `addr` (see [`ServerProcesses::listening_on`]).
    pub pids: Vec<u32>,
    /// Whether the connections speak TLS (see [`crate::tls`]).
    pub tls: bool,
    /// The server names the TLS connections ask for, in turn; `None` to send none.
    pub server_names: Option<ServerNames>,
}

impl Target {
    /// A plaintext target whose server processes are found from its listening socket.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Target { name: name.into(), addr, pids: Vec::new(), tls: false, server_names: None }
    }

    /// The address as the report shows it: `tls://` in front of a TLS target's.
    pub fn address(&self) -> String {
        if self.tls { format!("tls://{}", self.addr) } else { self.addr.to_string() }
    }

    /// The processes whose CPU time counts as this target's: [`Target::pids`], or
    /// those found listening on [`Target::addr`].
    pub fn server(&self) -> ServerProcesses {
        if self.pids.is_empty() {
            ServerProcesses::listening_on(self.addr)
        } else {
            ServerProcesses::given(self.pids.clone())
        }
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    /// Parses `NAME=ADDR`, or a bare `ADDR` that then also serves as the name. `ADDR`
    /// may be a host name (`localhost:7000`); its first address is used. `tls://` in
    /// front of `ADDR` makes a TLS target.
    fn from_str(s: &str) -> Result<Self> {
        let (name, addr) = s.split_once('=').unwrap_or((s, s));
        ensure!(!name.is_empty(), "empty target name in `{s}`");
        let (tls, addr) = match addr.strip_prefix("tls://") {
            Some(addr) => (true, addr),
            None => (false, addr),
        };
        let addr = addr
            .to_socket_addrs()
            .with_context(|| format!("bad target address `{addr}` (expected HOST:PORT)"))?
            .next()
            .with_context(|| format!("`{addr}` resolves to no address"))?;
        Ok(Target { tls, ..Target::new(name, addr) })
    }
}

/// A complete description of a load run; see [`crate::run`].
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// What each connection does.
    pub mode: Mode,
    /// The servers to drive; the first is the baseline of the ratios.
    pub targets: Vec<Target>,
    /// Concurrent connections per target.
    pub connections: usize,
    /// Client threads sharing the connections; `None` means one per CPU, but no more
    /// than there are connections.
    pub threads: Option<usize>,
    /// How long each round measures, after its warm-up.
    pub duration: Duration,
    /// How long each round runs before it starts measuring.
    pub warmup: Duration,
    /// Bytes per echo message (ignored in HTTP mode).
    pub size: usize,
    /// Requests each connection sends before it reads their responses.
    pub pipeline: usize,
    /// Whether each connection is closed once its batch is answered and replaced by a
    /// fresh one (with the default `pipeline` of 1: a connection per exchange), so
    /// that every batch also pays for connection setup and teardown.
    pub reconnect: bool,
    /// How many times every target is run, in turn.
    pub rounds: usize,
    /// How long a connection may wait for progress (connecting, writing, or the next
    /// byte of a response) before it counts an error and reconnects.
    pub timeout: Duration,
    /// The TLS version TLS targets' connections offer; `None`: 1.3 and 1.2.
    pub tls_version: Option<TlsVersion>,
    /// Whether TLS connections resume the sessions of earlier ones (tickets, or
    /// session ids); otherwise every handshake is a full one.
    pub resume: bool,
    /// Whether held connections ([`crate::hold()`]) make no exchange: each is held once
    /// it is connected, a TLS one once its handshake is done. Only for holding.
    pub silent: bool,
}

impl LoadSpec {
    /// Default of [`LoadSpec::connections`].
    pub const DEFAULT_CONNECTIONS: usize = 16;
    /// Default of [`LoadSpec::duration`].
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);
    /// Default of [`LoadSpec::warmup`].
    pub const DEFAULT_WARMUP: Duration = Duration::from_secs(1);
    /// Default of [`LoadSpec::size`].
    pub const DEFAULT_SIZE: usize = 64;
    /// Default of [`LoadSpec::pipeline`].
    pub const DEFAULT_PIPELINE: usize = 1;
    /// Default of [`LoadSpec::rounds`].
    pub const DEFAULT_ROUNDS: usize = 3;
    /// Default of [`LoadSpec::timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A spec with the defaults for everything but the mode and the targets.
    pub fn new(mode: Mode, targets: Vec<Target>) -> Self {
        LoadSpec {
            mode,
            targets,
            connections: Self::DEFAULT_CONNECTIONS,
            threads: None,
            duration: Self::DEFAULT_DURATION,
            warmup: Self::DEFAULT_WARMUP,
            size: Self::DEFAULT_SIZE,
            pipeline: Self::DEFAULT_PIPELINE,
            reconnect: false,
            rounds: Self::DEFAULT_ROUNDS,
            timeout: Self::DEFAULT_TIMEOUT,
            tls_version: None,
            resume: false,
            silent: false,
        }
    }

    /// The number of client threads [`LoadSpec::threads`] resolves to.
    pub fn thread_count(&self) -> usize {
        let auto = || thread::available_parallelism().map_or(1, std::num::NonZero::get);
        self.threads.unwrap_or_else(auto).clamp(1, self.connections.max(1))
    }

    /// Rejects specs that cannot run.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            bail!("no targets");
        }
        for (i, target) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|t| t.name == target.name) {
                bail!("two targets are named `{}`", target.name);
            }
            if target.server_names.is_some() && !target.tls {
                bail!("target `{}` has server names but is not TLS (tls://ADDR)", target.name);
            }
        }
        ensure!(self.connections > 0, "connections must be at least 1");
        ensure!(self.threads != Some(0), "threads must be at least 1");
        ensure!(self.pipeline > 0, "pipeline must be at least 1");
        ensure!(self.rounds > 0, "rounds must be at least 1");
        ensure!(!self.duration.is_zero(), "duration must be positive");
        ensure!(!self.timeout.is_zero(), "timeout must be positive");
        ensure!(self.mode != Mode::Echo || self.size > 0, "size must be at least 1 byte");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_with_and_without_name() {
        let t: Target = "wasm=127.0.0.1:7000".parse().unwrap();
        assert_eq!(t.name, "wasm");
        assert_eq!(t.addr, "127.0.0.1:7000".parse().unwrap());

        let t: Target = "127.0.0.1:7100".parse().unwrap();
        assert_eq!(t.name, "127.0.0.1:7100");
        assert_eq!(t.addr.port(), 7100);

        let t: Target = "edge=tls://127.0.0.1:8443".parse().unwrap();
        assert!(t.tls && t.server_names.is_none());
        assert_eq!((t.addr.port(), t.address()), (8443, "tls://127.0.0.1:8443".to_owned()));
        assert!(!"a=127.0.0.1:1".parse::<Target>().unwrap().tls);

        assert!("=127.0.0.1:1".parse::<Target>().is_err());
        assert!("x=nonsense".parse::<Target>().is_err());
    }

    #[test]
    fn validation() {
        let target = |name: &str| Target::new(name, "127.0.0.1:1".parse().unwrap());
        let spec = LoadSpec::new(Mode::Echo, vec![target("a"), target("b")]);
        spec.validate().unwrap();

        let same_names = LoadSpec::new(Mode::Echo, vec![target("a"), target("a")]);
        assert!(same_names.validate().is_err());
        assert!(LoadSpec::new(Mode::Http, vec![]).validate().is_err());
        let no_pipeline = LoadSpec { pipeline: 0, ..spec.clone() };
        assert!(no_pipeline.validate().is_err());
        assert!(LoadSpec { reconnect: true, pipeline: 4, ..spec.clone() }.validate().is_ok());
        let mut named = target("n");
        named.server_names = Some("a.example".parse().unwrap());
        assert!(LoadSpec::new(Mode::Echo, vec![named.clone()]).validate().is_err());
        named.tls = true;
        assert!(LoadSpec::new(Mode::Echo, vec![named]).validate().is_ok());
        let empty_messages = LoadSpec { size: 0, ..spec };
        assert!(empty_messages.validate().is_err());
        assert!(LoadSpec { mode: Mode::Http, ..empty_messages }.validate().is_ok());
    }

    #[test]
    fn thread_count_is_bounded_by_connections() {
        let spec = LoadSpec { connections: 3, threads: Some(8), ..LoadSpec::new(Mode::Echo, vec![]) };
        assert_eq!(spec.thread_count(), 3);
        assert_eq!(LoadSpec { threads: Some(2), ..spec }.thread_count(), 2);
    }
}
