//! The WASI a guest is granted, and the promise that none of it waits.
//!
//! Guests share the event loop: a call that waits for time to pass stalls every
//! connection of every tenant. So every WASI function linked here answers at once.
//! Clocks, random, environment, stdin (always at its end) and stdout/stderr (taken into
//! the log, see `output`) never have anything to wait for. Waiting is only possible
//! through `wasi:io/poll`, and there it is refused: `poll` returns the pollables that
//! are ready now, `pollable.block` returns if its pollable is ready, and when nothing is
//! ready they end the event as a fault ([`WouldBlock`]) instead of waiting. A plugin
//! that wants to be called later uses `set-timer`. Clock subscriptions are this
//! module's own [`Deadline`]s, which are ready or not without help from any async
//! runtime.
//!
//! Filesystem and sockets are linked but grant nothing: Python's and JavaScript's
//! runtimes import them whether or not a plugin uses them, and a component whose
//! imports are not all linked does not load. There is no preopened directory, so no
//! descriptor to act on, and the sockets context refuses to create a socket or look a
//! name up (see `GuestState::new`), so every call fails at once with an error the
//! guest sees. A plugin reaches the network only through the host's `connect`.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::{filesystem as sync_filesystem, io, sockets as sync_sockets};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use super::imports::GuestState;

/// A guest asked to wait. Ends the event as a fault, so the loop never waits with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "called {call} on nothing that is ready, which would wait; a plugin may not block the event loop \
     (to be called back later, use set-timer)"
)]
pub struct WouldBlock {
    /// The WASI function.
    pub call: &'static str,
}

/// Link the WASI functions a guest may use.
pub fn add_to_linker(l: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    clocks::wall_clock::add_to_linker::<GuestState, WasiClocks>(l, GuestState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<GuestState, NoWait>(l, GuestState::no_wait)?;
    random::random::add_to_linker::<GuestState, WasiRandom>(l, |s| s.wasi().random())?;
    random::insecure::add_to_linker::<GuestState, WasiRandom>(l, |s| s.wasi().random())?;
    random::insecure_seed::add_to_linker::<GuestState, WasiRandom>(l, |s| s.wasi().random())?;
    // What Rust's std imports whether or not a plugin uses it: an empty environment
    // and stdin, no terminal, exit (a trap, like any other), and the output streams.
    cli::environment::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::exit::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stdin::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stdout::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stderr::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_input::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_output::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stdin::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stdout::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stderr::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<GuestState, HasTable>(l, GuestState::table)?;
    io::poll::add_to_linker::<GuestState, NoWait>(l, GuestState::no_wait)?;
    // The streams are stdin, stdout and stderr, whose readiness never waits, so even
    // their `blocking-*` functions return at once.
    io::streams::add_to_linker::<GuestState, HasTable>(l, GuestState::table)?;
    // The `sync` bindings of every interface whose async bindings have an async
    // function (filesystem types, tcp, udp, udp-create-socket): a synchronous store
    // cannot make an instance of a component that imports one.
    filesystem::preopens::add_to_linker::<GuestState, WasiFilesystem>(l, GuestState::filesystem)?;
    sync_filesystem::types::add_to_linker::<GuestState, WasiFilesystem>(l, GuestState::filesystem)?;
    sockets::instance_network::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    sockets::network::add_to_linker::<GuestState, WasiSockets>(l, &Default::default(), GuestState::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    sockets::tcp_create_socket::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    sync_sockets::tcp::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    sync_sockets::udp_create_socket::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    sync_sockets::udp::add_to_linker::<GuestState, WasiSockets>(l, GuestState::sockets)?;
    Ok(())
}

struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// `wasi:io/poll` and the monotonic clock, over the store's resource table, without
/// waiting.
pub struct NoWait;

impl HasData for NoWait {
    type Data<'a> = NoWaitView<'a>;
}

/// What [`NoWait`]'s functions act on: the store's resource table.
pub struct NoWaitView<'a> {
    /// Where pollables live.
    pub table: &'a mut ResourceTable,
}

impl io::poll::Host for NoWaitView<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now_or_never(async_poll::Host::poll(self.table, pollables))
            .unwrap_or_else(|| Err(WouldBlock { call: "wasi:io/poll.poll" }.into()))
    }
}

impl io::poll::HostPollable for NoWaitView<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now_or_never(async_poll::HostPollable::ready(self.table, pollable)).unwrap_or(Ok(false))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        if self.ready(pollable)? { Ok(()) } else { Err(WouldBlock { call: "wasi:io/poll.pollable.block" }.into()) }
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

impl clocks::monotonic_clock::Host for NoWaitView<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(monotonic_nanos(Instant::now()))
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let at = origin().checked_add(Duration::from_nanos(when));
        let deadline = self.table.push(Deadline(at))?;
        subscribe(self.table, deadline)
    }

    fn subscribe_duration(&mut self, after: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let at = Instant::now().checked_add(Duration::from_nanos(after));
        let deadline = self.table.push(Deadline(at))?;
        subscribe(self.table, deadline)
    }
}

/// The origin of the guest's monotonic clock: the first time any guest asked.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn monotonic_nanos(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_nanos() as u64
}

/// A monotonic-clock subscription: ready once its instant has passed (`None`: an
/// instant too far to represent, never).
struct Deadline(Option<Instant>);

#[async_trait::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        // Polled once, never woken: this module only ever asks "ready now?".
        std::future::poll_fn(|_| match self.0 {
            Some(at) if at <= Instant::now() => Poll::Ready(()),
            _ => Poll::Pending,
        })
        .await
    }
}

/// The future's output if it is ready at its first poll.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
