//! http-hello: an HTTP/1.1 server that answers every request with
//! `hello from sandport`.
//!
//! Keeps connections alive as HTTP/1.1 says (HTTP/1.0 only on request), answers
//! pipelined requests in order, waits for requests that arrive in pieces, and skips
//! request bodies given by `Content-Length`. Anything it cannot parse gets a 400 and
//! the connection is closed, since after garbage the next request cannot be found.
//! A client that half-closes gets the replies to every complete request it sent, then
//! the connection closes.
//!
//! Every host call costs a trip out of the guest, so a `recv` event makes as few as it
//! can: one `read` of what is buffered, one `send` with the replies to every complete
//! request in it (pipelined ones concatenated), one `remove` of the bytes they took. A
//! `send` event makes none unless replies wait for room or requests wait unread.

use std::mem::MaybeUninit;

use sandport_guest::{Conn, ConnMap, Error, Handler, Peer, RecvBuf, SendEvents};

/// What one `read` asks for: a whole header section at most, so the 400 for an endless
/// one needs a single read, and a burst of pipelined requests comes out in one call.
/// Asking costs nothing: the host returns only what is buffered.
const READ: usize = MAX_HEAD;
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

/// Where a connection is between events.
#[derive(Default)]
struct Exchange {
    /// Body bytes of the current request not yet received.
    body_left: u64,
    /// The reply to the current request, held until its body is skipped.
    after_body: Option<Reply>,
    /// Replies ready to go that the send buffer has not taken yet, back to back.
    owed: Vec<u8>,
    /// `rx` may hold requests not looked at yet, left for the `send` event that room
    /// in the send buffer brings: replies were owed when they arrived or were read.
    unread: bool,
    /// A closing reply is owed or gone: nothing more is parsed.
    closing: bool,
    /// The client half-closed while work was pending: close once it is done.
    eof: bool,
}

impl Exchange {
    /// Whether a `send` event has work: owed replies to retry or requests to read.
    fn pending(&self) -> bool {
        !self.owed.is_empty() || self.unread
    }

    /// Queue a reply to go out with the next `send`.
    fn queue(&mut self, reply: Reply) {
        self.owed.extend_from_slice(reply.bytes());
        self.closing |= reply.closes();
    }

    /// Count `available` bytes (or fewer) toward the current request's body; once the
    /// body is skipped, queue its reply. Returns how many bytes the body took.
    fn skip_body(&mut self, available: usize) -> usize {
        let n = self.body_left.min(available as u64);
        self.body_left -= n;
        if self.body_left == 0
            && let Some(reply) = self.after_body.take()
        {
            self.queue(reply);
        }
        n as usize
    }
}

/// The handler: one [`Exchange`] per connection.
#[derive(Default)]
struct HttpHello {
    exchanges: ConnMap<Exchange>,
}

impl Handler for HttpHello {
    /// `on_send` has work only after the send buffer refused replies.
    const SEND_EVENTS: SendEvents = SendEvents::WhenBlocked;

    fn on_accept(&mut self, conn: Conn, _peer: Peer) {
        self.exchanges.insert(conn, Exchange::default());
    }

    fn on_recv(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        let ex = self.exchanges.get_or_insert_with(conn, Exchange::default);
        if ex.closing {
            return;
        }
        if !ex.owed.is_empty() {
            // Replies wait for room: the new requests wait in `rx` behind them, which
            // is the backpressure, and the next `send` event reads them.
            ex.unread = true;
            return;
        }
        serve(ex, conn, rx);
    }

    /// Owed replies may fit now, and requests left unread are read once they are out.
    /// Otherwise (after every reply that went out at once) nothing to do, and no call.
    fn on_send(&mut self, conn: Conn, rx: RecvBuf<'_>, _n: u32) {
        let Some(ex) = self.exchanges.get_mut(conn) else { return };
        if !ex.pending() {
            return;
        }
        if !flush(ex, conn) {
            return;
        }
        if ex.unread && !ex.closing {
            serve(ex, conn, rx);
        }
        if ex.eof && !ex.pending() && !ex.closing {
            let _ = conn.close_after_send();
        }
    }

    /// No more requests will come: close once every complete one is answered, which is
    /// now unless replies wait for room or requests wait unread (the `send` event then
    /// closes), or a closing reply already closes it.
    fn on_eof(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        match self.exchanges.get_mut(conn) {
            Some(ex) if ex.closing => {}
            Some(ex) if ex.pending() => ex.eof = true,
            _ => {
                let _ = conn.close_after_send();
            }
        }
    }

