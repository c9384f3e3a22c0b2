//! Holding connections open: the memory an idle connection costs a server (see
//! [`hold`]). It only opens, holds and closes connections; what one does on the way
//! is [`conn`](crate::conn)'s.

use std::io;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use mio::{Events, Poll, Token};

use crate::client::{ClientSide, RoundResult, share};
use crate::conn::{Conn, Settings, TICK};
use crate::cpu::ServerProcesses;
use crate::memory::{HoldRound, MemoryReport};
use crate::spec::{LoadSpec, Target};
use crate::tls::Connector;

/// Connections a client thread has opening (connecting, in their handshake, or
/// waiting for their first response) at once; below the handshakes in flight a
/// server allows (sandport's `max-handshakes`, 256 per worker by default).
const OPENING: usize = 32;

/// Runs `spec` holding connections, and reports what an idle connection costs each
/// target's server.
///
/// Each round opens [`LoadSpec::connections`] connections to a target, at most 32 at
/// a time per client thread (a server bounds the handshakes it has in flight), makes
/// one exchange on each (a batch: echo messages or HTTP requests, so that the server
/// has accepted the connection, finished any TLS handshake and served it), or none
/// with [`LoadSpec::silent`] (each is held once connected, or once its TLS handshake
/// is done), then holds them all open and idle for [`LoadSpec::duration`] and closes
/// them.
/// The server's resident memory (RSS, from `/proc`) is read before the first
/// connection opens and at the end of the hold: the difference, divided by the
/// connections held, is what an idle connection costs it.
///
/// Memory a server frees mostly stays with its allocator for reuse, so a second
/// round against the same server process measures less than the first: measure one
/// round per fresh server. The difference between a plaintext target's figure and a
/// TLS target's (of servers otherwise alike) is what the TLS session costs.
///
/// Fails if the spec is invalid or asks for a fresh connection per batch.
pub fn hold(spec: &LoadSpec) -> Result<MemoryReport> {
    hold_with_progress(spec, |_, _, _| {})
}

/// [`hold`], calling `progress` with the target, the round number (from 0) and the
/// round's figures after every round.
pub fn hold_with_progress(
    spec: &LoadSpec,
    mut progress: impl FnMut(&Target, usize, &HoldRound),
) -> Result<MemoryReport> {
    spec.validate()?;
    ensure!(!spec.reconnect, "holding connections open and reconnecting for every batch exclude each other");
    let servers: Vec<ServerProcesses> = spec.targets.iter().map(Target::server).collect();
    let mut rounds: Vec<Vec<HoldRound>> = vec![Vec::new(); spec.targets.len()];
    for round in 0..spec.rounds {
        for ((target, server), rounds) in spec.targets.iter().zip(&servers).zip(&mut rounds) {
            let result = hold_round(spec, target, server)
                .with_context(|| format!("round {} of target `{}`", round + 1, target.name))?;
            progress(target, round, &result);
            rounds.push(result);
        }
    }
    Ok(MemoryReport::new(spec, servers, rounds))
}

/// One round: open, hold, read the memory, close.
fn hold_round(spec: &LoadSpec, target: &Target, server: &ServerProcesses) -> Result<HoldRound> {
    let threads = spec.thread_count();
    let tls = ClientSide::of(spec, target)?;
    let before = server.resident_bytes();
    let start = Instant::now();
    // The threads pass `opened` once their connections are held (or given up on), and
    // close them once `done` is set, after this thread has read the memory.
    let opened = Barrier::new(threads + 1);
    let done = AtomicBool::new(false);
    let (results, opened_in, after) = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (opened, done, tls) = (&opened, &done, &tls);
                scope.spawn(move || {
                    let holder =
                        Holder::new(spec, target.addr, tls.connector(i, threads), share(spec.connections, threads, i));
                    let holder = holder.and_then(Holder::open_all);
                    opened.wait();
                    let mut holder = holder?;
                    holder.idle_until(done)?;
                    Ok(holder.close_all())
                })
            })
            .collect();
        opened.wait();
        let opened_in = start.elapsed();
        thread::sleep(spec.duration);
        let after = server.resident_bytes();
        done.store(true, Ordering::Relaxed);
        let results: Vec<Result<(usize, RoundResult)>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked"))))
            .collect();
        (results, opened_in, after)
    });
    let (mut held, mut total) = (0, RoundResult::default());
    for result in results {
        let (thread_held, result) = result?;
        held += thread_held;
        total.merge(result);
    }
    Ok(HoldRound::new(held, &total, opened_in, before, after))
}

