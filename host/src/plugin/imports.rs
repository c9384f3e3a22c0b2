//! What a guest can call: the `sandport:handler/host` imports, as implementations of the
//! generated `host` traits over the instance's [`GuestState`].
//!
//! Written once, for the current version of the contract; each import of an earlier
//! version forwards to its namesake here (see `bindings` for why the types need no
//! conversion), so a plugin behaves the same whichever WIT it was built against.
//!
//! Each import acts on the reactor through the [`Host`](crate::handler::Host) lent for
//! the call in progress (see `state`), and traps outside one. The linker puts these in
//! place (see `linker`, which also replaces `send` with a copy-free one). What an import
//! may make the host keep is capped by `state`'s limits.

use std::time::Duration;

use tracing::Level;
use wasmtime::component::Resource;

use super::bindings::sandport::handler::{host, types};
use super::bindings::v0_1::sandport::handler::host as host_v0_1;
use super::bindings::v0_2::sandport::handler::host as host_v0_2;
use super::bindings::v0_3::sandport::handler::host as host_v0_3;
use super::state::{GuestState, MAX_VIEWS, RecvView};
use crate::handler::{CloseMode, ConnId, HostError, SendEvents, TlsInfo};

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
    /// Shadowed in the linker by a copy-free `send` (see `linker`); kept for the
    /// generated trait.
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

    fn tls_info(&mut self, conn: u64) -> wasmtime::Result<Result<Option<types::TlsHandshake>, types::Error>> {
        let info = self.host()?.tls_info(ConnId(conn));
        Ok(info.map(|info| info.map(to_wit)).map_err(Into::into))
    }
}

fn to_wit(info: TlsInfo) -> types::TlsHandshake {
    let TlsInfo { server_name, alpn, version, cipher_suite, peer_certificate } = info;
    types::TlsHandshake { server_name, alpn, version, cipher_suite, peer_certificate }
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

    fn pipe_to(&mut self, rx: Resource<RecvView>, to: u64, max: u32) -> wasmtime::Result<Result<u32, types::Error>> {
        let from = self.conn_of(&rx)?;
        Ok(self.host()?.pipe(from, ConnId(to), max).map_err(Into::into))
    }

    fn drop(&mut self, rx: Resource<RecvView>) -> wasmtime::Result<()> {
        // Only owned views are dropped; the borrowed `rx` of an event never is.
        self.views.try_remove(rx.rep() as usize);
        Ok(())
    }
}

/// `impl $trait for GuestState`, each function forwarding to its namesake in `$to`.
macro_rules! forward {
    ($trait:path => $to:path { $(fn $name:ident(&mut self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        impl $trait for GuestState {
            $(
                fn $name(&mut self $(, $arg: $ty)*) -> wasmtime::Result<$ret> {
                    <GuestState as $to>::$name(self $(, $arg)*)
                }
            )*
        }
    };
}

/// The imports of an earlier version's `host` (module `$host`): 0.1.0's, and those
/// added since (`$added`), each forwarding to its namesake of the current version.
macro_rules! forward_host {
    ($host:ident { $($added:tt)* }) => {
        forward!($host::Host => host::Host {
            fn send(&mut self, conn: u64, data: Vec<u8>) -> Result<u32, types::Error>;
            fn send_room(&mut self, conn: u64) -> Result<u32, types::Error>;
            fn remove(&mut self, conn: u64, n: u32) -> Result<(), types::Error>;
            fn set_timer(&mut self, conn: u64, id: u64, millis: u64) -> Result<(), types::Error>;
            fn cancel_timer(&mut self, conn: u64, id: u64) -> Result<bool, types::Error>;
            fn close(&mut self, conn: u64, mode: types::CloseMode) -> Result<(), types::Error>;
            fn shutdown(&mut self, conn: u64) -> Result<(), types::Error>;
            fn connect(&mut self, address: String) -> Result<u64, types::Error>;
            fn recv_buffer(&mut self, conn: u64) -> Result<Resource<RecvView>, types::Error>;
            fn config(&mut self, key: String) -> Option<String>;
            fn log(&mut self, level: types::LogLevel, message: String) -> ();
            fn set_send_events(&mut self, mode: types::SendEvents) -> ();
            $($added)*
        });

        forward!($host::HostMbuf => host::HostMbuf {
            fn len(&mut self, rx: Resource<RecvView>) -> u32;
            fn read(&mut self, rx: Resource<RecvView>, offset: u32, len: u32) -> Vec<u8>;
            fn find(&mut self, rx: Resource<RecvView>, needle: Vec<u8>, start: u32) -> Option<u32>;
            fn drop(&mut self, rx: Resource<RecvView>) -> ();
        });
    };
}

forward_host!(host_v0_1 {});

forward_host!(host_v0_2 {
    fn tls_info(&mut self, conn: u64) -> Result<Option<types::TlsHandshake>, types::Error>;
});

forward_host!(host_v0_3 {
    fn tls_info(&mut self, conn: u64) -> Result<Option<types::TlsHandshake>, types::Error>;
});
