//! Live migration, the plugin side: calling a component's `hand-over-instance`,
//! `take-over-instance`, `hand-over` and `take-over`.
//!
//! Whether a component exports the WIT `migrate` interface, and where its functions
//! are, is found once at load with its `handler` (see `exports`), at the version of
//! the contract it was built against; an instance that has them holds them as an
//! `exports::Migrate`.
//!
//! Calls go through [`PluginHandler::call`], as `handle`'s do: the same per-call
//! budget and deadline, host imports working, a fault explained the same way. This
//! module decides nothing about which connections move or when (the reactor does), and
//! never keeps a state: it passes the bytes through, bounded by [`MAX_STATE`] for a
//! connection's and by the listener's `migrate-state` limit for an instance's.

use super::{PluginHandler, call};
use crate::handler::{ConnId, Fault, Host};
use crate::listener::Limit;

/// What instance-level calls are tagged with in the guest's log: no connection.
const NO_CONN: ConnId = ConnId(0);

/// Events' budgets (`event-timeout-ms`, `event-wall-timeout-ms`) an instance-level
/// call may take: it carries a whole instance's state, not one event's work.
pub const INSTANCE_BUDGETS: u32 = 10;

/// Most bytes of state one connection may carry to the new version: a session, not a
/// data store. More from `hand-over` calls the migration off, as more than the
/// listener's `migrate-state` from `hand-over-instance` does (both are reported as that
/// limit). (The bytes are copied out of the guest before they can be measured; the
/// guest's memory limit bounds that copy.)
pub const MAX_STATE: usize = 1 << 20;

/// The old instance's side, first: call its `hand-over-instance`; `None` when its
/// component has none (it was built before 0.3.0).
pub(super) fn hand_over_instance(
    handler: &mut PluginHandler,
    host: &mut dyn Host,
    limit: usize,
) -> Result<Option<Vec<u8>>, Fault> {
    let Some(migrate) = &handler.migrate else { return Err(not_migrating(handler)) };
    let Some((hand_over, _)) = migrate.instance else { return Ok(None) };
    let during = "in hand-over-instance";
    let (state,) = call(&handler.tenant, &mut handler.store, host, (NO_CONN, INSTANCE_BUDGETS), during, |store| {
        hand_over.call(store, ())
    })?;
    if state.len() > limit {
        return Err(Fault {
            reason: format!(
                "plugin {} handed over {} bytes of instance state; limits.{} is {limit}",
                handler.tenant.plugin.path().display(),
                state.len(),
                Limit::MigrateState.key()
            ),
            limit: Some(Limit::MigrateState),
        });
    }
    Ok(Some(state))
}

/// The new instance's side, first: call its `take-over-instance` with `state`; false
/// when its component has none.
pub(super) fn take_over_instance(
    handler: &mut PluginHandler,
    host: &mut dyn Host,
    state: Vec<u8>,
) -> Result<bool, Fault> {
    let Some(migrate) = &handler.migrate else { return Err(not_migrating(handler)) };
    let Some((_, take_over)) = migrate.instance else { return Ok(false) };
    let during = "in take-over-instance";
    call(&handler.tenant, &mut handler.store, host, (NO_CONN, INSTANCE_BUDGETS), during, |store| {
        take_over.call(store, (state,))
    })?;
    Ok(true)
}

/// The old instance's side: call its `hand-over` for `conn`.
pub(super) fn hand_over(handler: &mut PluginHandler, host: &mut dyn Host, conn: ConnId) -> Result<Vec<u8>, Fault> {
    let Some(migrate) = &handler.migrate else { return Err(not_migrating(handler)) };
    let during = "in hand-over";
    let hand_over = migrate.hand_over;
    let (state,) =
        call(&handler.tenant, &mut handler.store, host, (conn, 1), during, |store| hand_over.call(store, (conn.0,)))?;
    if state.len() > MAX_STATE {
        return Err(Fault {
            reason: format!(
                "plugin {} handed over {} bytes of state for connection {conn}; the most is {MAX_STATE}",
                handler.tenant.plugin.path().display(),
                state.len()
            ),
            limit: Some(Limit::MigrateState),
        });
    }
    Ok(state)
}

/// The new instance's side: call its `take-over` for `conn` with `state`.
pub(super) fn take_over(
    handler: &mut PluginHandler,
    host: &mut dyn Host,
    conn: ConnId,
    state: Vec<u8>,
) -> Result<(), Fault> {
    let Some(migrate) = &handler.migrate else { return Err(not_migrating(handler)) };
    if state.len() > MAX_STATE {
        return Err(Fault {
            reason: format!(
                "{} bytes of state for connection {conn} cannot be taken over by plugin {}; the most is {MAX_STATE}",
                state.len(),
                handler.tenant.plugin.path().display()
            ),
            limit: None,
        });
    }
    let during = "in take-over";
    let take_over = migrate.take_over;
    call(&handler.tenant, &mut handler.store, host, (conn, 1), during, |store| take_over.call(store, (conn.0, state)))
}

fn not_migrating(handler: &PluginHandler) -> Fault {
    Fault {
        reason: format!("plugin {} does not export the `migrate` interface", handler.tenant.plugin.path().display()),
        limit: None,
    }
}
