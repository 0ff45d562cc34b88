//! `GET /v1/stats` (any role): per group, subgroups included, the tasks waiting and
//! running, the executors and their slots, and the jobs finished lately.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fleet_shared::auth::Permission;
use fleet_shared::db::{stats, DbError};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/stats", get(get_stats))
}

async fn get_stats(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<stats::StatsView>, ApiError> {
    caller.need(Permission::Read)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(
        stats::stats(&mut client, s.silent_after_secs()).await?,
    ))
}
