//! `GET /v1/stats` (any role): per group, subgroups included, the tasks waiting and
//! running, the executors and their slots, and the jobs finished lately.
//! `GET /v1/stats/history?minutes=N` (any role): the same figures as the collector
//! sampled them over the last N minutes (default 60).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use fleet_shared::auth::Permission;
use fleet_shared::db::{stats, DbError};

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/stats", get(get_stats))
        .route("/v1/stats/history", get(get_history))
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

async fn get_history(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<stats::StatsHistory>, ApiError> {
    caller.need(Permission::Read)?;
    let mut query = fleet_core::api::stats::HistoryQuery::default();
    for (k, v) in &q {
        match k.as_str() {
            "minutes" => {
                query.minutes = Some(
                    v.parse()
                        .map_err(|_| invalid("minutes", "not a whole number of minutes"))?,
                )
            }
            other => return Err(invalid(other, "unknown parameter (known: minutes)")),
        }
    }
    let minutes = query.minutes().map_err(|e| invalid("minutes", e))?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(
        stats::history(&mut client, minutes, s.history_secs()).await?,
    ))
}
