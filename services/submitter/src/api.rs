//! The HTTP API: submit a job, read a job, its results, the executors.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_core::api::jobs::{BatchBody, BatchSubmitted, Submitted};
use fleet_shared::auth::{JobAccess, Permission, Role};
use fleet_shared::config::Config;
use fleet_shared::db::Pool;
use fleet_shared::db::{read, submit, DbError};
use fleet_shared::error::Transience;
use fleet_shared::http::{error_response, Health};
use fleet_shared::id::JobId;
use fleet_shared::job::{FieldError, JobSpec};

use crate::auth::Caller;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    pool: Pool,
    auth: crate::auth::Authenticator,
    max_body: usize,
    /// An executor silent this long shows as not alive, its tasks as `unknown`.
    silent_after_secs: f64,
    /// The broker connection's state, kept by the intake.
    health: Health,
    accept_without_broker: bool,
    /// How long a submission right after start-up waits for the first broker connection.
    first_connect: std::time::Duration,
    /// The intake's broker session, for control messages; `None` while reconnecting.
    publisher: tokio::sync::watch::Sender<Option<fleet_shared::amqp::Publisher>>,
    names: fleet_shared::amqp::Names,
    broker_admin: Option<crate::broker_admin::BrokerAdmin>,
    /// Writes submissions, grouping those that arrive together into one commit.
    inserter: crate::inserter::Inserter,
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
        publisher: tokio::sync::watch::Sender<Option<fleet_shared::amqp::Publisher>>,
        logs_changed: tokio::sync::watch::Sender<u64>,
    ) -> Self {
        Self(Arc::new(Inner {
            logs_changed,
            inserter: crate::inserter::Inserter::new(
                pool.clone(),
                cfg.database.schema.clone(),
                std::time::Duration::from_millis(cfg.database.pool_wait_ms),
            ),
            pool,
            schema: cfg.database.schema.clone(),
            auth: crate::auth::Authenticator::new(&cfg.auth),
            max_body: cfg.submitter.max_body_bytes,
            silent_after_secs: cfg.dispatcher.executor_timeout_secs as f64,
            health,
            accept_without_broker: cfg.submitter.accept_without_broker,
            first_connect: cfg.amqp.connect_timeout(),
            publisher,
            names: fleet_shared::amqp::Names::new(&cfg.amqp.prefix),
            broker_admin: crate::broker_admin::BrokerAdmin::new(&cfg.amqp)
                .map_err(|e| tracing::warn!(error = %e, "no broker management; executors cannot register"))
                .ok(),
        }))
    }
}

impl AppState {
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    pub fn schema(&self) -> &str {
        &self.0.schema
    }

    /// Changes when new live output is stored.
    pub fn logs_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.logs_changed.subscribe()
    }

    pub fn auth(&self) -> &crate::auth::Authenticator {
        &self.0.auth
    }

    pub fn silent_after_secs(&self) -> f64 {
        self.0.silent_after_secs
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

    pub fn broker_admin(&self) -> Result<&crate::broker_admin::BrokerAdmin, ApiError> {
        self.0
            .broker_admin
            .as_ref()
            .ok_or(ApiError::Unavailable("the broker's management API"))
    }

    pub fn names(&self) -> &fleet_shared::amqp::Names {
        &self.0.names
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.0.max_body;
    let health = state.0.health.clone();
    Router::new()
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/results", get(get_results))
        .route("/v1/executors", get(get_executors))
        .merge(crate::jobs::routes())
        .merge(crate::logs::routes())
        .merge(crate::events::routes())
        .merge(crate::scheduler::routes())
        .merge(crate::stats::routes())
        .merge(crate::executors::routes())
        .merge(crate::purge::routes())
        .merge(crate::admin::routes())
        .merge(crate::control::routes())
        .merge(crate::identity::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            until_migrated(health.clone(), req, next)
        }))
        .with_state(state)
}

