//! The [`Host`] a handler gets: what a handler's calls do to the reactor's state while
//! it handles one event. Every call acts on the handler's own instance's connections
//! and only records: it appends to buffers, sets flags, arms timers and queues the
//! connection for the loop, which does the I/O after the handler returns. Nothing here
//! calls a handler or blocks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tracing::debug;

use super::connection::{Connection, Dial, Inbound, Phase, SendWanted, WriteSide};
use super::state::{Account, Core};
use super::timer::Alarm;
use super::transport::{Tls, Transport};
use crate::handler::{CloseMode, ConnId, Host, HostError, SendEvents, TlsInfo};
use crate::listener::Limit;
use crate::mbuf::Mbuf;

/// The [`Host`] a handler gets: the reactor's core, seen from one instance while it
/// handles an event of connection `current`.
///
/// A connection whose CLOSE is being delivered is already `Phase::Closing` (or
/// `Phase::Lingering`): its receive buffer can still be read, but nothing can be sent
/// to it.
pub(super) struct Scope<'a> {
    pub(super) core: &'a mut Core,
    pub(super) instance: usize,
    /// The connection the event is about; none for a call about the whole instance (a
    /// migration's instance-level hand-over).
    pub(super) current: Option<usize>,
}

impl Scope<'_> {
    fn key(&self, conn: ConnId) -> Result<usize, HostError> {
        self.core.instances[self.instance].conns.get(&conn).copied().ok_or(HostError::Closed)
    }

    fn account(&mut self) -> &mut Account {
        &mut self.core.accounts[self.core.instances[self.instance].listener]
    }

    /// A connection the handler may still act on: open, and not being closed.
    fn open(&mut self, conn: ConnId) -> Result<(usize, &mut Connection), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        if c.phase != Phase::Open {
            return Err(HostError::Closed);
        }
        Ok((key, c))
    }
}

