//! Jobs once submitted: finding them (`GET /v1/jobs`, filters and keyset pages), reading
//! one and its results, changing, cancelling and running them again. Who sees what is
//! the rule in `fleet_shared::auth` (a submitter token lists its own jobs only).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use fleet_core::api::jobs::{Cancelled, JobChanged, JobPatch, Rerun};
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::{self, JobAccess, Permission};
use fleet_shared::db::control::{self, JobChange};
use fleet_shared::db::read::{self, JobFilter, OwnerFilter};
use fleet_shared::db::DbError;
use fleet_shared::error::Transience;
use fleet_shared::group::GroupName;
use fleet_shared::id::{JobId, TokenId};
use fleet_shared::state::JobState;

use crate::auth::Caller;
use crate::error::{bad_id, invalid, no_nul, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job, change_job))
        .routes(routes!(get_results))
        .routes(routes!(cancel_job))
        .routes(routes!(rerun_job))
        .routes(routes!(rerun_task))
        .routes(routes!(cancel_task))
}

/// Cancels a job: its tasks not yet handed out end `cancelled` at once, and the attempts
/// running on executors are killed (their tasks end `cancelled` when the executors
/// report, within a second or so).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 202, description = "Cancelled, or being cancelled", body = Cancelled),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job (or one the caller may not read)", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn cancel_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    cancel(&s, &caller, &id, None).await
}

