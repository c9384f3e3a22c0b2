//! The commands: what each one does to the key space and what it answers.
//!
//! It owns the meaning of the command set (arity, options, replies and Redis's wording
//! of every error) and the `maxmemory` policy, Redis's `noeviction`: a write that
//! would take the store past `maxmemory` is refused with `-OOM`, while reads, DEL,
//! EXPIRE and FLUSHALL always run. It never reads the wire or a connection: it is given
//! one command's arguments and the time, and appends one reply.

use crate::resp::{self, integer};
use crate::store::Store;

/// Redis's refusal of a write under `noeviction`, word for word.
pub const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const SYNTAX: &str = "ERR syntax error";

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    Continue,
    /// Close once the reply is out (QUIT).
    Close,
}

/// The longest reply one command may make (MGET's is the one that could grow without
/// bound otherwise): far above what a cache client asks for, far below the instance's
/// memory.
pub const MAX_REPLY: usize = 8 << 20;

/// One key space and its memory bound.
pub struct Kv {
    store: Store,
    maxmemory: usize,
}

impl Kv {
    /// An empty key space that holds at most `maxmemory` bytes (by the store's count).
    pub fn new(maxmemory: usize) -> Kv {
        Kv { store: Store::default(), maxmemory }
    }

    /// The key space, for the sweep.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Run the command `args` (name first; never empty) at `now` (milliseconds) and
    /// append its reply to `out`.
    pub fn execute(&mut self, args: &[&[u8]], now: u64, out: &mut Vec<u8>) -> After {
        let Some(&(name, arity, op)) =
            COMMANDS.iter().find(|(known, ..)| known.as_bytes().eq_ignore_ascii_case(args[0]))
        else {
            resp::error_reply(out, &unknown(args));
            return After::Continue;
        };
        let fits = if arity >= 0 { args.len() == arity as usize } else { args.len() >= arity.unsigned_abs() };
        if !fits {
            resp::error_reply(out, &format!("ERR wrong number of arguments for '{name}' command"));
            return After::Continue;
        }
        let reply = match op {
            Op::Ping => ping(args, out),
            Op::Echo => {
                resp::bulk(out, Some(args[1]));
                Ok(())
            }
            Op::Get => {
                resp::bulk(out, self.store.get(args[1], now));
                Ok(())
            }
            Op::Set => self.set(args, now, out),
            Op::Del => {
                resp::integer_reply(out, count(args[1..].iter().filter(|key| self.store.remove(key, now))));
                Ok(())
            }
            Op::Exists => {
                resp::integer_reply(out, count(args[1..].iter().filter(|key| self.store.contains(key, now))));
                Ok(())
            }
            Op::Incr => self.add(args[1], Ok(1), now, out),
            Op::Decr => self.add(args[1], Ok(-1), now, out),
            Op::IncrBy => self.add(args[1], integer(args[2]).ok_or(NOT_AN_INTEGER), now, out),
            Op::DecrBy => {
                let by = integer(args[2]).ok_or(NOT_AN_INTEGER).and_then(|by| by.checked_neg().ok_or(OVERFLOW));
                self.add(args[1], by, now, out)
            }
            Op::Mget => {
                let start = out.len();
                resp::array(out, args.len() - 1);
                for key in &args[1..] {
                    resp::bulk(out, self.store.get(key, now));
                    // Many keys naming one large value would make a reply of any
                    // size: the instance's memory would run out, and every client's
                    // keys with it.
                    if out.len() - start > MAX_REPLY {
                        out.truncate(start);
                        resp::error_reply(
                            out,
                            &format!("ERR the reply would be over {MAX_REPLY} bytes: ask for fewer keys"),
                        );
                        break;
                    }
                }
                Ok(())
            }
            Op::Mset => self.mset(args, out),
            Op::Expire => self.expire(args, now, out),
            Op::Ttl => {
                resp::integer_reply(out, self.ttl(args[1], now).map_or_else(|code| code, |ms| (ms + 500) / 1000));
                Ok(())
            }
            Op::Pttl => {
                resp::integer_reply(out, self.ttl(args[1], now).unwrap_or_else(|code| code));
                Ok(())
            }
            Op::DbSize => {
                resp::integer_reply(out, self.store.len() as i64);
                Ok(())
            }
            Op::FlushAll => flushall(args, &mut self.store, out),
            // redis-cli asks for the command table when it starts interactively; an
            // empty one makes it go on without hints.
            Op::Command => {
                resp::array(out, 0);
                Ok(())
            }
            Op::Quit => {
                resp::simple(out, "OK");
                return After::Close;
            }
        };
        if let Err(message) = reply {
            resp::error_reply(out, message);
        }
        After::Continue
    }

