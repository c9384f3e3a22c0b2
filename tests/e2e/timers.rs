//! Timers (several per connection, fired in deadline order, re-armable, cancellable)
//! and POLL ticks, through the probe fixture.

use std::time::Duration;

use crate::harness::{Server, listener, plugins};
use crate::neighbour::{peak_rss, reset_peak_rss};

fn probe(extra: &str) -> Server {
    Server::start(&listener("probe", plugins::FIXTURE_PROBE, extra))
}

#[test]
fn timers_fire_in_deadline_order_and_cancelled_ones_do_not() {
    let server = probe("");
    let mut c = server.connect("probe");
    // One write, one event: the deadlines are 100 ms apart whatever the machine's pace.
    c.write(b"timer 3 300\ntimer 1 100\ntimer 2 200\ncancel 2\ncancel 2\n");
    for answer in ["armed 3", "armed 1", "armed 2", "cancelled 2 true", "cancelled 2 false"] {
        assert_eq!(c.line(), answer);
    }
    assert_eq!(c.line(), "timer 1");
    assert_eq!(c.line(), "timer 3");
    assert!(c.quiet_for(Duration::from_millis(300)), "cancelled timer 2 fired");
}

#[test]
fn rearming_replaces_the_deadline() {
    let server = probe("");
    let mut c = server.connect("probe");
    // An hour, then 50 ms: the timer fires within the test's patience only if the
    // second deadline replaced the first.
    assert_eq!(c.ask("timer 7 3600000"), "armed 7");
    assert_eq!(c.ask("timer 7 50"), "armed 7");
    assert_eq!(c.line(), "timer 7");
    assert!(c.quiet_for(Duration::from_millis(300)), "a re-armed timer fires once");
}

/// A timer re-armed a million times (each arming leaves a stale entry in the host's
/// timer queue) keeps the queue bounded: the server's memory stays flat, where a
/// million entries would take tens of MiB; and the timer fires once.
#[test]
fn rearming_a_million_times_keeps_the_timer_queue_bounded() {
    // A million host calls take a while: give the events room (they are innocent).
    let server = probe("[listener.limits]\nevent-timeout-ms = 10000\nevent-wall-timeout-ms = 20000");
    let mut c = server.connect("probe");
    assert_eq!(c.ask("rearm 1 1000 100"), "rearmed 1 1000", "warm-up");
    assert_eq!(c.line(), "timer 1");
    let before = server.rss();
    let peak_tracked = reset_peak_rss(&server);
    // Ten events of 100 000 armings each, 2 s ahead: the timer cannot fire between
    // them, and the stale entries of the first come due while the last run.
    for _ in 0..10 {
        assert_eq!(c.ask("rearm 1 100000 2000"), "rearmed 1 100000");
    }
    assert_eq!(c.line(), "timer 1");
    let peak = if peak_tracked { peak_rss(&server) } else { server.rss() };
    let grown = peak.saturating_sub(before);
    assert!(grown < 16 << 20, "a million re-armings grew the server by {grown} bytes");
    assert!(c.quiet_for(Duration::from_millis(500)), "the re-armed timer fired more than once");
    assert_eq!(c.ask("cancel 1"), "cancelled 1 false");
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