/// Until the migrations are applied (the database has not answered since start-up),
/// every API call is a 503 at once, rather than a wait on a database that may never
/// answer.
async fn until_migrated(
    health: Health,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if health.migrated() {
        next.run(req).await
    } else {
        ApiError::Unavailable("the database").into_response()
    }
}

/// The API's error boundary: every variant is a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("a valid bearer token is required")]
    Unauthenticated,
    #[error("the join token is unknown, already used or expired")]
    BadJoinToken,
    #[error("the role {} may not do this", .0.as_str())]
    Forbidden(Role, Permission),
    /// The caller may read the job but not change it.
    #[error("the role {} may not change this job", .0.as_str())]
    NotYours(Role),
    #[error("{0}")]
    Conflict(String),
    /// What was asked for existed once and is no longer kept.
    #[error("{0}")]
    Gone(String),
    /// A dependency other than the database is down; the client should retry.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Invalid(e) => error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.to_string(),
                Some(e.field),
            ),
            Self::NotFound(what) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
                None,
            ),
            Self::Unauthenticated => {
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                    None,
                );
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                r
            }
            Self::BadJoinToken => error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the join token is unknown, already used or expired",
                Some("join_token".into()),
            ),
            Self::Forbidden(role, p) => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a {} token may not {}",
                    role.as_str(),
                    match p {
                        Permission::Read => "read",
                        Permission::Submit => "submit jobs",
                        Permission::Admin => "administer groups, executors and tokens",
                    }
                ),
                None,
            ),
            Self::NotYours(role) => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                match role {
                    Role::Reader => "a reader token may not change jobs",
                    _ => "a submitter token may only change the jobs it submitted",
                },
                None,
            ),
            Self::Conflict(why) => error_response(StatusCode::CONFLICT, "conflict", why, None),
            Self::Gone(why) => error_response(StatusCode::GONE, "gone", why, None),
            Self::Unavailable(what) => {
                let mut r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{what} is unavailable; retry later"),
                    None,
                );
                r.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, 1.into());
                r
            }
            Self::Db(e) if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry later",
                    None,
                )
            }
            // Details stay in the log: a 500 leaks nothing.
            Self::Db(e) => {
                tracing::error!(error = %e, "database error");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                    None,
                )
            }
        }
    }
}

/// Parses a job, naming the field that is wrong (`tasks[0].argv`) on failure.
pub fn parse_job(body: &[u8]) -> Result<JobSpec, FieldError> {
    parse_json(body)
}

/// Parses a JSON body, naming the field that is wrong on failure (`body` for the whole).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        FieldError {
            field: if path == "." { "body".into() } else { path },
            message: inner.to_string(),
        }
    })
}

impl From<fleet_shared::db::admin::AdminError> for ApiError {
    fn from(e: fleet_shared::db::admin::AdminError) -> Self {
        use fleet_shared::db::admin::AdminError;
        match e {
            AdminError::NotFound(what) => Self::NotFound(what),
            AdminError::Conflict(why) => Self::Conflict(why),
            AdminError::Db(e) => Self::Db(e),
        }
    }
}

/// A 400 naming the field that is wrong.
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

pub fn bad_id(_: uuid::Error) -> ApiError {
    invalid("job_id", "not a UUID")
}

async fn submit_job(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Submit)?;
    let spec = parse_job(&body).map_err(ApiError::Invalid)?;
    let job = spec.validate().map_err(ApiError::Invalid)?;
    // A valid job the fleet cannot start now is refused, not parked: the client is told
    // at once and retries (unless the operator chose to accept without a broker).
    if !s.0.accept_without_broker {
        s.broker_can_take_work().await?;
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(idempotency_key("Idempotency-Key", k)?),
        Some(Err(_)) => return Err(invalid("Idempotency-Key", KEY_RULE)),
    };
    let new = submit::NewJob {
        id: JobId::new(),
        idempotency_key: key,
        job,
        owner: caller.who.clone(),
    };
    let tickets = s.0.inserter.insert(vec![new]).await?;
    let t = tickets
        .first()
        .copied()
        .ok_or(DbError::Row("no ticket".into()))?;
    metrics::counter!("fleet_submitter_jobs_total", "via" => "http", "created" => t.created.to_string()).increment(1);
    let status = if t.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Submitted {
            created: t.created,
            job_id: t.job_id,
        }),
    )
        .into_response())
}