    /// SET key value [NX|XX] [EX seconds|PX milliseconds]
    fn set(&mut self, args: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let (key, value) = (args[1], args[2]);
        let mut condition = None;
        let mut deadline = None;
        let mut options = args[3..].iter();
        while let Some(option) = options.next() {
            let option = option.to_ascii_uppercase();
            match option.as_slice() {
                b"NX" | b"XX" if condition.is_none() => condition = Some(option == b"NX"),
                b"EX" | b"PX" if deadline.is_none() => {
                    let amount = options.next().ok_or(SYNTAX)?;
                    let amount = integer(amount).ok_or(NOT_AN_INTEGER)?;
                    let unit = if option == b"EX" { 1000 } else { 1 };
                    deadline =
                        Some(deadline_after(amount, unit, now).ok_or("ERR invalid expire time in 'set' command")?);
                }
                _ => return Err(SYNTAX),
            }
        }
        if let Some(only_if_missing) = condition
            && self.store.contains(key, now) == only_if_missing
        {
            resp::bulk(out, None);
            return Ok(());
        }
        self.admit(self.store.growth(key, value.len(), deadline.is_some()))?;
        self.store.set(key, value, deadline);
        resp::simple(out, "OK");
        Ok(())
    }

    /// INCR, DECR, INCRBY, DECRBY: add `by` to the integer in `key` (0 if missing).
    fn add(
        &mut self,
        key: &[u8],
        by: Result<i64, &'static str>,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        let by = by?;
        let (current, deadline, old_len) = match self.store.get_with_deadline(key, now) {
            Some((value, deadline)) => (integer(value).ok_or(NOT_AN_INTEGER)?, deadline, Some(value.len())),
            None => (0, None, None),
        };
        let sum = current.checked_add(by).ok_or(OVERFLOW)?;
        let mut digits = [0; 20];
        let value = resp::decimal(&mut digits, sum);
        // A key that is there keeps its deadline, so only its value's length changes what
        // it costs: no second look at the key to ask the store.
        let growth = match old_len {
            Some(old_len) => value.len().saturating_sub(old_len),
            None => self.store.growth(key, value.len(), false),
        };
        self.admit(growth)?;
        self.store.set(key, value, deadline);
        resp::integer_reply(out, sum);
        Ok(())
    }

    /// MSET key value [key value ...]: all or nothing, and without deadlines.
    fn mset(&mut self, args: &[&[u8]], out: &mut Vec<u8>) -> Result<(), &'static str> {
        if args.len().is_multiple_of(2) {
            return Err("ERR wrong number of arguments for 'mset' command");
        }
        let pairs = args[1..].chunks_exact(2);
        self.admit(pairs.clone().map(|pair| self.store.growth(pair[0], pair[1].len(), false)).sum())?;
        for pair in pairs {
            self.store.set(pair[0], pair[1], None);
        }
        resp::simple(out, "OK");
        Ok(())
    }

    /// EXPIRE key seconds: 1 if the key exists (a deadline not in the future deletes
    /// it, as in Redis), 0 if not.
    fn expire(&mut self, args: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let seconds = integer(args[2]).ok_or(NOT_AN_INTEGER)?;
        let key = args[1];
        let done = if seconds <= 0 {
            self.store.remove(key, now)
        } else {
            let deadline = deadline_after(seconds, 1000, now).ok_or("ERR invalid expire time in 'expire' command")?;
            self.store.expire_at(key, deadline, now)
        };
        resp::integer_reply(out, i64::from(done));
        Ok(())
    }

    /// Milliseconds `key` has left, or Redis's code for none: -2 missing, -1 forever.
    fn ttl(&mut self, key: &[u8], now: u64) -> Result<i64, i64> {
        match self.store.deadline(key, now) {
            None => Err(-2),
            Some(None) => Err(-1),
            Some(Some(at)) => Ok(i64::try_from(at - now).unwrap_or(i64::MAX)),
        }
    }

    /// Refuse a write that would add `growth` bytes past `maxmemory`.
    fn admit(&self, growth: usize) -> Result<(), &'static str> {
        if growth > 0 && self.store.used().saturating_add(growth) > self.maxmemory { Err(OOM) } else { Ok(()) }
    }
}

