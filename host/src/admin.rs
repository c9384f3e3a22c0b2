//! The admin API: an HTTP server on its own address and thread that shows the
//! listeners, swaps and rolls back their plugins, and exports Prometheus metrics.
//! It listens in plain HTTP on loopback, in HTTPS with a certificate of its own, or
//! on a Unix socket ([`endpoint`]); a separate plain address may answer the
//! health checks alone, for probes that carry neither token nor CA.
//!
//! It owns the HTTP surface only: routing, the bearer token, the JSON shapes, the
//! mapping of outcomes to status codes, and following its own certificate files (a
//! renewed pair serves new handshakes). Everything it shows or does goes through a
//! [`Control`] handle, on tokio's blocking pool, so a slow compile or a slow count
//! never holds up the HTTP thread, let alone an event loop. It must never touch a
//! socket, buffer or guest of the workers.
//!
//! What a client may cost it is bounded: connections and header time
//! ([`connections`]), request bodies ([`MAX_UPLOAD`] for a component, [`MAX_JSON`] for
//! a path), bodies held at once ([`UPLOADS`]) and the time one may take to arrive
//! ([`UPLOAD_TIMEOUT`]), so a slow or huge upload delays only itself.

pub mod connections;
pub mod endpoint;
mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::BytesMut;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

use crate::config::{AdminConfig, AdminListen};
use crate::control::{Control, ControlError, ListenerStatus, Source, SwapReport, Version, pem_hash};
use crate::listener::{InstanceMode, Limit, Limits, Termination, Worn};
use crate::tls::ServerTls;
use endpoint::Endpoint;

/// The largest component an upload may carry: as large as a plugin file may be.
pub const MAX_UPLOAD: usize = crate::plugin::MAX_COMPONENT;

/// The largest `{"path": "..."}` body.
pub const MAX_JSON: usize = 64 << 10;

/// Swap bodies read and held at once; more wait for one of these to finish.
pub const UPLOADS: usize = 2;

/// How long a swap's body may take to arrive.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a body past its cap is read and dropped so that its client hears the
/// 413 rather than a reset; a body declared longer than its cap and this is refused
/// at once.
const OVERRUN: usize = 1 << 20;

/// How long the rest of a body past its cap is read for.
const OVERRUN_TIME: Duration = Duration::from_secs(2);

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Its address cannot be bound (busy, or not this machine's), or its socket file
    /// cannot be made.
    #[error("admin API: cannot listen on {address}: {source}")]
    Bind {
        /// The configured address (`IP:PORT` or `unix:/path`).
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Its own certificate or key was refused.
    #[error("admin API: {0}")]
    Tls(crate::tls::TlsError),
    /// Its runtime or thread could not be started.
    #[error("admin API: cannot start: {0}")]
    Start(std::io::Error),
}

/// The running admin API. Dropping it (or [`AdminHandle::stop`]) stops it.
pub struct AdminHandle {
    address: String,
    stop: Option<watch::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Follows the HTTPS certificate and key files, if there are any.
    _certificate: Option<crate::watch::Watcher>,
}

impl AdminHandle {
    /// Where it is bound, as a client names it: `IP:PORT` (with the port it got),
    /// `https://IP:PORT` or `unix:/path`.
    pub fn local_addr(&self) -> &str {
        &self.address
    }

    /// Stop serving: requests under way are finished, then the thread exits.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The servers may have ended already (they failed): nothing to tell.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("admin API thread panicked");
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Bind the admin API's address (and its health address, if any) and serve them on a
/// thread of their own until the returned handle is stopped or dropped.
pub fn serve(config: &AdminConfig, control: Control) -> Result<AdminHandle, AdminError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(AdminError::Start)?;
    let tls = match &config.listen {
        AdminListen::Tcp { tls: Some(files), .. } => {
            Some(endpoint::server_tls(&files.certificate, &files.key).map_err(AdminError::Tls)?)
        }
        _ => None,
    };
    let named = match &config.listen {
        AdminListen::Tcp { address, .. } => address.to_string(),
        AdminListen::Unix(path) => format!("unix:{}", path.display()),
    };
    let (api, health) = {
        let _context = runtime.enter();
        let bind = |address: String| move |source| AdminError::Bind { address, source };
        let api = Endpoint::bind(&config.listen, tls.as_ref().map(|(tls, _)| tls)).map_err(bind(named.clone()))?;
        let health = config.health_address.map(|address| Endpoint::tcp(address).map_err(bind(address.to_string())));
        (api, health.transpose()?)
    };
    let address = api.describe().map_err(|source| AdminError::Bind { address: named, source })?;
    let health_address = health.as_ref().map(Endpoint::describe).transpose().map_err(AdminError::Start)?;
    let shared = Api { control, token: config.token.clone(), uploads: Arc::new(Semaphore::new(UPLOADS)) };
    let (stop, stopped) = watch::channel(());
    let (app, probes) = (router(shared.clone()), health_routes().with_state(shared));
    let health_stopped = stopped.clone();
    let thread = std::thread::Builder::new()
        .name("sandport-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let health = async move {
                    if let Some(health) = health {
                        connections::serve(health, probes, health_stopped).await;
                    }
                };
                tokio::join!(connections::serve(api, app, stopped), health);
            });
            // A control call still running on the blocking pool (a compile) would keep
            // the process from exiting: it is left to end with the process.
            runtime.shutdown_background();
        })
        .map_err(AdminError::Start)?;
    info!(address = %address, "admin API listening");
    if let Some(health) = &health_address {
        info!(health = %health, "admin health checks listening");
    }
    let certificate = tls.and_then(|(tls, termination)| follow_certificate(tls, termination));
    Ok(AdminHandle { address, stop: Some(stop), thread: Some(thread), _certificate: certificate })
}

