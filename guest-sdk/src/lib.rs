//! Write sandport connection handlers in Rust.
//!
//! A sandport plugin is a WebAssembly component that handles the TCP connections of
//! one listener. The host owns the sockets and the buffers; the plugin gets events and
//! answers through host calls. This crate wraps the generated bindings of the
//! `sandport:handler/plugin` world in a small API:
//!
//! - [`Handler`]: one method per event, each defaulting to doing nothing, except
//!   end-of-stream ([`Handler::on_eof`]), which closes after sending;
//! - [`export!`]: makes a `Handler` type the plugin's export;
//! - [`Migrate`] and [`export_migrating!`]: opt in to live migration, so a new version
//!   of the plugin takes over open connections instead of the old one draining them;
//! - [`Conn`]: send, remove, timers, close and half-close for a connection,
//!   [`Conn::connect`] to dial an outbound one, and [`Conn::tls_info`] (a [`TlsInfo`])
//!   for what its TLS handshake said;
//! - [`RecvBuf`]: the connection's receive buffer, read in place in the host;
//! - [`ByteSource`]: lines, delimited and length-prefixed frames over a `RecvBuf`
//!   (or over plain bytes, so protocol code can be unit-tested natively);
//! - [`ConnMap`]: per-connection state; [`config`]: the listener's configuration
//!   values; [`log`]: the host's log.
//!
//! One value of the handler type serves every connection of its plugin instance, so it
//! can keep state shared between connections (a chat room, a cache) next to
//! per-connection state in a [`ConnMap`]. It is created from `Default` (or an
//! expression given to [`export!`]) when the first event arrives. With the listener's
//! default `instance = "shared"` an instance serves all of the listener's connections;
//! with `instance = "per-connection"` it serves one accepted connection and the
//! connections it dials, and a handler keeps no state across clients.
//!
//! # A complete plugin
//!
//! An echo server. Build it as a `cdylib` with
//! `cargo build --target wasm32-wasip2`; the output is already a component.
//!
//! ```no_run
//! use sandport_guest::{Conn, Handler, RecvBuf};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
//!         let data = rx.read_all();
//!         // `send` is all or nothing; on failure the bytes stay in `rx` for next time.
//!         if conn.send(&data).is_ok() {
//!             let _ = rx.remove(data.len());
//!         }
//!     }
//! }
//!
//! sandport_guest::export!(Echo);
//! ```

#![warn(missing_docs)]

pub mod config;
mod conn;
mod conn_map;
mod error;
mod framing;
pub mod log;
mod migrate;
mod recv;
mod tls;

pub use conn::{CloseMode, Conn, Peer};
pub use conn_map::ConnMap;
pub use error::Error;
pub use framing::{ByteSource, FrameError, encode_frame};
pub use migrate::Migrate;
#[doc(hidden)]
pub use migrate::bindings as migrate_bindings;
pub use recv::RecvBuf;
pub use tls::TlsInfo;

/// When a handler gets `send` events: see [`Handler::SEND_EVENTS`].
pub use bindings::sandport::handler::types::SendEvents;

/// The raw bindings of the `sandport:handler/plugin` world, as wit-bindgen generates
/// them; the rest of this crate wraps them.
///
/// Reach for them only for what the wrappers lack. `bindings::export!(T)` exports a type
/// implementing the generated `Guest` trait directly, bypassing [`Handler`].
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "$crate::bindings",
    });
}

