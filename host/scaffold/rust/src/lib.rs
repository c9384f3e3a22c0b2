//! A sandport plugin: an echo, to start from. Every byte a client sends comes back;
//! when the client stops sending, the connection closes once the last byte is out.
//!
//! The host calls `handle` once per event of a connection (see `wit/handler.wit`) and
//! owns the bytes: `rx` is a view of the connection's receive buffer, and the `host`
//! functions append to its send buffer, consume received bytes, arm timers, close.
//! On a listener that serves TLS the plugin still sees plaintext; `host::tls_info(conn)`
//! says what the handshake said (server name, ALPN protocol, version, cipher suite, the
//! client's certificate), and `None` on a plaintext connection.
//!
//! Configuration, from the listener's `[listener.config]` table: `greeting` (a line
//! sent on accept) and `fault-trigger` (bytes that make the plugin trap, to see that a
//! fault is contained). Build with `make`; serve with `sandport serve --config
//! sandport.toml`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::OnceLock;

wit_bindgen::generate!({ world: "plugin", path: "wit" });

use exports::sandport::handler::handler::Guest;
use sandport::handler::host::{self, Mbuf};
use sandport::handler::types::{CloseMode, Conn, Event};

/// What the listener's configuration says; it cannot change while an instance lives.
struct Settings {
    greeting: Option<Vec<u8>>,
    fault_trigger: Option<Vec<u8>>,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings {
        greeting: host::config("greeting").map(|g| format!("{g}\n").into_bytes()),
        fault_trigger: host::config("fault-trigger").map(String::into_bytes),
    })
}

thread_local! {
    /// Connections whose client stopped sending while part of its echo waited for
    /// room in the send buffer: they close once it is all out.
    static ENDING: RefCell<BTreeSet<Conn>> = const { RefCell::new(BTreeSet::new()) };
}

struct Plugin;

impl Guest for Plugin {
    fn handle(conn: Conn, event: Event, rx: &Mbuf) {
        match event {
            Event::Accept(_) => {
                if let Some(greeting) = &settings().greeting {
                    let _ = host::send(conn, greeting);
                }
            }
            // recv(0): the client will send nothing more.
            Event::Recv(0) => {
                pump(conn, rx);
                if rx.len() == 0 {
                    let _ = host::close(conn, CloseMode::AfterSend);
                } else {
                    ENDING.with_borrow_mut(|ending| ending.insert(conn));
                }
            }
            Event::Recv(_) => {
                if let Some(trigger) = &settings().fault_trigger
                    && rx.find(trigger, 0).is_some()
                {
                    panic!("the configured fault trigger arrived on {conn}");
                }
                pump(conn, rx);
            }
            // Bytes left the send buffer: room for more of the echo.
            Event::Send(_) => {
                pump(conn, rx);
                if rx.len() == 0 && ENDING.with_borrow_mut(|ending| ending.remove(&conn)) {
                    let _ = host::close(conn, CloseMode::AfterSend);
                }
            }
            Event::Close => {
                ENDING.with_borrow_mut(|ending| ending.remove(&conn));
            }
            Event::Connect(_) | Event::Poll | Event::Timer(_) => {}
        }
    }
}

/// Move what fits from the receive buffer to the send buffer, inside the host: the
/// bytes never enter the plugin. What does not fit stays in `rx` (so the host stops
/// reading a client that does not read its echo) until the next `send` event makes
/// room.
fn pump(conn: Conn, rx: &Mbuf) {
    let _ = rx.pipe_to(conn, u32::MAX);
}

export!(Plugin);
