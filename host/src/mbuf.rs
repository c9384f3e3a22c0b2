//! Bounded byte buffers: a connection's receive and send buffers.
//!
//! An [`Mbuf`] owns bytes in one contiguous region so that guests can read any range
//! and search for a delimiter without the host assembling pieces. It never holds more
//! than its limit: [`Mbuf::append`] is all-or-nothing and [`Mbuf::fill_from`] reads at
//! most the room that is left. It never does I/O on its own initiative; the reactor
//! decides when to read into it and when to write out of it.

use std::io::{self, Read, Write};

/// How much free space a read asks for at least, so small messages do not cost a
/// growth step each.
const MIN_READ: usize = 16 * 1024;

/// An idle buffer above this size gives its memory back when it empties.
const KEEP_WHEN_EMPTY: usize = 64 * 1024;

/// A bounded, contiguous byte buffer consumed from the front and filled at the back.
///
/// ```
/// use sandport::mbuf::Mbuf;
///
/// let mut buf = Mbuf::with_limit(8);
/// buf.append(b"GET /\r\n").unwrap();
/// assert_eq!(buf.find(b"\r\n", 0), Some(5));
/// buf.remove(7).unwrap();
/// assert!(buf.is_empty());
/// assert!(buf.append(b"too long!").is_err());
/// ```
#[derive(Debug)]
pub struct Mbuf {
    /// Backing storage; bytes `head..tail` are the contents. Always initialised, so a
    /// socket read can write into `tail..` without unsafe code.
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
    /// An empty buffer that will never hold more than `limit` bytes. It allocates
    /// nothing until the first byte arrives.
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

    /// Append all of `bytes`, or nothing when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if bytes.len() > self.room() {
            return Err(Full { wanted: bytes.len(), room: self.room() });
        }
        self.reserve(bytes.len());
        self.data[self.tail..self.tail + bytes.len()].copy_from_slice(bytes);
        self.tail += bytes.len();
        Ok(())
    }

    /// Discard the first `n` bytes.
    pub fn remove(&mut self, n: usize) -> Result<(), Short> {
        if n > self.len() {
            return Err(Short { wanted: n, len: self.len() });
        }
        self.head += n;
        if self.is_empty() {
            self.head = 0;
            self.tail = 0;
            if self.data.len() > KEEP_WHEN_EMPTY {
                self.data = Vec::new();
            }
        }
        Ok(())
    }

    /// Keep only the first `len` bytes, dropping those appended after them (say by a
    /// migration that was called off); nothing changes when it holds `len` or fewer.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            let drop = self.len() - len;
            self.tail -= drop;
            if self.is_empty() {
                self.clear();
            }
        }
    }

    /// Discard everything.
    pub fn clear(&mut self) {
        let len = self.len();
        self.remove(len).expect("removing the whole length always fits");
    }

    /// Make one `read` call on `source` for at most `max` bytes (and never past the
    /// limit), appending what it returns. Returns the bytes read and the bytes asked
    /// for: fewer read than asked means the source had no more at that moment. `Ok(0)`
    /// read means end of stream, unless the buffer had no room or `max` was 0.
    pub fn fill_from(&mut self, source: &mut impl Read, max: usize) -> io::Result<(usize, usize)> {
        let want = max.min(self.room());
        if want == 0 {
            return Ok((0, 0));
        }
        self.reserve(want.min(MIN_READ.max(self.len())));
        let (start, end) = (self.tail, (self.tail + want).min(self.data.len()));
        let n = source.read(&mut self.data[start..end])?;
        self.tail += n;
        Ok((n, end - start))
    }

    /// Make one `write` call on `sink` with the buffered bytes, removing what it took.
    pub fn drain_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        let n = sink.write(self.as_slice())?;
        self.remove(n).expect("a writer never takes more than it was given");
        Ok(n)
    }

    /// Make sure at least `extra` bytes (already checked against the limit) fit after
    /// `tail`, by sliding the contents to the front or by growing the storage.
    fn reserve(&mut self, extra: usize) {
        if self.data.len() - self.tail >= extra {
            return;
        }
        let len = self.len();
        if self.head > 0 {
            self.data.copy_within(self.head..self.tail, 0);
            self.head = 0;
            self.tail = len;
        }
        if self.data.len() - self.tail < extra {
            let grown = (self.data.len() * 2).max(len + extra).min(self.limit.max(len + extra));
            self.data.resize(grown, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_drops_what_came_after() {
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"abcdef").unwrap();
        buf.remove(2).unwrap();
        buf.truncate(10);
        assert_eq!(buf.as_slice(), b"cdef");
        buf.truncate(2);
        assert_eq!(buf.as_slice(), b"cd");
        buf.truncate(0);
        assert!(buf.is_empty());
        buf.append(b"xy").unwrap();
        assert_eq!(buf.as_slice(), b"xy");
    }

    #[test]
    fn append_is_all_or_nothing() {
        let mut buf = Mbuf::with_limit(4);
        buf.append(b"abc").unwrap();
        assert_eq!(buf.append(b"de"), Err(Full { wanted: 2, room: 1 }));
        assert_eq!(buf.as_slice(), b"abc");
    }

    #[test]
    fn remove_more_than_buffered_changes_nothing() {
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello").unwrap();
        assert_eq!(buf.remove(6), Err(Short { wanted: 6, len: 5 }));
        assert_eq!(buf.as_slice(), b"hello");
        buf.remove(2).unwrap();
        assert_eq!(buf.as_slice(), b"llo");
    }

    #[test]
    fn read_clamps_ranges() {
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello").unwrap();
        assert_eq!(buf.read(1, 3), b"ell");
        assert_eq!(buf.read(3, 100), b"lo");
        assert_eq!(buf.read(9, 1), b"");
        assert_eq!(buf.read(2, usize::MAX), b"llo");
    }

    #[test]
    fn find_respects_from_and_removed_prefix() {
        let mut buf = Mbuf::with_limit(64);
        buf.append(b"a\nb\nc").unwrap();
        assert_eq!(buf.find(b"\n", 0), Some(1));
        assert_eq!(buf.find(b"\n", 2), Some(3));
        assert_eq!(buf.find(b"\n", 4), None);
        assert_eq!(buf.find(b"\n", 99), None);
        assert_eq!(buf.find(b"a\nb\nc and more", 0), None);
        buf.remove(2).unwrap();
        assert_eq!(buf.find(b"\n", 0), Some(1));
    }

    #[test]
    fn fill_from_stops_at_the_limit() {
        let mut buf = Mbuf::with_limit(10);
        let mut source: &[u8] = &[7u8; 100];
        assert_eq!(buf.fill_from(&mut source, 1000).unwrap(), (10, 10));
        assert_eq!(buf.fill_from(&mut source, 1000).unwrap(), (0, 0));
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn slides_and_grows_without_losing_bytes() {
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
                buf.fill_from(&mut source, 3000).unwrap();
            }
            expected.extend_from_slice(&chunk);
            let consume = expected.len() / 2;
            assert_eq!(&buf.as_slice()[..consume], &expected[..consume]);
            buf.remove(consume).unwrap();
            expected.drain(..consume);
            assert_eq!(buf.as_slice(), expected.as_slice());
        }
    }

    #[test]
    fn drain_to_removes_what_was_written() {
        let mut buf = Mbuf::with_limit(16);
        buf.append(b"hello").unwrap();
        let mut sink = [0u8; 3];
        let n = buf.drain_to(&mut &mut sink[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(&sink, b"hel");
        assert_eq!(buf.as_slice(), b"lo");
    }
}
