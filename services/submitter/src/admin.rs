//! Administration over HTTP: API tokens, groups and memberships (admin role), and the
//! group listing (any role).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use fleet_core::api::admin::{NewGroupBody, NewTokenBody, TokensView};
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, DbError};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::error::{invalid, no_nul, parse_body, ApiError};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/groups", get(list_groups).post(create_group))
        .route("/v1/groups/{name}", delete(delete_group))
        .route(
            "/v1/groups/{name}/members/{executor}",
            put(add_member).delete(remove_member),
        )
}

fn group_name(name: &str) -> Result<GroupName, ApiError> {
    GroupName::parse(name).map_err(|e| invalid("group", e.to_string()))
}

fn executor_id(id: &str) -> Result<ExecutorId, ApiError> {
    ExecutorId::parse(id).map_err(|e| invalid("executor_id", e.to_string()))
}

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

async fn list_tokens(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let tokens = admin::list_tokens(&client).await?;
    Ok(Json(TokensView { tokens }).into_response())
}

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
