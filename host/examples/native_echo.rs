//! A native Rust echo handler on the sandport reactor: the baseline against which
//! the echo plugin is measured (same loop, same buffers, no WebAssembly).
//!
//! ```text
//! cargo run --release -p sandport --example native_echo -- 127.0.0.1:7100
//! ```

use sandport::config::ListenerSpec;
use sandport::handler::{ConnId, Event, Fault, Handler, Host};
use sandport::reactor::Reactor;

/// Moves bytes from the receive buffer to the send buffer, as the echo plugin does,
/// with the same 64 KiB chunks and the same backpressure rule.
struct Echo;

impl Handler for Echo {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        if !matches!(event, Event::Recv(_) | Event::Send(_)) {
            return Ok(());
        }
        let Ok(mut room) = host.send_room(conn) else { return Ok(()) };
        while room > 0 {
            let Ok(rx) = host.recv_buffer(conn) else { return Ok(()) };
            let chunk = rx.read(0, (room as usize).min(64 * 1024)).to_vec();
            if chunk.is_empty() {
                return Ok(());
            }
            let Ok(left) = host.send(conn, &chunk) else { return Ok(()) };
            room = left;
            let _ = host.remove(conn, chunk.len() as u32);
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7100".into()).parse()?;
    let mut reactor = Reactor::new()?;
    let bound = reactor.listen(&ListenerSpec::new("native-echo", address), Box::new(Echo))?;
    eprintln!("native echo on {bound}");
    reactor.run()?;
    Ok(())
}
