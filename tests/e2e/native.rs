//! The reactor as a library, with a native Rust handler: the same loop, no wasm.

use sandport::handler::{CloseMode, ConnId, Event, Fault, Handler, Host};
use sandport::listener::ListenerSpec;
use sandport::reactor::Reactor;

use crate::harness::Client;

/// Echo, natively; also records the events it saw.
struct NativeEcho {
    events: std::sync::mpsc::Sender<String>,
}

impl Handler for NativeEcho {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        let name = match &event {
            Event::Accept(_) => "accept",
            Event::Recv(0) => "eof",
            Event::Recv(_) => "recv",
            Event::Send(_) => "send",
            Event::Close => "close",
            _ => "other",
        };
        let _ = self.events.send(name.to_owned());
        if let Event::Recv(0) = event {
            host.close(conn, CloseMode::AfterSend).unwrap();
        } else if let Event::Recv(_) = event {
            let bytes = host.recv_buffer(conn).unwrap().as_slice().to_vec();
            host.send(conn, &bytes).unwrap();
            host.remove(conn, bytes.len() as u32).unwrap();
        }
        Ok(())
    }
}

#[test]
fn native_handler_runs_in_the_same_loop() {
    let (events, seen) = std::sync::mpsc::channel();
    let mut reactor = Reactor::new().unwrap();
    let addr = reactor
        .listen(
            &ListenerSpec::new("native", "127.0.0.1:0".parse().unwrap()),
            Box::new(move || Ok(Box::new(NativeEcho { events: events.clone() }) as Box<dyn Handler>)),
        )
        .unwrap();
    let stop = reactor.stop_handle();
    let running = std::thread::spawn(move || reactor.run().unwrap());

    let mut client = Client::connect(addr);
    client.write(b"native");
    assert_eq!(client.bytes(6), b"native");
    drop(client);
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("close") {
        assert!(names.len() < 100, "no CLOSE among the events: {names:?}");
        names.push(seen.recv_timeout(crate::harness::PATIENCE).unwrap());
    }
    assert_eq!(names, ["accept", "recv", "send", "eof", "close"]);

    stop.stop();
    let stats = running.join().unwrap();
    assert_eq!((stats.total.accepted, stats.total.closed, stats.total.faults), (1, 1, 0));
    assert_eq!(stats.listeners[0].0, "native");
}
