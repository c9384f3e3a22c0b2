//! A live migration on one worker, all or nothing: the instances of a listener's old
//! version hand their own state and their connections to instances of the new version,
//! and only when every call has returned does the new version take over.
//!
//! For each old instance that migrates, in turn: `hand-over-instance` on the old one
//! and `take-over-instance` on a new one (one new instance for a shared or per-worker
//! listener, one per old instance for a per-connection one), then `hand-over` and
//! `take-over` for each of its connections. During all this both instances know the
//! connection; the reactor's own view of it (which instance serves it) changes only at
//! the commit, when the old instances are dropped.
//!
//! Anything that goes wrong on the way (a trap, a call over its deadline, a state over
//! its bound) calls the whole migration off: the new instances are dropped, every
//! connection is put back as it was before the first call (its send buffer, receive
//! buffer, timers and close state, from a [`Checkpoint`]), and the old instances serve
//! on. An old instance built before the WIT 0.3.0 forgot each connection it handed
//! over, so it is given them back through its own `take-over`. This module does no I/O
//! and never runs during an event; it decides nothing about which version serves (the
//! caller installs the new one only if this commits).

use std::collections::HashMap;

use tracing::{debug, warn};

use super::connection::{Phase, SendWanted, Tie, WriteSide};
use super::state::Instance;
use super::{Reactor, Scope};
use crate::handler::{ConnId, Fault, HandlerFactory};
use crate::listener::{InstanceMode, Limit};

/// A connection as it was before the migration touched it.
struct Checkpoint {
    key: usize,
    tx_len: usize,
    rx: Vec<u8>,
    timers: HashMap<u64, u64>,
    phase: Phase,
    write_side: WriteSide,
    send_wanted: SendWanted,
}

/// One old instance on its way into a new one.
struct Move {
    old: usize,
    new: usize,
    /// What the old instance handed over for each connection, kept for an old instance
    /// that forgets what it hands over: if the migration is called off, it gets it back.
    handed: Vec<(ConnId, usize, Option<Vec<u8>>)>,
}

/// Why a migration was called off.
pub(super) struct CalledOff {
    /// What went wrong, in words for the log and the swap's report.
    pub(super) reason: String,
    /// The old instance, if it was the one that faulted (it cannot go on), and the
    /// connection its call was about, if any.
    pub(super) broken_old: Option<(usize, Option<usize>, Fault)>,
    /// Whether a state over its bound called it off (`migrate-state`).
    pub(super) over_bound: bool,
}

/// A state over its bound calls the migration off with the old instance unharmed (it
/// only returned too much); any other fault of the old instance goes to `broken`.
fn over_or(broken: impl FnOnce(Fault) -> CalledOff) -> impl FnOnce(Fault) -> CalledOff {
    move |fault| match fault.limit {
        Some(Limit::MigrateState) => CalledOff { reason: fault.to_string(), broken_old: None, over_bound: true },
        _ => broken(fault),
    }
}

/// What a migration that committed did.
#[derive(Default)]
pub(super) struct Committed {
    /// Connections now served by the new version.
    pub(super) moved: u64,
    /// The new instance that serves a shared or per-worker listener's connections.
    pub(super) shared: Option<usize>,
    /// Every new instance, in the order they were made.
    pub(super) made: Vec<usize>,
}

impl Committed {
    /// Whether anything migrated: a shared or per-worker instance (its state, if not
    /// a connection), or per-connection instances, each with its connection.
    pub(super) fn migrated(&self) -> bool {
        self.shared.is_some() || self.moved > 0
    }
}

impl Reactor {
    /// Move the migrating instances among `olds` (all of listener `index`'s) into new
    /// instances made by `factory` (version `version`), all or nothing. `state_limit`
    /// bounds each instance's own state. The instances that do not migrate are left
    /// for the caller to drain.
    pub(super) fn migrate_all(
        &mut self,
        index: usize,
        olds: &[usize],
        factory: &mut dyn HandlerFactory,
        version: u64,
        state_limit: usize,
    ) -> Result<Committed, CalledOff> {
        let migrating: Vec<usize> = olds
            .iter()
            .copied()
            .filter(|&old| self.core.instances.get(old).and_then(|i| i.handler.as_ref()).is_some_and(|h| h.migrates()))
            .collect();
        if migrating.is_empty() {
            return Ok(Committed::default());
        }
        let per_connection = self.core.accounts[index].spec.instance == InstanceMode::PerConnection;
        self.core.timers_held = true;
        let mut checkpoints = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        let mut made: Vec<usize> = Vec::new();
        let mut result = Ok(());
        for old in migrating {
            let new = match made.last() {
                Some(&new) if !per_connection => new,
                _ => match self.make_instance(index, factory, version) {
                    Ok(Some(new)) => {
                        made.push(new);
                        new
                    }
                    // The new version does not migrate: nothing moves, the old drain.
                    Ok(None) => break,
                    Err(reason) => {
                        result = Err(CalledOff { reason, broken_old: None, over_bound: false });
                        break;
                    }
                },
            };
            checkpoints.extend(self.checkpoint(old));
            moves.push(Move { old, new, handed: Vec::new() });
            let step = self.move_instance(moves.last_mut().expect("just pushed"), state_limit);
            if let Err(called_off) = step {
                result = Err(called_off);
                break;
            }
        }
        let outcome = match result {
            // Nothing was made: the new version does not migrate.
            Ok(()) if moves.is_empty() => Ok(Committed::default()),
            Ok(()) => {
                let shared = made.first().copied().filter(|_| !per_connection);
                Ok(Committed { made, shared, ..self.commit(moves) })
            }
            Err(called_off) => {
                self.call_off(moves, &made, checkpoints);
                Err(called_off)
            }
        };
        self.core.timers_held = false;
        self.core.compact_timers();
        outcome
    }

