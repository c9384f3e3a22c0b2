//! The functions the host calls in a plugin: which version of the contract a component
//! exports them at, where they are, and their types.
//!
//! Found once per component, at load ([`Exports::find`]): the version whose `handler`
//! the component exports (it names the version it was built against; see `version`),
//! `handle`, and `migrate`'s functions when it exports that interface too, each
//! checked against the type the host calls it with (`signature`). Each instance then
//! only turns those indices into typed functions ([`Exports::load`]), as generated
//! bindings would, so an event costs the same whichever version a plugin speaks.
//!
//! Why not the generated bindings of the exports: each version's are a type of their
//! own, and an instance would be one of several types depending on the WIT its plugin
//! was built against. A function's type is the same at every version that has it
//! (0.2.0 added an import, 0.3.0 two `migrate` functions), so one set of typed
//! functions calls any. This module decides
//! nothing about when they are called (the reactor does, through `PluginHandler` and
//! `migrate`).

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, Instance, Resource, TypedFunc};

use super::bindings::sandport::handler::types as wit;
use super::signature::{Shape, Signature};
use super::state::{GuestState, RecvView};
use super::version::WitVersion;

/// `handler.handle`, as the host calls it.
pub(super) type Handle = TypedFunc<(u64, wit::Event, Resource<RecvView>), ()>;

/// An instance's `migrate` export, as the host calls it.
pub(super) struct Migrate {
    /// `hand-over`: a connection's state out of the old version.
    pub(super) hand_over: TypedFunc<(u64,), (Vec<u8>,)>,
    /// `take-over`: a connection's state into the new version.
    pub(super) take_over: TypedFunc<(u64, Vec<u8>), ()>,
    /// `hand-over-instance` and `take-over-instance`: the instance's own state out of
    /// the old version and into the new; from 0.3.0.
    pub(super) instance: Option<(HandOverInstance, TakeOverInstance)>,
}

/// `migrate.hand-over-instance`, as the host calls it.
pub(super) type HandOverInstance = TypedFunc<(), (Vec<u8>,)>;

/// `migrate.take-over-instance`, as the host calls it.
pub(super) type TakeOverInstance = TypedFunc<(Vec<u8>,), ()>;

