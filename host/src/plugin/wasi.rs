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
//! name up (see `state`), so every call fails at once with an error the
//! guest sees. A plugin reaches the network only through the host's `connect`.
//!
//! This module holds the implementations; `linker` says which WASI interfaces are
//! linked, and with which of them.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks;
use wasmtime_wasi::p2::bindings::sync::io;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use super::state::GuestState;

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

/// The WASI interfaces that need nothing but the store's resource table.
pub struct HasTable;

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

impl NoWaitView<'_> {
    /// The view of `state`'s table.
    pub fn of(state: &mut GuestState) -> NoWaitView<'_> {
        NoWaitView { table: state.table() }
    }
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
