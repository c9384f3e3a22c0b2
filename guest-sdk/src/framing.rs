//! Splitting a byte stream into messages: lines, delimited frames, length-prefixed
//! frames.
//!
//! The helpers are provided methods of [`ByteSource`], which both the host-side
//! [`RecvBuf`](crate::RecvBuf) and plain in-memory bytes (`Vec<u8>`, `&[u8]`)
//! implement, so the same parsing code runs in a plugin and in a native unit test.

use std::fmt;

use crate::Error;

/// Bytes that arrive at the front and are consumed from the front: a receive buffer.
///
/// The four required methods mirror the host's `mbuf` plus `remove`; the provided
/// methods build protocols on top. Each `next_*` helper returns `Ok(None)` while the
/// message is incomplete (call again after the next `recv`) and consumes exactly the
/// message it returns, delimiter or length prefix included.
///
/// ```
/// use sandport_guest::ByteSource;
///
/// let mut input: &[u8] = b"HELO there\r\nQUIT\r\npart";
/// assert_eq!(input.next_line(512).unwrap(), Some(b"HELO there".to_vec()));
/// assert_eq!(input.next_line(512).unwrap(), Some(b"QUIT".to_vec()));
/// assert_eq!(input.next_line(512).unwrap(), None); // "part" waits for its newline
/// assert_eq!(input, b"part");
/// ```
pub trait ByteSource {
    /// Bytes currently available.
    fn available(&self) -> usize;

    /// Copy out up to `len` bytes starting at `offset`: fewer near the end, none past it.
    fn peek(&self, offset: usize, len: usize) -> Vec<u8>;

    /// The offset of the first occurrence of `needle` at or after `from`.
    fn find_from(&self, needle: &[u8], from: usize) -> Option<usize>;

    /// Discard the first `n` bytes. Fails, changing nothing, if fewer are available.
    fn consume(&mut self, n: usize) -> Result<(), Error>;

    /// The next message ending in `delim`, without the delimiter.
    ///
    /// A message longer than `max` bytes (not counting the delimiter) is an error,
    /// reported as soon as it is certain: when the delimiter turns up past `max`, or
    /// when more than `max` bytes have arrived without it. The error consumes nothing;
    /// the usual answer is to tell the peer and close.
    ///
    /// # Panics
    ///
    /// If `delim` is empty: every position would match it and nothing would advance.
    ///
    /// ```
    /// use sandport_guest::{ByteSource, FrameError};
    ///
    /// let mut input = b"a||bb||ccccc".to_vec();
    /// assert_eq!(input.next_until(b"||", 3).unwrap(), Some(b"a".to_vec()));
    /// assert_eq!(input.next_until(b"||", 3).unwrap(), Some(b"bb".to_vec()));
    /// // Five bytes and no delimiter: one could now only start past 3.
    /// assert_eq!(input.next_until(b"||", 3), Err(FrameError::TooLong));
    /// ```
    fn next_until(&mut self, delim: &[u8], max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        assert!(!delim.is_empty(), "next_until needs a non-empty delimiter");
        match self.find_from(delim, 0) {
            Some(at) if at <= max => {
                let message = self.peek(0, at);
                self.consume(at + delim.len())?;
                Ok(Some(message))
            }
            Some(_) => Err(FrameError::TooLong),
            // Without a delimiter in the first `max + delim.len()` bytes, any later one
            // would start past `max`.
            None if self.available() >= max.saturating_add(delim.len()) => Err(FrameError::TooLong),
            None => Ok(None),
        }
    }

