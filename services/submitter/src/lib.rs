//! The submitter: validates and records jobs (HTTP and AMQP, idempotently), and serves
//! the read API. It owns the jobs and tasks it inserts.

mod admin;
mod auth;
mod broker_admin;
mod control;
mod error;
mod events;
mod executors;
mod identity;
mod inserter;
mod intake;
mod jobs;
mod logs;
mod openapi;
mod purge;
mod routes;
mod scheduler;
mod session;
mod state;
mod stats;
mod submit;
mod ui;

use fleet_shared::config::Config;
use fleet_shared::db::DbError;
use fleet_shared::http;
use fleet_shared::svc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use routes::openapi;

pub const DEFAULT_ADDR: &str = "127.0.0.1:7070";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs until `token` is cancelled: the HTTP API on `listener` and the AMQP intake. The
/// API is served at once, before the database answers: `/healthz` and `/readyz` tell
/// the truth from the start, and calls that need the database get a 503 until the
/// migrations are applied.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
    let (pool, health) = svc::db_and_health(&cfg)?;
    // The intake's broker session, shared with the API for control messages.
    let (publisher, _) = tokio::sync::watch::channel(None);
    // One token cache for the API and the AMQP intake: a revocation clears both.
    let auth = std::sync::Arc::new(auth::Authenticator::new(&cfg.auth));
    let intake = tokio::spawn({
        let (cfg, pool, health, publisher, token, auth) = (
            cfg.clone(),
            pool.clone(),
            health.clone(),
            publisher.clone(),
            token.clone(),
            auth.clone(),
        );
        async move {
            let migrated = svc::migrate(&cfg, &pool, &health, &token).await;
            match migrated {
                Ok(true) => {
                    intake::run(cfg, pool, health, auth, publisher, token).await;
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(e) => {
                    // Nothing works without the tables: stop the service.
                    token.cancel();
                    Err(e)
                }
            }
        }
    });
    // New live output, for followers (they also look every second, in case a
    // notification was missed).
    let (logs_changed, _) = tokio::sync::watch::channel(0u64);
    let logs_listener = tokio::spawn({
        let (db, tx, token) = (cfg.database.clone(), logs_changed.clone(), token.clone());
        let channel = fleet_shared::db::logs::logs_channel(&db.schema);
        async move {
            fleet_shared::db::listen(db, channel, token, move |_| {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            })
            .await
        }
    });
    let state = state::AppState::new(&cfg, pool, health.clone(), auth, publisher, logs_changed);
    let router = routes::router(state).merge(http::health_routes(health));
    let served = http::serve(listener, router, token.clone()).await;
    token.cancel();
    let _ = logs_listener.await;
    if let Ok(Err(e)) = intake.await {
        return Err(e.into());
    }
    served?;
    Ok(())
}
