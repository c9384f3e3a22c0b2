//! http-hello: an HTTP/1.1 server that answers every request with
//! `hello from sandport`.
//!
//! Keeps connections alive as HTTP/1.1 says (HTTP/1.0 only on request), answers
//! pipelined requests in order, waits for requests that arrive in pieces, and skips
//! request bodies given by `Content-Length`. Anything it cannot parse gets a 400 and
//! the connection is closed, since after garbage the next request cannot be found.
//! A client that half-closes gets the replies to every complete request it sent, then
//! the connection closes.

use sandport_guest::{Conn, ConnMap, Handler, Peer, RecvBuf};

/// Most requests fit in this; reading it first keeps the copy per request small.
const FIRST_READ: usize = 1024;
/// A header section that has not ended within this many bytes is refused.
const MAX_HEAD: usize = 16 * 1024;
/// httparse needs a slot per header; more headers than this is a bad request.
const MAX_HEADERS: usize = 64;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nhello from sandport\n";
/// An HTTP/1.0 client assumes the server closes unless the response says otherwise.
const OK_KEEP_ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello from sandport\n";
const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\nhello from sandport\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The response a request gets.
#[derive(Clone, Copy)]
enum Reply {
    /// 200, connection stays open (HTTP/1.1 default).
    Ok,
    /// 200, connection stays open at an HTTP/1.0 client's request.
    OkKeepAlive,
    /// 200, then close.
    OkClose,
    /// 400, then close.
    BadRequest,
}

impl Reply {
    fn bytes(self) -> &'static [u8] {
        match self {
            Reply::Ok => OK,
            Reply::OkKeepAlive => OK_KEEP_ALIVE,
            Reply::OkClose => OK_CLOSE,
            Reply::BadRequest => BAD_REQUEST,
        }
    }

    fn closes(self) -> bool {
        matches!(self, Reply::OkClose | Reply::BadRequest)
    }
}

/// Where a connection is between requests.
#[derive(Default)]
struct Exchange {
    /// Body bytes of the current request not yet received.
    body_left: u64,
    /// The reply to the current request, until its body is skipped and it is sent.
    owed: Option<Reply>,
    /// A closing reply went out: whatever else arrives is ignored.
    done: bool,
    /// The client half-closed while a reply waited for room: close once it is out.
    eof: bool,
}

impl Exchange {
    /// Whether a reply is ready but did not fit the send buffer (`serve` stops there
    /// only when `send` fails).
    fn waits_for_room(&self) -> bool {
        !self.done && self.body_left == 0 && self.owed.is_some()
    }
}

/// The handler: one [`Exchange`] per connection.
#[derive(Default)]
struct HttpHello {
    exchanges: ConnMap<Exchange>,
}

impl Handler for HttpHello {
    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        self.exchanges.insert(conn, Exchange::default());
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        serve(self.exchanges.get_or_insert_with(conn, Exchange::default), conn, rx);
    }

    /// A reply that did not fit the send buffer may fit now.
    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        if let Some(exchange) = self.exchanges.get_mut(conn) {
            serve(exchange, conn, rx);
            if exchange.eof && !exchange.waits_for_room() {
                let _ = conn.close_after_send();
            }
        }
    }

    /// No more requests will come: close once every complete one is answered, which is
    /// now unless a reply waits for room (the requests behind it wait in `rx`).
    fn on_eof(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        match self.exchanges.get_mut(conn) {
            Some(exchange) if exchange.waits_for_room() => exchange.eof = true,
            _ => {
                let _ = conn.close_after_send();
            }
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        self.exchanges.remove(conn);
    }
}

/// Answer every complete request in `rx`, in order, as far as the send buffer allows.
fn serve(ex: &mut Exchange, conn: Conn, rx: RecvBuf<'_>) {
    while !ex.done {
        if ex.body_left > 0 {
            let n = ex.body_left.min(rx.len() as u64);
            if rx.remove(n as usize).is_err() {
                return;
            }
            ex.body_left -= n;
            if ex.body_left > 0 {
                return;
            }
        }
        if let Some(reply) = ex.owed {
            // On `LimitExceeded` the reply stays owed and `on_send` retries; the
            // pipelined requests behind it wait in `rx`, which is the backpressure.
            if conn.send(reply.bytes()).is_err() {
                return;
            }
            ex.owed = None;
            if reply.closes() {
                ex.done = true;
                let _ = conn.close_after_send();
                return;
            }
        }
        match next_request(rx) {
            None => return,
            Some(Ok((head_len, body_len, reply))) => {
                if rx.remove(head_len).is_err() {
                    return;
                }
                ex.body_left = body_len;
                ex.owed = Some(reply);
            }
            Some(Err(())) => ex.owed = Some(Reply::BadRequest),
        }
    }
}

/// Parse the request at the front of `rx` without consuming it.
///
/// `None` while the header section is incomplete; otherwise its length, the body
/// length and the reply, or `Err` for a bad request.
fn next_request(rx: RecvBuf<'_>) -> Option<Result<(usize, u64, Reply), ()>> {
    let mut head = rx.read(0, FIRST_READ);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        return match req.parse(&head) {
            Ok(httparse::Status::Complete(head_len)) => {
                Some(judge(&req).map(|(body_len, reply)| (head_len, body_len, reply)))
            }
            Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => Some(Err(())),
            Ok(httparse::Status::Partial) if head.len() == FIRST_READ && rx.len() > FIRST_READ => {
                head = rx.read(0, MAX_HEAD);
                continue;
            }
            Ok(httparse::Status::Partial) => None,
            Err(_) => Some(Err(())),
        };
    }
}

/// The body length and the reply of a parsed request.
fn judge(req: &httparse::Request<'_, '_>) -> Result<(u64, Reply), ()> {
    let mut body_len = None;
    let (mut close, mut keep_alive) = (false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_length(h.value)?;
            // Two different lengths is how requests get smuggled past proxies.
            if body_len.is_some_and(|prev| prev != len) {
                return Err(());
            }
            body_len = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // A chunked body cannot be skipped without decoding it, and guessing
            // where it ends would misread the next request.
            return Err(());
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let reply = match req.version {
        _ if close => Reply::OkClose,
        Some(0) if keep_alive => Reply::OkKeepAlive,
        Some(0) => Reply::OkClose,
        _ => Reply::Ok,
    };
    Ok((body_len.unwrap_or(0), reply))
}

/// A `Content-Length` value: decimal digits only (no sign, no spaces inside).
fn parse_length(value: &[u8]) -> Result<u64, ()> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    std::str::from_utf8(digits).map_err(drop)?.parse().map_err(drop)
}

sandport_guest::export!(HttpHello);
