//! What a reactor counts: per listener, every connection accepted, dialed, refused and
//! closed, every event and byte, the time guests took, every fault and orphan, every
//! limit hit and every host line held back. Plain numbers, each written by one worker
//! only, added up over the workers when asked (the admin API's metrics) and when the
//! server stops; nothing here decides anything.

use std::time::Duration;

use tracing::info;

use crate::handler::Event;
use crate::listener::Limit;

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
    /// Connections closed because the handler instance serving them died.
    pub orphaned: u64,
    /// Connections that hit each limit, indexed by [`Limit::index`]. A connection
    /// counts once per limit however often it hits it.
    pub limit_hits: [u64; Limit::ALL.len()],
    /// Host log lines about the listener's connections (refusals, limit hits,
    /// faults) left out by the rate limit. The events are counted above all the same.
    pub suppressed: u64,
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
    }

    /// The non-zero limit hits as `key:count` pairs, for the log.
    pub(super) fn hits_text(&self) -> String {
        let hits = Limit::ALL.iter().filter(|l| self.hits(**l) > 0);
        hits.map(|l| format!("{}:{}", l.key(), self.hits(*l))).collect::<Vec<_>>().join(",")
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
        let total = &self.total;
        let open = self.open;
        info!(open, accepted = total.accepted, faults = total.faults, orphaned = total.orphaned, "stopped");
    }
}