/// A connection handler: one method per event, each defaulting to doing nothing,
/// except [`on_eof`](Handler::on_eof), which closes the connection after sending.
///
/// Events of one connection arrive in order and never re-entrantly: a host call made
/// inside a method never calls the handler again. Implement only the events you need
/// and hand the type to [`export!`].
///
/// ```no_run
/// use std::time::Duration;
/// use sandport_guest::{Conn, Handler, Peer, RecvBuf};
///
/// /// Greets, then hangs up after five idle seconds.
/// #[derive(Default)]
/// struct Greeter;
///
/// impl Handler for Greeter {
///     fn on_accept(&mut self, conn: Conn, peer: Peer) {
///         let _ = conn.send(format!("hello {peer}\n").as_bytes());
///         let _ = conn.set_timer(0, Duration::from_secs(5));
///     }
///
///     fn on_timer(&mut self, conn: Conn, _rx: RecvBuf<'_>, _timer_id: u64) {
///         let _ = conn.close_after_send();
///     }
/// }
///
/// sandport_guest::export!(Greeter);
/// ```
pub trait Handler {
    /// When [`on_send`](Handler::on_send) is called: after every write of a
    /// connection's send buffer to its socket ([`SendEvents::EveryWrite`], the
    /// default), or only when the handler waits for room ([`SendEvents::WhenBlocked`]).
    ///
    /// Waiting for room means the handler was told the send buffer had none: a
    /// [`Conn::send`] refused with [`Error::LimitExceeded`], or a `send` or
    /// [`Conn::send_room`] answering 0, or [`RecvBuf::pipe_to`] stopping short for lack of it.
    /// A handler that uses `on_send` only to go on after that chooses `WhenBlocked`
    /// and is spared a call per write: one per reply for a request/response protocol.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, RecvBuf, SendEvents};
    /// # struct Echo;
    /// impl Handler for Echo {
    ///     const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;
    ///
    ///     fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
    ///         let _ = rx.pipe_to(conn);
    ///     }
    ///
    ///     fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
    ///         let _ = rx.pipe_to(conn);
    ///     }
    /// }
    /// ```
    const SEND_EVENTS: SendEvents = SendEvents::EveryWrite;

    /// The listener accepted `conn` from `peer`.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, Peer};
    /// # struct H;
    /// impl Handler for H {
    ///     fn on_accept(&mut self, conn: Conn, peer: Peer) {
    ///         sandport_guest::log::info(&format!("{conn} from {peer}"));
    ///     }
    /// }
    /// ```
    fn on_accept(&mut self, conn: Conn, peer: Peer) {
        let _ = (conn, peer);
    }

    /// The outbound connection `conn`, dialed with [`Conn::connect`], is established
    /// (`Ok`) or could not be (`Err`, e.g. [`Error::Failed`] with the system's reason;
    /// [`on_close`](Handler::on_close) follows). Always its first event; accepted
    /// connections never get it.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Error, Handler};
    /// # struct H;
    /// impl Handler for H {
    ///     fn on_connect(&mut self, conn: Conn, result: Result<(), Error>) {
    ///         match result {
    ///             Ok(()) => sandport_guest::log::debug(&format!("{conn} connected")),
    ///             Err(e) => sandport_guest::log::error(&format!("{conn} could not connect: {e}")),
    ///         }
    ///     }
    /// }
    /// ```
    fn on_connect(&mut self, conn: Conn, result: Result<(), Error>) {
        let _ = (conn, result);
    }

