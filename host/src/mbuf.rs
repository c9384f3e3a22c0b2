//! Bounded byte buffers: a connection's receive and send buffers, and the pool their
//! storage comes from.
//!
//! An [`Mbuf`] holds bytes in one contiguous region so that guests can read any range
//! and search for a delimiter without the host assembling pieces. It never holds more
//! than its limit: [`Mbuf::append`] is all-or-nothing and [`Mbuf::fill_from`] reads at
//! most the room that is left. It never does I/O on its own initiative; the reactor
//! decides when to read into it and when to write out of it.
//!
//! **An empty buffer owns no storage.** Its storage belongs to the [`Pool`] of the
//! worker that holds it: an `Mbuf` takes a block from the pool when bytes arrive (a
//! read, an append) and gives it back the moment it is drained (a remove, a write, a
//! read that brought nothing), so ten thousand idle connections hold no buffer bytes,
//! and a busy worker reuses the same blocks instead of going to the allocator.
//!
//! **The pool keeps what its buffers lately held at once.** Hundreds of connections
//! served in one turn each take a block and give it back a round later; a pool bounded
//! below that count frees the surplus every turn and allocates it again the next (page
//! faults and zeroing, measured at 500 connections: BENCHMARKS.md, "The hot path,
//! fourth pass"). So the pool keeps every block given back while the storage it owns
//! (spare and lent) is within the most its buffers held at once in this
//! [`DEMAND_WINDOW`] or the last one, and at least [`POOL_BYTES`]. When the load goes
//! away the demand decays: within two windows the spare storage is back to the idle
//! bound, and the worker's loop wakes for that ([`Pool::next_settle`]) even with
//! nothing else to do. It never keeps more than the buffers just used, so it adds no
//! peak of its own. Every method that may take or give back storage is handed the
//! pool; none keeps it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// How much free space a read asks for at least, so small messages do not cost a
/// growth step each; also the size of a fresh block.
const MIN_READ: usize = 16 * 1024;

/// Storage larger than this is not kept in a pool when its buffer empties: it goes
/// back to the allocator, so one large message does not pin its size.
const LARGEST_POOLED: usize = 64 * 1024;

/// The most spare storage an idle pool keeps for buffers to take, in bytes; a busy one
/// keeps what its buffers lately held at once (see [`DEMAND_WINDOW`]).
pub const POOL_BYTES: usize = 1 << 20;

/// How long a pool remembers its buffers' demand: the spare storage beyond
/// [`POOL_BYTES`] it may keep is what they held at once in the current window or the
/// one before, so a pool whose load went away is back at [`POOL_BYTES`] within two.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(1);

/// A worker's spare buffer storage: blocks that drained buffers gave back, for the
/// next buffer that needs one. Single-threaded, like the worker that owns it.
///
/// ```
/// use sandport::mbuf::{Mbuf, Pool};
///
/// let mut pool = Pool::default();
/// let mut buf = Mbuf::with_limit(1024);
/// buf.append(b"hello", &mut pool).unwrap();
/// assert_eq!(pool.spare_bytes(), 0);
/// buf.remove(5, &mut pool).unwrap();
/// // Drained: its storage is the pool's again.
/// assert!(pool.spare_bytes() > 0);
/// ```
#[derive(Debug, Default)]
pub struct Pool {
    /// Blocks, each fully initialised (`len` is the usable size).
    spare: Vec<Vec<u8>>,
    /// Their sizes added up, at most [`Pool::bound`].
    bytes: usize,
    /// Storage the buffers hold now: taken from the pool (or grown) and not given
    /// back.
    lent: usize,
    /// The most storage lent at once in the current window.
    peak: usize,
    /// The same in the window before.
    last_peak: usize,
    /// When the current window closes; `None` until the first [`Pool::settle`].
    window_ends: Option<Instant>,
}

impl Pool {
    /// Bytes of storage waiting to be taken.
    pub fn spare_bytes(&self) -> usize {
        self.bytes
    }

