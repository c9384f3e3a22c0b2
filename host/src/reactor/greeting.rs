//! A connection on its way to a listener: accepted on an address with a
//! [`Site`](super::Site), it sends a PROXY header if the site asks for one, then a
//! ClientHello, which names the listener that will serve it; a terminating listener's
//! handshake follows. Only then does it become a connection of that listener, with its
//! ACCEPT.
//!
//! Nothing of a tenant runs before that: no instance starts, no slot of its
//! `max-connections` is taken before the ClientHello chose it, and its handshake is
//! counted in its `max-handshakes`. Each greeting is bounded in time (the site's
//! handshake timeout) and in bytes, and a worker moves at most [`GREETINGS_PER_TURN`]
//! greetings on per turn of its loop, so a flood of handshakes against one name takes
//! its turns beside the established connections of every tenant, not instead of them.
//! A connection whose listener lives on another worker (a shared instance lives on
//! one) is handed to it with the bytes read so far. Greetings never call a handler.

use std::cmp::Reverse;
use std::io::{self, ErrorKind, Read as _, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};
use rustls::server::Acceptor;
use tracing::{debug, warn};

use super::command::Command;
use super::connection::{Dial, Direct};
use super::site::Handling;
use super::stats::Refusal;
use super::transport::{self, Handshake, Tls, Transport};
use super::{GREETING_BASE, Reactor};
use crate::handler::Event;
use crate::listener::Limit;
use crate::proxy_header::{self, Parsed};

/// Greetings moved on per turn of the loop: the handshake work (a signature, a key
/// exchange: a few hundred microseconds) one turn may do before the established
/// connections are served again.
pub(super) const GREETINGS_PER_TURN: usize = 4;

/// Greetings one address may have in flight on a worker; beyond it a new connection
/// is closed at once.
const GREETINGS_PER_PORT: usize = 1024;

/// Bytes of ClientHello kept, as sent: the largest a hello can be (a handshake message
/// of 64 KiB, in records of five bytes of header each).
const MAX_HELLO: usize = 64 * 1024 + 5 * 5;

/// Bytes read at a time while greeting.
const CHUNK: usize = 4096;

/// Where a greeting is.
enum Stage {
    /// Reading the PROXY protocol header.
    Proxy,
    /// Reading the ClientHello. `fed`: how many of the greeting's bytes the acceptor
    /// has taken.
    Hello { acceptor: Box<Acceptor>, fed: usize },
    /// Routed to `listener`, whose handshake goes on.
    Handshake { listener: usize, tls: Box<Tls> },
}

/// A connection that has not reached its listener yet.
pub(super) struct Greeting {
    socket: TcpStream,
    peer: SocketAddr,
    /// The port it was accepted on.
    port: usize,
    stage: Stage,
    /// What the client sent after any PROXY header, kept as it came: a passed-through
    /// connection's first bytes, or what another worker needs to route it again.
    bytes: Vec<u8>,
    /// When it was accepted (on this worker or the one that handed it over).
    since: Instant,
    /// Tells this greeting's deadline from a stale one of a reused slot.
    serial: u64,
    interest: Interest,
    /// Handed over by another worker already: never handed on again.
    adopted: bool,
    /// In the greeting queue (once is enough).
    queued: bool,
}

/// What a step of a greeting came to.
enum Next {
    /// Wait for the socket.
    Wait,
    /// Go on now (the stage changed).
    Again,
    /// Done with it (it moved on, or it was refused).
    Gone,
}