    /// `n` bytes were appended to the receive buffer `rx`; it may hold older bytes too.
    ///
    /// `n` is never 0: end-of-stream goes to [`on_eof`](Handler::on_eof).
    ///
    /// ```no_run
    /// # use sandport_guest::{ByteSource, Conn, Handler, RecvBuf};
    /// # struct H;
    /// impl Handler for H {
    ///     fn on_recv(&mut self, conn: Conn, mut rx: RecvBuf<'_>, _n: u32) {
    ///         while let Ok(Some(line)) = rx.next_line(1024) {
    ///             let _ = conn.send(&[&line[..], b"\n"].concat());
    ///         }
    ///     }
    /// }
    /// ```
    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, n: u32) {
        let _ = (conn, rx, n);
    }

    /// The peer shut down its sending side: nothing more will arrive in `rx`, though it
    /// may still hold bytes the handler has not consumed. Comes once, after the last
    /// [`on_recv`](Handler::on_recv) (it is the WIT's `recv(0)`).
    ///
    /// The host does not close the connection for this: only the handler knows whether
    /// it still has work, and the connection can still send. The default closes after
    /// sending ([`Conn::close_after_send`]), as Mongoose does: what is already in the send
    /// buffer goes out, bytes left in `rx` are dropped, [`on_close`](Handler::on_close)
    /// follows. That suits request-response protocols, whose answers to everything
    /// received are in the send buffer by the time end-of-stream arrives.
    ///
    /// Override it when work remains after the peer stops sending: an echo with bytes
    /// still in `rx` waiting for send-buffer room, a proxy that passes the half-close on
    /// ([`Conn::shutdown`]) and waits for the other side's answer, a protocol whose last
    /// message ends at end-of-stream. Close the connection yourself when done; until
    /// then it stays open (up to the listener's idle timeout).
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, RecvBuf};
    /// # struct H;
    /// impl Handler for H {
    ///     /// The last line may lack its `\n`: answer it too, then hang up.
    ///     fn on_eof(&mut self, conn: Conn, rx: RecvBuf<'_>) {
    ///         if !rx.is_empty() {
    ///             let _ = conn.send(&[&rx.read_all()[..], b"\n"].concat());
    ///         }
    ///         let _ = conn.close_after_send();
    ///     }
    /// }
    /// ```
    fn on_eof(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        let _ = rx;
        let _ = conn.close_after_send();
    }

    /// `n` bytes of the send buffer reached the socket: room to send again after a
    /// [`Error::LimitExceeded`]. After every write, or only when waiting for room: see
    /// [`SEND_EVENTS`](Handler::SEND_EVENTS).
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, RecvBuf};
    /// # struct H { pending: Vec<u8> }
    /// impl Handler for H {
    ///     fn on_send(&mut self, conn: Conn, _rx: RecvBuf<'_>, _n: u32) {
    ///         if !self.pending.is_empty() && conn.send(&self.pending).is_ok() {
    ///             self.pending.clear();
    ///         }
    ///     }
    /// }
    /// ```
    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, n: u32) {
        let _ = (conn, rx, n);
    }

    /// The listener's periodic tick (only when the listener sets a poll interval).
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, RecvBuf};
    /// # struct H { ticks: u64 }
    /// impl Handler for H {
    ///     fn on_poll(&mut self, _conn: Conn, _rx: RecvBuf<'_>) {
    ///         self.ticks += 1;
    ///     }
    /// }
    /// ```
    fn on_poll(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        let _ = (conn, rx);
    }

    /// Timer `timer_id`, armed with [`Conn::set_timer`], fired.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, Handler, RecvBuf};
    /// # struct H;
    /// const IDLE: u64 = 1;
    /// impl Handler for H {
    ///     fn on_timer(&mut self, conn: Conn, _rx: RecvBuf<'_>, timer_id: u64) {
    ///         if timer_id == IDLE {
    ///             let _ = conn.close_now();
    ///         }
    ///     }
    /// }
    /// ```
    fn on_timer(&mut self, conn: Conn, rx: RecvBuf<'_>, timer_id: u64) {
        let _ = (conn, rx, timer_id);
    }

    /// `conn` is gone, whoever closed it: always its last event. Forget its state here;
    /// its id names nothing afterwards.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, ConnMap, Handler, RecvBuf};
    /// # struct H { names: ConnMap<String> }
    /// impl Handler for H {
    ///     fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
    ///         self.names.remove(conn);
    ///     }
    /// }
    /// ```
    fn on_close(&mut self, conn: Conn, rx: RecvBuf<'_>) {
        let _ = (conn, rx);
    }
}

/// Export a [`Handler`] type as the plugin's `handler` interface.
///
/// Invoke it once, at the top level of the plugin crate. The handler value is created
/// on the first event, by `Default::default()` or by the expression after `=>`, and
/// lives as long as the plugin instance.
///
/// ```no_run
/// use sandport_guest::Handler;
///
/// struct Limits {
///     max_line: usize,
/// }
///
/// impl Handler for Limits {}
///
/// sandport_guest::export!(Limits => Limits { max_line: 4096 });
/// ```
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        $crate::export!($handler => <$handler as ::core::default::Default>::default());
    };
    ($handler:ty => $make:expr) => {
        const _: () = {
            $crate::__export_handler!($handler => $make);
        };
    };
}

