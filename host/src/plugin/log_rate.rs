//! The guest log budget: how many bytes of log output a listener's plugin instances
//! may write per second (`limits.log-rate`), across the `log` import, stdout and
//! stderr.
//!
//! A token bucket that holds at most one second's worth: a quiet plugin can log a
//! burst, a chatty one gets its rate and no more. Output is admitted or dropped a
//! whole line at a time. It only counts; it never blocks or slows the guest, and it
//! never logs on its own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::throttle::TokenBucket;

/// One listener's log budget, shared by its instances and their output streams.
#[derive(Debug)]
pub struct LogBudget {
    bucket: Mutex<Bucket>,
    /// Output was dropped since [`LogBudget::take_dropped`] last looked. Outside the
    /// lock: every event asks, from every worker, and almost always the answer is no.
    dropped_lately: AtomicBool,
}

#[derive(Debug)]
struct Bucket {
    /// One token per byte; a second's worth at most.
    bytes: TokenBucket,
    /// Bytes dropped in all.
    dropped: u64,
}

impl LogBudget {
    /// A full budget of `rate` bytes per second.
    pub fn new(rate: usize) -> LogBudget {
        let bytes = TokenBucket::new(rate as f64, rate as f64, Instant::now());
        LogBudget { bucket: Mutex::new(Bucket { bytes, dropped: 0 }), dropped_lately: AtomicBool::new(false) }
    }

    /// Whether a line of `len` bytes may be logged; if so it is paid for, if not it
    /// is counted as dropped.
    pub fn admit(&self, len: usize) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if bucket.bytes.take(len as f64, Instant::now()) {
            true
        } else {
            bucket.dropped += len as u64;
            self.dropped_lately.store(true, Ordering::Relaxed);
            false
        }
    }

    /// Whether anything was dropped since the last call.
    pub fn take_dropped(&self) -> bool {
        // A plain load first: the swap would write the shared line on every event.
        self.dropped_lately.load(Ordering::Relaxed) && self.dropped_lately.swap(false, Ordering::Relaxed)
    }

    /// Bytes dropped since the budget was made.
    pub fn dropped(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_drops_and_reports_once() {
        let budget = LogBudget::new(1000);
        assert!(budget.admit(600));
        assert!(budget.admit(300));
        assert!(!budget.take_dropped());
        assert!(!budget.admit(500));
        assert!(budget.take_dropped());
        assert!(!budget.take_dropped());
        assert_eq!(budget.dropped(), 500);
    }

    #[test]
    fn refills_with_time() {
        let budget = LogBudget::new(1_000_000);
        assert!(budget.admit(1_000_000));
        assert!(!budget.admit(100_000));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(budget.admit(100_000));
    }
}
