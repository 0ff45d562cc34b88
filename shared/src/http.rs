//! What every service serves besides its own work: `/healthz` (alive), `/readyz` (broker
//! and database reachable), `/metrics` (Prometheus text); and the shutdown plumbing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorBody;

/// Readiness inputs a service keeps up to date.
#[derive(Clone)]
pub struct Health {
    pub db: Option<Pool>,
    pub broker_up: Arc<AtomicBool>,
}

impl Health {
    pub fn new(db: Option<Pool>) -> Self {
        Self {
            db,
            broker_up: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    async fn check(&self) -> Result<(), String> {
        if !self.broker_up() {
            return Err("broker not connected".into());
        }
        if let Some(pool) = &self.db {
            match tokio::time::timeout(Duration::from_secs(2), crate::db::ping(pool)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("database did not answer in 2s".into()),
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
            let recorder = PrometheusBuilder::new().build_recorder();
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
        .route("/metrics", get(move || async move { metrics.render() }))
}

async fn readyz(State(h): State<Health>) -> Response {
    match h.check().await {
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
    let body = ErrorBody {
        code: code.into(),
        message: message.into(),
        field,
    };
    (status, Json(serde_json::json!({ "error": body }))).into_response()
}

/// Serves `router` on an already-bound listener until the token is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
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

/// Logging for a service binary: `RUST_LOG` or `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