/// Follow the HTTPS certificate and key files: a renewed pair (a Secret's update, a
/// `cert-manager` renewal) serves new handshakes, and one refused leaves the old
/// serving. Not following them is not fatal: the API still serves the one it has.
fn follow_certificate(tls: ServerTls, termination: Termination) -> Option<crate::watch::Watcher> {
    let files =
        vec![("admin".to_owned(), termination.certificate.clone()), ("admin".to_owned(), termination.key.clone())];
    let reload = move |_: &str, file: &std::path::Path, _: &str| match tls.reload(&termination) {
        Ok(certificate) => info!(file = %file.display(), "admin API certificate reloaded: {certificate}"),
        Err(err) => warn!("admin API certificate not reloaded, the old one keeps serving: {err}"),
    };
    crate::watch::Watcher::start(files, Arc::new(pem_hash), None, reload)
        .inspect_err(|err| warn!("{err}; the admin API's certificate files are not followed"))
        .ok()
}

/// What every request handler shares.
#[derive(Clone)]
struct Api {
    control: Control,
    token: Option<String>,
    /// Held from the start of reading a swap's body to the end of the swap.
    uploads: Arc<Semaphore>,
}

fn router(api: Api) -> Router {
    let guarded = Router::new()
        .route("/listeners", get(listeners))
        .route("/listeners/{name}/plugin", put(swap))
        .route("/listeners/{name}/rollback", post(rollback))
        .route("/listeners/{name}/certificate", post(reload_certificate))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    // Health checks stay open: probes and load balancers carry no token.
    guarded.merge(health_routes()).with_state(api)
}

