//! Timers (several per connection, fired in deadline order, re-armable, cancellable)
//! and POLL ticks, through the probe fixture.

use std::time::{Duration, Instant};

use crate::harness::{Server, listener, plugins};

fn probe(extra: &str) -> Server {
    Server::start(&listener("probe", plugins::FIXTURE_PROBE, extra))
}

#[test]
fn timers_fire_in_deadline_order_and_cancelled_ones_do_not() {
    let server = probe("");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("timer 3 300"), "armed 3");
    assert_eq!(c.ask("timer 1 100"), "armed 1");
    assert_eq!(c.ask("timer 2 200"), "armed 2");
    assert_eq!(c.ask("cancel 2"), "cancelled 2 true");
    assert_eq!(c.ask("cancel 2"), "cancelled 2 false");
    assert_eq!(c.line(), "timer 1");
    assert_eq!(c.line(), "timer 3");
    assert!(c.quiet_for(Duration::from_millis(300)), "cancelled timer 2 fired");
}

#[test]
fn rearming_replaces_the_deadline() {
    let server = probe("");
    let mut c = server.connect("probe");
    let start = Instant::now();
    assert_eq!(c.ask("timer 7 5000"), "armed 7");
    assert_eq!(c.ask("timer 7 50"), "armed 7");
    assert_eq!(c.line(), "timer 7");
    assert!(start.elapsed() < Duration::from_secs(4), "the re-armed deadline was used");
    assert!(c.quiet_for(Duration::from_millis(300)), "a re-armed timer fires once");
}

#[test]
fn timers_of_connections_are_their_own() {
    let server = probe("");
    let mut a = server.connect("probe");
    let mut b = server.connect("probe");
    assert_eq!(a.ask("timer 1 150"), "armed 1");
    assert_eq!(b.ask("timer 1 50"), "armed 1");
    assert_eq!(b.line(), "timer 1");
    assert_eq!(a.line(), "timer 1");
    assert_eq!(b.ask("cancel 1"), "cancelled 1 false");
}

#[test]
fn timers_per_connection_are_limited() {
    let server = probe("[listener.limits]\nmax-timers = 2");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("timer 1 60000"), "armed 1");
    assert_eq!(c.ask("timer 2 60000"), "armed 2");
    assert_eq!(c.ask("timer 3 60000"), "err limit-exceeded");
    assert_eq!(c.ask("timer 2 50"), "armed 2", "re-arming an armed id is not a new timer");
    assert_eq!(c.line(), "timer 2");
    assert_eq!(c.ask("timer 3 50"), "armed 3", "a fired timer frees its slot");
    assert_eq!(c.line(), "timer 3");
}

#[test]
fn poll_ticks_reach_listeners_that_ask_for_them() {
    let server = probe("poll-interval-ms = 50");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("poll-on"), "polling");
    assert_eq!(c.line(), "poll");
    assert_eq!(c.line(), "poll");
}

#[test]
fn no_poll_ticks_without_an_interval() {
    let server = probe("");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("poll-on"), "polling");
    assert!(c.quiet_for(Duration::from_millis(400)), "POLL arrived on a listener without poll-interval-ms");
}
