//! Submitting over HTTP: `POST /v1/jobs` (one job, an optional `Idempotency-Key`) and
//! `POST /v1/jobs/batch`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::jobs::{BatchBody, BatchSubmitted, Submitted};
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::Permission;
use fleet_shared::db::{submit, DbError};
use fleet_shared::id::JobId;
use fleet_shared::job::{FieldError, JobSpec};

use crate::auth::Caller;
use crate::error::{invalid, parse_json, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job))
        .routes(routes!(submit_batch))
}

/// Parses a job, naming the field that is wrong (`tasks[0].argv`) on failure.
pub fn parse_job(body: &[u8]) -> Result<JobSpec, FieldError> {
    parse_json(body)
}

/// Submits a job. With an `Idempotency-Key`, submitting again with the same API token
/// answers the job the key first made for that token (200, `created: false`) instead of
/// making another. Keys are per token: another token's key never names its job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters: the same key from the same API token names the same job (keys are per token)")),
    request_body = JobSpec,
    responses(
        (status = 201, description = "The job was made", body = Submitted),
        (status = 200, description = "The idempotency key named a job this API token submitted before", body = Submitted),
        (status = 400, description = "The job is not valid (`field` names what is wrong, e.g. `tasks[0].argv`)", body = ErrorResponse),
        (status = 503, description = "The broker cannot take work now (down, or its resource alarm is on), or the database is unavailable; retry", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn submit_job(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Submit)?;
    let spec = parse_job(&body).map_err(ApiError::Invalid)?;
    let mut job = spec.validate().map_err(ApiError::Invalid)?;
    s.secrets().prepare(&mut job).map_err(ApiError::Invalid)?;
    // A valid job the fleet cannot start now is refused, not parked: the client is told
    // at once and retries (unless the operator chose to accept without a broker).
    if !s.accept_without_broker() {
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
    let tickets = s.inserter().insert(vec![new]).await?;
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
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = BatchBody,
    responses(
        (status = 200, description = "One entry per job, in the order of the request", body = BatchSubmitted),
        (status = 400, description = "A job is not valid (`field` names it, e.g. `jobs[3].job.tasks[0].argv`)", body = ErrorResponse),
        (status = 503, description = "The broker cannot take work now, or the database is unavailable; retry", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
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
        let in_batch = |f: fleet_shared::job::FieldError| {
            invalid(&format!("jobs[{i}].job.{}", f.field), f.message)
        };
        let mut job = item.job.validate().map_err(in_batch)?;
        s.secrets().prepare(&mut job).map_err(in_batch)?;
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
    if !s.accept_without_broker() {
        s.broker_can_take_work().await?;
    }
    let tickets = s.inserter().insert(new).await?;
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
