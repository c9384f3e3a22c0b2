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
