//! Just enough HTTP/1.1 to take keep-alive responses off a byte stream.

use std::fmt;

/// The request HTTP mode sends, over and over.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A bound on the status line and headers, so that a server that never ends its
/// header block fails the connection instead of growing the buffer forever.
pub const MAX_HEAD: usize = 64 * 1024;

/// A complete response at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Bytes the response takes, head and body: where the next response starts.
    pub len: usize,
}

/// Why a byte stream is not a sequence of responses this parser can delimit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The first line is not `HTTP/1.x NNN[ reason]`.
    StatusLine,
    /// A header line has no colon.
    Header,
    /// `Content-Length` is not a number, or two of them disagree.
    ContentLength,
    /// The body is delimited some other way (`Transfer-Encoding`, or by closing the
    /// connection), which a keep-alive load test cannot use.
    NoContentLength,
    /// No end of the header block within [`MAX_HEAD`] bytes.
    HeadTooLarge,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::StatusLine => "malformed HTTP status line",
            ParseError::Header => "malformed HTTP header",
            ParseError::ContentLength => "bad Content-Length",
            ParseError::NoContentLength => "HTTP response without Content-Length",
            ParseError::HeadTooLarge => "HTTP response head too large",
        })
    }
}

impl std::error::Error for ParseError {}

/// Parses the response at the start of `buf`.
///
/// Returns `Ok(None)` while the response is incomplete. The body must be delimited
/// by `Content-Length`, except for the statuses that have no body (1xx, 204, 304).
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ParseError> {
    let Some(head_len) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(ParseError::HeadTooLarge) } else { Ok(None) };
    };
    let mut lines = buf[..head_len].split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status = parse_status_line(lines.next().unwrap_or_default())?;

    let mut content_length = None;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or(ParseError::Header)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let len = parse_decimal(value).ok_or(ParseError::ContentLength)?;
            if content_length.is_some_and(|previous| previous != len) {
                return Err(ParseError::ContentLength);
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(ParseError::NoContentLength);
        }
    }
    let body_len = match (status, content_length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(len)) => len,
        (_, None) => return Err(ParseError::NoContentLength),
    };
    let len = (head_len + 4).checked_add(body_len).ok_or(ParseError::ContentLength)?;
    Ok((buf.len() >= len).then_some(Response { status, len }))
}

fn parse_status_line(line: &[u8]) -> Result<u16, ParseError> {
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(ParseError::StatusLine)?;
    match rest {
        [b'0' | b'1', b' ', code @ ..] if code.len() == 3 || code.get(3) == Some(&b' ') => {
            let code = &code[..3];
            let status = parse_decimal(code).ok_or(ParseError::StatusLine)?;
            u16::try_from(status).map_err(|_| ParseError::StatusLine)
        }
        _ => Err(ParseError::StatusLine),
    }
}

/// Parses a non-empty run of ASCII digits.
fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn complete_response() {
        assert_eq!(parse_response(OK), Ok(Some(Response { status: 200, len: OK.len() })));
    }

    #[test]
    fn incomplete_until_the_last_body_byte() {
        for end in 0..OK.len() {
            assert_eq!(parse_response(&OK[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn pipelined_responses_are_delimited() {
        let mut stream = OK.to_vec();
        stream.extend_from_slice(b"HTTP/1.0 404 Not Found\r\ncontent-length:  0 \r\n\r\n");
        stream.extend_from_slice(&OK[..10]);
        let first = parse_response(&stream).unwrap().unwrap();
        assert_eq!(first.len, OK.len());
        let second = parse_response(&stream[first.len..]).unwrap().unwrap();
        assert_eq!(second.status, 404);
        assert_eq!(parse_response(&stream[first.len + second.len..]), Ok(None));
    }

    #[test]
    fn status_line_variants() {
        let no_reason = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(parse_response(no_reason), Ok(Some(Response { status: 204, len: no_reason.len() })));
        for bad in [
            &b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
            b"hello\r\n\r\n",
        ] {
            assert_eq!(parse_response(bad), Err(ParseError::StatusLine), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn body_length_rules() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"), Err(ParseError::NoContentLength));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Err(ParseError::NoContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"), Err(ParseError::Header));
        let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(parse_response(not_modified).unwrap().unwrap().len, not_modified.len());
    }

    #[test]
    fn unterminated_head_is_bounded() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.resize(MAX_HEAD, b'a');
        assert_eq!(parse_response(&head), Ok(None));
        head.push(b'a');
        assert_eq!(parse_response(&head), Err(ParseError::HeadTooLarge));
    }
}
