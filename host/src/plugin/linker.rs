//! The linker every plugin is linked against: the `sandport:handler/host` imports
//! (`imports`) at every version of the contract the host serves (`version`), a
//! copy-free `send` over each generated one, and the WASI a guest is granted (`wasi`),
//! all over the instance's [`GuestState`] (`state`).
//!
//! Only what is linked here can be imported: a component importing anything else fails
//! to link, and `fit` says what and why. This module decides what is linked, never how
//! an import behaves.

use wasmtime::component::{HasData, Linker, WasmList};
use wasmtime::{Engine, StoreContextMut};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::{filesystem as sync_filesystem, io, sockets as sync_sockets};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};

use super::bindings::{self, sandport::handler::types};
use super::state::GuestState;
use super::version::WitVersion;
use super::wasi::{HasTable, NoWait, NoWaitView};
use crate::handler::ConnId;

/// The imports every plugin may use; anything else a component imports makes it
/// fail to link, with the name of what is missing.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    bindings::Plugin::add_to_linker::<GuestState, HasGuest>(&mut linker, |state| state)?;
    bindings::v0_3::Plugin::add_to_linker::<GuestState, HasGuest>(&mut linker, |state| state)?;
    bindings::v0_2::Plugin::add_to_linker::<GuestState, HasGuest>(&mut linker, |state| state)?;
    bindings::v0_1::Plugin::add_to_linker::<GuestState, HasGuest>(&mut linker, |state| state)?;
    for version in WitVersion::ALL {
        link_send(&mut linker, version)?;
    }
    add_wasi(&mut linker)?;
    Ok(linker)
}

/// The generated imports' view of the store: the [`GuestState`] itself.
struct HasGuest;

impl HasData for HasGuest {
    type Data<'a> = &'a mut GuestState;
}

/// `host.send` of `version`, defined again over the generated one, which lifts the
/// bytes into a fresh `Vec` first: this one hands the host a slice of the guest's
/// memory. That is an allocation and a copy fewer on every reply.
fn link_send(linker: &mut Linker<GuestState>, version: WitVersion) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(version.host())?.func_wrap(
        "send",
        |store: StoreContextMut<'_, GuestState>, (conn, data): (u64, WasmList<u8>)| {
            let host = store.data().lent_host()?;
            let data = data.as_le_slice(&store);
            // SAFETY: this import runs inside the call the host was lent for, and takes
            // the host once; the `Host` is no part of the store, whose memory `data`
            // borrows.
            let sent = unsafe { host.as_mut() }.send(ConnId(conn), data);
            Ok((sent.map_err(types::Error::from),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Link the WASI functions a guest may use (see `wasi` for why each answers at once).
fn add_wasi(l: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    clocks::wall_clock::add_to_linker::<GuestState, WasiClocks>(l, GuestState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<GuestState, NoWait>(l, NoWaitView::of)?;
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
    io::poll::add_to_linker::<GuestState, NoWait>(l, NoWaitView::of)?;
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