    /// The next line: up to a `\n`, which is consumed but not returned, and with a
    /// trailing `\r` stripped, so both `\n` and `\r\n` endings work.
    ///
    /// `max` bounds the line before stripping (the `\r` counts, the `\n` does not); see
    /// [`next_until`](Self::next_until) for when a longer line is reported.
    ///
    /// ```
    /// use sandport_guest::{ByteSource, FrameError};
    ///
    /// let mut input = b"hi\r\nthere\n".to_vec();
    /// assert_eq!(input.next_line(8).unwrap(), Some(b"hi".to_vec()));
    /// assert_eq!(input.next_line(8).unwrap(), Some(b"there".to_vec()));
    /// assert_eq!(input.next_line(8).unwrap(), None);
    ///
    /// let mut flood = vec![b'x'; 9];
    /// assert_eq!(flood.next_line(8), Err(FrameError::TooLong));
    /// ```
    fn next_line(&mut self, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        let mut line = self.next_until(b"\n", max)?;
        if let Some(line) = &mut line
            && line.last() == Some(&b'\r')
        {
            line.pop();
        }
        Ok(line)
    }

    /// The next length-prefixed frame: a big-endian `u32` length, then that many bytes.
    /// Returns the payload; consumes prefix and payload.
    ///
    /// A declared length over `max` is an error as soon as the prefix has arrived, so a
    /// peer cannot make the handler wait for gigabytes. The error consumes nothing.
    ///
    /// ```
    /// use sandport_guest::{ByteSource, FrameError, encode_frame};
    ///
    /// let mut input = encode_frame(b"hello");
    /// input.extend_from_slice(&[0, 0]); // half of the next prefix
    /// assert_eq!(input.next_frame(1024).unwrap(), Some(b"hello".to_vec()));
    /// assert_eq!(input.next_frame(1024).unwrap(), None);
    ///
    /// let mut huge = u32::MAX.to_be_bytes().to_vec();
    /// assert_eq!(huge.next_frame(1024), Err(FrameError::TooLong));
    /// ```
    fn next_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        let available = self.available();
        let Ok(prefix) = <[u8; 4]>::try_from(self.peek(0, 4).as_slice()) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix) as usize;
        if len > max {
            return Err(FrameError::TooLong);
        }
        if available - 4 < len {
            return Ok(None);
        }
        let payload = self.peek(4, len);
        self.consume(4 + len)?;
        Ok(Some(payload))
    }
}

/// Prefix `payload` with its length as a big-endian `u32`: the format
/// [`ByteSource::next_frame`] reads.
///
/// # Panics
///
/// If `payload` is longer than `u32::MAX` bytes.
///
/// ```
/// let frame = sandport_guest::encode_frame(b"hi");
/// assert_eq!(frame, [0, 0, 0, 2, b'h', b'i']);
/// ```
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame payload fits in u32");
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Why a `next_*` helper of [`ByteSource`] returned no message.
///
/// ```no_run
/// use sandport_guest::{ByteSource, FrameError, RecvBuf};
///
/// fn lines(mut rx: RecvBuf<'_>) {
///     loop {
///         match rx.next_line(1024) {
///             Ok(Some(line)) => { /* handle it */ }
///             Ok(None) => break, // wait for more bytes
///             Err(FrameError::TooLong) => {
///                 let _ = rx.conn().send(b"line too long\n");
///                 let _ = rx.conn().close_after_send();
///                 break;
///             }
///             Err(FrameError::Source(_)) => break, // the connection is going away
///         }
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The message is longer than the limit; nothing was consumed.
    TooLong,
    /// Consuming the message failed (for a [`RecvBuf`](crate::RecvBuf): the host's
    /// `remove` was refused, typically because the connection is closing).
    Source(Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong => f.write_str("message longer than the limit"),
            FrameError::Source(e) => write!(f, "could not consume the message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::TooLong => None,
            FrameError::Source(e) => Some(e),
        }
    }
}

impl From<Error> for FrameError {
    fn from(e: Error) -> Self {
        FrameError::Source(e)
    }
}

/// Consuming advances the slice, so a `&[u8]` works as a cursor over fixed input.
impl ByteSource for &[u8] {
    fn available(&self) -> usize {
        self.len()
    }