    /// Called by the worker at the start of each turn: closes the demand window once
    /// it is over, and gives back to the allocator the spare storage the demand no
    /// longer asks for.
    pub fn settle(&mut self, now: Instant) {
        let Some(ends) = self.window_ends else {
            self.window_ends = Some(now + DEMAND_WINDOW);
            return;
        };
        if now < ends {
            return;
        }
        // A worker that slept through the whole next window lent nothing new in it.
        self.last_peak = if now < ends + DEMAND_WINDOW { self.peak } else { self.lent };
        self.peak = self.lent;
        self.window_ends = Some(now + DEMAND_WINDOW);
        let bound = self.bound();
        if self.bytes <= bound {
            return;
        }
        // The blocks at the highest addresses go: an allocator gives memory back to
        // the system only from the top of its heap, which one block kept up there
        // would pin (glibc's does, measured: BENCHMARKS.md, the fourth pass).
        self.spare.sort_unstable_by_key(|block| block.as_ptr() as usize);
        while self.bytes > bound {
            let block = self.spare.pop().expect("spare bytes are blocks'");
            self.bytes -= block.len();
        }
        // The list itself, grown in the burst, likely sits above the blocks: moved to
        // a fresh allocation, it lands low, in the room they left.
        let mut kept = Vec::with_capacity(self.spare.len());
        kept.append(&mut self.spare);
        self.spare = kept;
        // Only once the load is gone: under load the pages trimmed would be faulted in
        // again by the next turns, the churn the pool is there to spare.
        if bound <= POOL_BYTES {
            give_back_to_the_system();
        }
    }

    /// When [`Pool::settle`] has spare storage to give up, if it has: the worker's
    /// loop must wake by then, or an idle worker would keep a burst's blocks.
    pub fn next_settle(&self) -> Option<Instant> {
        if self.bytes > POOL_BYTES { self.window_ends } else { None }
    }

    /// The most spare storage to keep now: what the buffers held at once lately,
    /// less what they hold now (so the next turn like the last ones takes no fresh
    /// block), and at least [`POOL_BYTES`].
    fn bound(&self) -> usize {
        let demand = self.peak.max(self.last_peak);
        POOL_BYTES.max(demand.saturating_sub(self.lent))
    }

    /// Count `bytes` more storage as held by a buffer.
    fn lend(&mut self, bytes: usize) {
        self.lent += bytes;
        self.peak = self.peak.max(self.lent);
    }

    /// A block for a buffer: the last one given back, or a fresh one.
    fn take(&mut self) -> Vec<u8> {
        let block = match self.spare.pop() {
            Some(block) => {
                self.bytes -= block.len();
                block
            }
            None => vec![0; MIN_READ],
        };
        self.lend(block.len());
        block
    }

    /// A drained buffer's storage: kept for the next one if it is of a usual size and
    /// within the bound, else freed.
    fn give(&mut self, block: Vec<u8>) {
        let size = block.len();
        // Saturating: a buffer filled from another pool (a test's) may give back here.
        self.lent = self.lent.saturating_sub(size);
        if size > 0 && size <= LARGEST_POOLED && self.bytes + size <= self.bound() {
            self.bytes += size;
            self.spare.push(block);
        }
    }
}

/// A bounded, contiguous byte buffer consumed from the front and filled at the back.
///
/// ```
/// use sandport::mbuf::{Mbuf, Pool};
///
/// let mut pool = Pool::default();
/// let mut buf = Mbuf::with_limit(8);
/// buf.append(b"GET /\r\n", &mut pool).unwrap();
/// assert_eq!(buf.find(b"\r\n", 0), Some(5));
/// buf.remove(7, &mut pool).unwrap();
/// assert!(buf.is_empty());
/// assert!(buf.append(b"too long!", &mut pool).is_err());
/// ```
#[derive(Debug)]
pub struct Mbuf {
    /// Backing storage, taken from a [`Pool`] while bytes are buffered and empty (no
    /// allocation) otherwise; bytes `head..tail` are the contents. Always initialised,
    /// so a socket read can write into `tail..` without unsafe code.
    data: Vec<u8>,
    head: usize,
    tail: usize,
    limit: usize,
}

/// The buffer cannot take the bytes offered: they would exceed its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer full: {wanted} bytes offered, {room} bytes of room")]
pub struct Full {
    /// Bytes the caller wanted to append.
    pub wanted: usize,
    /// Bytes the buffer could still take.
    pub room: usize,
}

/// The caller asked to remove more bytes than the buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot remove {wanted} bytes: only {len} are buffered")]
pub struct Short {
    /// Bytes the caller wanted to remove.
    pub wanted: usize,
    /// Bytes the buffer held.
    pub len: usize,
}

