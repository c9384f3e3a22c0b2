//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on a free port of 127.0.0.1, with its own storage in a temporary folder.
//!
//! It owns the registry process and its folder: dropping a [`Registry`] kills the
//! process and removes both. It never serves TLS (tests name its address in `insecure`)
//! and never outlives its test. Access is open, HTTP basic with the fixed
//! [`USERNAME`]/[`PASSWORD`] pair, or bearer tokens from a [`token::TokenServer`].

pub mod token;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the basic-auth registry knows.
pub const USERNAME: &str = "sandport";

/// [`USERNAME`]'s password.
pub const PASSWORD: &str = "s3cret-pass";

/// The bcrypt hash of [`PASSWORD`] (the registry's htpasswd takes bcrypt only; made once
/// with `htpasswd -B`'s equivalent, so the tests need no bcrypt of their own).
const PASSWORD_BCRYPT: &str = "$2b$12$Mw3Kl34u7KdsnQsHkWW2TOAA3F8np16qD/oKQ3stAuUVTdogskcRS";

/// How clients get in.
pub enum Access<'a> {
    /// Anyone may pull and push.
    Open,
    /// HTTP basic: [`USERNAME`] with [`PASSWORD`].
    Basic,
    /// Bearer tokens signed by this token server.
    Token(&'a token::TokenServer),
}

/// A running registry.
pub struct Registry {
    child: Child,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Registry {
        Registry::start_with(Access::Open)
    }

    /// A registry with this access, answering on `/v2/` before this returns.
    pub fn start_with(access: Access) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match access {
            Access::Open => String::new(),
            Access::Basic => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{USERNAME}:{PASSWORD_BCRYPT}\n")).unwrap();
                format!("auth:\n  htpasswd:\n    realm: sandport-tests\n    path: {}\n", htpasswd.display())
            }
            Access::Token(server) => {
                let bundle = dir.path().join("token-ca.pem");
                std::fs::write(&bundle, server.ca_pem()).unwrap();
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {bundle}\n",
                    realm = server.realm(),
                    service = token::SERVICE,
                    issuer = token::ISSUER,
                    bundle = bundle.display(),
                )
            }
        };
        // Free a moment ago: should something take it before the registry does, the
        // registry fails to start and the test says so.
        let address = crate::harness::free_address();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n{auth}",
            storage = dir.path().join("storage").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let mut registry = Registry { child, address, dir };
        registry.wait_until_serving();
        registry
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status} before serving:\n{}", self.log());
            }
            if self.status_of("/v2/").is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry does not answer on {}:\n{}", self.address, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status code of a plain GET of `path`, or None when nothing answers.
    fn status_of(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.address).ok()?;
        let mut head = [0; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// `127.0.0.1:PORT`, as a reference names the registry.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// `oci://127.0.0.1:PORT/REPOSITORY_AND_TAG`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://{}/{repository_and_tag}", self.address)
    }

    /// The registry's storage root (the filesystem driver's `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding the blob `sha256:HEX` in the storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Alter the stored blob `digest` in place (its length stays, one byte flips): the
    /// registry goes on serving it under its old digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    /// Everything the registry logged so far (its access log included: one line a
    /// request, with method and path).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many requests the access log shows whose line contains `needle` (e.g.
    /// `"GET /v2/echo/blobs/sha256:..."`).
    pub fn requests(&self, needle: &str) -> usize {
        self.log().lines().filter(|line| line.contains(needle) && line.contains("HTTP/1.1\" ")).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
