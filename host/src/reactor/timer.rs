//! The reactor's timer queue: when each armed handler timer, and each connection's
//! idle check, is due.
//!
//! It orders deadlines and nothing more. Which timers are still armed is the
//! connections' business (each keeps `timer id -> arming`, and the arming of its idle
//! check); re-arming or cancelling
//! leaves a stale entry here that is skipped when it comes due, and [`Timers::compact`]
//! drops stale entries in bulk so a handler re-arming in a hot loop cannot grow the
//! queue without bound. It never calls a handler.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::handler::ConnId;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Alarm {
    /// The handler's timer with this id.
    Handler(u64),
    /// The connection's idle timeout (checked, and re-armed if bytes moved since);
    /// while the connection lingers after its close, the end of its `linger-ms`.
    Idle,
}

/// One arming of one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    /// When it fires. Ties fire in arming order.
    pub at: Instant,
    /// Unique per arming, so a re-armed timer's old entry is recognisably stale.
    pub arming: u64,
    /// The connection's slot in the reactor.
    pub key: usize,
    /// The connection's id, to tell a reused slot from the original owner.
    pub conn: ConnId,
    /// What fires.
    pub alarm: Alarm,
}

/// Deadlines of armed timers, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Due>>,
    next_arming: u64,
}

impl Timers {
    /// Record a deadline; returns the arming number the connection must remember.
    pub fn arm(&mut self, at: Instant, key: usize, conn: ConnId, alarm: Alarm) -> u64 {
        let arming = self.next_arming;
        self.next_arming += 1;
        self.heap.push(Reverse(Due { at, arming, key, conn, alarm }));
        arming
    }

    /// The earliest deadline, possibly of a stale entry (an early wake-up is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(due)| due.at)
    }

    /// The earliest entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse(due)) if due.at <= now => self.heap.pop().map(|Reverse(due)| due),
            _ => None,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keep only the entries for which `live` holds.
    pub fn compact(&mut self, mut live: impl FnMut(&Due) -> bool) {
        self.heap.retain(|Reverse(due)| live(due));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_in_deadline_then_arming_order() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        let conn = ConnId(1);
        timers.arm(t0 + Duration::from_millis(30), 0, conn, Alarm::Handler(3));
        timers.arm(t0 + Duration::from_millis(10), 0, conn, Alarm::Handler(1));
        timers.arm(t0 + Duration::from_millis(10), 0, conn, Alarm::Idle);
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(t0), None);
        let later = t0 + Duration::from_millis(50);
        let order: Vec<Alarm> = std::iter::from_fn(|| timers.pop_due(later)).map(|d| d.alarm).collect();
        assert_eq!(order, [Alarm::Handler(1), Alarm::Idle, Alarm::Handler(3)]);
    }

    #[test]
    fn compact_drops_what_is_not_live() {
        let mut timers = Timers::default();
        let now = Instant::now();
        let keep = timers.arm(now, 0, ConnId(1), Alarm::Handler(1));
        timers.arm(now, 0, ConnId(1), Alarm::Handler(2));
        timers.compact(|due| due.arming == keep);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.pop_due(now).map(|d| d.alarm), Some(Alarm::Handler(1)));
    }
}