/// One client thread's share of the connections held.
struct Holder {
    poll: Poll,
    conns: Vec<Conn>,
    /// How many connections to hold.
    share: usize,
    settings: Settings,
    result: RoundResult,
    spec: LoadSpec,
}

impl Holder {
    fn new(spec: &LoadSpec, addr: SocketAddr, tls: Option<Connector>, share: usize) -> Result<Self> {
        let poll = Poll::new().context("cannot create a poll instance")?;
        let now = Instant::now();
        let settings = Settings {
            mode: spec.mode,
            size: spec.size,
            pipeline: spec.pipeline,
            reconnect: false,
            hold: true,
            silent: spec.silent,
            addr,
            tls,
            timeout: spec.timeout,
            // Every exchange counts, and its latency is the time to open the connection.
            measure_from: now,
            end: now + Duration::from_secs(365 * 24 * 3600),
        };
        let result = RoundResult::default();
        Ok(Holder { poll, conns: Vec::with_capacity(share), share, settings, result, spec: spec.clone() })
    }

    /// Opens the connections, [`OPENING`] at a time, until all are held, or none has
    /// come to be held for the timeout (the failures are counted).
    fn open_all(mut self) -> Result<Self> {
        let mut events = Events::with_capacity(1024);
        let mut held = 0;
        let mut last_held = Instant::now();
        let mut next_tick = last_held + TICK;
        while held < self.share && last_held.elapsed() <= self.settings.timeout {
            let registry = self.poll.registry();
            while self.conns.len() < self.share && self.conns.len() - held < OPENING {
                let mut conn = Conn::unconnected(Token(self.conns.len()), &self.spec);
                conn.reconnect(&self.settings, registry, &mut self.result);
                self.conns.push(conn);
            }
            match self.poll.poll(&mut events, Some(TICK)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("poll failed")?,
            }
            let registry = self.poll.registry();
            let was_held = held;
            for event in &events {
                let conn = &mut self.conns[event.token().0];
                let before = conn.is_held();
                if let Err(e) = conn.on_ready(&self.settings, registry, &mut self.result) {
                    conn.fail(e, &self.settings, registry, &mut self.result);
                }
                held = held + usize::from(conn.is_held()) - usize::from(before);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                for conn in &mut self.conns {
                    let before = conn.is_held();
                    conn.tick(now, &self.settings, registry, &mut self.result);
                    held = held + usize::from(conn.is_held()) - usize::from(before);
                }
            }
            if held > was_held {
                last_held = now;
            }
        }
        Ok(self)
    }

    /// Serves the held connections' events (a late session ticket, a server that
    /// closes them) until `done`.
    fn idle_until(&mut self, done: &AtomicBool) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        while !done.load(Ordering::Relaxed) {
            match self.poll.poll(&mut events, Some(TICK)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.context("poll failed")?,
            }
            let registry = self.poll.registry();
            for event in &events {
                let conn = &mut self.conns[event.token().0];
                if let Err(e) = conn.on_ready(&self.settings, registry, &mut self.result) {
                    // Not reopened: a connection the server dropped is no longer held.
                    self.result.error(|| format!("a held connection failed: {e}"));
                    conn.close(registry);
                }
            }
        }
        Ok(())
    }

    /// Closes every connection; answers how many were held until now, and what
    /// happened.
    fn close_all(mut self) -> (usize, RoundResult) {
        let registry = self.poll.registry();
        let held = self.conns.iter().filter(|conn| conn.is_held()).count();
        for conn in &mut self.conns {
            conn.close(registry);
        }
        (held, self.result)
    }
}
