//! Executors: `GET /v1/executors` lists them and `GET /v1/executors/{id}` shows one
//! with the attempts it holds and how it stands (registration, drain), for any role;
//! `DELETE /v1/executors/{id}` (admin) forgets one that is gone. The dispatcher writes `executors` from INFO: one that comes back
//! after being forgotten is listed again, as new.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, read, DbError};
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, forget))
}

fn executor_id(id: &str) -> Result<ExecutorId, ApiError> {
    ExecutorId::parse(id).map_err(|e| invalid("executor_id", e.to_string()))
}

/// One executor: what the listing shows, and the attempts it holds, its registration
/// and its drain.
#[utoipa::path(get, operation_id = "get_executor", path = "/v1/executors/{id}", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    responses(
        (status = 200, description = "The executor", body = fleet_core::api::executors::ExecutorDetail),
        (status = 400, description = "Not an executor id", body = ErrorResponse),
        (status = 404, description = "No such executor", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
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

/// Forgets an executor that is gone (one that comes back is listed again, as new).
#[utoipa::path(delete, operation_id = "forget_executor", path = "/v1/executors/{id}", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 400, description = "Not an executor id", body = ErrorResponse),
        (status = 404, description = "No such executor", body = ErrorResponse),
        (status = 409, description = "The executor is alive or holds attempts", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
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

/// Every executor the dispatcher has heard of.
#[utoipa::path(get, operation_id = "list_executors", path = "/v1/executors", tag = "executors",
    responses((status = 200, description = "The executors", body = fleet_core::api::executors::ExecutorsView)),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<read::ExecutorsView>, ApiError> {
    caller.need(Permission::Read)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(read::executors(&client, s.silent_after_secs()).await?))
}
