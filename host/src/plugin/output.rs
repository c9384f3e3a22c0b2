//! A guest's output (the `log` import, stdout and stderr) turned into log lines that
//! the host vouches for: each tagged with the listener and the connection being
//! handled, escaped so that nothing a guest writes can start a line of its own.
//!
//! Output is split at newlines; a line that grows past [`MAX_LINE`] bytes is logged in
//! pieces of that size, so the host holds at most [`MAX_LINE`] bytes per stream and
//! instance, however many stream handles the guest opens (they all share one
//! [`GuestLog`]). Every byte is looked at once: the work is linear in what the guest
//! writes. Control characters (the newline of a `log` message included) become
//! visible escapes such as `\r` or `\u{1b}`. Lines beyond the listener's [`LogBudget`]
//! are dropped. It never blocks the guest.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::{Level, debug, error, info, trace, warn};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::log_rate::LogBudget;
use crate::handler::ConnId;

/// Longest piece of output logged as one line, and the most held back waiting for a
/// newline.
pub const MAX_LINE: usize = 4096;

/// Where a guest's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The log of one plugin instance: its tags, its listener's budget, and the partial
/// lines of its stdout and stderr.
pub struct GuestLog {
    listener: Arc<str>,
    /// The version of the listener's plugin this instance runs.
    version: u64,
    budget: Arc<LogBudget>,
    /// The connection being handled, or 0 outside an event.
    conn: AtomicU64,
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
}

impl GuestLog {
    /// The log of a new instance of version `version` of `listener`'s plugin.
    pub fn new(listener: Arc<str>, version: u64, budget: Arc<LogBudget>) -> GuestLog {
        let (stdout, stderr) = (Mutex::default(), Mutex::default());
        GuestLog { listener, version, budget, conn: AtomicU64::new(0), stdout, stderr }
    }

    /// Tag what follows with `conn` (the connection whose event is being handled).
    pub fn set_conn(&self, conn: ConnId) {
        self.conn.store(conn.0, Ordering::Relaxed);
    }

    /// The guest's `log` import: every line of `message` is a log line at `level`.
    pub fn message(&self, level: Level, message: &str) {
        for line in message.split('\n') {
            for piece in line.as_bytes().chunks(MAX_LINE) {
                self.emit(level, None, piece);
            }
        }
    }

    /// Bytes the guest wrote to stdout or stderr.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut pending = self.pending(stream);
        while !bytes.is_empty() {
            let room = MAX_LINE - pending.len();
            let window = &bytes[..bytes.len().min(room)];
            let taken = match memchr::memchr(b'\n', window) {
                Some(at) => {
                    pending.extend_from_slice(&window[..at]);
                    at + 1
                }
                None if window.len() == room => {
                    pending.extend_from_slice(window);
                    room
                }
                None => {
                    pending.extend_from_slice(window);
                    break;
                }
            };
            self.emit(Level::INFO, Some(stream), &pending);
            pending.clear();
            bytes = &bytes[taken..];
        }
    }

    fn pending(&self, stream: Stream) -> std::sync::MutexGuard<'_, Vec<u8>> {
        let pending = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log one line, if it is not empty and the budget admits it.
    fn emit(&self, level: Level, stream: Option<Stream>, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || !self.budget.admit(line.len()) {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = escape_controls(&text);
        let (listener, version) = (&*self.listener, self.version);
        let conn = Tag(self.conn.load(Ordering::Relaxed));
        let stream = stream.map(Stream::name).unwrap_or("log");
        macro_rules! at {
            ($level:ident) => {
                $level!(target: "sandport::guest", listener = %listener, conn = %conn, stream, version, "{text}")
            };
        }
        match level {
            Level::TRACE => at!(trace),
            Level::DEBUG => at!(debug),
            Level::INFO => at!(info),
            Level::WARN => at!(warn),
            Level::ERROR => at!(error),
        }
    }
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut *self.pending(stream));
            self.emit(Level::INFO, Some(stream), &rest);
        }
    }
}

/// A connection tag in a log line: `#7`, or `-` outside any connection's event.
struct Tag(u64);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("-"),
            id => write!(f, "{}", ConnId(id)),
        }
    }
}

/// `text` with every control character (and the Unicode line and paragraph
/// separators) written as an escape, so it cannot break or recolour a log line.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// The guest's stdout or stderr, as WASI hands it out: every stream handle the guest
/// opens writes into the instance's one [`GuestLog`].
pub struct GuestStream {
    log: Arc<GuestLog>,
    stream: Stream,
}

impl GuestStream {
    /// `stream` of the instance whose log is `log`.
    pub fn new(log: Arc<GuestLog>, stream: Stream) -> GuestStream {
        GuestStream { log, stream }
    }

    fn handle(&self) -> GuestStreamHandle {
        GuestStreamHandle { log: self.log.clone(), stream: self.stream }
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.handle())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.handle())
    }
}

/// One stream handle the guest holds: a pointer to the instance's log, nothing more.
struct GuestStreamHandle {
    log: Arc<GuestLog>,
    stream: Stream,
}

#[async_trait::async_trait]
impl Pollable for GuestStreamHandle {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStreamHandle {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl AsyncWrite for GuestStreamHandle {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_break_a_line() {
        assert_eq!(escape_controls("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(escape_controls("a\nb\r\tc\u{1b}[31m\u{2028}"), "a\\nb\\r\\tc\\u{1b}[31m\\u{2028}");
    }
}