/// Cancels one task of a job (by id, name or index) and the tasks that depend on it.
#[utoipa::path(post, path = "/v1/jobs/{id}/tasks/{task}/cancel", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("task" = String, Path, description = "The task's id, name or index in the job"),
    ),
    responses(
        (status = 202, description = "Cancelled, or being cancelled", body = Cancelled),
        (status = 400, description = "The job id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job, or no such task in it", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn cancel_task(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    cancel(&s, &caller, &id, Some(&task)).await
}

/// Runs a finished job's failed and cancelled tasks again, with their dependents, as new
/// attempts.
#[utoipa::path(post, operation_id = "retry_job", path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 202, description = "The tasks run again", body = Rerun),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job is not finished, or nothing of it failed or was cancelled", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn rerun_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Rerun>), ApiError> {
    rerun(&s, &caller, &id, None).await
}

/// Runs one failed or cancelled task of a finished job again (by id, name or index),
/// with its dependents.
#[utoipa::path(post, operation_id = "retry_task", path = "/v1/jobs/{id}/tasks/{task}/retry", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("task" = String, Path, description = "The task's id, name or index in the job"),
    ),
    responses(
        (status = 202, description = "The task runs again", body = Rerun),
        (status = 400, description = "The job id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job, or no such task in it", body = ErrorResponse),
        (status = 409, description = "The job is not finished, or the task neither failed nor was cancelled", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn rerun_task(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Rerun>), ApiError> {
    rerun(&s, &caller, &id, Some(&task)).await
}

/// The job `id` names, once the caller may control it (404 if it may not even read it,
/// 403 if it may only read it), with a database connection.
pub async fn controlled(
    s: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(fleet_shared::db::Client, JobId), ApiError> {
    job_for(s, caller, id, JobAccess::Control).await
}

/// The job `id` names, once the caller may do `access` to it, with a connection.
pub async fn job_for(
    s: &AppState,
    caller: &Caller,
    id: &str,
    access: JobAccess,
) -> Result<(fleet_shared::db::Client, JobId), ApiError> {
    caller.need(Permission::Read)?;
    let id: JobId = id.parse().map_err(bad_id)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let owner = read::job_owner(&client, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    caller.may(owner, access)?;
    Ok((client, id))
}

/// The task of a job a path names (its id, name or index), if it names one.
async fn task_in(
    client: &fleet_shared::db::Client,
    job: JobId,
    task: Option<&str>,
) -> Result<Option<fleet_shared::id::TaskId>, ApiError> {
    let Some(t) = task else { return Ok(None) };
    control::find_task(client, job, t)
        .await?
        .map(Some)
        .ok_or(ApiError::NotFound("task in that job"))
}

/// Runs a finished job's failed and cancelled tasks again (or one of them), with their
/// dependents, as new attempts.
async fn rerun(
    s: &AppState,
    caller: &Caller,
    id: &str,
    task: Option<&str>,
) -> Result<(StatusCode, Json<Rerun>), ApiError> {
    let (mut client, id) = controlled(s, caller, id).await?;
    let task_id = task_in(&client, id, task).await?;
    match control::rerun(&mut client, s.schema(), id, task_id).await? {
        control::Rerun::Started(tasks) => {
            tracing::info!(job_id = %id, tasks = tasks.len(), by = %caller.who.name, "rerun");
            Ok((
                StatusCode::ACCEPTED,
                Json(Rerun {
                    job_id: id,
                    rerun: tasks,
                }),
            ))
        }
        control::Rerun::NoSuchJob => Err(ApiError::NotFound("job")),
        control::Rerun::NotFinished => Err(ApiError::Conflict(
            "the job is not finished: cancel it first, or wait for it to end".into(),
        )),
        control::Rerun::NothingToRerun => Err(ApiError::Conflict(match task {
            Some(_) => "that task did not fail and was not cancelled: nothing to rerun".into(),
            None => "no task of the job failed or was cancelled: nothing to rerun".into(),
        })),
    }
}

/// Cancels a job, or one task of it (by id, name or index) and its dependents. 202:
/// what could end at once has; attempts running on executors are being killed, and
/// their tasks end `cancelled` when the executors report (within a second or so).
async fn cancel(
    s: &AppState,
    caller: &Caller,
    id: &str,
    task: Option<&str>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    let (mut client, id) = controlled(s, caller, id).await?;
    let task_id = task_in(&client, id, task).await?;
    // A cancel racing a result of the same task can deadlock with it in rare
    // interleavings (PostgreSQL aborts one): it is idempotent, so it is tried again.
    let mut tries = 0;
    let report = loop {
        tries += 1;
        match control::cancel(&mut client, s.schema(), id, task_id).await {
            Err(e) if e.is_transient() && tries < 3 => {
                tracing::info!(error = %e, "cancel tried again");
            }
            other => break other?.ok_or(ApiError::NotFound("job"))?,
        }
    };
    drop(client);
    tracing::info!(job_id = %id, task_id = ?task_id, by = %caller.who.name,
        cancelled_now = report.cancelled_now, killing = report.killing, "cancel");
    let answer = Cancelled {
        cancelled_now: report.cancelled_now as u64,
        job_id: id,
        killing: report.killing as u64,
        task_id,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Changes what may change of a job once submitted: the priority of its tasks not yet
/// handed out, and whether it is held.
#[utoipa::path(patch, operation_id = "patch_job", path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    request_body = JobPatch,
    responses(
        (status = 200, description = "What changed", body = JobChanged),
        (status = 400, description = "A bad id or body (it names the field)", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job is finished", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn change_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<JobChanged>, ApiError> {
    caller.need(Permission::Read)?;
    let patch: JobPatch = crate::error::parse_body(&body)?;
    if patch.priority.is_none() && patch.held.is_none() {
        return Err(invalid("body", "give priority, held or both"));
    }
    if let Some(p) = patch.priority {
        if !fleet_shared::job::PRIORITY_RANGE.contains(&p) {
            return Err(invalid(
                "priority",
                format!(
                    "must be in {}..={}",
                    fleet_shared::job::PRIORITY_RANGE.start(),
                    fleet_shared::job::PRIORITY_RANGE.end()
                ),
            ));
        }
    }
    let (mut client, id) = controlled(&s, &caller, &id).await?;
    let mut answer = JobChanged {
        held: None,
        job_id: id,
        priority: None,
        tasks_changed: None,
    };
    let check = |c: JobChange| match c {
        JobChange::Applied(n) => Ok(n),
        JobChange::NoSuchJob => Err(ApiError::NotFound("job")),
        JobChange::Finished => Err(ApiError::Conflict(
            "the job is finished: there is nothing left to change".into(),
        )),
    };
    if let Some(held) = patch.held {
        check(control::set_held(&mut client, s.schema(), id, held).await?)?;
        answer.held = Some(held);
    }
    if let Some(p) = patch.priority {
        let n = check(control::set_priority(&mut client, s.schema(), id, p).await?)?;
        answer.priority = Some(p);
        answer.tasks_changed = Some(n);
    }
    Ok(Json(answer))
}

/// Jobs per page unless `limit` says otherwise, and the most `limit` may say.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1_000;

/// Jobs, newest first, a page at a time (keyset: pass `next_cursor` as `cursor`). A
/// submitter token lists its own jobs only.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("state" = Option<String>, Query, description = "Comma-separated job states: pending, running, succeeded, failed, cancelled"),
        ("name_prefix" = Option<String>, Query, description = "Jobs whose name starts so"),
        ("group" = Option<String>, Query, description = "Jobs with a task targeting this group"),
        ("label" = Option<String>, Query, description = "`key=value`: jobs with a task requiring this label"),
        ("submitted_by" = Option<String>, Query, description = "A token's id or name"),
        ("mine" = Option<bool>, Query, description = "Only the caller's own jobs"),
        ("created_before" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("created_after" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Jobs per page (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = fleet_core::api::jobs::JobsPage),
        (status = 400, description = "A bad or unknown parameter (named in `field`)", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn list_jobs(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<read::JobsPage>, ApiError> {
    caller.need(Permission::Read)?;
    let mut filter = parse_filter(&q, &caller.who)?;
    if let Some(scope) = auth::list_scope(&caller.who) {
        filter.owners.push(match scope {
            Some(t) => OwnerFilter::Token(t),
            None => OwnerFilter::Nobody,
        });
    }
    let client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(read::jobs(&client, &filter).await?))
}

const PARAMS: &[&str] = &[
    "state",
    "name_prefix",
    "group",
    "label",
    "submitted_by",
    "mine",
    "created_before",
    "created_after",
    "cursor",
    "limit",
];

/// The query string of `GET /v1/jobs` as a filter; a 400 names the parameter that is
/// wrong (an unknown one too: a misspelt filter must not silently list everything).
pub fn parse_filter(
    q: &HashMap<String, String>,
    caller: &auth::Principal,
) -> Result<JobFilter, ApiError> {
    if let Some(k) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(invalid(
            k,
            format!("unknown parameter; known: {}", PARAMS.join(", ")),
        ));
    }
    let mut f = JobFilter {
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    if let Some(v) = q.get("state") {
        for s in v.split(',').filter(|s| !s.is_empty()) {
            f.states.push(JobState::parse(s).ok_or_else(|| {
                invalid(
                    "state",
                    format!("{s:?} is not one of pending, running, succeeded, failed, cancelled"),
                )
            })?);
        }
    }
    if let Some(v) = q.get("name_prefix") {
        no_nul("name_prefix", v)?;
        f.name_prefix = Some(v.clone());
    }
    if let Some(v) = q.get("group") {
        f.group = Some(GroupName::parse(v).map_err(|e| invalid("group", e.to_string()))?);
    }
    if let Some(v) = q.get("label") {
        no_nul("label", v)?;
        let (k, val) = v
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| invalid("label", "must be key=value"))?;
        f.label = Some((k.to_owned(), val.to_owned()));
    }
    if let Some(v) = q.get("submitted_by") {
        no_nul("submitted_by", v)?;
        f.owners.push(match v.parse::<uuid::Uuid>() {
            Ok(id) => OwnerFilter::Token(TokenId::from_uuid(id)),
            Err(_) => OwnerFilter::Named(v.clone()),
        });
    }
    match q.get("mine").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => f.owners.push(match caller.token_id {
            Some(t) => OwnerFilter::Token(t),
            None => OwnerFilter::Untokened(caller.name.clone()),
        }),
        Some(_) => return Err(invalid("mine", "must be true or false")),
    }
    let time = |k: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        q.get(k)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| invalid(k, format!("must be an RFC 3339 time: {e}")))
            })
            .transpose()
    };
    f.created_before = time("created_before")?;
    f.created_after = time("created_after")?;
    if let Some(v) = q.get("cursor") {
        f.after = Some(
            v.parse::<JobId>()
                .map_err(|_| invalid("cursor", "not a cursor from a previous page"))?,
        );
    }
    if let Some(v) = q.get("limit") {
        f.limit = v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| invalid("limit", format!("must be 1 to {MAX_LIMIT}")))?;
    }
    Ok(f)
}

/// One job, its tasks and their attempts. `env` values are hidden (`null`) from a caller
/// that is neither the job's owner nor an admin.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = fleet_core::api::jobs::JobView),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job (or one the caller may not read)", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn get_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<read::JobView>, ApiError> {
    caller.need(Permission::Read)?;
    let id: JobId = id.parse().map_err(bad_id)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let mut job = read::job(&client, id, s.silent_after_secs(), s.open_executors())
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let owner = job.submitted_by.token_id;
    caller.may(owner, JobAccess::Read)?;
    if caller.may(owner, JobAccess::ReadSecrets).is_err() {
        job.hide_env_values();
    }
    Ok(Json(job))
}

/// The recorded result of every task of a job (for an `each` task, of every member).
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job's results", body = fleet_core::api::jobs::ResultsView),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job (or one the caller may not read)", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn get_results(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<read::ResultsView>, ApiError> {
    caller.need(Permission::Read)?;
    let id: JobId = id.parse().map_err(bad_id)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let owner = read::job_owner(&client, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    caller.may(owner, JobAccess::Read)?;
    read::results(&client, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("job"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::auth::{Principal, Role};

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn field(r: Result<JobFilter, ApiError>) -> String {
        match r {
            Err(ApiError::Invalid(f)) => f.field,
            other => panic!("expected a 400, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn every_filter_is_read_and_a_bad_one_is_named() {
        let me = Principal {
            token_id: Some(TokenId::new()),
            name: "ci".into(),
            role: Role::Submitter,
        };
        let f = parse_filter(
            &q(&[
                ("state", "running,failed"),
                ("name_prefix", "nightly-"),
                ("group", "lab.gpu"),
                ("label", "gpu=a100"),
                ("mine", "true"),
                ("created_after", "2026-01-01T00:00:00Z"),
                ("limit", "1000"),
            ]),
            &me,
        )
        .expect("valid");
        assert_eq!(f.states, vec![JobState::Running, JobState::Failed]);
        assert_eq!(f.name_prefix.as_deref(), Some("nightly-"));
        assert_eq!(f.group.as_ref().map(|g| g.as_str()), Some("lab.gpu"));
        assert_eq!(f.label, Some(("gpu".into(), "a100".into())));
        assert_eq!(f.owners, vec![OwnerFilter::Token(me.token_id.expect("id"))]);
        assert!(f.created_after.is_some() && f.created_before.is_none());
        assert_eq!(f.limit, 1000);
        assert_eq!(
            parse_filter(&q(&[]), &me).expect("empty").limit,
            DEFAULT_LIMIT
        );

        assert_eq!(field(parse_filter(&q(&[("state", "done")]), &me)), "state");
        assert_eq!(field(parse_filter(&q(&[("limit", "1001")]), &me)), "limit");
        assert_eq!(field(parse_filter(&q(&[("limit", "0")]), &me)), "limit");
        assert_eq!(field(parse_filter(&q(&[("label", "gpu")]), &me)), "label");
        assert_eq!(field(parse_filter(&q(&[("group", "Bad")]), &me)), "group");
        assert_eq!(field(parse_filter(&q(&[("cursor", "x")]), &me)), "cursor");
        assert_eq!(
            field(parse_filter(&q(&[("created_before", "today")]), &me)),
            "created_before"
        );
        assert_eq!(field(parse_filter(&q(&[("stat", "running")]), &me)), "stat");
    }
}
