//! The API's routes: every resource module's, under one body limit, behind the gate that
//! answers 503 until the migrations are applied.

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::Router;
use fleet_shared::http::Health;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let limit = state.max_body();
    let health = state.health().clone();
    Router::new()
        .merge(crate::submit::routes())
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
        .merge(crate::session::routes())
        .merge(crate::ui::routes())
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