impl Mbuf {
    /// An empty buffer that will never hold more than `limit` bytes. It holds no
    /// storage until the first byte arrives.
    pub fn with_limit(limit: usize) -> Mbuf {
        Mbuf { data: Vec::new(), head: 0, tail: 0, limit }
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    /// Whether no bytes are buffered.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// The most bytes this buffer will ever hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes that may still be appended.
    pub fn room(&self) -> usize {
        self.limit - self.len()
    }

    /// The buffered bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.head..self.tail]
    }

    /// Up to `len` bytes starting at `offset`; shorter near the end, empty past it.
    pub fn read(&self, offset: usize, len: usize) -> &[u8] {
        let bytes = self.as_slice();
        let start = offset.min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        &bytes[start..end]
    }

    /// Offset of the first occurrence of `needle` at or after `from`.
    ///
    /// An empty needle is found at `from` when `from` is within the buffer.
    pub fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        let hay = self.as_slice().get(from..)?;
        // A needle longer than the rest cannot match; searching would still cost time
        // in its length, which a guest chooses.
        if needle.len() > hay.len() {
            return None;
        }
        memchr::memmem::find(hay, needle).map(|at| at + from)
    }

    /// Append all of `bytes`, or nothing when they do not fit; storage comes from
    /// `pool`.
    pub fn append(&mut self, bytes: &[u8], pool: &mut Pool) -> Result<(), Full> {
        if bytes.len() > self.room() {
            return Err(Full { wanted: bytes.len(), room: self.room() });
        }
        self.reserve(bytes.len(), pool);
        self.data[self.tail..self.tail + bytes.len()].copy_from_slice(bytes);
        self.tail += bytes.len();
        Ok(())
    }

    /// Discard the first `n` bytes; once none are left, the storage goes back to
    /// `pool`.
    pub fn remove(&mut self, n: usize, pool: &mut Pool) -> Result<(), Short> {
        if n > self.len() {
            return Err(Short { wanted: n, len: self.len() });
        }
        self.head += n;
        self.give_back_if_empty(pool);
        Ok(())
    }

    /// Move up to `max` bytes from the front of this buffer to the end of `to`, as many
    /// as `to` has room for; returns how many moved. What `Host::pipe` does to a
    /// connection's receive and send buffers.
    pub fn move_to(&mut self, to: &mut Mbuf, max: usize, pool: &mut Pool) -> usize {
        let n = self.len().min(max).min(to.room());
        if n > 0 {
            to.append(&self.as_slice()[..n], pool).expect("no more than its room");
            self.remove(n, pool).expect("no more than it holds");
        }
        n
    }

    /// Keep only the first `len` bytes, dropping those appended after them (say by a
    /// migration that was called off); nothing changes when it holds `len` or fewer.
    pub fn truncate(&mut self, len: usize, pool: &mut Pool) {
        if len < self.len() {
            self.tail = self.head + len;
            self.give_back_if_empty(pool);
        }
    }

    /// Discard everything, giving the storage back to `pool`.
    pub fn clear(&mut self, pool: &mut Pool) {
        self.head = self.tail;
        self.give_back_if_empty(pool);
    }

    /// Make one `read` call on `source` for at most `max` bytes (and never past the
    /// limit), appending what it returns. Returns the bytes read and the bytes asked
    /// for: fewer read than asked means the source had no more at that moment. `Ok(0)`
    /// read means end of stream, unless the buffer had no room or `max` was 0.
    ///
    /// Storage is taken from `pool` for the read, and given back if it brought nothing.
    pub fn fill_from(&mut self, source: &mut impl Read, max: usize, pool: &mut Pool) -> io::Result<(usize, usize)> {
        let want = max.min(self.room());
        if want == 0 {
            return Ok((0, 0));
        }
        self.reserve(want.min(MIN_READ.max(self.len())), pool);
        let (start, end) = (self.tail, (self.tail + want).min(self.data.len()));
        let read = source.read(&mut self.data[start..end]);
        if let Ok(n) = read {
            self.tail += n;
        }
        self.give_back_if_empty(pool);
        Ok((read?, end - start))
    }

    /// Make one `write` call on `sink` with the buffered bytes, removing what it took
    /// (and giving the storage back to `pool` once drained).
    pub fn drain_to(&mut self, sink: &mut impl Write, pool: &mut Pool) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        let n = sink.write(self.as_slice())?;
        self.remove(n, pool).expect("a writer never takes more than it was given");
        Ok(n)
    }

    /// With no bytes left, hand the storage to `pool`: an empty buffer owns none.
    fn give_back_if_empty(&mut self, pool: &mut Pool) {
        if self.is_empty() {
            self.head = 0;
            self.tail = 0;
            if !self.data.is_empty() {
                pool.give(std::mem::take(&mut self.data));
            }
        }
    }

    /// Make sure at least `extra` bytes (already checked against the limit) fit after
    /// `tail`: by taking storage from `pool` if there is none, by sliding the contents
    /// to the front, or by growing the storage.
    fn reserve(&mut self, extra: usize, pool: &mut Pool) {
        if self.data.len() - self.tail >= extra {
            return;
        }
        if self.data.is_empty() {
            self.data = pool.take();
            if self.data.len() >= extra {
                return;
            }
        }
        let len = self.len();
        if self.head > 0 {
            self.data.copy_within(self.head..self.tail, 0);
            self.head = 0;
            self.tail = len;
        }
        if self.data.len() - self.tail < extra {
            let grown = (self.data.len() * 2).max(len + extra).min(self.limit.max(len + extra));
            pool.lend(grown - self.data.len());
            self.data.resize(grown, 0);
        }
    }
}

