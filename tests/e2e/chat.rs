//! The chat plugin: broadcast among several clients, join/leave notices, idle pings.

use std::time::Duration;

use crate::harness::{Client, Server, listener, plugins};

/// Connect and read the welcome line; returns the client and its user name.
fn join(server: &Server) -> (Client, String) {
    let mut client = server.connect("chat");
    let welcome = client.line();
    let name = welcome.strip_prefix("* welcome ").unwrap_or_else(|| panic!("not a welcome: {welcome}")).to_owned();
    (client, name)
}

#[test]
fn three_clients_chat_with_join_and_leave_notices() {
    let server = Server::start(&listener("chat", plugins::CHAT, ""));
    let (mut a, name_a) = join(&server);
    let (mut b, name_b) = join(&server);
    assert_eq!(a.line(), format!("* {name_b} joined"));
    let (mut c, name_c) = join(&server);
    assert_eq!(a.line(), format!("* {name_c} joined"));
    assert_eq!(b.line(), format!("* {name_c} joined"));

    a.send_line("hello room");
    assert_eq!(b.line(), format!("{name_a}: hello room"));
    assert_eq!(c.line(), format!("{name_a}: hello room"));
    c.write(b"windows line\r\n");
    assert_eq!(a.line(), format!("{name_c}: windows line"));
    assert_eq!(b.line(), format!("{name_c}: windows line"));
    assert!(a.quiet_for(Duration::from_millis(200)), "the sender must not get its own line back");

    drop(b);
    assert_eq!(a.line(), format!("* {name_b} left"));
    assert_eq!(c.line(), format!("* {name_b} left"));
    c.send_line("bye");
    assert_eq!(a.line(), format!("{name_c}: bye"));
}

#[test]
fn idle_client_gets_pinged() {
    let server = Server::start(&listener("chat", plugins::CHAT, ""));
    let (mut a, _) = join(&server);
    a.send_line("/idle 100");
    assert_eq!(a.line(), "* idle 100");
    assert_eq!(a.line(), "* ping");
    assert_eq!(a.line(), "* ping", "the ping timer re-arms itself");
}

#[test]
fn overlong_line_is_refused() {
    let server = Server::start(&listener("chat", plugins::CHAT, ""));
    let (mut a, _) = join(&server);
    a.write(&vec![b'z'; 5000]);
    assert_eq!(a.line(), "* line too long");
    assert!(a.until_eof().is_empty());
}