/// Every command and its arity, as Redis counts it (the name included; negative: at
/// least that many), the most used first.
const COMMANDS: &[(&str, isize, Op)] = &[
    ("get", 2, Op::Get),
    ("set", -3, Op::Set),
    ("mget", -2, Op::Mget),
    ("mset", -3, Op::Mset),
    ("incr", 2, Op::Incr),
    ("del", -2, Op::Del),
    ("exists", -2, Op::Exists),
    ("expire", 3, Op::Expire),
    ("ttl", 2, Op::Ttl),
    ("pttl", 2, Op::Pttl),
    ("decr", 2, Op::Decr),
    ("incrby", 3, Op::IncrBy),
    ("decrby", 3, Op::DecrBy),
    ("ping", -1, Op::Ping),
    ("echo", 2, Op::Echo),
    ("dbsize", 1, Op::DbSize),
    ("flushall", -1, Op::FlushAll),
    ("command", -1, Op::Command),
    ("quit", -1, Op::Quit),
];

/// A command of [`COMMANDS`]: what `execute` matches on, so that finding a command
/// compares its name once.
#[derive(Clone, Copy)]
enum Op {
    Ping,
    Echo,
    Get,
    Set,
    Del,
    Exists,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    Mget,
    Mset,
    Expire,
    Ttl,
    Pttl,
    DbSize,
    FlushAll,
    Command,
    Quit,
}

/// PING [message]
fn ping(args: &[&[u8]], out: &mut Vec<u8>) -> Result<(), &'static str> {
    match args {
        [_] => resp::simple(out, "PONG"),
        [_, message] => resp::bulk(out, Some(message)),
        _ => return Err("ERR wrong number of arguments for 'ping' command"),
    }
    Ok(())
}

/// FLUSHALL [ASYNC|SYNC]: both are immediate here.
fn flushall(args: &[&[u8]], store: &mut Store, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match args {
        [_] => {}
        [_, mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {}
        _ => return Err(SYNTAX),
    }
    store.clear();
    resp::simple(out, "OK");
    Ok(())
}

/// Redis's words for a command it does not know, with the start of its arguments.
fn unknown(args: &[&[u8]]) -> String {
    let mut message = format!("ERR unknown command '{}', with args beginning with: ", shorten(args[0]));
    for arg in &args[1..] {
        // Redis quotes arguments until 128 characters of them are shown.
        if message.len() > 128 + 64 {
            break;
        }
        message += &format!("'{}' ", shorten(arg));
    }
    message
}

fn shorten(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(128)]).into_owned()
}

/// `now` plus `amount` units of `unit` milliseconds; `None` when not positive or
/// beyond the clock.
fn deadline_after(amount: i64, unit: u64, now: u64) -> Option<u64> {
    let amount = u64::try_from(amount).ok().filter(|&amount| amount > 0)?;
    amount.checked_mul(unit)?.checked_add(now).filter(|&at| at <= i64::MAX as u64)
}