    fn peek(&self, offset: usize, len: usize) -> Vec<u8> {
        slice_peek(self, offset, len)
    }

    fn find_from(&self, needle: &[u8], from: usize) -> Option<usize> {
        slice_find(self, needle, from)
    }

    fn consume(&mut self, n: usize) -> Result<(), Error> {
        check_consume(self.len(), n)?;
        *self = &self[n..];
        Ok(())
    }
}

/// Consuming drains the front, so a `Vec<u8>` works as a growable receive buffer,
/// e.g. one a plugin fills itself.
impl ByteSource for Vec<u8> {
    fn available(&self) -> usize {
        self.len()
    }

    fn peek(&self, offset: usize, len: usize) -> Vec<u8> {
        slice_peek(self, offset, len)
    }

    fn find_from(&self, needle: &[u8], from: usize) -> Option<usize> {
        slice_find(self, needle, from)
    }

    fn consume(&mut self, n: usize) -> Result<(), Error> {
        check_consume(self.len(), n)?;
        self.drain(..n);
        Ok(())
    }
}

fn slice_peek(bytes: &[u8], offset: usize, len: usize) -> Vec<u8> {
    let rest = bytes.get(offset..).unwrap_or_default();
    rest[..len.min(rest.len())].to_vec()
}

fn slice_find(bytes: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    if needle.is_empty() {
        return Some(from);
    }
    rest.windows(needle.len()).position(|w| w == needle).map(|at| from + at)
}