    fn on_close(&mut self, conn: Conn, _rx: RecvBuf<'_>) {
        self.exchanges.remove(conn);
    }
}

/// Answer the complete requests in `rx`, in order: read, parse every one, send their
/// replies together, remove the bytes they took. `ex.owed` is empty on entry.
fn serve(ex: &mut Exchange, conn: Conn, rx: RecvBuf<'_>) {
    ex.unread = false;
    // Bytes at the front of `rx` that the requests so far took.
    let mut taken = 0;
    loop {
        if ex.body_left >= READ as u64 {
            // A whole read would be body: skip it without copying it out.
            taken += ex.skip_body(rx.len().saturating_sub(taken));
            if ex.closing || ex.body_left > 0 {
                break;
            }
        }
        let data = rx.read(taken, READ);
        taken += parse(ex, &data);
        // A read shorter than asked emptied `rx` (bytes arrive only between events,
        // each with its own `recv`), so there is nothing left to read: no second call.
        if ex.closing || data.len() < READ {
            break;
        }
        // A full read: more may be buffered. Its replies go first; if the send buffer
        // is full, the rest waits in `rx` for the `send` event room brings (the
        // backpressure that keeps a flood of pipelined requests in step with the
        // client reading its replies). Otherwise read on: no event would come for it.
        if !flush(ex, conn) {
            ex.unread = true;
            break;
        }
    }
    if !ex.unread {
        flush(ex, conn);
    }
    // Owed or not, the replies are the guest's now, so the requests go. After a
    // closing reply the connection ends with whatever `rx` holds: no call for that.
    if taken > 0 && !ex.closing {
        let _ = rx.remove(taken);
    }
}

/// Parse the requests at the front of `data` (read from `rx`), skipping their bodies
/// and queueing their replies, up to an incomplete one or a closing reply. Returns how
/// many bytes they took.
fn parse(ex: &mut Exchange, data: &[u8]) -> usize {
    let mut at = 0;
    loop {
        at += ex.skip_body(data.len() - at);
        if ex.closing || ex.body_left > 0 || at == data.len() {
            return at;
        }
        match next_request(&data[at..]) {
            // Incomplete: the rest is read in a later event.
            None => return at,
            Some(Ok((head_len, body_len, reply))) => {
                at += head_len;
                // `skip_body` queues the reply once the body is skipped: on the next
                // pass when there is no body.
                ex.body_left = body_len;
                ex.after_body = Some(reply);
            }
            Some(Err(())) => {
                ex.queue(Reply::BadRequest);
                return at;
            }
        }
    }
}

/// Hand the owed replies to the host in one `send`. Returns whether none is owed now.
///
/// `send` is all or nothing: on `LimitExceeded` the replies stay owed for the next
/// `send` event. But the replies to a burst of pipelined requests can outgrow even an
/// empty send buffer, so then the part that fits goes now and the rest later.
fn flush(ex: &mut Exchange, conn: Conn) -> bool {
    if ex.owed.is_empty() {
        return true;
    }
    match conn.send(&ex.owed) {
        Ok(_) => ex.owed.clear(),
        Err(Error::LimitExceeded) => {
            if let Ok(room) = conn.send_room() {
                let fits = (room as usize).min(ex.owed.len());
                if fits > 0 && conn.send(&ex.owed[..fits]).is_ok() {
                    ex.owed.drain(..fits);
                }
            }
            return false;
        }
        Err(_) => {
            // Closing or gone: nobody left to answer.
            ex.owed.clear();
            ex.closing = true;
            return false;
        }
    }
    if ex.closing {
        let _ = conn.close_after_send();
    }
    true
}

/// Parse the request at the front of `head` (bytes read from `rx`).
///
/// `None` while the header section is incomplete; otherwise its length, the body
/// length and the reply, or `Err` for a bad request.
fn next_request(head: &[u8]) -> Option<Result<(usize, u64, Reply), ()>> {
    // Uninitialised: filling 64 header slots for each request took longer than
    // parsing a typical one.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(head_len)) => {
            Some(judge(&req).map(|(body_len, reply)| (head_len, body_len, reply)))
        }
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => Some(Err(())),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Err(())),
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