    /// A new instance of listener `index` from `factory`, not yet serving anything;
    /// `None` (and no instance) when it does not migrate.
    fn make_instance(
        &mut self,
        index: usize,
        factory: &mut dyn HandlerFactory,
        version: u64,
    ) -> Result<Option<usize>, String> {
        let handler = factory.new_handler().map_err(|fault| format!("cannot start the new version: {fault}"))?;
        if !handler.migrates() {
            return Ok(None);
        }
        Ok(Some(self.core.add_instance(index, version, handler)))
    }

    /// Every connection of `old` as it is now.
    fn checkpoint(&self, old: usize) -> Vec<Checkpoint> {
        let keys = self.core.instances[old].conns.values();
        keys.map(|&key| {
            let c = &self.core.conns[key];
            Checkpoint {
                key,
                tx_len: c.tx.len(),
                rx: c.rx.as_slice().to_vec(),
                timers: c.timers.clone(),
                phase: c.phase,
                write_side: c.write_side,
                send_wanted: c.send_wanted,
            }
        })
        .collect()
    }

    /// Hand `step.old`'s own state and each of its connections to `step.new`.
    fn move_instance(&mut self, step: &mut Move, state_limit: usize) -> Result<(), CalledOff> {
        let (old, new) = (step.old, step.new);
        let from_old = |key: Option<usize>| {
            move |fault: Fault| CalledOff {
                reason: format!("the old version failed: {fault}"),
                broken_old: Some((old, key, fault)),
                over_bound: false,
            }
        };
        let from_new = |fault: Fault| CalledOff { reason: fault.to_string(), broken_old: None, over_bound: false };
        let state =
            self.call(old, None, |h, host| h.hand_over_instance(host, state_limit)).map_err(over_or(from_old(None)))?;
        if let Some(state) = state {
            let taken = self.call(new, None, |h, host| h.take_over_instance(host, state)).map_err(from_new)?;
            if !taken {
                debug!(listener = %self.core.accounts[self.core.instances[new].listener].spec.name,
                    "the new version takes no instance state: the old one's is left behind");
            }
        }
        let mut conns: Vec<(ConnId, usize)> = self.core.instances[old].conns.iter().map(|(id, k)| (*id, *k)).collect();
        conns.sort_unstable();
        let keeps = self.core.instances[old].handler.as_ref().is_some_and(|h| h.keeps_what_it_hands_over());
        for (id, key) in conns {
            let state =
                self.call(old, Some(key), |h, host| h.hand_over(host, id)).map_err(over_or(from_old(Some(key))))?;
            self.core.instances[new].conns.insert(id, key);
            step.handed.push((id, key, (!keeps).then(|| state.clone())));
            self.call(new, Some(key), |h, host| h.take_over(host, id, state)).map_err(from_new)?;
        }
        Ok(())
    }

    /// Call `instance`'s handler with a host scoped to it (and to connection `current`,
    /// if the call is about one).
    fn call<R>(
        &mut self,
        instance: usize,
        current: Option<usize>,
        f: impl FnOnce(&mut dyn crate::handler::Handler, &mut Scope<'_>) -> Result<R, Fault>,
    ) -> Result<R, Fault> {
        let mut handler = self.core.instances[instance].handler.take().expect("handlers are never re-entered");
        let result = f(handler.as_mut(), &mut Scope { core: &mut self.core, instance, current });
        self.core.instances[instance].handler = Some(handler);
        result
    }

    /// Every call returned: the new instances serve, the old ones are dropped.
    fn commit(&mut self, moves: Vec<Move>) -> Committed {
        let mut moved = 0;
        for Move { old, new, .. } in moves {
            let Instance { conns, .. } = self.core.instances.remove(old);
            for key in conns.into_values() {
                self.core.conns[key].instance = new;
                self.core.enqueue(key);
                moved += 1;
            }
        }
        Committed { moved, ..Committed::default() }
    }

    /// Something failed: drop the new instances and put every connection back as the
    /// checkpoints say.
    fn call_off(&mut self, moves: Vec<Move>, made: &[usize], checkpoints: Vec<Checkpoint>) {
        let moved: std::collections::HashSet<usize> = checkpoints.iter().map(|c| c.key).collect();
        for &new in made {
            let Instance { conns, .. } = self.core.instances.remove(new);
            // Connections the new version dialed during its take-over have nobody left.
            for key in conns.into_values().filter(|key| !moved.contains(key)) {
                self.core.conns[key].phase = Phase::Closing(Tie::Detached);
                self.core.disarm_all(key);
                self.core.enqueue(key);
            }
        }
        for checkpoint in checkpoints {
            let c = &mut self.core.conns[checkpoint.key];
            let pool = &mut self.core.buffers;
            c.tx.truncate(checkpoint.tx_len, pool);
            if c.rx.len() != checkpoint.rx.len() {
                c.rx.clear(pool);
                c.rx.append(&checkpoint.rx, pool).expect("it held these bytes before");
            }
            let (now, then) = (c.timers.len(), checkpoint.timers.len());
            c.timers = checkpoint.timers;
            (c.phase, c.write_side, c.send_wanted) = (checkpoint.phase, checkpoint.write_side, checkpoint.send_wanted);
            self.core.armed = self.core.armed + then - now;
        }
        for Move { old, handed, .. } in moves {
            for (id, key, state) in handed.into_iter().filter_map(|(id, key, state)| Some((id, key, state?))) {
                if !self.core.instances.contains(old) {
                    break;
                }
                if let Err(fault) = self.call(old, Some(key), |h, host| h.take_over(host, id, state)) {
                    warn!("the old version could not take back a connection it handed over: {fault}");
                    self.fault(old, Some(key), fault);
                }
            }
        }
    }
}