/// Like [`export!`], for a handler that also implements [`Migrate`]: the plugin exports
/// the `migrate` interface too (the WIT world `migrating-plugin`), so when it is swapped
/// for a version that migrates as well, its state and its open connections move to the
/// new version instead of draining. Use it instead of `export!`, never both.
///
/// ```no_run
/// use sandport_guest::{Conn, Handler, Migrate};
///
/// #[derive(Default)]
/// struct Stateless;
///
/// impl Handler for Stateless {}
///
/// impl Migrate for Stateless {
///     fn hand_over(&mut self, _conn: Conn) -> Vec<u8> {
///         Vec::new()
///     }
///
///     fn take_over(&mut self, _conn: Conn, _state: &[u8]) {}
/// }
///
/// sandport_guest::export_migrating!(Stateless);
/// ```
#[macro_export]
macro_rules! export_migrating {
    ($handler:ty) => {
        $crate::export_migrating!($handler => <$handler as ::core::default::Default>::default());
    };
    ($handler:ty => $make:expr) => {
        const _: () = {
            $crate::__export_handler!($handler => $make);

            impl $crate::__private::MigrateGuest for SandportExport {
                fn hand_over_instance() -> ::std::vec::Vec<u8> {
                    HANDLER.with_borrow_mut(|handler| {
                        let handler = handler.get_or_insert_with(|| $crate::__private::begin::<$handler>($make));
                        $crate::Migrate::hand_over_instance(handler)
                    })
                }

                fn take_over_instance(state: ::std::vec::Vec<u8>) {
                    HANDLER.with_borrow_mut(|handler| {
                        let handler = handler.get_or_insert_with(|| $crate::__private::begin::<$handler>($make));
                        $crate::Migrate::take_over_instance(handler, &state);
                    });
                }

                fn hand_over(conn: u64) -> ::std::vec::Vec<u8> {
                    HANDLER.with_borrow_mut(|handler| {
                        let handler = handler.get_or_insert_with(|| $crate::__private::begin::<$handler>($make));
                        $crate::Migrate::hand_over(handler, $crate::Conn::from_id(conn))
                    })
                }

                fn take_over(conn: u64, state: ::std::vec::Vec<u8>) {
                    HANDLER.with_borrow_mut(|handler| {
                        let handler = handler.get_or_insert_with(|| $crate::__private::begin::<$handler>($make));
                        $crate::Migrate::take_over(handler, $crate::Conn::from_id(conn), &state);
                    });
                }
            }

            $crate::migrate_bindings::export!(SandportExport with_types_in $crate::migrate_bindings);
        };
    };
}

/// The part [`export!`] and [`export_migrating!`] share: the handler value and the
/// `handler` export. Expands to items named `SandportExport` and `HANDLER`, inside
/// the caller's `const _` block.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handler {
    ($handler:ty => $make:expr) => {
        struct SandportExport;

        // Why a thread-local and not a `static`: the value needs no `Sync`, and
        // wasm32-wasip2 is single-threaded, so this is a plain global.
        ::std::thread_local! {
            static HANDLER: ::core::cell::RefCell<::core::option::Option<$handler>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        impl $crate::__private::Guest for SandportExport {
            fn handle(conn: u64, ev: $crate::__private::Event, rx: &$crate::__private::Mbuf) {
                HANDLER.with_borrow_mut(|handler| {
                    let handler = handler.get_or_insert_with(|| $crate::__private::begin::<$handler>($make));
                    $crate::__private::dispatch(handler, conn, ev, rx);
                });
            }
        }

        $crate::bindings::export!(SandportExport with_types_in $crate::bindings);
    };
}

/// What [`export!`] and [`export_migrating!`] expand to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::sandport::handler::handler::{Event, Guest, Mbuf};
    pub use crate::migrate_bindings::exports::sandport::handler::migrate::Guest as MigrateGuest;

    use crate::bindings::sandport::handler::host;
    use crate::{Conn, Error, Handler, Peer, RecvBuf, SendEvents};

    /// A new handler value, `handler`, starts serving this instance: tell the host
    /// what it needs to know about it before its first event.
    pub fn begin<H: Handler>(handler: H) -> H {
        // The host's default needs no call.
        if H::SEND_EVENTS != SendEvents::EveryWrite {
            host::set_send_events(H::SEND_EVENTS);
        }
        handler
    }

    /// Route one event to the matching `Handler` method.
    pub fn dispatch<H: Handler>(handler: &mut H, conn: u64, ev: Event, rx: &Mbuf) {
        let conn = Conn::from_id(conn);
        let rx = RecvBuf::new(conn, rx);
        match ev {
            Event::Accept(addr) => handler.on_accept(conn, Peer { ip: addr.ip, port: addr.port }),
            Event::Connect(result) => handler.on_connect(conn, result.map_err(Error::from)),
            Event::Recv(0) => handler.on_eof(conn, rx),
            Event::Recv(n) => handler.on_recv(conn, rx, n),
            Event::Send(n) => handler.on_send(conn, rx, n),
            Event::Poll => handler.on_poll(conn, rx),
            Event::Timer(id) => handler.on_timer(conn, rx, id),
            Event::Close => handler.on_close(conn, rx),
        }
    }
}
