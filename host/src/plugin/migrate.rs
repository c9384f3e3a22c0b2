//! Live migration, the plugin side: finding out whether a component exports the WIT
//! `migrate` interface, and calling its `hand-over` and `take-over`.
//!
//! Which exports a component has is found once, at load ([`Exports::find`]): the
//! `handler` export it must have, and `migrate` if it has one. The second is found
//! with bindings of its own, generated for a world that exports only `migrate` and
//! whose `types` import is the first bindings' (`with`), rather than with the WIT's
//! `migrating-plugin` world: bindings of that world would bring a second, unused copy
//! of the `handler` export, and an instance would have to be one of two binding types
//! depending on what it exports. Here every instance is the same `bindings::Plugin`,
//! plus the `migrate` functions when the component has them ([`Exports::load`]).
//!
//! The generated bindings of both are in `bindings`, and the types the host calls them
//! with are checked at load with `signature`.
//!
//! Calls go through [`PluginHandler::call`], as `handle`'s do: the same per-call
//! budget and deadline, host imports working, a fault explained the same way. This
//! module decides nothing about which connections move or when (the reactor does), and
//! never keeps a connection's state: it passes the bytes through, bounded by
//! [`MAX_STATE`].

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Instance, InstancePre};

use super::bindings as plugin_bindings;
use super::bindings::migrating::exports::sandport::handler::migrate::GuestIndices as MigrateIndices;
use super::linker::HOST_INTERFACE;
use super::signature::{Shape, Signature};
use super::state::GuestState;
use super::{PluginHandler, call};
use crate::handler::{ConnId, Fault, Host};

/// An instance's `migrate` export: its `hand-over` and `take-over` functions.
pub(super) use super::bindings::migrating::exports::sandport::handler::migrate::Guest as Migrate;

/// The name under which a component exports the `handler` interface.
pub(super) const HANDLER: &str = "sandport:handler/handler@0.1.0";

/// The name under which a component exports the `migrate` interface.
const MIGRATE: &str = "sandport:handler/migrate@0.1.0";

/// An exported function the host calls, and the type the host calls it with.
pub(super) struct Called {
    /// The interface exporting it.
    pub(super) interface: &'static str,
    /// The function's name.
    pub(super) name: &'static str,
    signature: Signature,
}

/// The WIT `types.error`.
const ERROR: Shape = Shape::Variant(&[
    ("closed", None),
    ("limit-exceeded", None),
    ("not-allowed", None),
    ("invalid", Some(Shape::String)),
    ("failed", Some(Shape::String)),
]);

/// The WIT `types.event`.
const EVENT: Shape = Shape::Variant(&[
    ("accept", Some(Shape::Record(&[("ip", Shape::String), ("port", Shape::U16)]))),
    ("connect", Some(Shape::Result(None, Some(&ERROR)))),
    ("recv", Some(Shape::U32)),
    ("send", Some(Shape::U32)),
    ("poll", None),
    ("timer", Some(Shape::U64)),
    ("close", None),
]);

/// The WIT `list<u8>` a connection's state travels in.
const BYTES: Shape = Shape::List(&Shape::U8);

/// The functions the host calls: `handle`, and `migrate`'s two when it is exported.
pub(super) const CALLED: [Called; 3] = [
    Called {
        interface: HANDLER,
        name: "handle",
        signature: Signature { params: &[Shape::U64, EVENT, Shape::Borrow("mbuf")], results: &[] },
    },
    Called { interface: MIGRATE, name: "hand-over", signature: Signature { params: &[Shape::U64], results: &[BYTES] } },
    Called {
        interface: MIGRATE,
        name: "take-over",
        signature: Signature { params: &[Shape::U64, BYTES], results: &[] },
    },
];

impl Called {
    /// Whether `component` exports this function with the type the host calls it with
    /// (the type its bindings check when they load it from an instance; see
    /// `signature` for why it is checked at load).
    pub(super) fn check(&self, component: &Component) -> wasmtime::Result<()> {
        let interface = component.get_export_index(None, self.interface);
        let found = interface.and_then(|interface| component.get_export(Some(&interface), self.name));
        match found {
            Some((ComponentItem::ComponentFunc(func), _))
                if self.signature.matches(component, HOST_INTERFACE, &func) =>
            {
                Ok(())
            }
            Some((ComponentItem::ComponentFunc(_), _)) => Err(wasmtime::format_err!(
                "`{}` exported in `{}` has another type than this host's",
                self.name,
                self.interface
            )),
            _ => Err(wasmtime::format_err!("no function `{}` exported in `{}`", self.name, self.interface)),
        }
    }
}

/// Most bytes of state one connection may carry to the new version: a session, not a
/// data store. More from `hand-over` is a fault. (The bytes are copied out of the
/// guest before they can be measured; the guest's memory limit bounds that copy.)
pub const MAX_STATE: usize = 1 << 20;

/// Where a component's exports are, found once at load.
#[derive(Clone)]
pub(super) struct Exports {
    handler: plugin_bindings::PluginIndices,
    migrate: Option<MigrateIndices>,
}

impl Exports {
    /// The exports of the component behind `pre`: the `handler` it must have, and
    /// `migrate` if it exports that interface, each function of the type the host
    /// calls it with. The error is the first thing found not to fit (`fit` finds
    /// them all).
    pub(super) fn find(pre: &InstancePre<GuestState>) -> wasmtime::Result<Exports> {
        let handler = plugin_bindings::PluginIndices::new(pre)?;
        let migrate = match pre.component().get_export_index(None, MIGRATE) {
            Some(_) => Some(MigrateIndices::new(pre)?),
            None => None,
        };
        for called in CALLED {
            if called.interface == HANDLER || migrate.is_some() {
                called.check(pre.component())?;
            }
        }
        Ok(Exports { handler, migrate })
    }

    /// Whether the component exports `migrate`.
    pub(super) fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    /// The exports of `instance`, an instance of the component they were found in,
    /// type-checked.
    pub(super) fn load(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
    ) -> wasmtime::Result<(plugin_bindings::Plugin, Option<Migrate>)> {
        let handler = self.handler.load(&mut *store, instance)?;
        let migrate = self.migrate.as_ref().map(|migrate| migrate.load(&mut *store, instance)).transpose()?;
        Ok((handler, migrate))
    }
}

/// The old instance's side: call its `hand-over` for `conn`.
pub(super) fn hand_over(handler: &mut PluginHandler, host: &mut dyn Host, conn: ConnId) -> Result<Vec<u8>, Fault> {
    let Some(migrate) = &handler.migrate else { return Err(not_migrating(handler)) };
    let during = "in hand-over";
    let state =
        call(&handler.tenant, &mut handler.store, host, conn, during, |store| migrate.call_hand_over(store, conn.0))?;
    if state.len() > MAX_STATE {
        return Err(Fault {
            reason: format!(
                "plugin {} handed over {} bytes of state for connection {conn}; the most is {MAX_STATE}",
                handler.tenant.plugin.path().display(),
                state.len()
            ),
            limit: None,
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
    call(&handler.tenant, &mut handler.store, host, conn, during, |store| migrate.call_take_over(store, conn.0, &state))
}

fn not_migrating(handler: &PluginHandler) -> Fault {
    Fault {
        reason: format!("plugin {} does not export {MIGRATE}", handler.tenant.plugin.path().display()),
        limit: None,
    }
}