/// An exported function the host calls, and the type the host calls it with.
pub(super) struct Called {
    /// The interface exporting it, by the name it has at a version.
    pub(super) interface: fn(WitVersion) -> &'static str,
    /// The function's name.
    pub(super) name: &'static str,
    /// The first version of the contract that has it.
    pub(super) since: WitVersion,
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

/// `handler.handle`, which every plugin exports.
const HANDLE: Called = Called {
    interface: WitVersion::handler,
    name: "handle",
    since: WitVersion::V0_1,
    signature: Signature { params: &[Shape::U64, EVENT, Shape::Borrow("mbuf")], results: &[] },
};

/// `migrate.hand-over`.
const HAND_OVER: Called = Called {
    interface: WitVersion::migrate,
    name: "hand-over",
    since: WitVersion::V0_1,
    signature: Signature { params: &[Shape::U64], results: &[BYTES] },
};

/// `migrate.take-over`.
const TAKE_OVER: Called = Called {
    interface: WitVersion::migrate,
    name: "take-over",
    since: WitVersion::V0_1,
    signature: Signature { params: &[Shape::U64, BYTES], results: &[] },
};

/// `migrate.hand-over-instance`.
const HAND_OVER_INSTANCE: Called = Called {
    interface: WitVersion::migrate,
    name: "hand-over-instance",
    since: WitVersion::V0_3,
    signature: Signature { params: &[], results: &[BYTES] },
};

/// `migrate.take-over-instance`.
const TAKE_OVER_INSTANCE: Called = Called {
    interface: WitVersion::migrate,
    name: "take-over-instance",
    since: WitVersion::V0_3,
    signature: Signature { params: &[BYTES], results: &[] },
};

/// The functions the host calls: `handle`, and `migrate`'s when it is exported (those
/// of the component's version).
pub(super) const CALLED: [Called; 5] = [HANDLE, HAND_OVER, TAKE_OVER, HAND_OVER_INSTANCE, TAKE_OVER_INSTANCE];

impl Called {
    /// Where `component` exports this function at `version`, if it does so with the
    /// type the host calls it with (the type a typed function checks when it is taken
    /// from an instance; see `signature` for why it is checked at load).
    pub(super) fn find(&self, component: &Component, version: WitVersion) -> wasmtime::Result<ComponentExportIndex> {
        let interface = (self.interface)(version);
        let found = component
            .get_export_index(None, interface)
            .and_then(|exported| component.get_export(Some(&exported), self.name));
        match found {
            Some((ComponentItem::ComponentFunc(func), index))
                if self.signature.matches(component, version.host(), &func) =>
            {
                Ok(index)
            }
            Some((ComponentItem::ComponentFunc(_), _)) => Err(wasmtime::format_err!(
                "`{}` exported in `{interface}` has another type than this host's",
                self.name
            )),
            _ => Err(wasmtime::format_err!("no function `{}` exported in `{interface}`", self.name)),
        }
    }
}

/// The version of the contract whose `handler` `component` exports, the current
/// version first.
pub(super) fn version_of(component: &Component) -> Option<WitVersion> {
    WitVersion::ALL.into_iter().find(|version| component.get_export_index(None, version.handler()).is_some())
}

/// Where a component's exports are, found once at load.
#[derive(Clone)]
pub(super) struct Exports {
    version: WitVersion,
    handle: ComponentExportIndex,
    /// `migrate`'s functions, when the component exports that interface.
    migrate: Option<MigrateIndices>,
}

/// Where `migrate`'s functions are.
#[derive(Clone, Copy)]
struct MigrateIndices {
    hand_over: ComponentExportIndex,
    take_over: ComponentExportIndex,
    /// `hand-over-instance` and `take-over-instance`, from 0.3.0.
    instance: Option<(ComponentExportIndex, ComponentExportIndex)>,
}

impl Exports {
    /// The exports of `component`: the `handler` it must have, at a version this host
    /// serves, and `migrate` (at the same version) if it exports that interface, each
    /// function of the type the host calls it with. The error is the first thing found
    /// not to fit (`fit` finds them all).
    pub(super) fn find(component: &Component) -> wasmtime::Result<Exports> {
        let Some(version) = version_of(component) else {
            return Err(wasmtime::format_err!("no `{}` export", WitVersion::CURRENT.handler()));
        };
        let handle = HANDLE.find(component, version)?;
        let migrate = match component.get_export_index(None, version.migrate()) {
            Some(_) => Some(MigrateIndices {
                hand_over: HAND_OVER.find(component, version)?,
                take_over: TAKE_OVER.find(component, version)?,
                instance: match version >= HAND_OVER_INSTANCE.since {
                    true => Some((
                        HAND_OVER_INSTANCE.find(component, version)?,
                        TAKE_OVER_INSTANCE.find(component, version)?,
                    )),
                    false => None,
                },
            }),
            None => None,
        };
        Ok(Exports { version, handle, migrate })
    }

    /// The version of the contract the component was built against.
    pub(super) fn version(&self) -> WitVersion {
        self.version
    }

    /// Whether the component exports `migrate`.
    pub(super) fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    /// The functions of `instance`, an instance of the component they were found in:
    /// `handle`, and `migrate`'s if it has them.
    pub(super) fn load(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
    ) -> wasmtime::Result<(Handle, Option<Migrate>)> {
        let handle = instance.get_typed_func(&mut *store, self.handle)?;
        let migrate = match self.migrate {
            Some(MigrateIndices { hand_over, take_over, instance: of_instance }) => Some(Migrate {
                hand_over: instance.get_typed_func(&mut *store, hand_over)?,
                take_over: instance.get_typed_func(&mut *store, take_over)?,
                instance: match of_instance {
                    Some((hand_over, take_over)) => Some((
                        instance.get_typed_func(&mut *store, hand_over)?,
                        instance.get_typed_func(&mut *store, take_over)?,
                    )),
                    None => None,
                },
            }),
            None => None,
        };
        Ok((handle, migrate))
    }
}
