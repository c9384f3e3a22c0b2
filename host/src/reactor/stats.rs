//! What a reactor counts: per listener, every connection accepted, dialed, refused and
//! closed, every event and byte, the time guests took, every fault and orphan, every
//! limit hit and every host line held back. Plain numbers, each written by one worker
//! only, added up over the workers when asked (the admin API's metrics) and when the
//! server stops; nothing here decides anything.

use std::time::Duration;

use tracing::info;

use crate::handler::Event;
use crate::listener::{Limit, Worn};

/// How long guest calls took: a histogram with fixed bucket bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTime {
    /// Calls that took at most [`GuestTime::BOUNDS`]`[i]`, one count per bound (not
    /// cumulative); the last counts the calls longer than every bound.
    pub buckets: [u64; GuestTime::BOUNDS.len() + 1],
    /// All calls' time added up.
    pub sum: Duration,
}

impl GuestTime {
    /// The buckets' upper bounds, in microseconds.
    pub const BOUNDS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000, 1_000_000];

    /// Count one call that took `took`.
    pub fn record(&mut self, took: Duration) {
        let micros = took.as_micros();
        let bucket = GuestTime::BOUNDS.iter().position(|&bound| micros <= u128::from(bound));
        self.buckets[bucket.unwrap_or(GuestTime::BOUNDS.len())] += 1;
        self.sum += took;
    }

    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &GuestTime) {
        for (sum, n) in self.buckets.iter_mut().zip(other.buckets) {
            *sum += n;
        }
        self.sum += other.sum;
    }
}

impl Default for GuestTime {
    fn default() -> GuestTime {
        GuestTime { buckets: [0; GuestTime::BOUNDS.len() + 1], sum: Duration::ZERO }
    }
}

/// What happened on one listener while the reactor ran.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: u64,
    /// Outbound connections its handlers dialed.
    pub dialed: u64,
    /// Connections refused at accept (`max-connections`, or no handler could start).
    pub refused: u64,
    /// Connections closed, for whatever reason.
    pub closed: u64,
    /// Handler faults (traps, time or memory limits).
    pub faults: u64,
    /// The faults a limit caused, indexed by [`Limit::index`]; the rest were traps.
    pub fault_limits: [u64; Limit::ALL.len()],
    /// Events delivered to handlers, indexed by [`Event::kind`].
    pub events: [u64; Event::KINDS.len()],
    /// How long handlers took over those events (and over migrations).
    pub guest_time: GuestTime,
    /// Bytes read from connections.
    pub bytes_in: u64,
    /// Bytes written to connections.
    pub bytes_out: u64,
    /// Connections still on an old version when its `drain-timeout-ms` passed, and
    /// closed for it.
    pub drained: u64,
    /// Connections carried over to a new version without a disconnect.
    pub migrated: u64,
    /// Instances replaced by fresh ones of the same version, by the bound they passed
    /// (indexed by [`Worn::index`]).
    pub recycles: [u64; Worn::ALL.len()],
    /// Connections closed because the handler instance serving them died.
    pub orphaned: u64,
    /// Connections that hit each limit, indexed by [`Limit::index`]. A connection
    /// counts once per limit however often it hits it.
    pub limit_hits: [u64; Limit::ALL.len()],
    /// Host log lines about the listener's connections (refusals, limit hits,
    /// faults) left out by the rate limit. The events are counted above all the same.
    pub suppressed: u64,
    /// TLS handshakes completed.
    pub handshakes: u64,
    /// TLS handshakes that failed after the ClientHello chose the listener (a bad
    /// client certificate, no common version or cipher, the timeout).
    pub handshakes_failed: u64,
    /// How long completed handshakes took, from accept.
    pub handshake_time: GuestTime,
}

impl Counts {
    /// Connections that hit `limit`.
    pub fn hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit.index()]
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.accepted += other.accepted;
        self.dialed += other.dialed;
        self.refused += other.refused;
        self.closed += other.closed;
        self.faults += other.faults;
        self.orphaned += other.orphaned;
        self.suppressed += other.suppressed;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.drained += other.drained;
        self.migrated += other.migrated;
        self.handshakes += other.handshakes;
        self.handshakes_failed += other.handshakes_failed;
        self.handshake_time.add(&other.handshake_time);
        self.guest_time.add(&other.guest_time);
        for (sum, n) in self.limit_hits.iter_mut().zip(other.limit_hits) {
            *sum += n;
        }
        for (sum, n) in self.fault_limits.iter_mut().zip(other.fault_limits) {
            *sum += n;
        }
        for (sum, n) in self.events.iter_mut().zip(other.events) {
            *sum += n;
        }
        for (sum, n) in self.recycles.iter_mut().zip(other.recycles) {
            *sum += n;
        }
    }

    /// The non-zero limit hits as `key:count` pairs, for the log.
    pub(super) fn hits_text(&self) -> String {
        let hits = Limit::ALL.iter().filter(|l| self.hits(**l) > 0);
        hits.map(|l| format!("{}:{}", l.key(), self.hits(*l))).collect::<Vec<_>>().join(",")
    }
}

