//! The API's OpenAPI document, and the routes that serve it: `GET /openapi.json` and a
//! page that reads it, `GET /docs` (embedded in the binary, like the console: it works
//! without the internet).
//!
//! Every route of the API is registered through `utoipa_axum`'s `routes!`, which takes its
//! path and method from the handler's `#[utoipa::path]`: a route cannot be served without
//! being documented. What every operation shares (the errors of authentication, of the
//! database, of a body too large) is added here, once. The console's pages (`/ui`, HTML)
//! are not in the document: they are for a browser, not a client; its session
//! (`/ui/session`, JSON) is. The committed copy is `docs/openapi.json` (`make openapi`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_core::api::ErrorResponse;
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fleet",
        description = "The HTTP API of Fleet's submitter: submit jobs, follow them, read their \
            results and output, and run the fleet (executors, groups, tokens, webhooks). Every \
            body is defined once in the crate fleet-core; docs/api.md explains the API.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(healthz, readyz, metrics, openapi_json, docs_page),
    components(schemas(ErrorResponse, fleet_core::api::events::Event)),
    tags(
        (name = "jobs", description = "Submitting jobs, reading them, their results and output, changing them"),
        (name = "events", description = "The event log (a page or Server-Sent Events) and webhooks"),
        (name = "executors", description = "Executors: listing, control, join tokens and registration"),
        (name = "groups", description = "Groups and memberships"),
        (name = "scheduler", description = "Pausing dispatching"),
        (name = "fleet", description = "Figures of the fleet"),
        (name = "admin", description = "API tokens"),
        (name = "console", description = "The web console's session (a cookie in place of the bearer token)"),
        (name = "service", description = "Health, readiness, metrics and this document"),
    ),
)]
struct ApiDoc;

/// The OpenAPI document's starting point: what is not a route of `routes::api()`.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The finished document, from what the routes declared: the version, the security
/// schemes, and the answers every operation shares.
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    // A document of derived types always serializes.
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token: `Authorization: Bearer <token>`. The role an \
                operation lists is the least it takes (reader < submitter < admin); a \
                submitter changes only the jobs it submitted."
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": crate::session::COOKIE,
            "description": "The web console's session cookie, set by `POST /ui/session`; \
                accepted in place of the bearer token."
        },
        "csrf": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Fleet-CSRF",
            "description": "With the session cookie, a change needs this header (the `csrf` \
                of `GET /ui/session`) and an `Origin`, if any, of this host."
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                add_shared_answers(path, op);
                not_null_when_optional(op);
            }
        }
    }
    doc
}

/// The answers that are not any one route's: no or a refused token, a role too low,
/// the database down (or not migrated yet), an internal error, a body too large.
fn add_shared_answers(path: &str, op: &mut Value) {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        })
    };
    let authenticated = op["security"].as_array().is_some_and(|reqs| {
        reqs.iter()
            .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
    });
    let api = path.starts_with("/v1/") || path.starts_with("/ui/");
    let has_body = op.get("requestBody").is_some();
    let Some(responses) = op["responses"].as_object_mut() else {
        return;
    };
    let mut add = |status: &str, answer: Value| {
        responses.entry(status).or_insert(answer);
    };
    if authenticated {
        add("401", error("No valid bearer token (or session cookie)"));
        add(
            "403",
            error(
                "The token's role may not do this, or (with the session cookie) a change \
                 without its CSRF header or from another origin",
            ),
        );
    }
    if has_body {
        add(
            "413",
            json!({
                "description": "The body is larger than `submitter.max_body_bytes`",
                "content": {"text/plain": {"schema": {"type": "string"}}}
            }),
        );
    }
    if api {
        add(
            "503",
            error("The database is unavailable (or not migrated yet); retry (`Retry-After`)"),
        );
        add(
            "500",
            error("An internal error (the details are in the submitter's log)"),
        );
    }
}

/// An optional body (`Option<T>` in the annotation) is absent or a `T`, never `null`:
/// utoipa says `oneOf: [null, T]`, which the server would refuse.
fn not_null_when_optional(op: &mut Value) {
    // `get_mut`, not indexing: indexing a missing key would add it, as `null`.
    let Some(content) = op
        .get_mut("requestBody")
        .and_then(|b| b.get_mut("content"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for media in content.values_mut() {
        let Some(one_of) = media["schema"]["oneOf"].as_array() else {
            continue;
        };
        let not_null: Vec<&Value> = one_of
            .iter()
            .filter(|s| s.get("type") != Some(&json!("null")))
            .collect();
        if let [only] = not_null[..] {
            media["schema"] = only.clone();
        }
    }
}

/// `GET /openapi.json` and `GET /docs`: no token needed, and served before the database
/// answers.
pub fn routes(doc: Arc<Value>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page))
        .with_state(doc)
}

/// This document.
#[utoipa::path(get, operation_id = "get_openapi", path = "/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)),
)]
async fn openapi_json(State(doc): State<Arc<Value>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}

const DOCS_HTML: &str = include_str!("../ui/docs.html");

/// A page that reads this document and shows every operation, its parameters, bodies and
/// answers, and the schemas.
#[utoipa::path(get, operation_id = "get_docs", path = "/docs", tag = "service",
    responses((status = 200, description = "The API's reference, as a web page", content_type = "text/html", body = String)),
)]
async fn docs_page() -> Response {
    // The page is one file, its script and style inline; it reads only this host's
    // document and puts every text of it through its escaping.
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(DOCS_HTML),
    )
        .into_response()
}

// The three below are served by `fleet_shared::http::health_routes`, by every service;
// these functions only document them.

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)),
)]
#[allow(dead_code)]
async fn healthz() {}

/// Ready: the broker and the database are reachable.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "What is not reachable", body = ErrorResponse),
    ),
)]
#[allow(dead_code)]
async fn readyz() {}

/// The service's metrics and its process's, in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)),
)]
#[allow(dead_code)]
async fn metrics() {}
