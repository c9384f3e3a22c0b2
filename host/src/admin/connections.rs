//! The admin API's connections: how many it holds at once and how long a client may
//! take to say what it wants.
//!
//! Every descriptor the admin API holds is one a tenant's listener cannot have, and a
//! client that opens connections and never finishes a request would otherwise hold
//! them for good. So it accepts at most [`MAX_CONNECTIONS`] at once (the next waits in
//! the kernel's backlog until one closes), closes a connection whose request headers
//! take longer than [`HEADER_TIMEOUT`] (which also ends a kept-alive connection left
//! idle, and bounds a TLS handshake), and on stop lets the requests under way finish
//! for up to a second.
//!
//! It owns the accept loop only; what a request means is the router's.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tracing::warn;

use super::endpoint::Endpoint;

/// Connections the admin API holds at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers, and how long a kept-alive
/// connection may sit idle before its next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests under way may go on once the admin API is stopped: short, for
/// it is stopped when the server stops, and a swap still compiling then has nothing
/// left to swap.
const DRAIN: Duration = Duration::from_secs(1);

/// After an accept fails (descriptors ran out), how long to wait before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve `app` on `endpoint` until `stop` changes (or its sender is dropped), then let
/// the requests under way finish.
pub async fn serve(endpoint: Endpoint, app: Router, mut stop: watch::Receiver<()>) {
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = endpoint.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!("admin API: cannot accept a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let (app, graceful) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // An error here is the client's (gone, too slow, or a failed handshake):
            // nothing to report.
            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, accepted.open()).await else {
                return;
            };
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            let _ = graceful.watch(connection).await;
            drop(slot);
        });
    }
    drop(endpoint);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        warn!("admin API: requests still under way {DRAIN:?} after the stop were cut off");
    }
}