/// `/healthz` and `/readyz` alone: what the health address serves.
fn health_routes() -> Router<Api> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// Requests without the configured bearer token get 401.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        let given = given.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
        // Constant time, so the answer's timing tells nothing of how much matched.
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            let body = json!({"error": "this admin API requires its bearer token (Authorization: Bearer ...)"});
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], axum::Json(body))
                .into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): State<Api>) -> (StatusCode, &'static str) {
    match api.control.ready() {
        true => (StatusCode::OK, "ready\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

async fn listeners(State(api): State<Api>) -> Response {
    match blocking(move || api.control.listeners()).await {
        Ok(listeners) => axum::Json(Value::Array(listeners.iter().map(listener_json).collect())).into_response(),
        Err(response) => response,
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let (listeners, addresses) = match blocking(move || api.control.status()).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    match metrics::encode(listeners, addresses) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(err) => error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {err}")),
    }
}

/// `{"path": "..."}`: swap to a file on the server's machine.
#[derive(Deserialize)]
struct PathBody {
    path: PathBuf,
}

async fn swap(State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let limit = match mime.as_str() {
        "application/json" => MAX_JSON,
        _ => MAX_UPLOAD,
    };
    let _upload = api.uploads.clone().acquire_owned().await.expect("the semaphore is never closed");
    let body = match read_body(body, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let source = match mime.as_str() {
        "application/json" => match serde_json::from_slice::<PathBody>(&body) {
            Ok(PathBody { path }) => Source::File(path),
            Err(err) => {
                return error_response(StatusCode::BAD_REQUEST, format!("expected {{\"path\": \"...\"}}: {err}"));
            }
        },
        "" | "application/wasm" | "application/octet-stream" if body.is_empty() => {
            return error_response(StatusCode::BAD_REQUEST, "the body is empty: send the component's bytes".into());
        }
        "" | "application/wasm" | "application/octet-stream" => Source::Bytes(body.into()),
        _ => {
            let message = format!(
                "content type `{content_type}`: send application/wasm (the component's bytes) or application/json ({{\"path\": \"...\"}})"
            );
            return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
        }
    };
    report_response(blocking(move || api.control.swap(&name, source)).await)
}

/// A request body of at most `limit` bytes that arrives within [`UPLOAD_TIMEOUT`], or
/// the answer that says why not (413, 408, 400).
///
/// A body over the cap is not kept, but what follows it is read and dropped, up to
/// [`OVERRUN`] bytes or for [`OVERRUN_TIME`], before the 413 goes out: a client that
/// writes its whole body before it reads (most do) would otherwise find the
/// connection reset under the unread bytes and never see the answer.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || error_response(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {limit} bytes"));
    let declared = body.size_hint().exact().and_then(|length| usize::try_from(length).ok());
    if declared.is_some_and(|length| length > limit.saturating_add(OVERRUN)) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + UPLOAD_TIMEOUT;
    let mut kept = BytesMut::new();
    while let Some(frame) = next_frame(&mut body, deadline).await? {
        let Ok(data) = frame.into_data() else { continue };
        if kept.len() + data.len() > limit {
            let overrun = tokio::time::Instant::now() + OVERRUN_TIME;
            let mut dropped = kept.len() + data.len() - limit;
            while dropped <= OVERRUN {
                match next_frame(&mut body, overrun.min(deadline)).await {
                    Ok(Some(frame)) => dropped += frame.data_ref().map_or(0, Bytes::len),
                    Ok(None) | Err(_) => break,
                }
            }
            return Err(too_large());
        }
        kept.extend_from_slice(&data);
    }
    Ok(kept.freeze())
}

/// The body's next frame, or the answer that says why there is none by `deadline`
/// (`Ok(None)` at its end).
async fn next_frame(body: &mut Body, deadline: tokio::time::Instant) -> Result<Option<Frame<Bytes>>, Response> {
    match tokio::time::timeout_at(deadline, body.frame()).await {
        Ok(None) => Ok(None),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(err))) => Err(error_response(StatusCode::BAD_REQUEST, format!("cannot read the body: {err}"))),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {UPLOAD_TIMEOUT:?}"),
        )),
    }
}

/// Re-read a listener's certificate and key files: 200 with whether the certificate
/// changed, 422 with the reason when the files are refused (the old certificate keeps
/// serving), 404 for no such listener.
async fn reload_certificate(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let control = api.control.clone();
    let outcome = blocking(move || control.reload_certificate(&name).map(|changed| (name, changed))).await;
    match outcome {
        Err(response) => response,
        Ok(Ok((name, changed))) => axum::Json(json!({ "listener": name, "changed": changed })).into_response(),
        Ok(Err(err @ ControlError::UnknownListener(_))) => error_response(StatusCode::NOT_FOUND, err.to_string()),
        Ok(Err(err @ ControlError::Stopping)) => error_response(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        Ok(Err(err)) => error_response(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()),
    }
}

async fn rollback(State(api): State<Api>, Path(name): Path<String>) -> Response {
    report_response(blocking(move || api.control.rollback(&name)).await)
}

/// Run a [`Control`] call on the blocking pool: it may compile, or wait on workers.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(call).await.map_err(|err| {
        error!("admin API: a control call failed: {err}");
        error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("the call failed: {err}"))
    })
}