impl Reactor {
    /// Take in a connection accepted on port `port`, or one handed over by another
    /// worker (`bytes` read so far, `adopted`).
    pub(super) fn greet(
        &mut self,
        port: usize,
        (socket, peer): (TcpStream, SocketAddr),
        bytes: Vec<u8>,
        since: Instant,
        adopted: bool,
    ) {
        let site = self.ports[port].site.load_full();
        if self.ports[port].greetings >= GREETINGS_PER_PORT {
            return self.count_refusal(port, peer, Refusal::Busy);
        }
        let stage = if !site.proxy_protocol.is_empty() && !adopted {
            if !proxy_header::trusted(peer.ip(), &site.proxy_protocol) {
                return self.count_refusal(port, peer, Refusal::UntrustedProxy);
            }
            Stage::Proxy
        } else {
            Stage::Hello { acceptor: Box::default(), fed: 0 }
        };
        let entry = self.greetings.vacant_entry();
        let key = entry.key();
        let mut socket = socket;
        if let Err(err) = self.poll.registry().register(&mut socket, Token(GREETING_BASE + key), Interest::READABLE) {
            debug!(%peer, "cannot watch a new connection: {err}");
            return;
        }
        if let Err(err) = socket.set_nodelay(true) {
            debug!(%peer, "cannot disable Nagle: {err}");
        }
        self.next_greeting += 1;
        let serial = self.next_greeting;
        entry.insert(Greeting {
            socket,
            peer,
            port,
            stage,
            bytes,
            since,
            serial,
            interest: Interest::READABLE,
            adopted,
            queued: true,
        });
        self.ports[port].greetings += 1;
        self.greeting_deadlines.push(Reverse((since + site.handshake_timeout, key, serial)));
        self.greeting_queue.push(key);
    }

    /// Move on the queued greetings, at most [`GREETINGS_PER_TURN`]; the rest wait for
    /// the next turn.
    pub(super) fn serve_greetings(&mut self) {
        let take = self.greeting_queue.len().min(GREETINGS_PER_TURN);
        let batch: Vec<usize> = self.greeting_queue.drain(..take).collect();
        for key in batch {
            if let Some(greeting) = self.greetings.get_mut(key) {
                greeting.queued = false;
                self.step_greeting(key);
            }
        }
    }

    /// Queue greeting `key` for a turn (readiness came).
    pub(super) fn greeting_ready(&mut self, key: usize) {
        if let Some(greeting) = self.greetings.get_mut(key)
            && !greeting.queued
        {
            greeting.queued = true;
            self.greeting_queue.push(key);
        }
    }

    /// Close the greetings whose time is up.
    pub(super) fn expire_greetings(&mut self, now: Instant) {
        while let Some(Reverse((at, key, serial))) = self.greeting_deadlines.peek().copied() {
            if at > now {
                return;
            }
            self.greeting_deadlines.pop();
            let Some(greeting) = self.greetings.get(key).filter(|g| g.serial == serial) else { continue };
            match greeting.stage {
                Stage::Handshake { listener, .. } => {
                    let account = &mut self.core.accounts[listener];
                    account.counts.limit_hits[Limit::HandshakeTimeout.index()] += 1;
                    account.counts.handshakes_failed += 1;
                    if account.may_log() {
                        warn!(listener = %account.spec.name, peer = %greeting.peer, limit = %Limit::HandshakeTimeout.key(), "limit hit: {}", Limit::HandshakeTimeout.outcome());
                    }
                    self.drop_greeting(key);
                }
                _ => {
                    let (port, peer) = (greeting.port, greeting.peer);
                    self.drop_greeting(key);
                    self.count_refusal(port, peer, Refusal::Timeout);
                }
            }
        }
    }

