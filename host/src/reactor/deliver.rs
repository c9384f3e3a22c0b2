//! What reaches a handler: one event at a time through [`Reactor::dispatch`], what
//! follows when a handler faults, and the events the clock brings (timers, idle and
//! linger deadlines, POLL ticks).
//!
//! A handler is lent out for exactly one event and taken back before anything else
//! happens, so no handler is ever re-entered. Nothing here reads or writes a socket:
//! handlers only record, and the connections they touch are queued for service.

use std::time::Instant;

use tracing::error;

use super::connection::{Phase, Tie};
use super::scope::Scope;
use super::state::Instance;
use super::timer::Alarm;
use super::{FaultNotice, Reactor};
use crate::handler::{ConnId, Event, Fault};
use crate::listener::Limit;

impl Reactor {
    /// Call the handler serving a connection with one of its events, if the
    /// connection's phase lets that event through.
    pub(super) fn dispatch(&mut self, key: usize, event: Event) {
        let conn = &mut self.core.conns[key];
        let deliver = match event {
            Event::Close => conn.phase.attached(),
            _ => conn.delivers_events(),
        };
        if !deliver {
            return;
        }
        if event == Event::Close {
            conn.phase = conn.phase.detached();
        }
        let (instance, id, listener) = (conn.instance, conn.id, conn.listener);
        let kind = event.kind();
        let mut handler = self.core.instances[instance].handler.take().expect("handlers are never re-entered");
        let started = Instant::now();
        let result = handler.handle(&mut Scope { core: &mut self.core, instance, current: Some(key) }, id, event);
        self.core.now = Instant::now();
        let counts = &mut self.core.accounts[listener].counts;
        counts.guest_time.record(self.core.now - started);
        counts.events[kind] += 1;
        let i = &mut self.core.instances[instance];
        i.handler = Some(handler);
        i.wear.count_event();
        match result {
            Ok(()) => self.check_wear(instance, self.core.now),
            Err(fault) => self.fault(instance, Some(key), fault),
        }
    }

    /// The handler `instance` died, while handling connection `key` if it was handling
    /// one (outside an event, during a migration, it may have been about none): drop it,
    /// close that connection at once and every other one it held after its send buffer
    /// drains. Their state died with the handler, so they get no CLOSE.
    pub(super) fn fault(&mut self, instance: usize, key: Option<usize>, fault: Fault) {
        let Some(Instance { listener, conns, version, .. }) = self.core.instances.try_remove(instance) else { return };
        if self.listeners[listener].shared == Some(instance) {
            self.listeners[listener].shared = None;
        }
        if let Some(faults) = &self.faults {
            let _ = faults.send(FaultNotice { listener: self.core.accounts[listener].spec.name.clone(), version });
        }
        if let Some(limit) = fault.limit {
            if let Some(key) = key {
                self.core.hit(key, limit);
            }
            self.core.accounts[listener].counts.fault_limits[limit.index()] += 1;
        }
        let conn = key.map(|key| self.core.conns[key].id);
        let account = &mut self.core.accounts[listener];
        account.counts.faults += 1;
        account.counts.orphaned += conns.len() as u64;
        if account.may_log() {
            error!(
                listener = %account.spec.name,
                conn = conn.map(tracing::field::display),
                version,
                orphaned = conns.len(),
                "handler failed: {fault}; the {} connection(s) it held are closed, new connections get a fresh instance",
                conns.len()
            );
        }
        for k in conns.into_values() {
            let conn = &mut self.core.conns[k];
            conn.phase = if Some(k) == key || conn.phase.is_closing() {
                Phase::Closing(Tie::Detached)
            } else {
                Phase::Draining(Tie::Detached)
            };
            self.core.disarm_all(k);
            self.core.enqueue(k);
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(due) = self.core.timers.pop_due(now) {
            if !self.core.is_armed(&due) {
                continue;
            }
            let conn = &mut self.core.conns[due.key];
            match due.alarm {
                Alarm::Handler(timer) => {
                    conn.timers.remove(&timer);
                    self.core.armed -= 1;
                    self.dispatch(due.key, Event::Timer(timer));
                }
                Alarm::Idle if matches!(conn.phase, Phase::Lingering(_)) => {
                    self.core.hit(due.key, Limit::Linger);
                    self.close(due.key, None);
                }
                Alarm::Idle => {
                    let idle_timeout = self.core.accounts[conn.listener].spec.limits.idle_timeout;
                    let deadline = conn.last_active + idle_timeout;
                    if deadline <= now {
                        self.core.hit(due.key, Limit::IdleTimeout);
                        self.close(due.key, None);
                    } else {
                        conn.idle_arming = self.core.timers.arm(deadline, due.key, due.conn, Alarm::Idle);
                    }
                }
            }
        }
    }

    pub(super) fn fire_polls(&mut self, now: Instant) {
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            if listener.retired {
                continue;
            }
            let every = self.core.accounts[index].spec.poll_interval;
            let (Some(at), Some(every)) = (listener.next_poll, every) else { continue };
            if at > now {
                continue;
            }
            listener.next_poll = Some(now + every);
            let instances = self.core.instances.iter().filter(|(_, i)| i.listener == index);
            let mut keys: Vec<(ConnId, usize)> =
                instances.flat_map(|(_, i)| i.conns.iter().map(|(id, k)| (*id, *k))).collect();
            keys.sort_unstable();
            // Handlers only mark connections for closing; none leaves the slab here.
            for (_, key) in keys {
                self.dispatch(key, Event::Poll);
            }
        }
    }
}
