//! Pausing dispatching (admin): for a group and its subgroups, or the whole fleet.
//! Kept in PostgreSQL, so a pause holds across dispatcher restarts and failovers;
//! submissions are still accepted while paused.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use fleet_core::api::scheduler::{PauseChanged, PauseTarget, SchedulerStatus};
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::Permission;
use fleet_shared::db::{control, DbError};
use fleet_shared::group::GroupName;

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

fn target(body: &[u8]) -> Result<GroupName, ApiError> {
    let t: PauseTarget = if body.iter().all(u8::is_ascii_whitespace) {
        PauseTarget::default()
    } else {
        crate::error::parse_body(body)?
    };
    match t.group {
        None => Ok(GroupName::default_group()),
        Some(g) => GroupName::parse(&g).map_err(|e| invalid("group", e.to_string())),
    }
}

/// Whether dispatching is paused, and where.
#[utoipa::path(get, operation_id = "get_scheduler", path = "/v1/scheduler", tag = "scheduler",
    responses((status = 200, description = "The pauses in force", body = SchedulerStatus)),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn status(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<SchedulerStatus>, ApiError> {
    caller.need(Permission::Read)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let pauses = control::pauses(&client).await?;
    let fleet = pauses
        .iter()
        .any(|p| p.group == GroupName::default_group().as_str());
    Ok(Json(SchedulerStatus {
        fleet_paused: fleet,
        pauses,
    }))
}

/// Pauses dispatching for a group and its subgroups, or (an empty body) the whole fleet.
/// Submissions are still accepted.
#[utoipa::path(post, operation_id = "pause_dispatching", path = "/v1/scheduler/pause", tag = "scheduler",
    request_body(content = Option<PauseTarget>, description = "The group; empty: the whole fleet"),
    responses(
        (status = 200, description = "Paused", body = PauseChanged),
        (status = 400, description = "A bad body or group name", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn pause(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<PauseChanged>, ApiError> {
    caller.need(Permission::Admin)?;
    let group = target(&body)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    let new = control::pause(&mut client, s.schema(), &group, &caller.who.name).await?;
    tracing::info!(group = %group, by = %caller.who.name, new, "dispatching paused");
    Ok(Json(PauseChanged {
        group: group.to_string(),
        paused: true,
        was_paused: !new,
    }))
}

/// Resumes dispatching for a group, or (an empty body) the whole fleet.
#[utoipa::path(post, operation_id = "resume_dispatching", path = "/v1/scheduler/resume", tag = "scheduler",
    request_body(content = Option<PauseTarget>, description = "The group; empty: the whole fleet"),
    responses(
        (status = 200, description = "Resumed", body = PauseChanged),
        (status = 400, description = "A bad body or group name", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn resume(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<PauseChanged>, ApiError> {
    caller.need(Permission::Admin)?;
    let group = target(&body)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    let was = control::resume(&mut client, s.schema(), &group).await?;
    tracing::info!(group = %group, by = %caller.who.name, was, "dispatching resumed");
    Ok(Json(PauseChanged {
        group: group.to_string(),
        paused: false,
        was_paused: was,
    }))
}