/// The same refusal the host gives, so in-memory sources behave like a `RecvBuf`.
fn check_consume(available: usize, n: usize) -> Result<(), Error> {
    if n > available {
        return Err(Error::Invalid(format!("remove {n} bytes but only {available} are buffered")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_and_find_follow_the_mbuf_rules() {
        let bytes: &[u8] = b"abcabc";
        assert_eq!(bytes.peek(4, 10), b"bc");
        assert_eq!(bytes.peek(6, 1), b"");
        assert_eq!(bytes.peek(99, 1), b"");
        assert_eq!(bytes.find_from(b"bc", 0), Some(1));
        assert_eq!(bytes.find_from(b"bc", 2), Some(4));
        assert_eq!(bytes.find_from(b"bc", 5), None);
        assert_eq!(bytes.find_from(b"abcabcx", 0), None);
        assert_eq!(bytes.find_from(b"", 3), Some(3));
        assert_eq!(bytes.find_from(b"a", 99), None);
    }

    #[test]
    fn consuming_too_much_changes_nothing() {
        let mut v = b"abc".to_vec();
        assert!(matches!(v.consume(4), Err(Error::Invalid(_))));
        assert_eq!(v, b"abc");
        let mut s: &[u8] = b"abc";
        assert!(s.consume(4).is_err());
        s.consume(3).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn lines_split_on_lf_and_strip_one_cr() {
        let mut v = b"one\ntwo\r\n\r\nthree\r\r\n\nrest".to_vec();
        let mut lines = Vec::new();
        while let Some(line) = v.next_line(100).unwrap() {
            lines.push(line);
        }
        let expected: [&[u8]; 5] = [b"one", b"two", b"", b"three\r", b""];
        assert_eq!(lines, expected);
        assert_eq!(v, b"rest");
    }

    #[test]
    fn line_arriving_in_pieces() {
        let mut v = Vec::new();
        let mut lines = Vec::new();
        for piece in [&b"hel"[..], b"lo\r", b"\nwor", b"ld\n"] {
            v.extend_from_slice(piece);
            while let Some(line) = v.next_line(6).unwrap() {
                lines.push(line);
            }
        }
        assert_eq!(lines, [b"hello", b"world"]);
        assert!(v.is_empty());
    }

    #[test]
    fn line_length_limit_is_inclusive() {
        let mut exact = b"12345\n".to_vec();
        assert_eq!(exact.next_line(5).unwrap(), Some(b"12345".to_vec()));

        let mut waiting = b"12345".to_vec();
        assert_eq!(waiting.next_line(5).unwrap(), None);

        let mut over = b"123456".to_vec();
        assert_eq!(over.next_line(5), Err(FrameError::TooLong));
        assert_eq!(over, b"123456", "an error consumes nothing");

        let mut over_with_newline = b"123456\nok\n".to_vec();
        assert_eq!(over_with_newline.next_line(5), Err(FrameError::TooLong));

        // The complete lines before an overlong one still come out first.
        let mut mixed = b"ok\n1234567".to_vec();
        assert_eq!(mixed.next_line(5).unwrap(), Some(b"ok".to_vec()));
        assert_eq!(mixed.next_line(5), Err(FrameError::TooLong));
    }

    #[test]
    fn multi_byte_delimiter() {
        let mut v = b"GET / HTTP/1.1\r\n\r\nbody\r\n\r".to_vec();
        assert_eq!(v.next_until(b"\r\n\r\n", 64).unwrap(), Some(b"GET / HTTP/1.1".to_vec()));
        assert_eq!(v.next_until(b"\r\n\r\n", 64).unwrap(), None);
        v.extend_from_slice(b"\n");
        assert_eq!(v.next_until(b"\r\n\r\n", 64).unwrap(), Some(b"body".to_vec()));
        assert!(v.is_empty());
    }

    #[test]
    fn multi_byte_delimiter_limit() {
        // max 3 with a 2-byte delimiter: "abc" + the first delimiter byte may still be
        // a valid message in the making; one byte more cannot be.
        let mut v = b"abc|".to_vec();
        assert_eq!(v.next_until(b"||", 3).unwrap(), None);
        v.push(b'|');
        assert_eq!(v.next_until(b"||", 3).unwrap(), Some(b"abc".to_vec()));
        let mut w = b"abcd|".to_vec();
        assert_eq!(w.next_until(b"||", 3), Err(FrameError::TooLong));
    }

    #[test]
    #[should_panic(expected = "non-empty delimiter")]
    fn empty_delimiter_panics() {
        let _ = b"abc".to_vec().next_until(b"", 10);
    }

    #[test]
    fn frames_round_trip() {
        let mut v = Vec::new();
        for payload in [&b""[..], b"x", &[7u8; 300]] {
            v.extend_from_slice(&encode_frame(payload));
        }
        assert_eq!(v.next_frame(300).unwrap(), Some(Vec::new()));
        assert_eq!(v.next_frame(300).unwrap(), Some(b"x".to_vec()));
        assert_eq!(v.next_frame(300).unwrap(), Some(vec![7u8; 300]));
        assert_eq!(v.next_frame(300).unwrap(), None);
    }

    #[test]
    fn frames_wait_for_prefix_and_payload() {
        let whole = encode_frame(b"payload");
        let mut v = Vec::new();
        for &b in &whole[..whole.len() - 1] {
            v.push(b);
            assert_eq!(v.next_frame(100).unwrap(), None);
        }
        v.push(*whole.last().unwrap());
        assert_eq!(v.next_frame(100).unwrap(), Some(b"payload".to_vec()));
    }

    #[test]
    fn frame_over_the_limit_is_refused_from_the_prefix_alone() {
        let mut v = 101u32.to_be_bytes().to_vec();
        assert_eq!(v.next_frame(100), Err(FrameError::TooLong));
        assert_eq!(v.len(), 4, "an error consumes nothing");
        let mut ok = encode_frame(&[0; 100]);
        assert_eq!(ok.next_frame(100).unwrap().map(|p| p.len()), Some(100));
    }

    #[test]
    fn frame_error_wraps_the_host_error() {
        let e = FrameError::from(Error::Closed);
        assert_eq!(e, FrameError::Source(Error::Closed));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "could not consume the message: connection closed");
    }
}
