//! One executor: `GET /v1/executors/{id}` (any role) shows it with the attempts it holds
//! and how it stands (registration, drain); `DELETE /v1/executors/{id}` (admin) forgets
//! one that is gone. The dispatcher writes `executors` from INFO: one that comes back
//! after being forgotten is listed again, as new.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, read, DbError};
use fleet_shared::id::ExecutorId;

use crate::api::{invalid, ApiError, AppState};
use crate::auth::Caller;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/executors/{id}", get(show).delete(forget))
}

fn executor_id(id: &str) -> Result<ExecutorId, ApiError> {
    ExecutorId::parse(id).map_err(|e| invalid("executor_id", e.to_string()))
}

async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<read::ExecutorDetail>, ApiError> {
    caller.need(Permission::Read)?;
    let id = executor_id(&id)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    read::executor(&client, id.as_str(), s.silent_after_secs())
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("executor"))
}

async fn forget(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.need(Permission::Admin)?;
    let id = executor_id(&id)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    admin::forget_executor(&mut client, &id, s.silent_after_secs()).await?;
    tracing::info!(executor = %id, by = %caller.who.name, "executor forgotten");
    Ok(StatusCode::NO_CONTENT)
}
