//! The admin API fit to cross a network: HTTPS with a certificate of its own (the
//! client trusts its CA, the token is still required, plain HTTP gets no answer, a
//! renewed certificate serves new handshakes), a Unix socket only its owner may open
//! (one left behind by a server that is gone is replaced), a plain health address that
//! answers the probes and nothing else, and the refusal to start a plain-HTTP admin API
//! beyond loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{PATIENCE, Server, config_file, listener, plugins, run_sandport, sandport};

/// `sandport cert` into `dir`: a CA and a certificate for `localhost`.
fn certificate(dir: &Path) {
    let (status, _, stderr) = run_sandport(&["cert", "--dir", dir.to_str().unwrap(), "localhost"]);
    assert!(status.success(), "{stderr}");
}

/// The value of `key=` on the first log line that holds `needle`.
fn logged(server: &Server, needle: &str, key: &str) -> String {
    let line = server.wait_for_log(&[needle]);
    let line = line.lines().find(|line| line.contains(needle)).unwrap();
    let value = line.split_whitespace().find_map(|word| word.strip_prefix(&format!("{key}=")));
    value.unwrap_or_else(|| panic!("no {key}= in {line}")).to_owned()
}

/// An HTTP/1.1 GET in plain text to `address`: the status line, or what came back
/// instead (nothing, or bytes that are not HTTP).
fn plain_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // A TLS server may close (or reset) the connection before the request is out.
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    // What came before a close (or reset) is the answer.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned()
}

/// `sandport status` with these admin arguments: (success, stdout, stderr).
fn status(args: &[&str]) -> (bool, String, String) {
    let (status, stdout, stderr) = run_sandport(&[&["status"], args].concat());
    (status.success(), stdout, stderr)
}

#[test]
fn https_admin_with_its_own_certificate_and_a_plain_health_address() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    certificate(&first);
    certificate(&second);
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(first.join(file), live.join(file)).unwrap();
    }
    // Beyond loopback (every interface), so HTTPS and a token are what make it start.
    let admin = format!(
        "[admin]\nlisten = \"0.0.0.0:0\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\nhealth-address = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
        live.join("cert.pem").display(),
        live.join("key.pem").display(),
    );
    let server = Server::start(&(admin + &listener("echo", plugins::ECHO, "")));
    let address = logged(&server, "admin API listening", "address");
    let port = address.rsplit(':').next().unwrap();
    assert!(address.starts_with("https://0.0.0.0:"), "{address}");
    let url = format!("https://localhost:{port}");
    let first_ca = first.join("ca.pem");
    let ca = first_ca.to_str().unwrap();

    let (ok, stdout, stderr) = status(&["--admin", &url, "--admin-ca", ca, "--token", "s3cret"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("echo  "), "{stdout}");
    let (ok, _, stderr) = status(&["--admin", &url, "--admin-ca", ca]);
    assert!(!ok && stderr.contains("wants its token"), "{stderr}");
    // Without the CA, the certificate leads nowhere the client trusts.
    let (ok, _, stderr) = status(&["--admin", &url, "--token", "s3cret"]);
    let untrusted = stderr.contains("TLS failed: invalid peer certificate: UnknownIssuer");
    assert!(!ok && (untrusted || stderr.contains("no system root certificates")), "{stderr}");
    // Plain HTTP to the HTTPS port gets no HTTP answer, health checks included.
    let plain = plain_get(&format!("127.0.0.1:{port}"), "/healthz");
    assert!(!plain.starts_with("HTTP/"), "{plain}");

    let health = logged(&server, "admin health checks listening", "health");
    assert!(plain_get(&health, "/healthz").starts_with("HTTP/1.1 200"));
    let deadline = Instant::now() + PATIENCE;
    while !plain_get(&health, "/readyz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the probes: the API is not served there, token or not.
    assert!(plain_get(&health, "/listeners").starts_with("HTTP/1.1 404"));
    assert!(plain_get(&health, "/metrics").starts_with("HTTP/1.1 404"));

    // A renewed certificate (another CA's) serves new handshakes.
    for file in ["key.pem", "cert.pem"] {
        let staged = live.join(format!(".{file}"));
        std::fs::copy(second.join(file), &staged).unwrap();
        std::fs::rename(&staged, live.join(file)).unwrap();
    }
    server.wait_for_log(&["admin API certificate reloaded"]);
    let second_ca = second.join("ca.pem");
    let (ok, _, stderr) = status(&["--admin", &url, "--admin-ca", second_ca.to_str().unwrap(), "--token", "s3cret"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = status(&["--admin", &url, "--admin-ca", ca, "--token", "s3cret"]);
    assert!(
        !ok && stderr.contains("TLS failed: invalid peer certificate"),
        "the old CA is not the new one's: {stderr}"
    );
}

#[test]
fn admin_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // Left behind by a server that is gone (killed): nobody answers on it, so it is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = Server::start(&format!(
        "[admin]\nlisten = \"unix:{}\"\n\n{}",
        socket.display(),
        listener("echo", plugins::ECHO, "")
    ));
    let address = logged(&server, "admin API listening", "address");
    assert_eq!(address, format!("unix:{}", socket.display()));
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "only its owner may open it");

    let (ok, stdout, stderr) = status(&["--admin", &address]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("echo  ") && stdout.contains("  v1 "), "{stdout}");
    let (status, stdout, stderr) = run_sandport(&["swap", "echo", plugins::FIXTURE_PROBE, "--admin", &address]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("echo: version 2 ") && stdout.contains("took over"), "{stdout}");
    assert_eq!(server.connect("echo").ask("echo through the socket"), "through the socket");

    server.terminate();
    assert!(!socket.exists(), "the socket file goes with the server");
}

#[test]
fn plain_http_beyond_loopback_is_refused_at_startup() {
    let text =
        format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"s3cret\"\n\n{}", listener("echo", plugins::ECHO, ""));
    let (_dir, path) = config_file(&text);
    let output = sandport().args(["serve", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("admin.listen 0.0.0.0:0 is reachable beyond this machine over plain HTTP"), "{stderr}");
    assert!(stderr.contains("give admin.tls-cert and admin.tls-key (HTTPS)"), "{stderr}");
}