const KEY_RULE: &str = "must be 1 to 200 visible ASCII characters";

fn idempotency_key(field: &str, k: &str) -> Result<String, ApiError> {
    if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Ok(k.to_owned())
    } else {
        Err(invalid(field, KEY_RULE))
    }
}

/// Jobs in one `POST /v1/jobs/batch` at most.
pub const MAX_BATCH: usize = 10_000;

/// `POST /v1/jobs/batch`: many jobs, each with its own idempotency key, written in one
/// transaction. All or nothing: one invalid job refuses the request (400, naming it).
async fn submit_batch(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Submit)?;
    let batch: BatchBody = parse_json(&body).map_err(ApiError::Invalid)?;
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH {
        return Err(invalid("jobs", format!("must hold 1 to {MAX_BATCH} jobs")));
    }
    let mut new = Vec::with_capacity(batch.jobs.len());
    for (i, item) in batch.jobs.into_iter().enumerate() {
        let job = item
            .job
            .validate()
            .map_err(|f| invalid(&format!("jobs[{i}].job.{}", f.field), f.message))?;
        let key = item
            .idempotency_key
            .map(|k| idempotency_key(&format!("jobs[{i}].idempotency_key"), &k))
            .transpose()?;
        new.push(submit::NewJob {
            id: JobId::new(),
            idempotency_key: key,
            job,
            owner: caller.who.clone(),
        });
    }
    if !s.0.accept_without_broker {
        s.broker_can_take_work().await?;
    }
    let tickets = s.0.inserter.insert(new).await?;
    let created = tickets.iter().filter(|t| t.created).count();
    metrics::counter!("fleet_submitter_jobs_total", "via" => "http", "created" => "true")
        .increment(created as u64);
    metrics::counter!("fleet_submitter_jobs_total", "via" => "http", "created" => "false")
        .increment((tickets.len() - created) as u64);
    let jobs = tickets
        .iter()
        .map(|t| Submitted {
            created: t.created,
            job_id: t.job_id,
        })
        .collect();
    Ok((StatusCode::OK, Json(BatchSubmitted { jobs })).into_response())
}

async fn get_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<read::JobView>, ApiError> {
    caller.need(Permission::Read)?;
    let id: JobId = id.parse().map_err(bad_id)?;
    let client = s.0.pool.get().await.map_err(DbError::from)?;
    let mut job = read::job(&client, id, s.0.silent_after_secs)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let owner = job.submitted_by.token_id;
    caller.may(owner, JobAccess::Read)?;
    if caller.may(owner, JobAccess::ReadSecrets).is_err() {
        job.hide_env_values();
    }
    Ok(Json(job))
}

async fn get_results(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<read::ResultsView>, ApiError> {
    caller.need(Permission::Read)?;
    let id: JobId = id.parse().map_err(bad_id)?;
    let client = s.0.pool.get().await.map_err(DbError::from)?;
    let owner = read::job_owner(&client, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    caller.may(owner, JobAccess::Read)?;
    read::results(&client, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("job"))
}

async fn get_executors(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<read::ExecutorsView>, ApiError> {
    caller.need(Permission::Read)?;
    let client = s.0.pool.get().await.map_err(DbError::from)?;
    Ok(Json(read::executors(&client, s.0.silent_after_secs).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let e = parse_job(br#"{"tasks":[{"argv":"echo hi"}]}"#).expect_err("argv must be a list");
        assert_eq!(e.field, "tasks[0].argv");
        let e = parse_job(b"not json").expect_err("not json");
        assert_eq!(e.field, "body");
    }
}
