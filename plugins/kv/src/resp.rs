//! RESP on the wire: commands in (arrays of bulk strings, or inline lines), replies out.
//!
//! It owns the wire format and its bounds only. It never executes a command and never
//! touches a connection: a parse looks at the bytes from the start of one command and
//! says whether the command is whole (its arguments are slices of those bytes, not
//! copies, in a list the caller keeps from one command to the next), how many bytes it
//! needs at least, or why the stream cannot be a command.

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole command, whose arguments (none for a blank inline line) are in the list
    /// given to [`parse`].
    Command {
        /// The bytes it took, to remove from the receive buffer.
        len: usize,
    },
    /// Not a whole command yet.
    Incomplete(Partial),
}

/// How far a partial command got: what it needs, and where to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// Nothing can complete before this many bytes are there.
    pub need: usize,
    /// Where the next look may start ([`resume`]), or `None`: from the start (only
    /// while the first line, at most a few dozen bytes, is not whole).
    pub resume: Option<Resume>,
}

/// The part of a partial command already checked, so that a command arriving a few
/// bytes at a time is not read again from its start at every arrival (which would make
/// a 512 KiB command sent byte by byte cost the host 128 GB of copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// A multibulk whose arguments before byte `at` are whole; `args_left` follow.
    Bulks {
        /// The offset, in the command, of the first argument not yet whole.
        at: usize,
        /// How many arguments are missing.
        args_left: usize,
    },
    /// An inline command with no newline in its first `scanned` bytes.
    Line {
        /// Bytes known to hold no newline.
        scanned: usize,
    },
}

impl Resume {
    /// The offset, in the command, where the next look starts.
    pub fn offset(self) -> usize {
        match self {
            Resume::Bulks { at, .. } => at,
            Resume::Line { scanned } => scanned,
        }
    }
}

/// What looking again at a partial command found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The command is whole, this long: parse it from its start.
    Whole(usize),
    /// Still partial.
    Incomplete(Partial),
}

/// A stream that is not RESP (or exceeds its bounds): answered with `-ERR Protocol
/// error: ...` and closed, as Redis does, because nothing after it can be framed.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// The longest inline command, as Redis bounds it (`PROTO_INLINE_MAX_SIZE`).
const MAX_INLINE: usize = 64 * 1024;

/// The longest `*N` or `$N` header line: a 64-bit count and its sign fit, and a
/// client that sends an endless header is caught early.
const MAX_HEADER: usize = 32;

/// The fewest bytes an argument of a multibulk can take (`$0\r\n\r\n`): how a count
/// that could not fit in `max_command` is refused before anything is allocated for it.
const MIN_ARGUMENT: usize = 6;

/// Parse the command at the start of `buf` into `args` (the command name and its
/// arguments, as they came; cleared first); no command may take more than
/// `max_command` bytes.
pub fn parse<'a>(buf: &'a [u8], max_command: usize, args: &mut Vec<&'a [u8]>) -> Result<Parse, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(Parse::Incomplete(Partial { need: 1, resume: None })),
        Some(b'*') => parse_multibulk(buf, max_command, args),
        Some(_) => parse_inline(buf, 0, args),
    }
}

/// Look again at a partial command: `tail` is its bytes from `from.offset()` on.
pub fn resume(tail: &[u8], from: Resume, max_command: usize) -> Result<Scan, ProtocolError> {
    // The arguments are not wanted: the command is parsed again from its start.
    let mut args = Vec::new();
    let parsed = match from {
        Resume::Bulks { at, args_left } => bulks(tail, at, 0, args_left, max_command, &mut args)?,
        Resume::Line { scanned } => parse_inline(tail, scanned, &mut args)?,
    };
    Ok(match parsed {
        Parse::Command { len } => Scan::Whole(len),
        Parse::Incomplete(partial) => Scan::Incomplete(partial),
    })
}

/// `*N\r\n` then N times `$LEN\r\nBYTES\r\n`.
fn parse_multibulk<'a>(buf: &'a [u8], max_command: usize, args: &mut Vec<&'a [u8]>) -> Result<Parse, ProtocolError> {
    let Some((count, at)) = header(buf, 0, "multibulk")? else {
        return Ok(Parse::Incomplete(Partial { need: buf.len() + 1, resume: None }));
    };
    let count = match count {
        // Redis takes `*0` and `*-1` as nothing to run.
        ..=0 => return Ok(Parse::Command { len: at }),
        n if (n as u64).saturating_mul(MIN_ARGUMENT as u64) > max_command as u64 => {
            return Err(error("invalid multibulk length"));
        }
        n => n as usize,
    };
    bulks(buf, 0, at, count, max_command, args)
}

