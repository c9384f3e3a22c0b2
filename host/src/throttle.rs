//! The rate limit on the host's own lines about a listener's connections.
//!
//! Refusals, limit hits and faults are logged per connection, so a client (or a guest
//! that dials its own listener) can make the host write as fast as it connects. A
//! [`Throttle`], one per listener, lets a burst of [`BURST`] such lines through at once,
//! then [`PER_SECOND`] a second, and counts the ones it holds back so a summary can say
//! how many ([`Throttle::due_report`], at most once per [`REPORT_EVERY`]). It only
//! decides and counts lines: it never writes one, and never touches the counts of
//! events, which stay exact whatever reaches the log.

use std::time::{Duration, Instant};

/// Lines let through at once after a quiet spell.
pub(crate) const BURST: u32 = 64;

/// Lines let through per second once the burst is spent.
pub(crate) const PER_SECOND: u32 = 4;

/// Lines held back are reported this long after the first of them, at the latest.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Tokens that accrue at a steady rate up to a cap: a burst goes through at once,
/// then the rate.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    /// Tokens available now (fractions accrue between takes).
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens, refilled at `per_second`.
    pub fn new(capacity: f64, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket { capacity, per_second, tokens: capacity, refilled: now }
    }

    /// Take `amount` tokens at `now`, if there are that many.
    pub fn take(&mut self, amount: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
        let enough = self.tokens >= amount;
        if enough {
            self.tokens -= amount;
        }
        enough
    }
}

/// A token bucket for log lines, with a count of what it held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// One token per line.
    bucket: TokenBucket,
    /// Lines held back since the last report.
    unreported: u64,
    /// When the unreported lines are due for a report.
    report_at: Option<Instant>,
}

impl Throttle {
    /// A throttle with its whole burst available.
    pub fn new(now: Instant) -> Throttle {
        let bucket = TokenBucket::new(f64::from(BURST), f64::from(PER_SECOND), now);
        Throttle { bucket, unreported: 0, report_at: None }
    }

    /// Whether a line may be written at `now`; if not, it is counted as held back.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.bucket.take(1.0, now) {
            return true;
        }
        self.unreported += 1;
        self.report_at.get_or_insert(now + REPORT_EVERY);
        false
    }

    /// When the lines held back so far are due for a report, if any were.
    pub fn next_report(&self) -> Option<Instant> {
        self.report_at
    }

    /// The lines held back since the last report, if their report is due at `now`.
    pub fn due_report(&mut self, now: Instant) -> Option<u64> {
        if self.report_at.is_some_and(|at| at <= now) { self.flush() } else { None }
    }

    /// The lines held back since the last report, if any, whether due or not (when
    /// the server stops).
    pub fn flush(&mut self) -> Option<u64> {
        self.report_at = None;
        Some(std::mem::take(&mut self.unreported)).filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(throttle: &mut Throttle, at: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| throttle.admit(at)).count() as u32
    }

    #[test]
    fn a_bucket_gives_whole_amounts_or_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 100.0, t0);
        assert!(bucket.take(600.0, t0));
        assert!(!bucket.take(500.0, t0));
        assert!(bucket.take(400.0, t0));
        assert!(!bucket.take(100.0, t0 + Duration::from_millis(900)));
        assert!(bucket.take(100.0, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_burst_goes_through_then_a_few_per_second() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(t0);
        assert_eq!(admitted(&mut throttle, t0, 1000), BURST);
        assert_eq!(admitted(&mut throttle, t0 + Duration::from_secs(1), 1000), PER_SECOND);
        assert_eq!(admitted(&mut throttle, t0 + Duration::from_secs(3), 1000), 2 * PER_SECOND);
    }

    #[test]
    fn a_quiet_spell_refills_the_burst_but_no_more() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(t0);
        assert_eq!(admitted(&mut throttle, t0, 1000), BURST);
        assert_eq!(admitted(&mut throttle, t0 + Duration::from_secs(3600), 1000), BURST);
    }

    #[test]
    fn held_back_lines_are_reported_once_when_due() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(t0);
        admitted(&mut throttle, t0, BURST);
        assert_eq!(throttle.next_report(), None);
        admitted(&mut throttle, t0, 10);
        assert_eq!(throttle.next_report(), Some(t0 + REPORT_EVERY));
        assert_eq!(throttle.due_report(t0 + REPORT_EVERY / 2), None);
        assert_eq!(throttle.due_report(t0 + REPORT_EVERY), Some(10));
        assert_eq!(throttle.due_report(t0 + 2 * REPORT_EVERY), None);
        assert_eq!(throttle.next_report(), None);
    }

    #[test]
    fn every_held_back_line_is_reported_exactly_once() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(t0);
        let (mut admitted, mut reported) = (0u64, 0u64);
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            admitted += u64::from(throttle.admit(now));
            reported += throttle.due_report(now).unwrap_or(0);
        }
        reported += throttle.flush().unwrap_or(0);
        assert_eq!(admitted + reported, 10_000);
        assert_eq!(throttle.flush(), None);
    }
}
