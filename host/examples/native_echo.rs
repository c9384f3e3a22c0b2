//! A native Rust echo handler on the sandport reactor: the baseline against which
//! the echo plugin is measured (same loop, same buffers, no WebAssembly).
//!
//! ```text
//! cargo run --release -p sandport --example native_echo -- 127.0.0.1:7100
//! ```

use std::collections::HashSet;

use sandport::handler::{CloseMode, ConnId, Event, Fault, Handler, Host};
use sandport::listener::ListenerSpec;
use sandport::reactor::Reactor;

/// Moves bytes from the receive buffer to the send buffer, as the echo plugin does
/// (the host's `pipe`, which `mbuf.pipe-to` is for a plugin), with the same
/// backpressure rule, and closes once a peer that stopped sending has had everything
/// back.
#[derive(Default)]
struct Echo {
    /// Connections whose peer stopped sending.
    finished: HashSet<ConnId>,
}

impl Handler for Echo {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        match event {
            Event::Recv(0) => {
                self.finished.insert(conn);
            }
            Event::Recv(_) | Event::Send(_) => {}
            Event::Close => {
                self.finished.remove(&conn);
                return Ok(());
            }
            _ => return Ok(()),
        }
        pump(host, conn);
        let drained = host.recv_buffer(conn).is_ok_and(|rx| rx.is_empty());
        if drained && self.finished.contains(&conn) {
            let _ = host.close(conn, CloseMode::AfterSend);
        }
        Ok(())
    }
}

/// Copy from the receive buffer to the send buffer until one is full or empty.
fn pump(host: &mut dyn Host, conn: ConnId) {
    let _ = host.pipe(conn, conn, u32::MAX);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7100".into()).parse()?;
    let mut reactor = Reactor::new()?;
    let spec = ListenerSpec::new("native-echo", address);
    let bound = reactor.listen(&spec, Box::new(|| Ok(Box::new(Echo::default()) as Box<dyn Handler>)))?;
    eprintln!("native echo on {bound}");
    reactor.run()?;
    Ok(())
}
