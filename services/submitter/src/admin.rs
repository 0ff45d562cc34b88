//! Administration over HTTP: API tokens, groups and memberships (admin role), and the
//! group listing (any role).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::admin::{NewGroupBody, NewTokenBody, TokensView};
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, DbError};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::error::{invalid, no_nul, parse_body, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(delete_group))
        .routes(routes!(add_member, remove_member))
}

fn group_name(name: &str) -> Result<GroupName, ApiError> {
    GroupName::parse(name).map_err(|e| invalid("group", e.to_string()))
}

fn executor_id(id: &str) -> Result<ExecutorId, ApiError> {
    ExecutorId::parse(id).map_err(|e| invalid("executor_id", e.to_string()))
}

/// Makes an API token; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "admin",
    request_body = NewTokenBody,
    responses(
        (status = 201, description = "The token, with its secret", body = fleet_core::api::admin::NewToken),
        (status = 400, description = "A bad body (it names the field)", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let b: NewTokenBody = parse_body(&body)?;
    let name = b.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    no_nul("name", name)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let made = admin::create_token(&client, name, b.role).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Every API token (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "admin",
    responses((status = 200, description = "The tokens", body = TokensView)),
    security(("bearer" = ["admin"]), ("session" = ["admin"])),
)]
async fn list_tokens(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let tokens = admin::list_tokens(&client).await?;
    Ok(Json(TokensView { tokens }).into_response())
}

/// Revokes a token: it stops working within 5 seconds on every submitter (at once on
/// this one).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such token", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.need(Permission::Admin)?;
    let id: uuid::Uuid = id.parse().map_err(|_| invalid("token_id", "not a UUID"))?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    if !admin::revoke_token(&client, id).await? {
        return Err(ApiError::NotFound("token"));
    }
    s.auth().forget();
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a group; its parent must exist (top-level groups are inside `default`).
#[utoipa::path(post, path = "/v1/groups", tag = "groups",
    request_body = NewGroupBody,
    responses(
        (status = 201, description = "The group", body = fleet_core::api::admin::GroupView),
        (status = 400, description = "A bad body or group name", body = ErrorResponse),
        (status = 409, description = "It exists already, or its parent does not", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn create_group(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let b: NewGroupBody = parse_body(&body)?;
    let name = GroupName::parse(&b.name).map_err(|e| invalid("name", e.to_string()))?;
    if let Some(d) = &b.description {
        if d.len() > 1000 {
            return Err(invalid("description", "at most 1000 bytes"));
        }
        no_nul("description", d)?;
    }
    let client = s.pool().get().await.map_err(DbError::from)?;
    let g = admin::create_group(&client, &name, b.description.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(g)).into_response())
}

/// Every group: those created, and those executors declare.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, description = "The groups", body = fleet_core::api::admin::GroupsView)),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn list_groups(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<admin::GroupsView>, ApiError> {
    caller.need(Permission::Read)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    Ok(Json(
        admin::list_groups(&client, s.silent_after_secs()).await?,
    ))
}

/// Deletes an empty group (no subgroups, members or unfinished tasks).
#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a group name", body = ErrorResponse),
        (status = 404, description = "No such group", body = ErrorResponse),
        (status = 409, description = "It is `default`, only declared, or not empty", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn delete_group(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.need(Permission::Admin)?;
    let name = group_name(&name)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    admin::delete_group(&mut client, &name, s.silent_after_secs()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts an executor in a group (besides the groups it declares).
#[utoipa::path(put, path = "/v1/groups/{name}/members/{executor}", tag = "groups",
    params(
        ("name" = String, Path, description = "The group's name"),
        ("executor" = String, Path, description = "The executor's id"),
    ),
    responses(
        (status = 204, description = "It is a member"),
        (status = 400, description = "Not a group name or executor id", body = ErrorResponse),
        (status = 404, description = "No such group", body = ErrorResponse),
        (status = 409, description = "The group is `default` or only declared", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn add_member(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, executor)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.need(Permission::Admin)?;
    let (name, executor) = (group_name(&name)?, executor_id(&executor)?);
    let client = s.pool().get().await.map_err(DbError::from)?;
    admin::add_member(&client, &name, &executor, s.silent_after_secs()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes an executor out of a group it was put in.
#[utoipa::path(delete, path = "/v1/groups/{name}/members/{executor}", tag = "groups",
    params(
        ("name" = String, Path, description = "The group's name"),
        ("executor" = String, Path, description = "The executor's id"),
    ),
    responses(
        (status = 204, description = "It is no longer a member"),
        (status = 400, description = "Not a group name or executor id", body = ErrorResponse),
        (status = 404, description = "It was not put in that group", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn remove_member(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, executor)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.need(Permission::Admin)?;
    let (name, executor) = (group_name(&name)?, executor_id(&executor)?);
    let client = s.pool().get().await.map_err(DbError::from)?;
    admin::remove_member(&client, &name, &executor).await?;
    Ok(StatusCode::NO_CONTENT)
}
