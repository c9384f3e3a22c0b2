//! Live migration, opt-in: a handler that carries its open connections over to the
//! next version of its plugin instead of being drained.
//!
//! This module owns the [`Migrate`] trait and the bindings of the WIT `migrate`
//! interface that [`export_migrating!`](crate::export_migrating) exports. It must never
//! be part of a plugin that does not opt in: the interface's exports are described to
//! the component only by that macro's expansion, so a plugin built with
//! [`export!`](crate::export) alone stays a plain `plugin`-world component.

use crate::{Conn, Handler};

/// The bindings of `sandport:handler/migrate`, generated for a world that exports only
/// that interface. Why not the WIT's `migrating-plugin` world: its `handler` export
/// would be generated a second time, with export macros of the same names as those of
/// [`crate::bindings`]. The component ends up with both worlds' exports, which is
/// `migrating-plugin`.
#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package sandport:guest-sdk;

            world migrate-only {
                export sandport:handler/migrate@0.4.0;
            }
        ",
        world: "migrate-only",
        pub_export_macro: true,
        default_bindings_module: "$crate::migrate_bindings",
        with: {
            "sandport:handler/types@0.4.0": crate::bindings::sandport::handler::types,
        },
    });
}

/// A [`Handler`] that moves its state and its connections to a new version of the
/// plugin without a disconnect. Export it with
/// [`export_migrating!`](crate::export_migrating).
///
/// When the operator swaps the plugin and both versions migrate, the host asks the old
/// instance for its own state ([`hand_over_instance`](Migrate::hand_over_instance)) and
/// gives it to the new one ([`take_over_instance`](Migrate::take_over_instance)), then
/// does the same for each open connection ([`hand_over`](Migrate::hand_over),
/// [`take_over`](Migrate::take_over)). The socket and its buffers never leave the host,
/// so the client notices nothing but what the new version does differently.
///
/// A migration is all or nothing: only when every call has returned does the new
/// version take over, and the old instance is then dropped. If any call traps or runs
/// over its deadline (the event limits; ten times them for the two instance-level
/// calls), or a state is over its bound (1 MiB per connection, the
/// listener's `migrate-state` limit for the instance's), the new version is refused and
/// the old instance serves on as if nothing had happened. So the `hand_over` side only
/// reads: it must leave the handler able to go on. Whatever either side does to a
/// connection meanwhile (a send, a timer, a close) reaches it only if the migration
/// commits.
///
/// The state format is the plugin's own: keep it readable by the next version (a
/// version byte in front is cheap insurance). A connection may have a different
/// [`Conn`] id in the new instance: keep what other code shows to people (a nickname,
/// say) in the state rather than deriving it from the id.
///
/// ```no_run
/// use sandport_guest::{Conn, ConnMap, Handler, Migrate, Peer};
///
/// /// Counts each client's lines and everyone's, and keeps counting across versions.
/// #[derive(Default)]
/// struct Counter {
///     lines: ConnMap<u64>,
///     total: u64,
/// }
///
/// impl Handler for Counter {
///     fn on_accept(&mut self, conn: Conn, _peer: Peer) {
///         self.lines.insert(conn, 0);
///     }
///     // on_recv counts; on_close removes.
/// }
///
/// impl Migrate for Counter {
///     fn hand_over_instance(&mut self) -> Vec<u8> {
///         self.total.to_le_bytes().to_vec()
///     }
///
///     fn take_over_instance(&mut self, state: &[u8]) {
///         self.total = <[u8; 8]>::try_from(state).map_or(0, u64::from_le_bytes);
///     }
///
///     fn hand_over(&mut self, conn: Conn) -> Vec<u8> {
///         let lines = self.lines.get(conn).copied().unwrap_or(0);
///         lines.to_le_bytes().to_vec()
///     }
///
///     fn take_over(&mut self, conn: Conn, state: &[u8]) {
///         match <[u8; 8]>::try_from(state) {
///             Ok(bytes) => {
///                 self.lines.insert(conn, u64::from_le_bytes(bytes));
///                 let _ = conn.send(b"* upgraded\n");
///             }
///             // Not ours to read: better a clean close than a made-up session.
///             Err(_) => {
///                 let _ = conn.close_after_send();
///             }
///         }
///     }
/// }
///
/// sandport_guest::export_migrating!(Counter);
/// ```
pub trait Migrate: Handler {
    /// The old version's side, first: return this handler's own state that the next
    /// version needs (not the connections', which [`hand_over`](Migrate::hand_over)
    /// carries), without changing it. Called once per migration, even when no
    /// connection is open. The default carries nothing.
    fn hand_over_instance(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// The new version's side, first: start from `state`, what the old version's
    /// [`hand_over_instance`](Migrate::hand_over_instance) returned, before anything
    /// else reaches this handler. The default ignores it.
    fn take_over_instance(&mut self, state: &[u8]) {
        let _ = state;
    }

    /// The old version's side: return what the next version needs to serve `conn`,
    /// and keep serving it: if the migration is called off, its next event comes here;
    /// if it commits, this handler is dropped and never hears of `conn` again. Called
    /// between events, after [`hand_over_instance`](Migrate::hand_over_instance); host
    /// calls work as in any event, but reach the connection only if the migration
    /// commits.
    fn hand_over(&mut self, conn: Conn) -> Vec<u8>;

    /// The new version's side: serve `conn` from now on, starting from `state` (what
    /// the old version's [`hand_over`](Migrate::hand_over) returned). Comes instead of
    /// [`on_accept`](Handler::on_accept), before any other event of `conn`. Host calls
    /// work as in any event (send a notice, re-arm timers: the old version's may not
    /// survive the move) and take effect when the migration commits.
    fn take_over(&mut self, conn: Conn, state: &[u8]);
}
