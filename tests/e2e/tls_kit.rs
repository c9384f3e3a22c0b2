//! What the TLS tests share: certificates made at test time (a CA of the test's own
//! and certificates it signs, written as PEM files in a temporary folder), the
//! `[listener.tls]` table that serves them, a TLS client over a real socket, and
//! `openssl s_client` run as a real client nobody here wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::harness::PATIENCE;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA of the test's own, in a temporary folder, and the certificates it signs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what clients trust (`--cacert`, `-CAfile`).
    pub ca: PathBuf,
    made: usize,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki { dir, issuer: Issuer::new(params, key), ca, made: 0 }
    }

    /// A server certificate (ECDSA P-256) for `names`, valid now.
    pub fn server(&mut self, names: &[&str]) -> Pair {
        self.sign(names, ExtendedKeyUsagePurpose::ServerAuth, |_| {})
    }

    /// A client certificate for `name`.
    pub fn client(&mut self, name: &str) -> Pair {
        self.sign(&[name], ExtendedKeyUsagePurpose::ClientAuth, |_| {})
    }

    /// A server certificate for `names` that expired yesterday.
    pub fn expired(&mut self, names: &[&str]) -> Pair {
        self.sign(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
            params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        })
    }

    fn sign(
        &mut self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().map_or("client", String::as_str));
        params.extended_key_usages = vec![usage];
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.made += 1;
        let pair = Pair {
            cert: self.dir.path().join(format!("cert-{}.pem", self.made)),
            key: self.dir.path().join(format!("key-{}.pem", self.made)),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

/// The `[listener.tls]` table that serves `pair`, with extra lines (`alpn = [...]`).
pub fn tls_table(pair: &Pair, extra: &str) -> String {
    format!("[listener.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{extra}\n", pair.cert.display(), pair.key.display())
}

/// How a [`TlsClient`] connects.
#[derive(Default)]
pub struct Hello<'a> {
    /// The server name to send (SNI) and to check the certificate against.
    pub name: &'a str,
    /// ALPN protocols to offer.
    pub alpn: &'a [&'a str],
    /// A client certificate to present.
    pub identity: Option<&'a Pair>,
}

/// A TLS client over a real socket (rustls), line by line like the harness's
/// `Client`.
pub struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connect to `addr` and finish the handshake, trusting `ca`.
    pub fn connect(addr: SocketAddr, ca: &Path, hello: Hello) -> TlsClient {
        TlsClient::try_connect(addr, ca, hello).unwrap()
    }

    /// The same, or the error that ended the handshake.
    pub fn try_connect(addr: SocketAddr, ca: &Path, hello: Hello) -> std::io::Result<TlsClient> {
        let config = client_config(ca, &hello);
        let name = ServerName::try_from(hello.name.to_owned()).unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = TcpStream::connect_timeout(&addr, PATIENCE)?;
        socket.set_read_timeout(Some(PATIENCE))?;
        socket.set_write_timeout(Some(PATIENCE))?;
        socket.set_nodelay(true)?;
        let mut stream = StreamOwned::new(conn, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { reader: BufReader::new(stream) })
    }

    /// The session, for what the handshake agreed (ALPN, version).
    pub fn session(&self) -> &ClientConnection {
        &self.reader.get_ref().conn
    }

    /// Write all of `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
        self.reader.get_mut().flush().unwrap();
    }

    /// Write `line` and a newline, then read the reply line.
    pub fn ask(&mut self, line: &str) -> String {
        self.write(format!("{line}\n").as_bytes());
        self.line()
    }

    /// Read one line, without its newline.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed while a line was expected");
        line.trim_end_matches('\n').to_owned()
    }

    /// Read exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        self.reader.read_exact(&mut bytes).unwrap();
        bytes
    }

    /// Read until the server ends the stream; whether it ended it with close_notify
    /// (`true`) or just closed the socket.
    pub fn until_end(&mut self) -> (Vec<u8>, bool) {
        let mut bytes = Vec::new();
        match self.reader.read_to_end(&mut bytes) {
            Ok(_) => (bytes, true),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => (bytes, false),
            Err(err) => panic!("reading to the end: {err}"),
        }
    }

    /// Send close_notify.
    pub fn close_notify(&mut self) {
        let stream = self.reader.get_mut();
        stream.conn.send_close_notify();
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
}

/// A client configuration trusting `ca`, offering `hello`'s ALPN and identity.
pub fn client_config(ca: &Path, hello: &Hello) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match hello.identity {
        Some(pair) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&pair.cert).unwrap().map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_file(&pair.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = hello.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// Run `openssl s_client` against `addr` with `args`, writing `input` and then
/// waiting a moment for the answer; returns what it printed (stdout and stderr).
pub fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (.ci/run installs it)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

impl Pki {
    /// A server certificate for `names` with an RSA 2048 key. rcgen's ring backend
    /// cannot generate RSA keys, but it signs with one: `openssl genrsa` makes the key.
    pub fn rsa_server(&mut self, names: &[&str]) -> Pair {
        self.made += 1;
        let pair = Pair {
            cert: self.dir.path().join(format!("cert-{}.pem", self.made)),
            key: self.dir.path().join(format!("key-{}.pem", self.made)),
        };
        let genrsa = Command::new("openssl").args(["genrsa", "-out"]).arg(&pair.key).arg("2048").output().unwrap();
        assert!(genrsa.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&genrsa.stderr));
        let key = KeyPair::from_pem(&std::fs::read_to_string(&pair.key).unwrap()).unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        std::fs::write(&pair.cert, params.signed_by(&key, &self.issuer).unwrap().pem()).unwrap();
        pair
    }
}

impl Pki {
    /// A server certificate for `names` that expires at `not_after` (to the second):
    /// what a test of the expiry metric compares with.
    pub fn server_until(&mut self, names: &[&str], not_after: time::OffsetDateTime) -> Pair {
        self.sign(names, ExtendedKeyUsagePurpose::ServerAuth, |params| params.not_after = not_after)
    }
}

/// The leaf certificate of `pair`'s chain, DER: what a client that got it served sees.
pub fn leaf(pair: &Pair) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(&pair.cert).unwrap().next().expect("a certificate in the file").unwrap()
}

/// The leaf certificate the server served to `client`, DER.
pub fn served(client: &TlsClient) -> CertificateDer<'static> {
    let chain = client.session().peer_certificates().expect("a server certificate");
    chain[0].clone().into_owned()
}
