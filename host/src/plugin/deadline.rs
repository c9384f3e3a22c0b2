//! The per-event time budget: a process-wide epoch ticker, and the check that decides,
//! when an event's epoch deadline comes due, whether the guest really used its CPU time.
//!
//! wasmtime interrupts a call when the engine's epoch passes the store's deadline. One
//! ticker thread advances the epoch of every engine (and a tick counter of our own) every
//! [`TICK`]. When an event's deadline comes due, [`CallClock::verdict`] compares the
//! thread CPU time the call used with `event-timeout-ms` and the wall time it took with
//! `event-wall-timeout-ms`: a guest on a starved machine gets the rest of its CPU budget,
//! one that really burned it is stopped.
//!
//! Reading a thread's CPU clock is a system call (hundreds of nanoseconds), too dear for
//! every event. So a thread samples it at most once per tick, at the first call that
//! starts in a new tick, and every call of that tick measures from that sample: it may be
//! charged for up to one tick of CPU time that the calls before it used, never less than
//! its own. It never blocks and never touches a store.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use wasmtime::{Engine, EngineWeak};

use crate::listener::Limit;

/// How often the epoch advances: the resolution of both event deadlines.
pub const TICK: Duration = Duration::from_millis(5);

/// Ticks since the ticker started.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Engines whose epoch the ticker advances; dropped engines fall out.
static ENGINES: Mutex<Vec<EngineWeak>> = Mutex::new(Vec::new());

/// Whether the ticker thread started, once it was asked to.
static TICKER: OnceLock<Result<(), String>> = OnceLock::new();

thread_local! {
    /// The tick in which this thread last read its CPU clock, and what it read.
    static SAMPLE: Cell<(u64, Duration)> = const { Cell::new((u64::MAX, Duration::ZERO)) };
}

/// Have the ticker advance `engine`'s epoch every [`TICK`], starting the ticker thread
/// the first time.
pub fn tick(engine: &Engine) -> std::io::Result<()> {
    ENGINES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(engine.weak());
    let started = TICKER.get_or_init(|| {
        let thread = std::thread::Builder::new().name("sandport-epoch".into()).spawn(run_ticker);
        thread.map(drop).map_err(|err| err.to_string())
    });
    started.clone().map_err(std::io::Error::other)
}

fn run_ticker() {
    loop {
        std::thread::sleep(TICK);
        TICKS.fetch_add(1, Ordering::Relaxed);
        let mut engines = ENGINES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        engines.retain(|weak| weak.upgrade().map(|engine| engine.increment_epoch()).is_some());
    }
}

/// Epoch ticks in `time`, rounded up, at least one.
pub fn ticks(time: Duration) -> u64 {
    (time.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

/// What one event may take.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Thread CPU time (`event-timeout-ms`).
    pub cpu: Duration,
    /// Wall-clock time, whatever the CPU time (`event-wall-timeout-ms`).
    pub wall: Duration,
}

impl Budget {
    /// This budget `n` times over.
    pub fn times(self, n: u32) -> Budget {
        Budget { cpu: self.cpu * n, wall: self.wall * n }
    }

    /// The epoch deadline to set when a call starts: whichever budget ends first could
    /// be used up by then.
    pub fn first_deadline(&self) -> u64 {
        ticks(self.cpu.min(self.wall))
    }
}

/// An event ran past its budget: why the call was interrupted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OverBudget {
    /// It used more CPU time than `event-timeout-ms`.
    #[error("used {used:?} of CPU time in one event, more than its {budget:?} (limits.event-timeout-ms)")]
    Cpu {
        /// CPU time charged to the call.
        used: Duration,
        /// The limit.
        budget: Duration,
    },
    /// It took more wall-clock time than `event-wall-timeout-ms`.
    #[error("took {took:?} of wall-clock time in one event, more than its {budget:?} (limits.event-wall-timeout-ms)")]
    Wall {
        /// Wall time since the call started, to a tick.
        took: Duration,
        /// The limit.
        budget: Duration,
    },
}

impl OverBudget {
    /// The limit that was hit.
    pub fn limit(&self) -> Limit {
        match self {
            OverBudget::Cpu { .. } => Limit::EventTime,
            OverBudget::Wall { .. } => Limit::EventWallTime,
        }
    }
}

/// When a call into a guest started, in ticks and in this thread's CPU time, and how
/// many events' budgets it may take.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallClock {
    tick: u64,
    cpu: Duration,
    /// Budgets the call may use (0 counts as 1).
    budgets: u32,
}

impl CallClock {
    /// The clock of a call starting now on this thread.
    pub fn start() -> CallClock {
        let tick = TICKS.load(Ordering::Relaxed);
        let (sampled, cpu) = SAMPLE.get();
        if sampled == tick {
            return CallClock { tick, cpu, budgets: 1 };
        }
        let cpu = thread_cpu_time();
        SAMPLE.set((tick, cpu));
        CallClock { tick, cpu, budgets: 1 }
    }

    /// The same clock for a call that may take `budgets` events' budgets.
    pub fn stretched(self, budgets: u32) -> CallClock {
        CallClock { budgets, ..self }
    }

    /// The deadline came due: go on for this many more ticks, or stop.
    pub fn verdict(&self, budget: &Budget) -> Result<u64, OverBudget> {
        let budget = &budget.times(self.budgets.max(1));
        let took = TICK * TICKS.load(Ordering::Relaxed).saturating_sub(self.tick) as u32;
        if took >= budget.wall {
            return Err(OverBudget::Wall { took, budget: budget.wall });
        }
        let used = thread_cpu_time().saturating_sub(self.cpu);
        if used >= budget.cpu {
            return Err(OverBudget::Cpu { used, budget: budget.cpu });
        }
        Ok(ticks((budget.cpu - used).min(budget.wall - took)))
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    // The calling thread's own CPU clock always exists.
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_thread_is_not_charged_cpu_time() {
        let clock = CallClock::start();
        std::thread::sleep(Duration::from_millis(30));
        let budget = Budget { cpu: Duration::from_millis(20), wall: Duration::from_secs(10) };
        assert!(clock.verdict(&budget).is_ok());
    }

    #[test]
    fn a_spinning_thread_is() {
        let clock = CallClock::start();
        // Spin until this thread has used 30 ms of CPU, however long a busy machine
        // makes that take.
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(30) {}
        let budget = Budget { cpu: Duration::from_millis(20), wall: Duration::from_secs(10) };
        assert!(matches!(clock.verdict(&budget), Err(OverBudget::Cpu { .. })));
    }

    #[test]
    fn a_stretched_call_may_take_that_many_budgets() {
        let start = thread_cpu_time();
        let (clock, stretched) = (CallClock::start(), CallClock::start().stretched(3));
        while thread_cpu_time() - start < Duration::from_millis(30) {}
        let budget = Budget { cpu: Duration::from_millis(20), wall: Duration::from_secs(10) };
        assert!(clock.verdict(&budget).is_err());
        assert!(stretched.verdict(&budget).is_ok());
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::ZERO), 1);
        assert_eq!(ticks(TICK), 1);
        assert_eq!(ticks(TICK + Duration::from_nanos(1)), 2);
    }
}