/// Hand the allocator's free memory back to the system after a pool shrank. glibc
/// returns only the top of its heap by itself, and a burst leaves allocations up there
/// (the connections' slab, which never shrinks), pinning the blocks freed below them:
/// `malloc_trim` releases free pages anywhere in the heap. The static image's allocator
/// (mimalloc) purges freed memory on its own.
fn give_back_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free, under its
    // own locks; it reads and writes nothing of ours.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_drops_what_came_after() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"abcdef", &mut pool).unwrap();
        buf.remove(2, &mut pool).unwrap();
        buf.truncate(10, &mut pool);
        assert_eq!(buf.as_slice(), b"cdef");
        buf.truncate(2, &mut pool);
        assert_eq!(buf.as_slice(), b"cd");
        buf.truncate(0, &mut pool);
        assert!(buf.is_empty());
        assert!(pool.spare_bytes() > 0, "drained: its storage went back");
        buf.append(b"xy", &mut pool).unwrap();
        assert_eq!(buf.as_slice(), b"xy");
    }

    #[test]
    fn move_to_moves_what_fits_and_leaves_the_rest() {
        let mut pool = Pool::default();
        let (mut from, mut to) = (Mbuf::with_limit(16), Mbuf::with_limit(4));
        from.append(b"abcdef", &mut pool).unwrap();
        assert_eq!(from.move_to(&mut to, 1, &mut pool), 1, "at most max");
        assert_eq!(from.move_to(&mut to, 100, &mut pool), 3, "at most the room");
        assert_eq!((from.as_slice(), to.as_slice()), (&b"ef"[..], &b"abcd"[..]));
        assert_eq!(from.move_to(&mut to, 100, &mut pool), 0, "no room, nothing moves");
        to.clear(&mut pool);
        assert_eq!(from.move_to(&mut to, 100, &mut pool), 2);
        assert!(from.is_empty() && from.data.is_empty(), "drained: its storage went back");
    }

    #[test]
    fn append_is_all_or_nothing() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(4);
        buf.append(b"abc", &mut pool).unwrap();
        assert_eq!(buf.append(b"de", &mut pool), Err(Full { wanted: 2, room: 1 }));
        assert_eq!(buf.as_slice(), b"abc");
    }

    #[test]
    fn remove_more_than_buffered_changes_nothing() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello", &mut pool).unwrap();
        assert_eq!(buf.remove(6, &mut pool), Err(Short { wanted: 6, len: 5 }));
        assert_eq!(buf.as_slice(), b"hello");
        buf.remove(2, &mut pool).unwrap();
        assert_eq!(buf.as_slice(), b"llo");
    }

    #[test]
    fn read_clamps_ranges() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello", &mut pool).unwrap();
        assert_eq!(buf.read(1, 3), b"ell");
        assert_eq!(buf.read(3, 100), b"lo");
        assert_eq!(buf.read(9, 1), b"");
        assert_eq!(buf.read(2, usize::MAX), b"llo");
    }

    #[test]
    fn find_respects_from_and_removed_prefix() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(64);
        buf.append(b"a\nb\nc", &mut pool).unwrap();
        assert_eq!(buf.find(b"\n", 0), Some(1));
        assert_eq!(buf.find(b"\n", 2), Some(3));
        assert_eq!(buf.find(b"\n", 4), None);
        assert_eq!(buf.find(b"\n", 99), None);
        assert_eq!(buf.find(b"a\nb\nc and more", 0), None);
        buf.remove(2, &mut pool).unwrap();
        assert_eq!(buf.find(b"\n", 0), Some(1));
    }

    #[test]
    fn fill_from_stops_at_the_limit() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(10);
        let mut source: &[u8] = &[7u8; 100];
        assert_eq!(buf.fill_from(&mut source, 1000, &mut pool).unwrap(), (10, 10));
        assert_eq!(buf.fill_from(&mut source, 1000, &mut pool).unwrap(), (0, 0));
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn slides_and_grows_without_losing_bytes() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(1 << 20);
        let mut expected = Vec::new();
        let mut next = 0u8;
        for round in 0..200 {
            let chunk: Vec<u8> = (0..(round * 37 % 5000))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let mut source = chunk.as_slice();
            while !source.is_empty() {
                buf.fill_from(&mut source, 3000, &mut pool).unwrap();
            }
            expected.extend_from_slice(&chunk);
            let consume = expected.len() / 2;
            assert_eq!(&buf.as_slice()[..consume], &expected[..consume]);
            buf.remove(consume, &mut pool).unwrap();
            expected.drain(..consume);
            assert_eq!(buf.as_slice(), expected.as_slice());
        }
    }

    #[test]
    fn drain_to_removes_what_was_written() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello", &mut pool).unwrap();
        let mut sink = [0u8; 3];
        let n = buf.drain_to(&mut &mut sink[..], &mut pool).unwrap();
        assert_eq!(n, 3);
        assert_eq!(&sink, b"hel");
        assert_eq!(buf.as_slice(), b"lo");
    }

    #[test]
    fn an_empty_buffer_holds_no_storage() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(1 << 20);
        // Drained by a remove, a write, a clear, or a read that brought nothing.
        buf.append(b"hello", &mut pool).unwrap();
        buf.remove(5, &mut pool).unwrap();
        assert_eq!((buf.data.len(), pool.spare_bytes()), (0, MIN_READ));
        buf.append(b"hello", &mut pool).unwrap();
        assert_eq!(pool.spare_bytes(), 0, "the block given back is the one taken");
        buf.drain_to(&mut Vec::new(), &mut pool).unwrap();
        assert_eq!(buf.data.len(), 0);
        buf.append(b"hello", &mut pool).unwrap();
        buf.clear(&mut pool);
        assert_eq!(buf.data.len(), 0);
        assert_eq!(buf.fill_from(&mut io::empty(), 100, &mut pool).unwrap(), (0, 100));
        assert_eq!(buf.data.len(), 0);
        assert!(buf.fill_from(&mut Blocked, 100, &mut pool).is_err());
        assert_eq!((buf.data.len(), pool.spare_bytes()), (0, MIN_READ));
    }

    /// A source that would block.
    struct Blocked;

    impl Read for Blocked {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// `count` buffers that each take a block at once (a byte each) and are drained
    /// together, as a turn serves that many connections; the blocks' addresses.
    fn turn(bufs: &mut [Mbuf], pool: &mut Pool) -> Vec<usize> {
        for buf in bufs.iter_mut() {
            buf.append(b"x", pool).unwrap();
        }
        let blocks = bufs.iter().map(|buf| buf.data.as_ptr() as usize).collect();
        for buf in bufs.iter_mut() {
            buf.clear(pool);
        }
        blocks
    }

    fn buffers(count: usize) -> Vec<Mbuf> {
        (0..count).map(|_| Mbuf::with_limit(1 << 20)).collect()
    }

    #[test]
    fn a_busy_pool_keeps_what_a_turn_held_at_once() {
        let mut pool = Pool::default();
        let start = Instant::now();
        pool.settle(start);
        // Twice as many blocks out at once as the idle bound holds.
        let mut bufs = buffers(2 * POOL_BYTES / MIN_READ);
        let first = turn(&mut bufs, &mut pool);
        assert_eq!(pool.spare_bytes(), 2 * POOL_BYTES, "every block of the turn was kept");
        for later in 1..5 {
            pool.settle(start + DEMAND_WINDOW * later / 2);
            let mut again = turn(&mut bufs, &mut pool);
            let mut expected = first.clone();
            again.sort_unstable();
            expected.sort_unstable();
            assert_eq!(again, expected, "turn {later} took the same blocks, none fresh");
            assert_eq!(pool.spare_bytes(), 2 * POOL_BYTES);
        }
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_buffers_held_at_once() {
        let mut pool = Pool::default();
        let mut bufs = buffers(2 * POOL_BYTES / MIN_READ);
        turn(&mut bufs, &mut pool);
        // Half the buffers take blocks again: those come from the spare ones, and
        // the storage the pool owns (lent and spare) stays at the peak.
        for buf in &mut bufs[..POOL_BYTES / MIN_READ] {
            buf.append(b"x", &mut pool).unwrap();
        }
        assert_eq!((pool.lent, pool.spare_bytes()), (POOL_BYTES, POOL_BYTES));
        for buf in &mut bufs[..POOL_BYTES / MIN_READ] {
            buf.clear(&mut pool);
        }
        assert_eq!((pool.lent, pool.spare_bytes()), (0, 2 * POOL_BYTES));
        // A block given back while the rest of the peak is spare already is freed.
        pool.give(vec![0; MIN_READ]);
        assert_eq!(pool.spare_bytes(), 2 * POOL_BYTES);
    }

    #[test]
    fn an_idle_pool_shrinks_to_its_bound_within_two_windows() {
        let mut pool = Pool::default();
        let start = Instant::now();
        pool.settle(start);
        assert_eq!(pool.next_settle(), None, "nothing to give up");
        turn(&mut buffers(4 * POOL_BYTES / MIN_READ), &mut pool);
        assert_eq!(pool.spare_bytes(), 4 * POOL_BYTES);
        // The worker's loop is to wake when the window closes.
        assert_eq!(pool.next_settle(), Some(start + DEMAND_WINDOW));
        pool.settle(start + DEMAND_WINDOW / 2);
        assert_eq!(pool.spare_bytes(), 4 * POOL_BYTES, "the window is not over");
        pool.settle(start + DEMAND_WINDOW);
        assert_eq!(pool.spare_bytes(), 4 * POOL_BYTES, "the window before still asks for it");
        let next = pool.next_settle().unwrap();
        assert_eq!(next, start + 2 * DEMAND_WINDOW);
        pool.settle(next);
        assert_eq!(pool.spare_bytes(), POOL_BYTES, "no window asks for more");
        assert_eq!(pool.next_settle(), None);
    }

    #[test]
    fn a_worker_that_slept_through_a_window_keeps_only_the_idle_bound() {
        let mut pool = Pool::default();
        let start = Instant::now();
        pool.settle(start);
        turn(&mut buffers(3 * POOL_BYTES / MIN_READ), &mut pool);
        pool.settle(start + 5 * DEMAND_WINDOW);
        assert_eq!(pool.spare_bytes(), POOL_BYTES);
    }

    #[test]
    fn storage_still_lent_counts_against_the_bound() {
        let mut pool = Pool::default();
        let start = Instant::now();
        pool.settle(start);
        let mut bufs = buffers(3 * POOL_BYTES / MIN_READ);
        turn(&mut bufs, &mut pool);
        // A third of the peak is held across the windows: the spare kept beside it is
        // the rest of the peak, then the idle bound.
        let held = POOL_BYTES / MIN_READ;
        for buf in &mut bufs[..held] {
            buf.append(b"x", &mut pool).unwrap();
        }
        pool.settle(start + DEMAND_WINDOW);
        assert_eq!(pool.spare_bytes(), 2 * POOL_BYTES);
        pool.settle(start + 2 * DEMAND_WINDOW);
        assert_eq!((pool.lent, pool.spare_bytes()), (POOL_BYTES, POOL_BYTES));
    }

    #[test]
    fn grown_storage_is_lent_and_large_blocks_go_back_to_the_allocator() {
        let mut pool = Pool::default();
        let mut buf = Mbuf::with_limit(1 << 20);
        buf.append(&[1; 2 * MIN_READ], &mut pool).unwrap();
        assert_eq!(pool.lent, buf.data.len());
        buf.clear(&mut pool);
        assert_eq!((pool.lent, pool.spare_bytes()), (0, 2 * MIN_READ));
        // A block grown past the usual sizes goes back to the allocator.
        let mut pool = Pool::default();
        let mut big = Mbuf::with_limit(1 << 20);
        big.append(&[1; LARGEST_POOLED + 1], &mut pool).unwrap();
        big.clear(&mut pool);
        assert_eq!((big.data.len(), pool.lent, pool.spare_bytes()), (0, 0, 0));
    }
}
