//! What a guest can call: the `sandport:handler/host` imports, plus the per-store
//! state behind them and behind the WASI of `wasi`.
//!
//! The imports act on the reactor through the [`Host`] it lends for the duration of
//! one `handle` call ([`with_host`]). Outside such a call there is no host to act on,
//! and an import traps. Nothing here keeps a reference to reactor state between calls.
//!
//! Everything a guest can make the host keep is capped per instance: owned `mbuf`
//! views ([`MAX_VIEWS`]), WASI resources of any kind such as streams and pollables
//! ([`MAX_RESOURCES`]), table elements ([`MAX_TABLE_ELEMENTS`]), the bytes of one
//! random call ([`MAX_RANDOM`]), partial output lines (see `output`).

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;
use tracing::Level;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, WasmList};
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut};
use wasmtime_wasi::p2::pipe::ClosedInputStream;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sandport::handler::{host, types};
use super::deadline::CallClock;
use super::log_rate::LogBudget;
use super::output::{GuestLog, GuestStream, Source};
use super::wasi::NoWaitView;
use crate::handler::{CloseMode, ConnId, Host, HostError, SendEvents};
use crate::mbuf::Mbuf;

/// The WIT interface of the imports, as components name it.
const HOST_INTERFACE: &str = "sandport:handler/host@0.1.0";

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

/// Everything a plugin instance's store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The connections of the owned `mbuf` views the guest holds, by representation.
    views: Slab<ConnId>,
    memory_limit: usize,
    /// The guest tried to grow past `memory_limit` (so its trap is that limit's).
    memory_exceeded: bool,
    settings: Arc<BTreeMap<String, String>>,
    log: Arc<GuestLog>,
    /// When the call in progress started, for the event deadline.
    pub clock: CallClock,
    /// The reactor's [`Host`] while a `handle` call runs; `None` otherwise.
    host: Option<NonNull<dyn Host + 'static>>,
    /// The connection being handled.
    conn: ConnId,
}

// SAFETY: `host` is only `Some` during `with_host`, which runs on the thread that owns
// both the store and the `Host`, and clears it before returning; the pointer never
// crosses threads while set.
unsafe impl Send for GuestState {}

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
        let wasi = WasiCtx::builder()
            .stdin(ClosedInputStream)
            .stdout(GuestStream::new(log.clone(), Source::Stdout))
            .stderr(GuestStream::new(log.clone(), Source::Stderr))
            .max_random_size(MAX_RANDOM)
            // Linked only so that runtimes importing them load (see `wasi`): no socket
            // may be made and no name looked up; no directory is preopened.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        GuestState {
            wasi,
            table,
            views: Slab::new(),
            memory_limit,
            memory_exceeded: false,
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

    /// The store's resource limiter: this state itself.
    pub fn limits(&mut self) -> &mut dyn ResourceLimiter {
        self
    }

    /// The WASI context, for the WASI functions that need more than the table.
    pub fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }

    /// The resource table, where WASI keeps streams, pollables and errors.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The view `wasi`'s functions that never wait act on.
    pub fn no_wait(&mut self) -> NoWaitView<'_> {
        NoWaitView { table: &mut self.table }
    }

    /// The receive buffer `view` shows, or `None` if the reactor no longer has it.
    fn recv_buffer(&mut self, view: &Resource<RecvView>) -> wasmtime::Result<Option<&Mbuf>> {
        let conn = match view.rep() {
            RecvView::CURRENT => self.conn,
            rep => *self.views.get(rep as usize).ok_or_else(|| wasmtime::format_err!("unknown mbuf {rep}"))?,
        };
        Ok(self.host()?.recv_buffer(conn).ok())
    }

    fn host(&mut self) -> wasmtime::Result<&mut dyn Host> {
        let mut host = self.host_pointer()?;
        // SAFETY: set by `with_host` from a live `&mut dyn Host` that outlives the call
        // in progress; imports run only inside that call, one at a time.
        Ok(unsafe { host.as_mut() })
    }

    fn host_pointer(&self) -> wasmtime::Result<NonNull<dyn Host + 'static>> {
        self.host.ok_or_else(|| wasmtime::format_err!("sandport host called outside of an event"))
    }
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
    state.host = Some(host);
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
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The imports every plugin may use; anything else a component imports makes it
/// fail to link, with the name of what is missing.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    super::bindings::Plugin::add_to_linker::<GuestState, HasGuest>(&mut linker, |state| state)?;
    link_send(&mut linker)?;
    super::wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// `host.send`, defined again over the generated one, which lifts the bytes into a
