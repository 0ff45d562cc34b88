//! `GET /v1/stats` (any role): per group, subgroups included, the tasks waiting and
//! running, the executors and their slots, and the jobs finished lately.
//! `GET /v1/stats/history?minutes=N` (any role): the same figures as the collector
//! sampled them over the last N minutes (default 60).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::Permission;
use fleet_shared::db::{stats, DbError};

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_stats))
        .routes(routes!(get_history))
}

/// Per group, subgroups included: the tasks waiting and running, the executors and
/// their slots, and the jobs finished lately.
#[utoipa::path(get, path = "/v1/stats", tag = "fleet",
    responses((status = 200, description = "The figures, read in one snapshot", body = fleet_core::api::stats::StatsView)),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
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

/// The figures of `GET /v1/stats` as the collector sampled them, every `step_secs`, over
/// the last `minutes`.
#[utoipa::path(get, operation_id = "get_stats_history", path = "/v1/stats/history", tag = "fleet",
    params(("minutes" = Option<u32>, Query, minimum = 1, maximum = 1440, description = "How far back (default 60)")),
    responses(
        (status = 200, description = "Each group's samples, oldest first", body = fleet_core::api::stats::StatsHistory),
        (status = 400, description = "A bad or unknown parameter (named in `field`)", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
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
