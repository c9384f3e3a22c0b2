//! What one plugin instance's store holds ([`GuestState`]), and how the reactor's
//! [`Host`] is lent to it for the length of one call into the guest ([`with_host`]).
//!
//! The imports (`imports`) and the WASI (`wasi`) act on this state; this module knows
//! neither, nor the linker that joins them (`linker`). Outside a call there is no host
//! to act on, and an import that asks for it traps. Nothing here keeps a reference to
//! reactor state between calls: the lent host is a raw pointer ([`LentHost`]), set and
//! cleared by [`with_host`], and it is the only part of the state that needs a promise
//! about threads.
//!
//! Everything a guest can make the host keep is capped per instance: owned `mbuf`
//! views ([`MAX_VIEWS`]), WASI resources of any kind such as streams and pollables
//! ([`MAX_RESOURCES`]), table elements ([`MAX_TABLE_ELEMENTS`]), the bytes of one
//! random call ([`MAX_RANDOM`]), partial output lines (see `output`).

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;

use slab::Slab;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::ClosedInputStream;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::deadline::CallClock;
use super::log_rate::LogBudget;
use super::output::{GuestLog, GuestStream, Stream};
use crate::handler::{ConnId, Host};
use crate::mbuf::Mbuf;

/// Table elements a guest may grow a table to (a pointer each: 512 KiB).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 16;

/// Views of connections' receive buffers a guest may hold at once (`recv-buffer`).
pub const MAX_VIEWS: usize = 1024;

/// WASI resources (streams, pollables, errors) an instance may hold at once; beyond
/// it the call that would make one traps.
pub const MAX_RESOURCES: usize = 4096;

/// Most bytes one WASI random call may ask for; more is a trap. Generating them is host
/// work the event deadline cannot interrupt (64 MiB took 0.4 s), so it stays small.
pub const MAX_RANDOM: u64 = 256 << 10;

/// The guest's view of a receive buffer (the WIT `mbuf` resource).
///
/// The `rx` argument of `handle` is a borrow with the representation
/// [`RecvView::CURRENT`]: "the receive buffer of the connection being handled"; it
/// needs no bookkeeping, since a borrow cannot outlive the call. The `recv-buffer`
/// import hands out owned views of any of the instance's connections, numbered by
/// their slot in [`GuestState`]'s `views`. Either way the view names a connection,
/// not bytes: each call reads the buffer as it is then, and a closed connection's
/// reads as empty. The component model rejects any handle the guest was not given.
pub struct RecvView;

impl RecvView {
    /// The representation of the borrowed `rx` of the event being handled.
    pub const CURRENT: u32 = u32::MAX;
}

