//! Recycling: an instance worn past a bound of its listener's [`Recycle`] (memory, events,
//! age) is replaced by a fresh instance of the same version before its wear makes it
//! fail, the way gunicorn's `max_requests` replaces a worker, except that connections
//! need not end.
//!
//! The check runs after each event the instance handles ([`Reactor::check_wear`]); it
//! reads three numbers and costs nothing when the listener sets no bound. A worn
//! instance gets one fresh instance made for it on the worker's maker thread, because
//! making one takes from microseconds (Rust) to a millisecond (Python) that the loop
//! should spend serving. When it arrives (a [`Command::Fresh`] between two turns), the
//! worn instance is replaced ([`Reactor::recycle`]):
//!
//! - if both it and the fresh one migrate, its own state and its connections move to the
//!   fresh one all or nothing, through the same pipeline a swap uses (`migration`); the
//!   peers notice nothing, and no byte is lost;
//! - otherwise, or if that migration is called off, new connections go to the fresh
//!   instance and the worn one drains: it serves the connections it has until they close
//!   or the listener's `drain-timeout-ms` passes.
//!
//! A fresh instance that is already past the memory mark once it has taken over (the
//! state it carries is that big) is not recycled by memory again: recycling cannot help
//! there, and would run in circles. This module never runs during an event, and decides
//! nothing about versions: an instance a swap or a retire overtook is left to them.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Reactor;
use super::command::{Command, Commands};
use super::migration::CalledOff;
use crate::handler::{Fault, Handler, HandlerFactory};
use crate::listener::{Limit, Recycle, Worn};

/// How long a worn instance whose fresh replacement could not be made serves on before
/// another is asked for.
const RETRY: Duration = Duration::from_secs(1);

/// One instance's wear, and where its replacement stands.
pub(super) struct Wear {
    /// Tells this instance from a later one in the same slab slot, for a fresh
    /// instance that arrives after its worn one is gone.
    pub(super) serial: u64,
    born: Instant,
    events: u64,
    /// Its memory when it began to serve: a memory mark at or below it cannot be
    /// recycled away.
    floor: usize,
    /// A fresh instance is being made for it.
    pending: bool,
    /// Its last fresh instance could not be made: not again before this time.
    hold: Option<Instant>,
}

impl Wear {
    /// The wear of an instance born now, `serial`, whose memory is `floor`.
    pub(super) fn new(serial: u64, now: Instant, floor: usize) -> Wear {
        Wear { serial, born: now, events: 0, floor, pending: false, hold: None }
    }

    /// One more event handled.
    pub(super) fn count_event(&mut self) {
        self.events += 1;
    }
}

/// What the maker thread is asked for: a fresh instance from `factory` for the worn
/// instance `instance` (serial `serial`).
struct Job {
    factory: Box<dyn HandlerFactory>,
    instance: usize,
    serial: u64,
    worn: Worn,
}

/// The worker's maker thread, started the first time an instance wears out.
#[derive(Default)]
pub(super) struct Maker {
    jobs: Option<Sender<Job>>,
    /// Fresh instances asked for and not yet arrived, at most [`Recycle::IN_FLIGHT`]:
    /// each holds a slot of a pooled engine, which keeps that many spare per worker.
    pending: usize,
}

impl Maker {
    /// Give `job` to the thread (started if need be); it is handed back if no thread
    /// can take it.
    fn give(&mut self, job: Job, worker: usize, answers: &Commands) -> Result<(), Job> {
        // A thread that ended (a factory panicked) hands the job back: start another.
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(returned) => returned.0,
            },
            None => job,
        };
        let (jobs, queue) = channel();
        let answers = answers.clone();
        let started = std::thread::Builder::new()
            .name(format!("sandport-maker-{worker}"))
            .spawn(move || make_fresh(&queue, &answers));
        match started {
            Ok(_) => {
                jobs.send(job).expect("the thread holds the receiver");
                self.jobs = Some(jobs);
                Ok(())
            }
            Err(err) => {
                warn!(worker, "cannot start the thread that makes fresh instances: {err}; making them on the loop");
                Err(job)
            }
        }
    }
}

/// The maker thread: make each fresh instance asked for and send it to the worker;
/// ends when the worker drops its side.
fn make_fresh(queue: &Receiver<Job>, answers: &Commands) {
    for Job { mut factory, instance, serial, worn } in queue {
        let handler = factory.new_handler();
        if !answers.send(Command::Fresh { instance, serial, worn, handler }) {
            return;
        }
    }
}

