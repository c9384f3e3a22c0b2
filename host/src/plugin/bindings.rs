//! The Rust bindings wasmtime generates from the WIT, and nothing else: the current
//! contract (`wit/handler.wit`, 0.4.0) at this module's root, and the ones before it
//! (`wit/compat/0.3.0`, `wit/compat/0.2.0`, `wit/compat/0.1.0`) in [`v0_3`], [`v0_2`]
//! and [`v0_1`].
//!
//! Only their imports are used: the `host` and `types` traits the imports implement
//! (see `imports`), and what links them. The exports the host calls are found by hand
//! (see `exports`), so that one type serves a plugin of either version. Every import
//! checks that it runs inside an event and traps otherwise, so all are trappable. The
//! guest's `mbuf` is the host's `state::RecvView`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: trappable },
    with: { "sandport:handler/host.mbuf": super::state::RecvView },
});

/// Bindings of `sandport:handler@0.3.0`, which plugins built before `mbuf.pipe-to`
/// import.
///
/// Its types are the current ones (`with`): 0.4.0 only added a function, so each 0.3.0
/// import forwards to its current namesake without a conversion.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.3.0",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "sandport:handler/types": super::sandport::handler::types,
            "sandport:handler/host.mbuf": super::super::state::RecvView,
        },
    });
}

/// Bindings of `sandport:handler@0.2.0`, which plugins built before the instance-level
/// hand-over import.
///
/// Its types are the current ones (`with`): 0.3.0 changed only the `migrate` export and
/// 0.4.0 only added a function, and values of the same shape lift and lower alike
/// whichever interface names them, so each 0.2.0 import forwards to its current
/// namesake without a conversion.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.2.0",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "sandport:handler/types": super::sandport::handler::types,
            "sandport:handler/host.mbuf": super::super::state::RecvView,
        },
    });
}

/// Bindings of `sandport:handler@0.1.0`, which plugins built before `tls-info` import.
///
/// Its types are the current ones (`with`): later versions only added to them, so each
/// 0.1.0 import forwards to its current namesake without a conversion.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.1.0",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "sandport:handler/types": super::sandport::handler::types,
            "sandport:handler/host.mbuf": super::super::state::RecvView,
        },
    });
}
