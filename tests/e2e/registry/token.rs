//! A token server for the registry's `auth: token:` mode (the Docker registry token
//! flow): it checks a client's basic credentials and answers with a JWT signed by a key
//! whose self-signed certificate the registry trusts.
//!
//! It owns its listening thread and its key. It never grants a scope to a client
//! without [`super::USERNAME`]/[`super::PASSWORD`], and it serves plain HTTP on
//! 127.0.0.1 only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The `service` the registry and its tokens name.
pub const SERVICE: &str = "sandport-test-registry";

/// The `iss` of the tokens, which the registry checks.
pub const ISSUER: &str = "sandport-test-token-server";

/// A running token server.
pub struct TokenServer {
    address: SocketAddr,
    signer: Arc<Signer>,
    /// How many tokens it has handed out (to clients that authenticated).
    issued: Arc<AtomicUsize>,
}

/// The signing key and its certificate.
struct Signer {
    key: EcdsaKeyPair,
    certificate_der: Vec<u8>,
    certificate_pem: String,
}

impl TokenServer {
    /// Start serving `GET /token` on a free port of 127.0.0.1.
    pub fn start() -> TokenServer {
        let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap().to_pkcs8v1().unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let rcgen_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let certificate =
            rcgen::CertificateParams::new(vec!["token-signer".to_owned()]).unwrap().self_signed(&rcgen_key).unwrap();
        let signer =
            Arc::new(Signer { key, certificate_der: certificate.der().to_vec(), certificate_pem: certificate.pem() });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let issued = Arc::new(AtomicUsize::new(0));
        let (thread_signer, thread_issued) = (signer.clone(), issued.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &thread_signer, &thread_issued);
            }
        });
        TokenServer { address, signer, issued }
    }

    /// The URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.address)
    }

    /// The certificate the registry must trust (its `rootcertbundle`).
    pub fn ca_pem(&self) -> String {
        self.signer.certificate_pem.clone()
    }

    /// A token granting pull and push on `repository`, made without the HTTP flow (what
    /// a CI system hands a deployment as a ready bearer token).
    pub fn mint(&self, repository: &str) -> String {
        self.signer.token(&format!("repository:{repository}:pull,push"))
    }

    /// How many tokens clients fetched over HTTP so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Signer {
    /// A JWT granting every action `scope` (`repository:NAME:ACTIONS`, possibly several
    /// separated by spaces) asks for.
    fn token(&self, scope: &str) -> String {
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter_map(|one| {
                let mut parts = one.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let header =
            serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.certificate_der)] });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": super::USERNAME, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now - 10,
            "jti": format!("{now}-{}", access.len()), "access": access,
        });
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Answer one request: 401 without the right basic credentials, else a token for the
/// scope asked.
fn answer(stream: TcpStream, signer: &Signer, issued: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            let expected = STANDARD.encode(format!("{}:{}", super::USERNAME, super::PASSWORD));
            authorized = value.trim() == format!("Basic {expected}");
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let scope = target
        .split_once('?')
        .map(|(_, query)| {
            query.split('&').filter_map(|pair| pair.strip_prefix("scope=")).map(unescape).collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .join(" ");
    let mut stream = stream;
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong credentials"}]}"#;
        return write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    issued.fetch_add(1, Ordering::SeqCst);
    let token = signer.token(&scope);
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A query value with its `%XX` escapes (and `+`) decoded.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
