//! The API's routes: every resource module's, under one body limit, behind the gate that
//! answers 503 until the migrations are applied; and the OpenAPI document they make.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::Router;
use fleet_shared::http::Health;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the API, each with its OpenAPI operation.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
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
}

/// The OpenAPI document of the API (what `GET /openapi.json` serves).
pub fn openapi() -> serde_json::Value {
    crate::openapi::finish(api().split_for_parts().1)
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body();
    let health = state.health().clone();
    let (api, doc) = api().split_for_parts();
    let doc = Arc::new(crate::openapi::finish(doc));
    // The console's pages are HTML for a browser, not operations for a client: they are
    // left out of the document on purpose (its session, JSON, is in it).
    api.merge(crate::ui::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            until_migrated(health.clone(), req, next)
        }))
        .with_state(state)
        .merge(crate::openapi::routes(doc))
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

#[cfg(test)]
mod tests {
    /// `OpenApiRouter` also has a plain `route`, which serves a route without its
    /// operation: outside the console's pages (and the document's own routes), every
    /// route goes through `routes!`, so that none is served undocumented.
    #[test]
    fn no_api_route_bypasses_the_document() -> std::io::Result<()> {
        // Spelt in two, so that this file does not match itself.
        let plain = concat!(".rou", "te(");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || ["ui.rs", "openapi.rs"].contains(&name) {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            assert!(
                !text.contains(plain),
                "{name} serves a route with `route(`: register it with `routes!` and \
                 #[utoipa::path], then `make openapi`"
            );
        }
        Ok(())
    }
}
