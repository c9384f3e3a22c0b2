//! The Rust bindings wasmtime generates from `wit/handler.wit`, and nothing else.
//!
//! The `plugin` world's bindings are this module's root: the `host` and `types` traits
//! the imports implement (see `imports`), and the `handler` export the host calls.
//! Every import checks that it runs inside an event and traps otherwise, so all are
//! trappable. The guest's `mbuf` is the host's `state::RecvView`. [`migrating`] holds the
//! bindings of the `migrate` export alone (see `migrate` for why not those of the
//! `migrating-plugin` world).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: trappable },
    with: { "sandport:handler/host.mbuf": super::state::RecvView },
});

/// Bindings of a world that exports only `migrate`, sharing the `types` above.
pub mod migrating {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package sandport:host-side;

            world migrate-only {
                export sandport:handler/migrate@0.1.0;
            }
        ",
        world: "migrate-only",
        with: { "sandport:handler/types": super::sandport::handler::types },
    });
}