impl Host for Scope<'_> {
    fn recv_buffer(&self, conn: ConnId) -> Result<&Mbuf, HostError> {
        Ok(&self.core.conns[self.key(conn)?].rx)
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<u32, HostError> {
        let (key, c) = self.open(conn)?;
        if c.write_side != WriteSide::Open {
            return Err(HostError::Closed);
        }
        // Borrowed again beside the pool, which the append may take storage from.
        let c = &mut self.core.conns[key];
        if c.tx.append(data, &mut self.core.buffers).is_err() {
            c.send_wanted = SendWanted::Owed;
            self.core.hit(key, Limit::SendBuffer);
            return Err(HostError::LimitExceeded("send buffer"));
        }
        let room = c.tx.room() as u32;
        if room == 0 {
            c.send_wanted = SendWanted::Owed;
        }
        self.core.enqueue(key);
        Ok(room)
    }

    fn send_room(&mut self, conn: ConnId) -> Result<u32, HostError> {
        let (_, c) = self.open(conn)?;
        if c.write_side != WriteSide::Open {
            return Err(HostError::Closed);
        }
        let room = c.tx.room() as u32;
        if room == 0 {
            c.send_wanted = SendWanted::Owed;
        }
        Ok(room)
    }

    fn remove(&mut self, conn: ConnId, n: u32) -> Result<(), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        c.rx.remove(n as usize, &mut self.core.buffers).map_err(|short| HostError::Invalid(short.to_string()))?;
        // Room to read again, or perhaps nothing left to wait for.
        if c.inbound != Inbound::Waiting {
            self.core.enqueue(key);
        }
        Ok(())
    }

    fn pipe(&mut self, from: ConnId, to: ConnId, max: u32) -> Result<u32, HostError> {
        let (to, c) = self.open(to)?;
        if c.write_side != WriteSide::Open {
            return Err(HostError::Closed);
        }
        let Ok(from) = self.key(from) else { return Ok(0) };
        let core = &mut *self.core;
        let (rx, tx, to_conn) = if from == to {
            let c = &mut core.conns[to];
            (&mut c.rx, &mut c.tx, &mut c.send_wanted)
        } else {
            let (f, t) = core.conns.get2_mut(from, to).expect("both keys were just looked up");
            (&mut f.rx, &mut t.tx, &mut t.send_wanted)
        };
        let (wanted, room) = (rx.len().min(max as usize), tx.room());
        let n = rx.move_to(tx, wanted, &mut core.buffers);
        if n < wanted || room == 0 {
            *to_conn = SendWanted::Owed;
        }
        if n == 0 {
            return Ok(0);
        }
        core.enqueue(to);
        if from != to && core.conns[from].inbound != Inbound::Waiting {
            core.enqueue(from);
        }
        Ok(n as u32)
    }

    fn set_timer(&mut self, conn: ConnId, id: u64, after: Duration) -> Result<(), HostError> {
        let max = self.account().spec.limits.max_timers;
        let at = Instant::now()
            .checked_add(after)
            .ok_or_else(|| HostError::Invalid(format!("timer delay {after:?} is too far")))?;
        let (key, c) = self.open(conn)?;
        if !c.timers.contains_key(&id) && c.timers.len() >= max {
            self.core.hit(key, Limit::Timers);
            return Err(HostError::LimitExceeded("timers per connection"));
        }
        let arming = self.core.timers.arm(at, key, conn, Alarm::Handler(id));
        if self.core.conns[key].timers.insert(id, arming).is_none() {
            self.core.armed += 1;
        }
        self.core.compact_timers();
        Ok(())
    }

    fn cancel_timer(&mut self, conn: ConnId, id: u64) -> Result<bool, HostError> {
        let (_, c) = self.open(conn)?;
        let was_armed = c.timers.remove(&id).is_some();
        if was_armed {
            self.core.armed -= 1;
        }
        Ok(was_armed)
    }

    fn close(&mut self, conn: ConnId, mode: CloseMode) -> Result<(), HostError> {
        let key = self.key(conn)?;
        let c = &mut self.core.conns[key];
        if matches!(c.phase, Phase::Closing(_) | Phase::Lingering(_)) {
            return Err(HostError::Closed);
        }
        c.phase = match mode {
            CloseMode::Now => c.phase.to_closing(),
            CloseMode::AfterSend => c.phase.to_draining(),
        };
        self.core.enqueue(key);
        Ok(())
    }

    fn shutdown(&mut self, conn: ConnId) -> Result<(), HostError> {
        let (key, c) = self.open(conn)?;
        if c.write_side == WriteSide::Open {
            c.write_side = WriteSide::ShutAfterSend;
        }
        self.core.enqueue(key);
        Ok(())
    }

    fn connect(&mut self, address: SocketAddr) -> Result<ConnId, HostError> {
        if self.core.stopping {
            return Err(HostError::Failed("the server is stopping".into()));
        }
        let account = self.account();
        let Some(upstream) = account.spec.allow_connect.iter().find(|upstream| upstream.address == address) else {
            return Err(HostError::NotAllowed);
        };
        let transport = match &upstream.tls {
            None => Transport::Plain,
            Some(_) => {
                let client = account.upstreams.iter().find(|(at, _)| *at == address).map(|(_, client)| client);
                let client =
                    client.ok_or_else(|| HostError::Failed("the upstream's TLS settings did not load".into()))?;
                let session = client.connect().map_err(|err| HostError::Failed(err.to_string()))?;
                Transport::Tls(Box::new(Tls::client(session, client.server_name())))
            }
        };
        if !account.open.take(account.spec.limits.max_connections) {
            if let Some(current) = self.current {
                self.core.hit(current, Limit::Connections);
            }
            return Err(HostError::LimitExceeded("connections"));
        }
        let dialed = TcpStream::connect(address)
            .and_then(|stream| self.core.register(self.instance, (stream, address, transport), Dial::Pending));
        let id = match dialed {
            Ok((_, id)) => id,
            Err(err) => {
                self.account().open.give_back();
                return Err(HostError::Failed(err.to_string()));
            }
        };
        let account = self.account();
        account.counts.dialed += 1;
        debug!(listener = %account.spec.name, conn = %id, %address, "dialing");
        Ok(id)
    }

    fn limit_hit(&mut self, conn: ConnId, limit: Limit) {
        if let Ok(key) = self.key(conn) {
            self.core.hit(key, limit);
        }
    }

    fn set_send_events(&mut self, mode: SendEvents) {
        self.core.instances[self.instance].send_events = mode;
    }

    fn tls_info(&self, conn: ConnId) -> Result<Option<TlsInfo>, HostError> {
        match &self.core.conns[self.key(conn)?].transport {
            Transport::Tls(tls) => Ok(tls.info()),
            Transport::Plain => Ok(None),
        }
    }
}
