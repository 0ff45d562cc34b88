//! Executors: `GET /v1/executors` lists them and `GET /v1/executors/{id}` shows one
//! with the attempts it holds and how it stands (registration, drain), for any role;
//! `DELETE /v1/executors/{id}` (admin) forgets one that is gone. The dispatcher writes `executors` from INFO: one that comes back
//! after being forgotten is listed again, as new.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, read, DbError};
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/executors", get(list))
        .route("/v1/executors/{id}", get(show).delete(forget))
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

async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<read::ExecutorsView>, ApiError> {
    caller.need(Permission::Read)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(read::executors(&client, s.silent_after_secs()).await?))
}
