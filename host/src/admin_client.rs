//! The client side of the admin API, for the `status`, `swap` and `rollback`
//! subcommands: where the API is (`--admin`: `IP:PORT` or `http://` for plain HTTP,
//! `https://` with `--admin-ca`, or `unix:/path`), its token, and what its answers say.
//!
//! It owns reaching the API and printing what it answered; every request goes through
//! one `ureq` agent whatever the way there, so HTTP, HTTPS and a Unix socket differ
//! only in how the connection is made. It never decides anything the server decides.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use sandport::config::DEFAULT_ADMIN_ADDRESS;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport};

/// Where the admin API is and how to get in.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin API: `IP:PORT` or `http://HOST:PORT` (plain HTTP, loopback),
    /// `https://HOST:PORT` (its certificate checked against --admin-ca, else the
    /// system's roots), or `unix:/path/to/admin.sock`.
    #[arg(long = "admin", value_name = "ADDR", default_value = DEFAULT_ADMIN_ADDRESS)]
    address: String,
    /// The CA certificate (PEM) an `https://` admin API's certificate must lead to.
    #[arg(long = "admin-ca", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Its bearer token [default: $SANDPORT_ADMIN_TOKEN].
    #[arg(long)]
    token: Option<String>,
}

/// The environment variable the client subcommands take the token from.
const TOKEN_ENV: &str = "SANDPORT_ADMIN_TOKEN";

/// The client side of the admin API.
pub struct AdminClient {
    /// As given, for messages.
    address: String,
    /// What a request's path is appended to: `http://HOST:PORT`, `https://HOST:PORT`,
    /// or `http://localhost` through a Unix socket.
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client for the API `args` names; an error for a CA file that cannot be used.
    pub fn new(args: AdminArgs) -> anyhow::Result<AdminClient> {
        let builder = ureq::Agent::config_builder()
            // Every answer is read: a refusal's body says why.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)));
        let token = args.token.or_else(|| std::env::var(TOKEN_ENV).ok()).filter(|token| !token.is_empty());
        let address = args.address.trim_end_matches('/').to_owned();
        if args.ca.is_some() && !address.starts_with("https://") {
            bail!("--admin-ca is for an https:// admin API, not {address}");
        }
        let (base, agent) = if let Some(socket) = address.strip_prefix("unix:") {
            let connector = UnixConnector(PathBuf::from(socket));
            let agent = ureq::Agent::with_parts(builder.build(), connector, DefaultResolver::default());
            ("http://localhost".to_owned(), agent)
        } else if address.starts_with("https://") {
            let tls = TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(sandport::tls::crypto_provider())
                .root_certs(roots(args.ca.as_deref())?)
                .build();
            (address.clone(), builder.tls_config(tls).build().new_agent())
        } else {
            let base = if address.starts_with("http://") { address.clone() } else { format!("http://{address}") };
            (base, builder.build().new_agent())
        };
        Ok(AdminClient { address, base, token, agent })
    }

    pub fn status(&self) -> anyhow::Result<()> {
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

    pub fn swap(&self, name: &str, file: &Path) -> anyhow::Result<()> {
        let bytes = sandport::plugin::read_component(file)?;
        let path = format!("/listeners/{name}/plugin");
        let request = self.authorize(self.agent.put(self.url(&path))).header("Content-Type", "application/wasm");
        self.answer(request.send(&bytes[..]), &path)?.report(name)
    }

    pub fn rollback(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/listeners/{name}/rollback");
        self.answer(self.authorize(self.agent.post(self.url(&path))).send_empty(), &path)?.report(name)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        let mut response = match outcome {
            Ok(response) => response,
            Err(ureq::Error::Io(err)) if err.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                bail!("the admin API at {}: TLS failed: {err} (is --admin-ca the CA of its certificate?)", self.address)
            }
            Err(err) => {
                let no_api = format!("no admin API at {}: is the server running with an [admin] table?", self.address);
                return Err(anyhow::Error::new(err).context(no_api));
            }
        };
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

/// The certificates an `https://` admin API's must lead to: those of `ca`, else the
/// system's.
fn roots(ca: Option<&Path>) -> anyhow::Result<RootCerts> {
    let certificates: Vec<Certificate<'static>> = match ca {
        Some(ca) => {
            let pem = sandport::regular_file::read(ca, sandport::tls::FILE_CAP)
                .with_context(|| format!("--admin-ca {}: cannot read", ca.display()))?;
            let items = ureq::tls::parse_pem(&pem).collect::<Result<Vec<_>, _>>();
            let items = items.with_context(|| format!("--admin-ca {}: malformed PEM", ca.display()))?;
            let certificates = items.into_iter().filter_map(|item| match item {
                ureq::tls::PemItem::Certificate(certificate) => Some(certificate),
                _ => None,
            });
            certificates.collect()
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            found.certs.iter().map(|der| Certificate::from_der(der).to_owned()).collect()
        }
    };
    if certificates.is_empty() {
        match ca {
            Some(ca) => bail!("--admin-ca {}: no PEM certificate in it", ca.display()),
            None => bail!("no system root certificates found: give --admin-ca FILE"),
        }
    }
    Ok(RootCerts::new_with_certs(&certificates))
}

/// Opens a connection to the admin API's Unix socket, whatever host the URL names.
#[derive(Debug)]
struct UnixConnector(PathBuf);

impl<In: Transport> Connector<In> for UnixConnector {
    type Out = UnixTransport;

    fn connect(&self, details: &ConnectionDetails, _: Option<In>) -> Result<Option<UnixTransport>, ureq::Error> {
        let stream = UnixStream::connect(&self.0)?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(UnixTransport { stream, buffers }))
    }
}

/// One connection to the admin API's Unix socket, used for one request.
#[derive(Debug)]
struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.set_write_timeout(timeout.for_write().not_zero().map(|after| *after))?;
        self.stream.write_all(&self.buffers.output()[..amount])?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.set_read_timeout(timeout.for_read().not_zero().map(|after| *after))?;
        let amount = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Not pooled: a command sends one or two requests.
        false
    }
}