/// `count` bulk strings from `buf[at..]`, where `buf` starts `base` bytes into the
/// command (offsets in what it returns are the command's), appended to `args`.
fn bulks<'a>(
    buf: &'a [u8],
    base: usize,
    mut at: usize,
    count: usize,
    max_command: usize,
    args: &mut Vec<&'a [u8]>,
) -> Result<Parse, ProtocolError> {
    for done in 0..count {
        let partial = |need: usize| {
            let resume = Resume::Bulks { at: base + at, args_left: count - done };
            Ok(Parse::Incomplete(Partial { need: base + need, resume: Some(resume) }))
        };
        match buf.get(at) {
            None => return partial(buf.len() + 1),
            Some(b'$') => {}
            Some(&other) => return Err(error(&format!("expected '$', got '{}'", char::from(other)))),
        }
        let Some((len, start)) = header(buf, at, "bulk")? else { return partial(buf.len() + 1) };
        let len = usize::try_from(len).map_err(|_| error("invalid bulk length"))?;
        let end = start
            .checked_add(len)
            .filter(|&end| base + end + 2 <= max_command)
            .ok_or_else(|| error("invalid bulk length"))?;
        if buf.len() < end + 2 {
            return partial(end + 2);
        }
        args.push(&buf[start..end]);
        // Like Redis, the CRLF after the bytes is skipped, not checked.
        at = end + 2;
    }
    Ok(Parse::Command { len: base + at })
}

/// A header line at `at` (`*N\r\n` or `$N\r\n`): its number and where the next
/// line starts, or `None` while the line is not whole.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    let line = &buf[at + 1..];
    let Some(cr) = line.iter().take(MAX_HEADER + 1).position(|&b| b == b'\r') else {
        return if line.len() > MAX_HEADER { Err(error(&format!("too big {what} count string"))) } else { Ok(None) };
    };
    if line.len() < cr + 2 {
        return Ok(None);
    }
    let number = integer(&line[..cr]).ok_or_else(|| error(&format!("invalid {what} length")))?;
    Ok(Some((number, at + 1 + cr + 2)))
}

/// A line of words separated by spaces or tabs, ended by `\n` (a `\r` before it is
/// dropped): what `telnet` or `nc` send. `buf` starts `base` bytes into the line, none
/// of which was a newline.
fn parse_inline<'a>(buf: &'a [u8], base: usize, args: &mut Vec<&'a [u8]>) -> Result<Parse, ProtocolError> {
    let room = (MAX_INLINE + 1).saturating_sub(base);
    let Some(newline) = buf.iter().take(room).position(|&b| b == b'\n') else {
        if base + buf.len() > MAX_INLINE {
            return Err(error("too big inline request"));
        }
        let resume = Resume::Line { scanned: base + buf.len() };
        return Ok(Parse::Incomplete(Partial { need: base + buf.len() + 1, resume: Some(resume) }));
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    args.extend(line.split(|&b| b == b' ' || b == b'\t').filter(|word| !word.is_empty()));
    Ok(Parse::Command { len: base + newline + 1 })
}

fn error(what: &str) -> ProtocolError {
    ProtocolError(format!("Protocol error: {what}"))
}

/// A decimal 64-bit integer written the way Redis writes one: an optional `-`, no
/// `+`, no leading zeros, no spaces (so `"007"` and `" 7"` are not integers, as in
/// Redis's `string2ll`).
pub fn integer(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = match digits {
        [b'0'] => text.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    // Summed as a negative number, whose range holds i64::MIN; no UTF-8 check or
    // `str::parse` (INCR reads an integer every time).
    let negative = digits.iter().try_fold(0i64, |n, &d| n.checked_mul(10)?.checked_sub(i64::from(d - b'0')))?;
    if text.len() > digits.len() { Some(negative) } else { negative.checked_neg() }
}

/// `+TEXT\r\n`.
pub fn simple(out: &mut Vec<u8>, text: &str) {
    line(out, b'+', text.as_bytes());
}

/// `-MESSAGE\r\n`; a CR or LF in the message (a client's argument echoed in it)
/// becomes a space, so the reply stays one line.
pub fn error_reply(out: &mut Vec<u8>, message: &str) {
    let clean: Vec<u8> = message.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }).collect();
    line(out, b'-', &clean);
}

/// `:N\r\n`.
pub fn integer_reply(out: &mut Vec<u8>, n: i64) {
    line(out, b':', decimal(&mut [0; 20], n));
}

/// `$LEN\r\nBYTES\r\n`, or the null bulk `$-1\r\n`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            line(out, b'$', decimal(&mut [0; 20], bytes.len() as i64));
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"$-1\r\n"),
    }
}

/// `*N\r\n`: the header of an array whose N elements follow.
pub fn array(out: &mut Vec<u8>, n: usize) {
    line(out, b'*', decimal(&mut [0; 20], n as i64));
}