impl Reactor {
    /// After `instance` handled an event: if it is worn past a bound of its listener's
    /// [`Recycle`](crate::listener::Recycle), have a fresh instance made for it.
    pub(super) fn check_wear(&mut self, instance: usize, now: Instant) {
        let i = &self.core.instances[instance];
        let account = &self.core.accounts[i.listener];
        let recycle = &account.spec.recycle;
        if !recycle.is_set()
            || i.wear.pending
            || i.wear.hold.is_some_and(|at| at > now)
            || i.drain_at.is_some()
            || self.maker.pending >= Recycle::IN_FLIGHT
        {
            return;
        }
        let listener = &self.listeners[i.listener];
        if listener.retired || i.version != listener.version {
            return;
        }
        let memory = || i.handler.as_ref().map_or(0, |h| h.memory());
        let worn = if recycle.events.is_some_and(|events| i.wear.events >= events) {
            Worn::Events
        } else if recycle.age.is_some_and(|age| now.saturating_duration_since(i.wear.born) >= age) {
            Worn::Age
        } else if let Some(mark) = recycle.memory_mark(account.spec.limits.memory)
            && mark > i.wear.floor
            && memory() >= mark
        {
            Worn::Memory
        } else {
            return;
        };
        let (serial, index) = (i.wear.serial, i.listener);
        self.core.instances[instance].wear.pending = true;
        self.maker.pending += 1;
        let answers = self.commands();
        let job = match self.listeners[index].factory.fork() {
            Some(factory) => Job { factory, instance, serial, worn },
            None => {
                let handler = self.listeners[index].factory.new_handler();
                answers.send(Command::Fresh { instance, serial, worn, handler });
                return;
            }
        };
        if let Err(Job { mut factory, .. }) = self.maker.give(job, self.index, &answers) {
            let handler = factory.new_handler();
            answers.send(Command::Fresh { instance, serial, worn, handler });
        }
    }

    /// The fresh instance made for `instance` (serial `serial`, worn by `worn`) is here:
    /// replace `instance` by it, moving its state and connections if both migrate,
    /// draining it otherwise.
    pub(super) fn recycle(
        &mut self,
        instance: usize,
        serial: u64,
        worn: Worn,
        handler: Result<Box<dyn Handler>, Fault>,
    ) {
        let now = Instant::now();
        self.maker.pending -= 1;
        let Some(i) = self.core.instances.get_mut(instance).filter(|i| i.wear.serial == serial) else { return };
        i.wear.pending = false;
        let (index, version) = (i.listener, i.version);
        let (events, age) = (i.wear.events, now.saturating_duration_since(i.wear.born));
        let memory = i.handler.as_ref().map_or(0, |h| h.memory());
        let listener = &self.listeners[index];
        // A swap or a retire overtook the worn instance: it drains already.
        if listener.retired || listener.version != version || i.drain_at.is_some() || self.core.stopping {
            return;
        }
        let name = self.core.accounts[index].spec.name.clone();
        let fresh = match handler {
            Ok(fresh) => fresh,
            Err(fault) => {
                i.wear.hold = Some(now + RETRY);
                if !self.core.accounts[index].may_log() {
                    return;
                }
                warn!(listener = %name, version, reason = %worn.key(), "cannot make a fresh instance to recycle a worn one: {fault}; it serves on, and another is tried in {RETRY:?}");
                return;
            }
        };
        let migrates = i.handler.as_ref().is_some_and(|h| h.migrates()) && fresh.migrates();
        let current = self.listeners[index].shared == Some(instance);
        let state_limit = self.core.accounts[index].spec.limits.migrate_state;
        let mut fresh = Some(fresh);
        let mut moved = None;
        if migrates {
            let mut one =
                || fresh.take().ok_or_else(|| Fault { reason: "one fresh instance only".into(), limit: None });
            match self.migrate_all(index, &[instance], &mut one, version, state_limit) {
                Ok(committed) => {
                    if current {
                        self.listeners[index].shared = committed.shared;
                    }
                    for &new in &committed.made {
                        self.set_floor(new, &name);
                    }
                    moved = Some(committed.moved);
                }
                Err(CalledOff { reason, broken_old, over_bound }) => {
                    let account = &mut self.core.accounts[index];
                    if over_bound {
                        account.counts.limit_hits[Limit::MigrateState.index()] += 1;
                    }
                    if let Some((old, key, fault)) = broken_old {
                        warn!(listener = %name, version, reason = %worn.key(), "recycling a worn instance failed in its hand-over: {reason}");
                        self.fault(old, key, fault);
                        return;
                    }
                    warn!(listener = %name, version, reason = %worn.key(), "moving a worn instance's connections to a fresh one was called off: {reason}; it drains instead");
                }
            }
        }
        let draining = match moved {
            Some(_) => 0,
            None => {
                if current {
                    // Without a fresh instance (a called-off migration used it up), the
                    // next connection makes one.
                    self.listeners[index].shared = fresh.map(|h| self.core.add_instance(index, version, h));
                }
                let draining = self.drain_later(instance);
                self.release_if_idle(instance);
                draining
            }
        };
        self.core.accounts[index].counts.recycles[worn.index()] += 1;
        info!(
            listener = %name,
            worker = self.index,
            version,
            reason = %worn.key(),
            memory,
            events,
            age_ms = age.as_millis() as u64,
            moved = moved.unwrap_or(0),
            draining,
            took = ?now.elapsed(),
            "recycled a worn instance"
        );
    }

    /// A fresh instance took over: what it holds now is its floor. Warn if that is past
    /// the memory mark already, since recycling it by memory would not help.
    fn set_floor(&mut self, instance: usize, listener: &str) {
        let i = &mut self.core.instances[instance];
        let memory = i.handler.as_ref().map_or(0, |h| h.memory());
        i.wear.floor = memory;
        let account = &mut self.core.accounts[i.listener];
        let spec = &account.spec;
        if let Some(mark) = spec.recycle.memory_mark(spec.limits.memory)
            && memory >= mark
            && account.may_log()
        {
            warn!(
                listener,
                memory,
                mark,
                "a fresh instance holds more than recycle.memory once it has taken over the worn one's state: it is not recycled by memory"
            );
        }
    }
}
