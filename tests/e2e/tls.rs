//! TLS at the edge, the basics: a listener with a certificate serves the example
//! plugins over TLS to real clients (rustls, `openssl s_client`, `curl`), and several
//! listeners share one port, each chosen by the server name its clients ask for.

use crate::harness::{Server, listener_at, plugins};
use crate::tls_kit::{Hello, Pki, TlsClient, s_client, tls_table};

#[test]
fn two_tenants_share_a_port_each_chosen_by_its_server_name() {
    let mut pki = Pki::new("test CA");
    let hello = pki.server(&["hello.test"]);
    let echo = pki.server(&["echo.test"]);
    let address = crate::harness::free_address().to_string();
    let config = listener_at(
        "hello",
        &address,
        plugins::HTTP_HELLO,
        &format!("server-names = [\"hello.test\"]\n{}", tls_table(&hello, "")),
    ) + &listener_at(
        "echo",
        &address,
        plugins::ECHO,
        &format!("server-names = [\"echo.test\"]\n{}", tls_table(&echo, "")),
    );
    let server = Server::start(&config);
    let addr = server.addr("echo");
    assert_eq!(addr, server.addr("hello"), "one port");

    let mut client = TlsClient::connect(addr, &pki.ca, Hello { name: "echo.test", ..Hello::default() });
    assert_eq!(client.ask("over TLS"), "over TLS");

    let mut web = TlsClient::connect(addr, &pki.ca, Hello { name: "hello.test", ..Hello::default() });
    web.write(b"GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    assert_eq!(web.line(), "HTTP/1.1 200 OK\r");

    let out = s_client(addr, &["-servername", "echo.test", "-CAfile", pki.ca.to_str().unwrap()], b"from openssl\n");
    assert!(out.contains("from openssl"), "{out}");

    let curl = std::process::Command::new("curl")
        .args(["-sS", "--resolve", &format!("hello.test:{}:127.0.0.1", addr.port())])
        .args(["--cacert", pki.ca.to_str().unwrap(), &format!("https://hello.test:{}/", addr.port())])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "hello from sandport\n",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
}

/// The probe's answer to `tls`: what `tls-info` told it.
fn tls_line(sni: &str, alpn: &str, version: &str, cipher: &str, cert: Option<usize>) -> String {
    let cert = cert.map_or("-".to_owned(), |len| len.to_string());
    format!("tls sni={sni} alpn={alpn} version={version} cipher={cipher} cert={cert}")
}

#[test]
fn a_guest_asks_what_the_handshake_said_on_both_sides() {
    let mut pki = Pki::new("test CA");
    let front = pki.server(&["probe.test"]);
    let upstream = pki.server(&["upstream.test"]);
    let alice = pki.client("alice");
    let upstream_address = crate::harness::free_address();
    let ca = pki.ca.display();
    let client_ca = format!("alpn = [\"x-probe\"]\nclient-ca = \"{ca}\"\nclient-auth = \"optional\"");
    let allow = format!(
        "allow-connect = [{{ address = \"{upstream_address}\", tls = true, server-name = \"upstream.test\", ca = \"{ca}\" }}]\n"
    );
    let config = listener_at("probe", "127.0.0.1:0", plugins::FIXTURE_PROBE, &(allow + &tls_table(&front, &client_ca)))
        + &listener_at("upstream", &upstream_address.to_string(), plugins::ECHO, &tls_table(&upstream, ""));
    let server = Server::start(&config);

    let hello = Hello { name: "probe.test", alpn: &["x-probe"], identity: Some(&alice) };
    let mut client = TlsClient::connect(server.addr("probe"), &pki.ca, hello);
    let session = client.session();
    let version = session.protocol_version().unwrap().as_str().unwrap().to_owned();
    let cipher = session.negotiated_cipher_suite().unwrap().suite().as_str().unwrap().to_owned();
    let alice_der = crate::tls_kit::leaf(&alice).len();
    assert_eq!(client.ask("tls"), tls_line("probe.test", "x-probe", &version, &cipher, Some(alice_der)));

    let anonymous = Hello { name: "probe.test", alpn: &[], identity: None };
    let mut plain_hello = TlsClient::connect(server.addr("probe"), &pki.ca, anonymous);
    let answer = plain_hello.ask("tls");
    assert!(
        answer.starts_with("tls sni=probe.test alpn=- version=TLSv1_3 cipher=") && answer.ends_with(" cert=-"),
        "{answer}"
    );

    let dialing = client.ask(&format!("connect {upstream_address}"));
    let id = dialing.strip_prefix("connecting ").unwrap_or_else(|| panic!("{dialing}"));
    assert_eq!(client.line(), format!("connected {id}"), "CONNECT comes once the upstream's handshake is done");
    let upstream_der = crate::tls_kit::leaf(&upstream).len();
    let answer = client.ask(&format!("tls {id}"));
    assert!(
        answer.starts_with("tls sni=upstream.test alpn=- version=TLSv1_3 cipher=")
            && answer.ends_with(&format!(" cert={upstream_der}")),
        "the dialed side names the upstream and its certificate: {answer}"
    );
}