/// fresh `Vec` first: this one hands the host a slice of the guest's memory. That is
/// an allocation and a copy fewer on every reply.
fn link_send(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(HOST_INTERFACE)?.func_wrap(
        "send",
        |store: StoreContextMut<'_, GuestState>, (conn, data): (u64, WasmList<u8>)| {
            let mut host = store.data().host_pointer()?;
            let data = data.as_le_slice(&store);
            // SAFETY: as in `GuestState::host`; the `Host` is no part of the store,
            // whose memory `data` borrows.
            let sent = unsafe { host.as_mut() }.send(ConnId(conn), data);
            Ok((sent.map_err(types::Error::from),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

struct HasGuest;

impl HasData for HasGuest {
    type Data<'a> = &'a mut GuestState;
}

impl From<HostError> for types::Error {
    fn from(err: HostError) -> types::Error {
        match err {
            HostError::Closed => types::Error::Closed,
            HostError::LimitExceeded(_) => types::Error::LimitExceeded,
            HostError::NotAllowed => types::Error::NotAllowed,
            HostError::Invalid(why) => types::Error::Invalid(why),
            HostError::Failed(why) => types::Error::Failed(why),
        }
    }
}

impl types::Host for GuestState {}

impl host::Host for GuestState {
    /// Shadowed in the linker by [`link_send`]; kept for the generated trait.
    fn send(&mut self, conn: u64, data: Vec<u8>) -> wasmtime::Result<Result<u32, types::Error>> {
        Ok(self.host()?.send(ConnId(conn), &data).map_err(Into::into))
    }

    fn send_room(&mut self, conn: u64) -> wasmtime::Result<Result<u32, types::Error>> {
        Ok(self.host()?.send_room(ConnId(conn)).map_err(Into::into))
    }

    fn remove(&mut self, conn: u64, n: u32) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.host()?.remove(ConnId(conn), n).map_err(Into::into))
    }

    fn set_timer(&mut self, conn: u64, id: u64, millis: u64) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.host()?.set_timer(ConnId(conn), id, Duration::from_millis(millis)).map_err(Into::into))
    }

    fn cancel_timer(&mut self, conn: u64, id: u64) -> wasmtime::Result<Result<bool, types::Error>> {
        Ok(self.host()?.cancel_timer(ConnId(conn), id).map_err(Into::into))
    }

    fn close(&mut self, conn: u64, mode: types::CloseMode) -> wasmtime::Result<Result<(), types::Error>> {
        let mode = match mode {
            types::CloseMode::AfterSend => CloseMode::AfterSend,
            types::CloseMode::Now => CloseMode::Now,
        };
        Ok(self.host()?.close(ConnId(conn), mode).map_err(Into::into))
    }

    fn shutdown(&mut self, conn: u64) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.host()?.shutdown(ConnId(conn)).map_err(Into::into))
    }

    fn connect(&mut self, address: String) -> wasmtime::Result<Result<u64, types::Error>> {
        let host = self.host()?;
        let Ok(address) = address.trim().parse() else {
            return Ok(Err(types::Error::Invalid(format!("`{address}` is not IP:PORT"))));
        };
        Ok(host.connect(address).map(|conn| conn.0).map_err(Into::into))
    }

    fn recv_buffer(&mut self, conn: u64) -> wasmtime::Result<Result<Resource<RecvView>, types::Error>> {
        let conn = ConnId(conn);
        if let Err(err) = self.host()?.recv_buffer(conn) {
            return Ok(Err(err.into()));
        }
        if self.views.len() >= MAX_VIEWS {
            return Ok(Err(types::Error::LimitExceeded));
        }
        let rep = self.views.insert(conn);
        Ok(Ok(Resource::new_own(rep as u32)))
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.settings.get(&key).cloned())
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            types::LogLevel::Trace => Level::TRACE,
            types::LogLevel::Debug => Level::DEBUG,
            types::LogLevel::Info => Level::INFO,
            types::LogLevel::Warn => Level::WARN,
            types::LogLevel::Error => Level::ERROR,
        };
        self.log.message(level, &message);
        Ok(())
    }

    fn set_send_events(&mut self, mode: types::SendEvents) -> wasmtime::Result<()> {
        let mode = match mode {
            types::SendEvents::EveryWrite => SendEvents::EveryWrite,
            types::SendEvents::WhenBlocked => SendEvents::WhenBlocked,
        };
        self.host()?.set_send_events(mode);
        Ok(())
    }
}

impl host::HostMbuf for GuestState {
    fn len(&mut self, rx: Resource<RecvView>) -> wasmtime::Result<u32> {
        Ok(self.recv_buffer(&rx)?.map_or(0, |rx| rx.len() as u32))
    }

    fn read(&mut self, rx: Resource<RecvView>, offset: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
        Ok(self.recv_buffer(&rx)?.map_or_else(Vec::new, |rx| rx.read(offset as usize, len as usize).to_vec()))
    }

    fn find(&mut self, rx: Resource<RecvView>, needle: Vec<u8>, start: u32) -> wasmtime::Result<Option<u32>> {
        Ok(self.recv_buffer(&rx)?.and_then(|rx| rx.find(&needle, start as usize)).map(|at| at as u32))
    }

    fn drop(&mut self, rx: Resource<RecvView>) -> wasmtime::Result<()> {
        // Only owned views are dropped; the borrowed `rx` of an event never is.
        self.views.try_remove(rx.rep() as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::HOST_INTERFACE;

    /// `link_send` replaces `send` in the interface of this name; under any other name
    /// it would define a stray instance and leave the copying `send` in place.
    #[test]
    fn the_host_interface_name_follows_the_wit_package() {
        let wit = include_str!("../../../wit/handler.wit");
        let (package, interface) = HOST_INTERFACE.split_once('/').unwrap();
        let (name, version) = interface.split_once('@').unwrap();
        assert!(wit.contains(&format!("package {package}@{version};")), "{HOST_INTERFACE} against wit/handler.wit");
        assert!(wit.contains(&format!("\ninterface {name} {{")), "{HOST_INTERFACE} against wit/handler.wit");
    }
}
