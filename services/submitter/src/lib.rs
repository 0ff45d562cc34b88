//! The submitter: validates and records jobs (HTTP and AMQP, idempotently), and serves
//! the read API. It owns the jobs and tasks it inserts.

mod admin;
mod auth;
pub mod broker_admin;
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
    // reqwest and the HTTPS listener speak TLS through rustls, with ring.
    fleet_shared::tls::install_provider();
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
    let served = http::serve_with(listener, router, token.clone(), &cfg.http).await;
    token.cancel();
    let _ = logs_listener.await;
    if let Ok(Err(e)) = intake.await {
        return Err(e.into());
    }
    served?;
    Ok(())
}

/// The environment variables that carry each service's broker password for
/// `fleet-submitter setup-broker-users`.
pub const BROKER_PASSWORD_VARS: [(fleet_shared::amqp::Service, &str); 3] = [
    (
        fleet_shared::amqp::Service::Submitter,
        "FLEET_BROKER_PASSWORD_SUBMITTER",
    ),
    (
        fleet_shared::amqp::Service::Dispatcher,
        "FLEET_BROKER_PASSWORD_DISPATCHER",
    ),
    (
        fleet_shared::amqp::Service::Collector,
        "FLEET_BROKER_PASSWORD_COLLECTOR",
    ),
];

/// `fleet-submitter setup-broker-users`: creates (or resets) the submitter's,
/// dispatcher's and collector's own broker users for `amqp.prefix`, each with the
/// password in its variable of [`BROKER_PASSWORD_VARS`] (16+ characters), through the
/// management API (`amqp.management_url`, as `amqp.management_user` or the user of
/// `amqp.url`). Returns what to tell the operator.
pub async fn setup_broker_users(cfg: &Config) -> Result<String, String> {
    fleet_shared::tls::install_provider();
    let mut passwords = Vec::new();
    for (service, var) in BROKER_PASSWORD_VARS {
        let password = std::env::var(var).unwrap_or_default();
        if password.chars().count() < 16 {
            return Err(format!(
                "{var}: the {} broker user's password, 16+ characters, is needed",
                service.as_str()
            ));
        }
        passwords.push((service, password));
    }
    let admin = broker_admin::BrokerAdmin::new(&cfg.amqp).map_err(|e| e.to_string())?;
    let n = fleet_shared::amqp::Names::new(&cfg.amqp.prefix);
    admin
        .setup_service_users(&n, &passwords)
        .await
        .map_err(|e| e.to_string())?;
    let users: Vec<String> = passwords.iter().map(|(s, _)| n.service_user(*s)).collect();
    Ok(format!("broker users ready: {}", users.join(", ")))
}
