//! What every handler shares: the pool, the authenticator, the broker session and the
//! writers; and the [`Caller`] extractor, which needs them.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use fleet_shared::config::Config;
use fleet_shared::db::Pool;
use fleet_shared::http::Health;

use crate::auth::{Authenticator, Caller};
use crate::broker_admin::BrokerAdmin;
use crate::error::ApiError;
use crate::inserter::Inserter;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    pool: Pool,
    auth: Arc<Authenticator>,
    max_body: usize,
    /// An executor silent this long shows as not alive, its tasks as `unknown`.
    silent_after_secs: f64,
    /// The collector's sampling step (`metrics.history_secs`).
    history_secs: u64,
    /// The dispatcher gives work to unregistered executors too (unsafe).
    open_executors: bool,
    /// The API is served over HTTPS (`http.tls_cert_file`).
    serves_https: bool,
    /// SHA-256 of `auth.executor_bootstrap_secret`.
    bootstrap_secret: Option<Vec<u8>>,
    /// The broker connection's state, kept by the intake.
    health: Health,
    accept_without_broker: bool,
    /// How long a submission right after start-up waits for the first broker connection.
    first_connect: std::time::Duration,
    /// The intake's broker session, for control messages; `None` while reconnecting.
    publisher: tokio::sync::watch::Sender<Option<fleet_shared::amqp::Publisher>>,
    names: fleet_shared::amqp::Names,
    broker_admin: Option<BrokerAdmin>,
    /// Writes submissions, grouping those that arrive together into one commit.
    inserter: Inserter,
    /// Which env values are secret, and the key that seals them.
    secrets: fleet_shared::secrets::Policy,
    /// The database schema (for the dispatcher's wake-up channel).
    schema: String,
    /// Bumped when the collector stores live output.
    logs_changed: tokio::sync::watch::Sender<u64>,
}

impl AppState {
    pub fn new(
        cfg: &Config,
        pool: Pool,
        health: Health,
        auth: Arc<Authenticator>,
        publisher: tokio::sync::watch::Sender<Option<fleet_shared::amqp::Publisher>>,
        logs_changed: tokio::sync::watch::Sender<u64>,
    ) -> Self {
        let secrets = fleet_shared::secrets::Policy::from_config(&cfg.secrets);
        Self(Arc::new(Inner {
            logs_changed,
            inserter: Inserter::new(
                pool.clone(),
                cfg.database.schema.clone(),
                secrets.sealer.clone(),
                std::time::Duration::from_millis(cfg.database.pool_wait_ms),
            ),
            secrets,
            pool,
            schema: cfg.database.schema.clone(),
            auth,
            max_body: cfg.submitter.max_body_bytes,
            silent_after_secs: cfg.dispatcher.executor_timeout_secs as f64,
            history_secs: cfg.metrics.history_secs,
            open_executors: cfg.dispatcher.unsafe_open_executors,
            serves_https: cfg.http.tls_cert_file.is_some(),
            bootstrap_secret: cfg
                .auth
                .executor_bootstrap_secret
                .as_deref()
                .map(|s| fleet_shared::auth::token_hash(s.trim())),
            health,
            accept_without_broker: cfg.submitter.accept_without_broker,
            first_connect: cfg.amqp.connect_timeout(),
            publisher,
            names: fleet_shared::amqp::Names::new(&cfg.amqp.prefix),
            broker_admin: BrokerAdmin::new(&cfg.amqp)
                .map_err(|e| tracing::warn!(error = %e, "no broker management; executors cannot register"))
                .ok(),
        }))
    }
}

impl AppState {
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    /// Writes submissions, grouping those that arrive together into one commit.
    pub fn inserter(&self) -> &Inserter {
        &self.0.inserter
    }

    /// Which env values are secret, and the key that seals them.
    pub fn secrets(&self) -> &fleet_shared::secrets::Policy {
        &self.0.secrets
    }

    /// Whether a job is accepted while the broker cannot take work.
    pub fn accept_without_broker(&self) -> bool {
        self.0.accept_without_broker
    }

    /// The largest request body taken.
    pub fn max_body(&self) -> usize {
        self.0.max_body
    }

    pub fn health(&self) -> &Health {
        &self.0.health
    }

    pub fn schema(&self) -> &str {
        &self.0.schema
    }

    /// Changes when new live output is stored.
    pub fn logs_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.logs_changed.subscribe()
    }

    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    pub fn silent_after_secs(&self) -> f64 {
        self.0.silent_after_secs
    }

    /// Whether `secret` is the fleet's executor bootstrap secret (none configured: no).
    /// Hashes are compared, so the time taken says nothing of the secret.
    pub fn bootstrap_secret_is(&self, secret: &str) -> bool {
        self.0.bootstrap_secret.as_deref()
            == Some(fleet_shared::auth::token_hash(secret.trim()).as_slice())
    }

    /// Whether the API itself is served over HTTPS.
    pub fn serves_https(&self) -> bool {
        self.0.serves_https
    }

    /// Whether unregistered executors get work (`dispatcher.unsafe_open_executors`).
    pub fn open_executors(&self) -> bool {
        self.0.open_executors
    }

    /// How often the collector samples the fleet's figures.
    pub fn history_secs(&self) -> u64 {
        self.0.history_secs
    }

    /// The broker session, or a 503 while there is none.
    pub fn publisher(&self) -> Result<fleet_shared::amqp::Publisher, ApiError> {
        self.0
            .publisher
            .borrow()
            .clone()
            .ok_or(ApiError::Unavailable("the message broker"))
    }

    /// Whether the broker can take work now: connected, and not blocked by a resource
    /// alarm. Right after start-up the first connection gets a moment to be made.
    pub async fn broker_can_take_work(&self) -> Result<(), ApiError> {
        use fleet_shared::http::BrokerState;
        let state = self.0.health.broker_settled(self.0.first_connect).await;
        if state != BrokerState::Up {
            metrics::counter!("fleet_submitter_refused_total", "reason" => "broker_down")
                .increment(1);
            return Err(ApiError::Unavailable("the message broker"));
        }
        if self.0.health.broker_blocked() {
            metrics::counter!("fleet_submitter_refused_total", "reason" => "broker_alarm")
                .increment(1);
            return Err(ApiError::Unavailable(
                "the message broker (blocked by a memory or disk alarm)",
            ));
        }
        Ok(())
    }

    pub fn broker_admin(&self) -> Result<&BrokerAdmin, ApiError> {
        self.0
            .broker_admin
            .as_ref()
            .ok_or(ApiError::Unavailable("the broker's management API"))
    }

    pub fn names(&self) -> &fleet_shared::amqp::Names {
        &self.0.names
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // Without the header, the console's session cookie stands in for it (see
        // crate::session); with it, the cookie is ignored.
        let cookie = match header {
            None => crate::session::token_of(&parts.method, &parts.headers)?,
            Some(_) => None,
        };
        let who = match cookie {
            Some(token) => {
                let header = format!("Bearer {token}");
                s.auth().principal(s.pool(), Some(&header)).await?
            }
            None => s.auth().principal(s.pool(), header).await?,
        };
        Ok(Caller { who })
    }
}
