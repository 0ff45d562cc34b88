//! What every service serves besides its own work: `/healthz` (alive), `/readyz` (broker
//! and database reachable), `/metrics` (Prometheus text: the service's metrics and its
//! process's); and the shutdown plumbing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use fleet_core::api::ErrorResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a service knows of its broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Not connected yet since the process started: no verdict either way.
    Connecting,
    Up,
    /// A connection failed or ended; reconnecting.
    Down,
}

/// Readiness inputs a service keeps up to date. Every answer is read from flags that
/// background work maintains, so `/readyz` answers at once whatever the broker or the
/// database does (a database that accepts connections and never answers, say).
#[derive(Clone)]
pub struct Health(Arc<HealthInner>);

struct HealthInner {
    broker: tokio::sync::watch::Sender<BrokerState>,
    /// The current connection's status, which knows whether the broker blocked it (a
    /// memory or disk alarm).
    connection: Mutex<Option<lapin::ConnectionStatus>>,
    /// Whether this service uses PostgreSQL at all.
    uses_db: bool,
    /// Migrations applied: the service's tables can be used.
    migrated: AtomicBool,
    /// The latest probe's verdict on PostgreSQL: `None` when it answered.
    db_problem: Mutex<Option<String>>,
}

impl Health {
    /// `uses_db`: whether readiness depends on PostgreSQL too.
    pub fn new(uses_db: bool) -> Self {
        Self(Arc::new(HealthInner {
            broker: tokio::sync::watch::channel(BrokerState::Connecting).0,
            connection: Mutex::new(None),
            uses_db,
            migrated: AtomicBool::new(false),
            db_problem: Mutex::new(Some("not checked yet".into())),
        }))
    }

    pub fn set_broker_up(&self, up: bool) {
        let state = if up {
            BrokerState::Up
        } else {
            BrokerState::Down
        };
        self.0.broker.send_replace(state);
    }

    /// The broker connection now in use (its blocked flag is read on every check).
    pub fn set_connection(&self, status: Option<lapin::ConnectionStatus>) {
        if let Ok(mut c) = self.0.connection.lock() {
            *c = status;
        }
    }

    pub fn broker_state(&self) -> BrokerState {
        *self.0.broker.borrow()
    }

    pub fn broker_up(&self) -> bool {
        self.broker_state() == BrokerState::Up
    }

    /// Why the broker takes no messages now: a resource alarm (memory, disk) blocked
    /// our connection. Publishing would hang until it clears.
    pub fn broker_blocked(&self) -> bool {
        self.0
            .connection
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|s| s.blocked()))
            .unwrap_or(false)
    }

    /// Waits (at most `patience`) for a first verdict on the broker after start-up, so a
    /// request that arrives while the first connection is being made is not refused for
    /// a broker that is fine.
    pub async fn broker_settled(&self, patience: Duration) -> BrokerState {
        let mut rx = self.0.broker.subscribe();
        let waited =
            tokio::time::timeout(patience, rx.wait_for(|s| *s != BrokerState::Connecting)).await;
        match waited {
            Ok(Ok(s)) => *s,
            _ => self.broker_state(),
        }
    }

    pub fn set_migrated(&self) {
        self.0.migrated.store(true, Ordering::Relaxed);
    }

    /// The service's tables exist: it may serve requests that use them.
    pub fn migrated(&self) -> bool {
        !self.0.uses_db || self.0.migrated.load(Ordering::Relaxed)
    }

    fn set_db_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.0.db_problem.lock() {
            *p = problem;
        }
    }

    /// Probes PostgreSQL every second (each probe bounded by 2 s) until `token` is
    /// cancelled, keeping the verdict that `/readyz` reads.
    pub fn spawn_db_probe(&self, pool: Pool, token: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let verdict = match tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::db::ping(&pool),
                )
                .await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("the database did not answer in 2s".into()),
                };
                health.set_db_problem(verdict);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// Ready, or why not. Reads flags only: never waits.
    pub fn check(&self) -> Result<(), String> {
        // The services connect to the broker once migrated: until then, the database is
        // the reason, with the latest probe's words (connection refused, say).
        if self.0.uses_db && !self.0.migrated.load(Ordering::Relaxed) {
            let why = self.0.db_problem.lock().ok().and_then(|p| p.clone());
            return Err(match why {
                Some(why) => {
                    format!("the database is not reachable yet (migrations pending): {why}")
                }
                None => "the database migrations are pending".into(),
            });
        }
        match self.broker_state() {
            BrokerState::Up => {}
            BrokerState::Connecting => return Err("connecting to the broker".into()),
            BrokerState::Down => return Err("broker not connected".into()),
        }
        if self.broker_blocked() {
            return Err("the broker blocked publishing (a memory or disk alarm)".into());
        }
        if self.0.uses_db {
            if let Some(p) = self.0.db_problem.lock().ok().and_then(|p| p.clone()) {
                return Err(p);
            }
        }
        Ok(())
    }
}

/// The process-wide Prometheus recorder; installed once, shared by every service that
/// runs in this process (the tests run several).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets (the exporter's default is a summary, which cannot be
            // aggregated across processes nor give a p99 over a range).
            // (It fails only for empty buckets, which these are not.)
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    crate::metrics::SECONDS_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn health_routes(health: Health) -> Router {
    let metrics = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
        // The recorder's metrics, then the process's own (read at each scrape).
        .route(
            "/metrics",
            get(move || async move {
                let mut text = metrics.render();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&crate::metrics::process_text());
                // The text format's own content type, which Prometheus 3 requires.
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }),
        )
}

async fn readyz(State(h): State<Health>) -> Response {
    match h.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why, None),
    }
}

pub fn error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    field: Option<String>,
) -> Response {
    (status, Json(ErrorResponse::new(code, message, field))).into_response()
}

/// An unknown route: the API's JSON error, not axum's empty 404.
async fn no_such_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such route: {method} {}", uri.path()),
        None,
    )
}

/// A known route asked with a method it does not take (axum adds the `Allow` header).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
        None,
    )
}

/// `router` with JSON answers for unknown routes (404) and methods (405).
pub fn with_json_fallbacks(router: Router) -> Router {
    router
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Serves `router` on an already-bound listener until the token is cancelled; unknown
/// routes and methods get the JSON error body.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, with_json_fallbacks(router))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

/// [`serve`], over HTTPS when `http.tls_cert_file` and `http.tls_key_file` are set (a
/// certificate or key that cannot be read is an error before anything is served).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
    http: &crate::config::HttpConfig,
) -> std::io::Result<()> {
    let (Some(cert), Some(key)) = (&http.tls_cert_file, &http.tls_key_file) else {
        return serve(listener, router, token).await;
    };
    let config = crate::tls::server_config(cert, key).map_err(std::io::Error::other)?;
    let listener = crate::tls::TlsListener::new(listener, config)?;
    axum::serve(listener, with_json_fallbacks(router))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Logging for a service binary: see [`crate::logging`].
pub fn init_tracing() {
    crate::logging::init();
}