/// `n` in decimal, written at the end of `buf`: without the allocation and the
/// formatting machinery of `to_string`, which showed in every INCR and GET.
pub fn decimal(buf: &mut [u8; 20], n: i64) -> &[u8] {
    let mut rest = n.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn command(buf: &[u8]) -> (Vec<&[u8]>, usize) {
        let mut args = vec![&b"stale"[..]];
        match parse(buf, MAX, &mut args) {
            Ok(Parse::Command { len }) => (args, len),
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn a_multibulk_command_is_sliced_in_place() {
        let (args, len) = command(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n");
        assert_eq!(args, [&b"GET"[..], b"k"]);
        assert_eq!(len, 20);
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete_and_asks_for_more() {
        let whole = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            match parse(&whole[..cut], MAX, &mut Vec::new()) {
                Ok(Parse::Incomplete(partial)) => {
                    assert!(partial.need > cut && partial.need <= whole.len(), "cut {cut}: {partial:?}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // Once the header of a bulk is in, the need is exact: no reading before it is all there.
        let at_hello = Partial { need: whole.len(), resume: Some(Resume::Bulks { at: 14, args_left: 1 }) };
        assert_eq!(parse(&whole[..20], MAX, &mut Vec::new()), Ok(Parse::Incomplete(at_hello)));
    }

    #[test]
    fn a_command_arriving_byte_by_byte_is_looked_at_from_where_it_stopped() {
        for whole in [&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n"[..], b"SET k 0123456789\r\n"] {
            let mut from: Option<Resume> = None;
            let mut looked_at = 0;
            let mut need = 1;
            for have in 1..=whole.len() {
                // As the plugin does: no look before the bytes a partial command needs.
                if have < need {
                    continue;
                }
                let start = from.map_or(0, Resume::offset);
                looked_at += have - start;
                let scan = match from {
                    None => match parse(&whole[..have], MAX, &mut Vec::new()).unwrap() {
                        Parse::Command { len } => Scan::Whole(len),
                        Parse::Incomplete(partial) => Scan::Incomplete(partial),
                    },
                    Some(from) => resume(&whole[start..have], from, MAX).unwrap(),
                };
                match scan {
                    Scan::Whole(len) => {
                        assert_eq!((have, len), (whole.len(), whole.len()));
                        break;
                    }
                    Scan::Incomplete(partial) => {
                        assert!(have < whole.len() && partial.need > have, "{have}: {partial:?}");
                        from = partial.resume.or(from);
                        need = partial.need;
                    }
                }
            }
            // Each byte is looked at a few times (a header until it is whole), not once per arrival.
            assert!(looked_at < 4 * whole.len(), "{looked_at} bytes looked at for {}", whole.len());
        }
    }

    #[test]
    fn inline_commands_split_on_blanks() {
        let (args, len) = command(b"SET  k\tv\r\nPING\n");
        assert_eq!(args, [&b"SET"[..], b"k", b"v"]);
        assert_eq!(len, 10);
        assert_eq!(command(b"\r\n"), (vec![], 2));
    }

    #[test]
    fn bounds_and_garbage_are_protocol_errors() {
        let message = |buf: &[u8]| parse(buf, MAX, &mut Vec::new()).unwrap_err().0;
        assert_eq!(message(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(message(b"*1000\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(message(b"*1\r\n$1025\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(message(b"*1\r\n$-3\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(message(b"*2\r\n$1015\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(message(b"*1\r\n:1\r\n"), "Protocol error: expected '$', got ':'");
        assert_eq!(message(&[b'*'; 40]), "Protocol error: too big multibulk count string");
        assert_eq!(message(&vec![b'a'; MAX_INLINE + 1]), "Protocol error: too big inline request");
    }

    #[test]
    fn integers_are_read_as_strictly_as_redis_reads_them() {
        assert_eq!(integer(b"-42"), Some(-42));
        assert_eq!(integer(b"0"), Some(0));
        assert_eq!(integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(integer(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"+1", b"01", b"-0", b" 1", b"1.5", b"9223372036854775808"] {
            assert_eq!(integer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decimals_match_to_string() {
        for n in [0, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            assert_eq!(decimal(&mut [0; 20], n), n.to_string().as_bytes());
        }
    }

    #[test]
    fn replies_are_framed() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error_reply(&mut out, "ERR a\r\nb");
        integer_reply(&mut out, -1);
        bulk(&mut out, Some(b"v"));
        bulk(&mut out, None);
        array(&mut out, 2);
        assert_eq!(out, b"+OK\r\n-ERR a  b\r\n:-1\r\n$1\r\nv\r\n$-1\r\n*2\r\n");
    }
}
