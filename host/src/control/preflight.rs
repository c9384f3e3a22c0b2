//! The trial a new version must pass before any client sees it: start an instance in
//! a private event loop on a loopback port, put one connection through it (accept,
//! a few bytes, end of stream, close) and see that nothing faulted.
//!
//! It runs the real reactor and the real plugin on the calling thread's behalf (the
//! private loop gets a thread of its own for the trial), never on a serving worker.
//! The trial listener may not dial out, so a proxy's upstream never sees it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::handler::{ConnId, Event, Fault, Handler, HandlerFactory, Host};
use crate::listener::ListenerSpec;
use crate::reactor::Reactor;

/// What the trial connection sends: a line any handler must cope with.
const PROBE: &[u8] = b"sandport pre-flight\r\n";

/// How long the trial waits for the handler to answer and close before it ends the
/// connection itself. A handler that keeps connections open (a chat) passes too.
const PATIENCE: Duration = Duration::from_millis(500);

/// Why a version failed its pre-flight.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No instance would start.
    #[error("pre-flight: cannot start an instance: {0}")]
    Start(Fault),
    /// The trial itself could not run (no loopback port, no thread): not the
    /// version's fault, but it did not pass.
    #[error("pre-flight: cannot run the trial: {0}")]
    Trial(#[source] std::io::Error),
    /// The trial's event loop panicked.
    #[error("pre-flight: the trial's event loop panicked")]
    Panicked,
    /// The handler faulted on the trial connection, for this reason.
    #[error("pre-flight: {0}")]
    Fault(String),
    /// The handler faulted, and its reason was not recorded.
    #[error("pre-flight: the handler faulted")]
    Faulted,
}

/// Run the trial for listener `spec` with handlers from `factory`. `Err` says why the
/// version failed it.
pub(crate) fn preflight(
    spec: &ListenerSpec,
    mut factory: impl HandlerFactory + Clone + 'static,
) -> Result<(), PreflightError> {
    factory.new_handler().map_err(PreflightError::Start)?;
    let fault = Arc::new(Mutex::new(None));
    let recording = {
        let fault = fault.clone();
        move || -> Result<Box<dyn Handler>, Fault> {
            let inner = factory.new_handler()?;
            Ok(Box::new(Recording { inner, fault: fault.clone() }))
        }
    };
    let mut trial = spec.clone();
    trial.name = format!("{} (pre-flight)", spec.name);
    trial.address = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    trial.allow_connect.clear();
    trial.poll_interval = None;
    let cannot = PreflightError::Trial;
    let mut reactor = Reactor::new().map_err(cannot)?;
    let address = reactor.listen(&trial, Box::new(recording)).map_err(cannot)?;
    let stop = reactor.stop_handle();
    let running =
        std::thread::Builder::new().name("sandport-preflight".into()).spawn(move || reactor.run()).map_err(cannot)?;
    let talked = converse(address);
    stop.stop();
    let stats = running.join().map_err(|_| PreflightError::Panicked)?.map_err(cannot)?;
    talked.map_err(cannot)?;
    if let Some(reason) = fault.lock().expect("no panics under this lock").take() {
        return Err(PreflightError::Fault(reason));
    }
    if stats.total.faults > 0 {
        return Err(PreflightError::Faulted);
    }
    Ok(())
}

/// One client conversation with the trial listener: send the probe, end the stream,
/// read what comes back until the handler closes or [`PATIENCE`] runs out.
fn converse(address: SocketAddr) -> std::io::Result<()> {
    let mut client = TcpStream::connect_timeout(&address, PATIENCE)?;
    client.set_read_timeout(Some(PATIENCE))?;
    client.write_all(PROBE)?;
    client.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    loop {
        match client.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // Kept open, or closed with a reset: both are the handler's business.
            Err(_) => return Ok(()),
        }
    }
}

/// A handler that remembers the last fault of the one it wraps, so the trial can say
/// why a version failed.
struct Recording {
    inner: Box<dyn Handler>,
    fault: Arc<Mutex<Option<String>>>,
}

impl Handler for Recording {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        let result = self.inner.handle(host, conn, event);
        if let Err(fault) = &result {
            *self.fault.lock().expect("no panics under this lock") = Some(fault.reason.clone());
        }
        result
    }
}