fn count<T>(items: impl Iterator<Item = T>) -> i64 {
    items.count() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kv: &mut Kv, line: &str, now: u64) -> String {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let mut out = Vec::new();
        kv.execute(&args, now, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_mget_reply_over_its_bound_is_an_error_and_the_next_command_runs() {
        let mut kv = Kv::new(64 << 20);
        let big = vec![b'x'; 512 << 10];
        let mut out = Vec::new();
        kv.execute(&[b"SET", b"big", &big], 0, &mut out);
        let keys: Vec<&[u8]> = std::iter::once(&b"MGET"[..]).chain(std::iter::repeat_n(&b"big"[..], 17)).collect();
        let mut out = b"+before\r\n".to_vec();
        kv.execute(&keys, 0, &mut out);
        let reply = String::from_utf8(out).unwrap();
        assert_eq!(reply, format!("+before\r\n-ERR the reply would be over {MAX_REPLY} bytes: ask for fewer keys\r\n"));
        assert_eq!(run(&mut kv, "MGET big nothing", 0).len(), (512 << 10) + 20, "*2, the value, a nil");
    }

    #[test]
    fn set_options_and_their_errors() {
        let mut kv = Kv::new(1 << 20);
        assert_eq!(run(&mut kv, "SET k v NX", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, "set k w nx", 0), "$-1\r\n");
        assert_eq!(run(&mut kv, "SET other v XX", 0), "$-1\r\n");
        assert_eq!(run(&mut kv, "SET k w XX PX 100", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, "PTTL k", 40), ":60\r\n");
        assert_eq!(run(&mut kv, "GET k", 100), "$-1\r\n");
        assert_eq!(run(&mut kv, "SET k v NX XX", 0), "-ERR syntax error\r\n");
        assert_eq!(run(&mut kv, "SET k v EX", 0), "-ERR syntax error\r\n");
        assert_eq!(run(&mut kv, "SET k v EX 1 PX 1", 0), "-ERR syntax error\r\n");
        assert_eq!(run(&mut kv, "SET k v EX x", 0), "-ERR value is not an integer or out of range\r\n");
        assert_eq!(run(&mut kv, "SET k v EX 0", 0), "-ERR invalid expire time in 'set' command\r\n");
    }

    #[test]
    fn counters_keep_their_deadline_and_refuse_what_is_not_an_integer() {
        let mut kv = Kv::new(1 << 20);
        assert_eq!(run(&mut kv, "INCR n", 0), ":1\r\n");
        assert_eq!(run(&mut kv, "EXPIRE n 10", 0), ":1\r\n");
        assert_eq!(run(&mut kv, "INCRBY n -5", 0), ":-4\r\n");
        assert_eq!(run(&mut kv, "DECRBY n 6", 0), ":-10\r\n");
        assert_eq!(run(&mut kv, "TTL n", 1000), ":9\r\n");
        assert_eq!(run(&mut kv, "SET s 9223372036854775807", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, "INCR s", 0), "-ERR increment or decrement would overflow\r\n");
        assert_eq!(run(&mut kv, "SET s abc", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, "DECR s", 0), "-ERR value is not an integer or out of range\r\n");
        assert_eq!(run(&mut kv, "INCRBY n x", 0), "-ERR value is not an integer or out of range\r\n");
    }

    #[test]
    fn unknown_commands_and_arity_in_redis_words() {
        let mut kv = Kv::new(1 << 20);
        assert_eq!(run(&mut kv, "FOO a b", 0), "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n");
        assert_eq!(run(&mut kv, "GET", 0), "-ERR wrong number of arguments for 'get' command\r\n");
        assert_eq!(run(&mut kv, "MSET a 1 b", 0), "-ERR wrong number of arguments for 'mset' command\r\n");
        assert_eq!(run(&mut kv, "PING a b", 0), "-ERR wrong number of arguments for 'ping' command\r\n");
    }

    #[test]
    fn writes_past_maxmemory_are_refused_and_the_rest_goes_on() {
        let mut kv = Kv::new(1000);
        let big = "x".repeat(600);
        assert_eq!(run(&mut kv, &format!("SET a {big}"), 0), "+OK\r\n");
        assert_eq!(run(&mut kv, &format!("SET b {big}"), 0), format!("-{OOM}\r\n"));
        assert_eq!(run(&mut kv, "MSET c 1 d 2", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, &format!("MSET e {big} f 1"), 0), format!("-{OOM}\r\n"));
        assert_eq!(run(&mut kv, "EXISTS a e f", 0), ":1\r\n");
        assert_eq!(run(&mut kv, "SET a small", 0), "+OK\r\n");
        assert_eq!(run(&mut kv, &format!("SET b {big}"), 0), "+OK\r\n");
        assert_eq!(run(&mut kv, "DEL a b c d", 0), ":4\r\n");
        assert_eq!(run(&mut kv, "DBSIZE", 0), ":0\r\n");
    }
}