/// 200 when the new version took over, 422 when it was refused, 404, 409 or 503 when
/// there was nothing to act on.
fn report_response(outcome: Result<Result<SwapReport, ControlError>, Response>) -> Response {
    match outcome {
        Err(response) => response,
        Ok(Ok(report)) => {
            let status = if report.took_over { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            (status, axum::Json(report_json(&report))).into_response()
        }
        Ok(Err(err)) => {
            let status = match err {
                ControlError::UnknownListener(_) => StatusCode::NOT_FOUND,
                ControlError::NoPreviousVersion(_) => StatusCode::CONFLICT,
                ControlError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                ControlError::Tls(..) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error_response(status, err.to_string())
        }
    }
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn report_json(report: &SwapReport) -> Value {
    json!({
        "listener": report.listener,
        "took_over": report.took_over,
        "refused": report.refused,
        "serving": version_json(&report.serving),
        "migrated": report.migrated,
        "draining": report.draining,
    })
}

fn version_json(version: &Version) -> Value {
    let since = version.since.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    json!({
        "number": version.number,
        "hash": version.hash,
        "path": version.path,
        "since": since,
        "migrates": version.migrates,
    })
}

fn listener_json(listener: &ListenerStatus) -> Value {
    let current = listener.history.last();
    let counts = &listener.counts;
    json!({
        "name": listener.name,
        "address": listener.address.to_string(),
        "plugin": current.and_then(|version| version.path.as_ref()),
        "hash": current.map(|version| &version.hash),
        "version": current.map(|version| version.number),
        "history": listener.history.iter().map(version_json).collect::<Vec<_>>(),
        "instance": instance_name(listener.instance),
        "workers": listener.workers,
        "open": listener.open,
        "connections": {
            "accepted": counts.accepted,
            "dialed": counts.dialed,
            "refused": counts.refused,
            "closed": counts.closed,
        },
        "swaps": listener.swaps,
        "failed_swaps": listener.failed_swaps,
        "rollbacks": listener.rollbacks,
        "last_error": listener.last_error,
        "limits": limits_json(&listener.limits),
        "recycle": {
            "memory": listener.recycle.memory_mark(listener.limits.memory),
            "events": listener.recycle.events,
            "age-ms": listener.recycle.age.map(|age| age.as_millis() as u64),
            "recycled": Worn::ALL.iter().map(|worn| (worn.key().to_owned(), json!(counts.recycles[worn.index()]))).collect::<serde_json::Map<_, _>>(),
        },
        "tls": {
            "mode": listener.tls,
            "server_names": listener.server_names,
            "handshakes": counts.handshakes,
            "handshakes_failed": counts.handshakes_failed,
            "certificate": listener.certificate.as_ref().map(|c| json!({
                "subject": c.subject,
                "names": c.names,
                "not_after": unix_seconds(c.not_after),
                "sha256": c.fingerprint(),
            })),
        },
        "artifact": listener.artifact.as_ref().map(|a| json!({
            "reference": a.reference,
            "digest": a.digest,
            "refused": a.refused,
            "refused_why": a.refused_why,
            "last_error": a.last_error,
            "checked": a.checked.map(unix_seconds),
            "pulls": a.pulls,
            "failed_pulls": a.failed_pulls,
        })),
    })
}

/// A time as seconds since 1970 (what the expiry metric gives too).
fn unix_seconds(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The instance mode as the config spells it.
fn instance_name(mode: InstanceMode) -> &'static str {
    match mode {
        InstanceMode::Shared => "shared",
        InstanceMode::PerWorker => "per-worker",
        InstanceMode::PerConnection => "per-connection",
    }
}

/// Every limit under its config key, in bytes, milliseconds or a count as the key says.
fn limits_json(limits: &Limits) -> Value {
    let millis = |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let value = |limit: Limit| -> u64 {
        match limit {
            Limit::Memory => limits.memory as u64,
            Limit::EventTime => millis(limits.event_timeout),
            Limit::EventWallTime => millis(limits.event_wall_timeout),
            Limit::Connections => limits.max_connections as u64,
            Limit::RecvBuffer => limits.recv_buffer as u64,
            Limit::SendBuffer => limits.send_buffer as u64,
            Limit::Timers => limits.max_timers as u64,
            Limit::IdleTimeout => millis(limits.idle_timeout),
            Limit::LogRate => limits.log_rate as u64,
            Limit::Linger => millis(limits.linger),
            Limit::HandshakeTimeout => millis(limits.handshake_timeout),
            Limit::Handshakes => limits.max_handshakes as u64,
            Limit::MigrateState => limits.migrate_state as u64,
        }
    };
    Value::Object(Limit::ALL.iter().map(|limit| (limit.key().to_owned(), json!(value(*limit)))).collect())
}
