//! What one event costs a plugin instance, host side and guest side, without sockets:
//! the part of a request that is sandport's own, measured apart from the kernel's.
//!
//! A real instance of http-hello (or the echo) handles events of one connection whose
//! buffers live in a [`Host`] made for this bench: the reactor's own [`Mbuf`]s, and
//! nothing else (no timers, no dialing). The reactor's `Host` needs sockets and a
//! running loop, which would bury a 1 µs figure in system calls. Each iteration puts a
//! request in the receive buffer, delivers RECV, and takes the reply out of the send
//! buffer. The `send event` rows are the SEND that came after the write of every reply
//! before `set-send-events(when-blocked)`: a call into the guest that finds nothing to do.
//!
//! ```text
//! cargo bench -p sandport --bench events
//! ```
//!
//! To measure another build of a plugin in the same run (say the one before a
//! change), name its component in `BASELINE_HTTP_HELLO` or `BASELINE_ECHO`: its rows
//! come first, marked `baseline`.
// `criterion_group!` defines a public function without a doc.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sandport::handler::{CloseMode, ConnId, Event, Handler, Host, HostError, SendEvents, TlsInfo};
use sandport::listener::{Limit, ListenerSpec};
use sandport::mbuf::{Mbuf, Pool};
use sandport::plugin::Runtime;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";
const CONN: ConnId = ConnId(1);

/// One connection's buffers, as the reactor would hold them, and their storage.
struct OneConnection {
    rx: Mbuf,
    tx: Mbuf,
    pool: Pool,
}

impl OneConnection {
    fn new() -> OneConnection {
        OneConnection { rx: Mbuf::with_limit(1 << 20), tx: Mbuf::with_limit(1 << 20), pool: Pool::default() }
    }

    fn only(&self, conn: ConnId) -> Result<(), HostError> {
        if conn == CONN { Ok(()) } else { Err(HostError::Closed) }
    }
}

impl Host for OneConnection {
    fn recv_buffer(&self, conn: ConnId) -> Result<&Mbuf, HostError> {
        self.only(conn).map(|()| &self.rx)
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<u32, HostError> {
        self.only(conn)?;
        self.tx.append(data, &mut self.pool).map_err(|_| HostError::LimitExceeded("send buffer"))?;
        Ok(self.tx.room() as u32)
    }

    fn send_room(&mut self, conn: ConnId) -> Result<u32, HostError> {
        self.only(conn).map(|()| self.tx.room() as u32)
    }

    fn remove(&mut self, conn: ConnId, n: u32) -> Result<(), HostError> {
        self.only(conn)?;
        self.rx.remove(n as usize, &mut self.pool).map_err(|short| HostError::Invalid(short.to_string()))
    }

    fn pipe(&mut self, from: ConnId, to: ConnId, max: u32) -> Result<u32, HostError> {
        self.only(to)?;
        if self.only(from).is_err() {
            return Ok(0);
        }
        Ok(self.rx.move_to(&mut self.tx, max as usize, &mut self.pool) as u32)
    }

    fn set_timer(&mut self, _: ConnId, _: u64, _: Duration) -> Result<(), HostError> {
        Err(HostError::NotAllowed)
    }

    fn cancel_timer(&mut self, _: ConnId, _: u64) -> Result<bool, HostError> {
        Err(HostError::NotAllowed)
    }

    fn close(&mut self, conn: ConnId, _: CloseMode) -> Result<(), HostError> {
        self.only(conn)
    }

    fn shutdown(&mut self, conn: ConnId) -> Result<(), HostError> {
        self.only(conn)
    }

    fn connect(&mut self, _: SocketAddr) -> Result<ConnId, HostError> {
        Err(HostError::NotAllowed)
    }

    fn limit_hit(&mut self, _: ConnId, _: Limit) {}

    fn set_send_events(&mut self, _: SendEvents) {}

    fn tls_info(&self, _: ConnId) -> Result<Option<TlsInfo>, HostError> {
        Ok(None)
    }
}

/// An instance of the plugin at `path` that has accepted [`CONN`].
fn accepted(runtime: &Runtime, path: &str, host: &mut OneConnection) -> Box<dyn Handler> {
    let spec = ListenerSpec::new("bench", "127.0.0.1:0".parse().unwrap());
    let plugin = runtime.load(Path::new(path)).unwrap();
    let mut handler: Box<dyn Handler> = Box::new(plugin.factory(&spec, 1).instantiate().unwrap());
    handler.handle(host, CONN, Event::Accept("127.0.0.1:40000".parse().unwrap())).unwrap();
    handler
}

/// `request` arrives, the handler answers, the answer goes out; checks `reply_len`.
fn round_trip(handler: &mut dyn Handler, host: &mut OneConnection, request: &[u8], reply_len: usize) {
    host.rx.append(request, &mut host.pool).unwrap();
    handler.handle(host, CONN, Event::Recv(request.len() as u32)).unwrap();
    assert_eq!((host.rx.len(), host.tx.len()), (0, reply_len), "the handler must answer at once");
    host.tx.clear(&mut host.pool);
}

fn events(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let mut group = c.benchmark_group("one event");
    let plugins = [
        ("http-hello", "BASELINE_HTTP_HELLO", sandport_test_artifacts::HTTP_HELLO, GET, 85),
        ("echo", "BASELINE_ECHO", sandport_test_artifacts::ECHO, &[b'x'; 64][..], 64),
    ];
    for (name, baseline, path, request, reply_len) in plugins {
        let baseline = std::env::var(baseline).ok().map(|path| (format!("baseline {name}"), path));
        for (label, path) in baseline.into_iter().chain([(name.to_owned(), path.to_owned())]) {
            let mut host = OneConnection::new();
            let mut handler = accepted(&runtime, &path, &mut host);
            group.bench_function(format!("{label}: recv of {} bytes, answered", request.len()), |b| {
                b.iter(|| round_trip(handler.as_mut(), &mut host, request, reply_len))
            });
            group.bench_function(format!("{label}: send event"), |b| {
                b.iter(|| handler.handle(&mut host, CONN, Event::Send(reply_len as u32)).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