/// Why a connection to an address that routes was closed before a listener took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections of the address were still greeting, or no descriptor
    /// was left.
    Busy,
    /// It came from an address the PROXY protocol rule does not name.
    UntrustedProxy,
    /// Its PROXY header was malformed or too long.
    BadProxyHeader,
    /// Its first bytes were not a ClientHello rustls could read (garbage, a hello
    /// truncated or too long, a protocol version nobody speaks).
    BadHello,
    /// Its hello named a server no listener of the address serves, and none is the
    /// default: refused with the `unrecognized_name` alert.
    UnrecognizedName,
    /// The listener its hello chose is not serving (being removed).
    NoListener,
    /// It closed before it said enough to be routed.
    Abandoned,
    /// It had not been routed within the handshake timeout.
    Timeout,
}

impl Refusal {
    /// Every reason, in the order the counters are kept.
    pub const ALL: [Refusal; 8] = [
        Refusal::Busy,
        Refusal::UntrustedProxy,
        Refusal::BadProxyHeader,
        Refusal::BadHello,
        Refusal::UnrecognizedName,
        Refusal::NoListener,
        Refusal::Abandoned,
        Refusal::Timeout,
    ];

    /// Its name in metrics and logs.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::UntrustedProxy => "untrusted_proxy",
            Refusal::BadProxyHeader => "bad_proxy_header",
            Refusal::BadHello => "bad_hello",
            Refusal::UnrecognizedName => "unrecognized_name",
            Refusal::NoListener => "no_listener",
            Refusal::Abandoned => "abandoned",
            Refusal::Timeout => "timeout",
        }
    }

    /// What happened, for the log.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Busy => "too many connections greeting at once",
            Refusal::UntrustedProxy => "not from a load balancer the PROXY protocol rule names",
            Refusal::BadProxyHeader => "a malformed PROXY protocol header",
            Refusal::BadHello => "not a ClientHello that could be read",
            Refusal::UnrecognizedName => "a server name nobody serves here (unrecognized_name)",
            Refusal::NoListener => "its listener is not serving",
            Refusal::Abandoned => "the client left before it was routed",
            Refusal::Timeout => "not routed within the handshake timeout",
        }
    }
}

/// What happened at an address that routes, before its connections reached a
/// listener.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GateCounts {
    /// Connections closed before a listener took them, indexed by [`Refusal`] (in
    /// [`Refusal::ALL`]'s order).
    pub refused: [u64; Refusal::ALL.len()],
    /// Connections handed to the worker that serves their listener.
    pub handed_on: u64,
}

impl GateCounts {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &GateCounts) {
        for (sum, n) in self.refused.iter_mut().zip(other.refused) {
            *sum += n;
        }
        self.handed_on += other.handed_on;
    }
}

/// What happened while the reactor ran: per listener, and in total.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Every listener's counts added up.
    pub total: Counts,
    /// Each listener's name and counts, in the order they were added.
    pub listeners: Vec<(String, Counts)>,
    /// Connections still open when the reactor was asked to stop (each got its CLOSE).
    pub open: u64,
    /// Each address that routes, and what happened there before a listener took a
    /// connection.
    pub addresses: Vec<(std::net::SocketAddr, GateCounts)>,
}

impl Stats {
    /// Add `listener`'s counts (to those of an earlier listener of the same name,
    /// one a reload replaced, if there is one).
    pub(super) fn push(&mut self, listener: &str, counts: &Counts) {
        self.total.add(counts);
        match self.listeners.iter_mut().find(|(name, _)| name == listener) {
            Some((_, mine)) => mine.add(counts),
            None => self.listeners.push((listener.to_owned(), counts.clone())),
        }
    }

    /// Add up two workers' stats, listener by listener (by name).
    pub fn merge(mut self, other: Stats) -> Stats {
        self.open += other.open;
        self.total.add(&other.total);
        for (address, counts) in other.addresses {
            match self.addresses.iter_mut().find(|(mine, _)| *mine == address) {
                Some((_, mine)) => mine.add(&counts),
                None => self.addresses.push((address, counts)),
            }
        }
        for (name, counts) in other.listeners {
            match self.listeners.iter_mut().find(|(mine, _)| *mine == name) {
                Some((_, mine)) => mine.add(&counts),
                None => self.listeners.push((name, counts)),
            }
        }
        self
    }

    /// Log each listener's totals and the server's, as it stops.
    pub fn log(&self) {
        for (name, c) in &self.listeners {
            info!(
                listener = %name,
                suppressed = c.suppressed,
                migrated = c.migrated,
                drained = c.drained,
                handshakes = c.handshakes,
                handshakes_failed = c.handshakes_failed,
                accepted = c.accepted,
                dialed = c.dialed,
                refused = c.refused,
                closed = c.closed,
                faults = c.faults,
                orphaned = c.orphaned,
                limit_hits = %c.hits_text(),
                "listener totals"
            );
        }
        for (address, c) in &self.addresses {
            let refused = Refusal::ALL.iter().filter(|r| c.refused[**r as usize] > 0);
            let refused: Vec<String> = refused.map(|r| format!("{}:{}", r.key(), c.refused[*r as usize])).collect();
            info!(%address, handed_on = c.handed_on, refused = %refused.join(","), "address totals");
        }
        let total = &self.total;
        let open = self.open;
        info!(open, accepted = total.accepted, faults = total.faults, orphaned = total.orphaned, "stopped");
    }
}