/// The reactor's [`Host`], lent for one call into the guest by [`with_host`].
#[derive(Clone, Copy)]
pub struct LentHost(NonNull<dyn Host + 'static>);

// SAFETY: a `LentHost` exists only inside `with_host`, which takes it from a `&mut dyn
// Host` of the calling thread, stores it in the state of a store that thread holds by
// `&mut` for the whole call, and removes it before returning. So while one exists, the
// store cannot be sent to another thread (it is mutably borrowed), and once the store
// can move again no `LentHost` is left in it. The pointer never crosses threads while
// it points at anything.
unsafe impl Send for LentHost {}

impl LentHost {
    /// The host, to act on.
    ///
    /// # Safety
    ///
    /// Only while the call it was lent for runs (imports run only inside it, one at a
    /// time), and not together with another `&mut` taken from it.
    pub unsafe fn as_mut<'a>(mut self) -> &'a mut dyn Host {
        // SAFETY: the caller keeps to the conditions above; `with_host` took the pointer
        // from a live `&mut dyn Host` that outlives the call.
        unsafe { self.0.as_mut() }
    }
}

/// Everything a plugin instance's store holds.
pub struct GuestState {
    /// Made at the guest's first WASI call: most plugins never make one, and an idle
    /// per-connection instance is the smaller for it (see `wasi_ctx`).
    wasi: Option<Box<WasiCtx>>,
    table: ResourceTable,
    /// The connections of the owned `mbuf` views the guest holds, by representation
    /// (at most [`MAX_VIEWS`]).
    pub views: Slab<ConnId>,
    memory_limit: usize,
    /// The guest tried to grow past `memory_limit` (so its trap is that limit's).
    memory_exceeded: bool,
    /// The size its largest linear memory was allowed to grow to (memories never
    /// shrink), from its creation on.
    largest_memory: usize,
    /// The listener's settings, which the `config` import reads.
    pub settings: Arc<BTreeMap<String, String>>,
    /// Where the guest's `log`, stdout and stderr go.
    pub log: Arc<GuestLog>,
    /// When the call in progress started, for the event deadline.
    pub clock: CallClock,
    /// The reactor's [`Host`] while a call runs; `None` otherwise.
    host: Option<LentHost>,
    /// The connection being handled.
    conn: ConnId,
}

impl GuestState {
    /// State for a new instance of version `version` of `listener`'s plugin.
    pub fn new(
        listener: &Arc<str>,
        version: u64,
        memory_limit: usize,
        settings: &Arc<BTreeMap<String, String>>,
        log_budget: &Arc<LogBudget>,
    ) -> GuestState {
        let log = Arc::new(GuestLog::new(listener.clone(), version, log_budget.clone()));
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        GuestState {
            wasi: None,
            table,
            views: Slab::new(),
            memory_limit,
            memory_exceeded: false,
            largest_memory: 0,
            settings: settings.clone(),
            log,
            clock: CallClock::default(),
            host: None,
            conn: ConnId(0),
        }
    }

    /// Whether the guest tried to grow its memory past the limit.
    pub fn memory_exceeded(&self) -> bool {
        self.memory_exceeded
    }

    /// The size in bytes of the guest's largest linear memory.
    pub fn largest_memory(&self) -> usize {
        self.largest_memory
    }

    /// The store's resource limiter: this state itself.
    pub fn limits(&mut self) -> &mut dyn ResourceLimiter {
        self
    }

    /// The WASI context, for the WASI functions that need more than the table.
    pub fn wasi(&mut self) -> &mut WasiCtx {
        wasi_ctx(&mut self.wasi, &self.log)
    }

    /// The resource table, where WASI keeps streams, pollables and errors.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The receive buffer `view` shows, or `None` if the reactor no longer has it.
    pub fn recv_buffer(&mut self, view: &Resource<RecvView>) -> wasmtime::Result<Option<&Mbuf>> {
        let conn = self.conn_of(view)?;
        Ok(self.host()?.recv_buffer(conn).ok())
    }

    /// The connection whose receive buffer `view` shows.
    pub fn conn_of(&self, view: &Resource<RecvView>) -> wasmtime::Result<ConnId> {
        match view.rep() {
            RecvView::CURRENT => Ok(self.conn),
            rep => self.views.get(rep as usize).copied().ok_or_else(|| wasmtime::format_err!("unknown mbuf {rep}")),
        }
    }

    /// The host lent for the call in progress; outside a call, an error that traps.
    pub fn host(&mut self) -> wasmtime::Result<&mut dyn Host> {
        let host = self.lent_host()?;
        // SAFETY: an import is running (it has `&mut self`), so the call the host was
        // lent for is in progress; the `&mut self` borrow keeps a second one from
        // being taken through this state meanwhile.
        Ok(unsafe { host.as_mut() })
    }

    /// The host lent for the call in progress, for an import that must borrow the
    /// store's memory while it acts on the host (see `linker`'s `send`).
    pub fn lent_host(&self) -> wasmtime::Result<LentHost> {
        self.host.ok_or_else(|| wasmtime::format_err!("sandport host called outside of an event"))
    }
}

/// The WASI context in `slot`, made now if this is the guest's first WASI call.
///
/// Why not at instantiation: a context is a handful of allocations (its random
/// generators, seeded, its clocks and streams), made for every per-connection instance,
/// while a plugin written against the SDK makes no WASI call unless it prints, reads
/// the clock or asks for random bytes.
fn wasi_ctx<'a>(slot: &'a mut Option<Box<WasiCtx>>, log: &Arc<GuestLog>) -> &'a mut WasiCtx {
    slot.get_or_insert_with(|| {
        Box::new(
            WasiCtx::builder()
                .stdin(ClosedInputStream)
                .stdout(GuestStream::new(log.clone(), Stream::Stdout))
                .stderr(GuestStream::new(log.clone(), Stream::Stderr))
                .max_random_size(MAX_RANDOM)
                // Linked only so that runtimes importing them load (see `wasi`): no
                // socket may be made and no name looked up; no directory is preopened.
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
        )
    })
}

/// Run `call` (a call into the guest about `conn`) with `host` reachable from imports.
pub fn with_host<R>(
    store: &mut Store<GuestState>,
    host: &mut dyn Host,
    conn: ConnId,
    call: impl FnOnce(&mut Store<GuestState>) -> R,
) -> R {
    let host: NonNull<dyn Host + '_> = NonNull::from(host);
    // SAFETY: only the lifetime is erased; the pointer is cleared below, before the
    // borrow it came from ends, so it is never used after that.
    let host: NonNull<dyn Host + 'static> = unsafe { std::mem::transmute(host) };
    let state = store.data_mut();
    state.host = Some(LentHost(host));
    state.conn = conn;
    state.log.set_conn(conn);
    let result = call(store);
    store.data_mut().host = None;
    result
}

impl ResourceLimiter for GuestState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            wasmtime::bail!(
                "memory limit exceeded: growing to {desired} bytes, limits.memory is {} bytes",
                self.memory_limit
            );
        }
        // Called for each memory's first allocation too (`current` 0), so this sees
        // every memory from its start.
        self.largest_memory = self.largest_memory.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("table limit exceeded: growing to {desired} elements, the limit is {MAX_TABLE_ELEMENTS}");
        }
        Ok(true)
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: wasi_ctx(&mut self.wasi, &self.log), table: &mut self.table }
    }
}
