//! A guest's stdout and stderr, turned into log lines tagged with the listener.
//!
//! Output is split into lines; each complete line becomes one log event. A line that
//! grows past [`MAX_LINE`] without a newline is logged in pieces, so a guest cannot
//! make the host buffer without bound. Lines beyond the listener's [`LogBudget`] are
//! dropped. It never blocks the guest.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::info;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::log_rate::LogBudget;

/// Longest piece of output held back waiting for a newline.
const MAX_LINE: usize = 4096;

/// One of a guest's output streams (`stdout` or `stderr`) of one listener.
pub struct GuestOutput {
    listener: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
}

impl GuestOutput {
    pub fn new(listener: Arc<str>, stream: &'static str, budget: Arc<LogBudget>) -> GuestOutput {
        GuestOutput { listener, stream, budget }
    }

    fn lines(&self) -> LogLines {
        LogLines {
            listener: self.listener.clone(),
            stream: self.stream,
            budget: self.budget.clone(),
            pending: Vec::new(),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.lines())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.lines())
    }
}

/// Accumulates bytes and logs them line by line.
struct LogLines {
    listener: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
    pending: Vec<u8>,
}

impl LogLines {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            self.pending.extend_from_slice(&bytes[..at]);
            self.emit();
            bytes = &bytes[at + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        if !line.is_empty() && self.budget.admit(line.len()) {
            info!(target: "sandport::guest", listener = %self.listener, stream = self.stream, "{line}");
        }
        self.pending.clear();
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LogLines {
    async fn ready(&mut self) {}
}

impl OutputStream for LogLines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl AsyncWrite for LogLines {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