    /// The next greeting deadline, for the loop's sleep.
    pub(super) fn next_greeting_deadline(&self) -> Option<Instant> {
        self.greeting_deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Do what greeting `key` is ready for, stage after stage.
    fn step_greeting(&mut self, key: usize) {
        loop {
            let next = match self.greetings[key].stage {
                Stage::Proxy => self.read_proxy_header(key),
                Stage::Hello { .. } => self.read_hello(key),
                Stage::Handshake { .. } => self.shake_hands(key),
            };
            match next {
                Next::Again => continue,
                Next::Wait => return self.want(key),
                Next::Gone => return,
            }
        }
    }

    /// Register greeting `key` for what it waits on.
    fn want(&mut self, key: usize) {
        let greeting = &mut self.greetings[key];
        let wanted = match &greeting.stage {
            Stage::Handshake { tls, .. } if tls.session.wants_write() => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        if wanted != greeting.interest {
            match self.poll.registry().reregister(&mut greeting.socket, Token(GREETING_BASE + key), wanted) {
                Ok(()) => greeting.interest = wanted,
                Err(err) => debug!(peer = %greeting.peer, "cannot change readiness interest: {err}"),
            }
        }
    }

    /// The PROXY header: read until it is whole, then carry on as from its client.
    fn read_proxy_header(&mut self, key: usize) -> Next {
        let greeting = &mut self.greetings[key];
        let read = read_more(&greeting.socket, &mut greeting.bytes, proxy_header::V2_MAX);
        let parsed = proxy_header::parse(&greeting.bytes);
        match (parsed, read) {
            (Ok(Parsed::Header { len, source }), _) => {
                if let Some(source) = source {
                    greeting.peer = source;
                }
                greeting.bytes.drain(..len);
                let site = self.ports[greeting.port].site.load();
                if !site.reads_hello {
                    return self.route(key, None, None);
                }
                greeting.stage = Stage::Hello { acceptor: Box::default(), fed: 0 };
                Next::Again
            }
            (Ok(Parsed::Incomplete), Ok(Got::More)) => Next::Wait,
            (Ok(Parsed::Incomplete), Ok(Got::Full)) => self.refuse(key, Refusal::BadProxyHeader),
            (Ok(Parsed::Incomplete), Ok(Got::Ended) | Err(_)) => self.refuse(key, Refusal::Abandoned),
            (Err(_), _) => self.refuse(key, Refusal::BadProxyHeader),
        }
    }

    /// The ClientHello: read until rustls has it whole, then route by its server name.
    fn read_hello(&mut self, key: usize) -> Next {
        let greeting = &mut self.greetings[key];
        if !self.ports[greeting.port].site.load().reads_hello {
            // Plaintext handed over by the worker that read its PROXY header.
            return self.route(key, None, None);
        }
        let read = read_more(&greeting.socket, &mut greeting.bytes, MAX_HELLO);
        let Stage::Hello { acceptor, fed } = &mut greeting.stage else { unreachable!("reading the hello") };
        loop {
            // The acceptor buffers one record's worth until `accept` has seen a hello
            // that spans records; only then does it take up to 64 KiB. So feed and
            // accept in turn, while it takes more.
            let before = *fed;
            while *fed < greeting.bytes.len() {
                match acceptor.read_tls(&mut &greeting.bytes[*fed..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => *fed += n,
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let name = accepted.client_hello().server_name().map(str::to_owned);
                    return self.route(key, name, Some(accepted));
                }
                Ok(None) if *fed < greeting.bytes.len() && *fed > before => {}
                Ok(None) if *fed < greeting.bytes.len() => return self.refuse(key, Refusal::BadHello),
                Ok(None) => {
                    return match read {
                        Ok(Got::More) => Next::Wait,
                        Ok(Got::Full) => self.refuse(key, Refusal::BadHello),
                        Ok(Got::Ended) | Err(_) => self.refuse(key, Refusal::Abandoned),
                    };
                }
                Err((_, mut alert)) => {
                    let _ = alert.write_all(&mut Direct(&greeting.socket));
                    return self.refuse(key, Refusal::BadHello);
                }
            }
        }
    }

    /// Send greeting `key` where its server name leads: on to its listener's handshake,
    /// straight to its listener (passthrough, plaintext), to the worker that serves its
    /// listener, or away with `unrecognized_name`.
    fn route(&mut self, key: usize, name: Option<String>, accepted: Option<rustls::server::Accepted>) -> Next {
        let greeting = &self.greetings[key];
        let site = self.ports[greeting.port].site.load_full();
        let Some(route) = site.router.route(name.as_deref()) else {
            // unrecognized_name, fatal: what a server that knows no such name says.
            const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
            let _ = Direct(&greeting.socket).write(&UNRECOGNIZED_NAME);
            return self.refuse(key, Refusal::UnrecognizedName);
        };
        if !route.workers.contains(&self.index) {
            return self.hand_on(key, route.workers.start);
        }
        let Some(listener) = self.listener_named(&route.listener) else {
            return self.refuse(key, Refusal::NoListener);
        };
        let account = &mut self.core.accounts[listener];
        if !account.open.take(account.spec.limits.max_connections) {
            return self.refuse_for(key, listener, Limit::Connections);
        }
        match (&route.handling, accepted) {
            (Handling::Terminate(config), Some(accepted)) => {
                if self.listeners[listener].handshakes >= self.core.accounts[listener].spec.limits.max_handshakes {
                    self.core.accounts[listener].open.give_back();
                    return self.refuse_for(key, listener, Limit::Handshakes);
                }
                match accepted.into_connection(config.clone()) {
                    Ok(session) => {
                        self.listeners[listener].handshakes += 1;
                        self.greetings[key].stage = Stage::Handshake { listener, tls: Box::new(Tls::server(session)) };
                        Next::Again
                    }
                    Err((_, mut alert)) => {
                        let _ = alert.write_all(&mut Direct(&self.greetings[key].socket));
                        self.core.accounts[listener].open.give_back();
                        self.core.accounts[listener].counts.handshakes_failed += 1;
                        self.drop_greeting(key);
                        Next::Gone
                    }
                }
            }
            _ => {
                let greeting = self.drop_greeting(key);
                self.arrive(listener, greeting, Transport::Plain);
                Next::Gone
            }
        }
    }

    /// The handshake of a routed greeting: on to its end, then into the listener.
    fn shake_hands(&mut self, key: usize) -> Next {
        let greeting = &mut self.greetings[key];
        let Stage::Handshake { listener, tls } = &mut greeting.stage else { unreachable!("shaking hands") };
        let listener = *listener;
        match transport::handshake(tls, &greeting.socket) {
            Ok(Handshake::Waiting { .. }) => Next::Wait,
            Ok(Handshake::Done) => {
                let mut greeting = self.drop_greeting(key);
                let Stage::Handshake { tls, .. } = std::mem::replace(&mut greeting.stage, Stage::Proxy) else {
                    unreachable!("shaking hands")
                };
                let counts = &mut self.core.accounts[listener].counts;
                counts.handshakes += 1;
                // The clock, not the turn's `now`: a handshake whose client answered
                // within the turn it was accepted in would otherwise take no time.
                counts.handshake_time.record(greeting.since.elapsed());
                greeting.bytes = Vec::new();
                self.arrive(listener, greeting, Transport::Tls(tls));
                Next::Gone
            }
            Err(err) => {
                let account = &mut self.core.accounts[listener];
                account.counts.handshakes_failed += 1;
                debug!(listener = %account.spec.name, peer = %greeting.peer, "TLS handshake failed: {err}");
                self.drop_greeting(key);
                Next::Gone
            }
        }
    }

    /// A greeting reached listener `listener` (its slot taken): a connection of it
    /// now, served by its instance, with the bytes read so far in its receive buffer.
    fn arrive(&mut self, listener: usize, greeting: Greeting, transport: Transport) {
        let Greeting { socket, peer, bytes, .. } = greeting;
        let Some(instance) = self.instance_for(listener) else {
            let account = &mut self.core.accounts[listener];
            account.open.give_back();
            account.counts.refused += 1;
            return;
        };
        match self.core.register(instance, (socket, peer, transport), Dial::Over) {
            Ok((key, id)) => {
                let conn = &mut self.core.conns[key];
                let early = bytes.len();
                if conn.rx.append(&bytes, &mut self.core.buffers).is_err() {
                    // A hello larger than the listener's whole receive buffer.
                    self.core.hit(key, Limit::RecvBuffer);
                    self.close(key, None);
                    return;
                }
                self.core.accounts[listener].counts.accepted += 1;
                self.core.accounts[listener].counts.bytes_in += early as u64;
                debug!(listener = %self.core.accounts[listener].spec.name, conn = %id, %peer, "accepted");
                self.dispatch(key, Event::Accept(peer));
                if early > 0 {
                    self.dispatch(key, Event::Recv(early as u32));
                }
                self.core.enqueue(key);
            }
            Err(err) => {
                let account = &mut self.core.accounts[listener];
                account.open.give_back();
                account.counts.refused += 1;
                warn!(listener = %account.spec.name, %peer, "cannot watch accepted connection: {err}");
                self.release_if_idle(instance);
            }
        }
    }

    /// Hand greeting `key` to worker `worker`, which serves its listener.
    fn hand_on(&mut self, key: usize, worker: usize) -> Next {
        if self.greetings[key].adopted {
            return self.refuse(key, Refusal::NoListener);
        }
        let port = self.greetings[key].port;
        let address = self.ports[port].address;
        let Greeting { socket, peer, bytes, since, .. } = self.drop_greeting(key);
        let Some(peer_worker) = self.peers.get(worker) else {
            return self.refuse_gone(port, peer, Refusal::NoListener);
        };
        let command = Command::Adopt { address, socket, peer, bytes, since };
        if peer_worker.send(command) {
            self.ports[port].counts.handed_on += 1;
        } else {
            self.count_refusal(port, peer, Refusal::NoListener);
        }
        Next::Gone
    }

    /// Take a connection another worker routed here.
    pub(super) fn adopt(
        &mut self,
        address: SocketAddr,
        socket: TcpStream,
        peer: SocketAddr,
        bytes: Vec<u8>,
        since: Instant,
    ) {
        let Some(port) = self.ports.iter().position(|p| p.socket.is_some() && p.address == address) else {
            debug!(%peer, %address, "a connection was handed over for an address this worker no longer serves");
            return;
        };
        self.greet(port, (socket, peer), bytes, since, true);
    }

    /// Close greeting `key` before it reached a listener, counting why.
    fn refuse(&mut self, key: usize, why: Refusal) -> Next {
        let Greeting { port, peer, .. } = self.drop_greeting(key);
        self.refuse_gone(port, peer, why)
    }

    fn refuse_gone(&mut self, port: usize, peer: SocketAddr, why: Refusal) -> Next {
        self.count_refusal(port, peer, why);
        Next::Gone
    }

    /// Count (and log, within the port's rate limit) a connection closed before a
    /// listener took it.
    fn count_refusal(&mut self, port: usize, peer: SocketAddr, why: Refusal) {
        let port = &mut self.ports[port];
        port.counts.refused[why as usize] += 1;
        if port.throttle.admit(Instant::now()) {
            debug!(address = %port.address, %peer, "connection refused before a listener took it: {}", why.text());
        }
    }

    /// Close greeting `key`, routed to `listener`, for `limit`.
    fn refuse_for(&mut self, key: usize, listener: usize, limit: Limit) -> Next {
        let greeting = self.drop_greeting(key);
        let account = &mut self.core.accounts[listener];
        account.counts.refused += 1;
        account.counts.limit_hits[limit.index()] += 1;
        if account.may_log() {
            warn!(listener = %account.spec.name, peer = %greeting.peer, limit = %limit.key(), "limit hit: {}", limit.outcome());
        }
        Next::Gone
    }

    /// Forget greeting `key` and give back what it held (its place on the port, its
    /// listener's handshake and slot if the handshake had not ended); the socket is
    /// the caller's to keep or drop.
    fn drop_greeting(&mut self, key: usize) -> Greeting {
        let mut greeting = self.greetings.remove(key);
        let _ = self.poll.registry().deregister(&mut greeting.socket);
        self.ports[greeting.port].greetings -= 1;
        if let Stage::Handshake { listener, tls } = &greeting.stage {
            self.listeners[*listener].handshakes -= 1;
            if tls.session.is_handshaking() {
                self.core.accounts[*listener].open.give_back();
            }
        }
        self.freed = true;
        greeting
    }

    /// Close every greeting (the worker stops).
    pub(super) fn drop_greetings(&mut self) {
        let keys: Vec<usize> = self.greetings.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.drop_greeting(key);
        }
    }
}

/// How a read of a greeting's bytes ended.
enum Got {
    /// The socket has nothing more now.
    More,
    /// `cap` bytes are buffered: nothing more is read.
    Full,
    /// The peer closed.
    Ended,
}

/// Read what the socket has into `bytes`, up to `cap` bytes in all.
fn read_more(socket: &TcpStream, bytes: &mut Vec<u8>, cap: usize) -> io::Result<Got> {
    loop {
        if bytes.len() >= cap {
            return Ok(Got::Full);
        }
        let start = bytes.len();
        let want = CHUNK.min(cap - start);
        bytes.resize(start + want, 0);
        let read = Direct(socket).read(&mut bytes[start..]);
        let n = *read.as_ref().unwrap_or(&0);
        bytes.truncate(start + n);
        match read {
            Ok(0) => return Ok(Got::Ended),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Got::More),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
