//! Executor identity: one-time join tokens (admin), registration (with a join token: the
//! executor gets a broker user of its own, restricted to its queue, its groups' exchanges
//! and routing keys carrying its id), and revocation (admin: the broker user is deleted,
//! which closes its connections; its attempts are lost at the dispatcher's next round).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::executors::{NewJoinTokenBody, Registered, RegistrationBody, Revoked};
use fleet_core::api::ErrorResponse;
use fleet_shared::amqp;
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, DbError};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::broker_admin::BrokerAdminError;
use crate::error::{invalid, parse_body, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The longest a join token may live: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_join_token))
        .routes(routes!(register))
        .routes(routes!(revoke))
}

fn groups(field: &str, names: &[String]) -> Result<Vec<GroupName>, ApiError> {
    let mut out = Vec::new();
    for (i, g) in names.iter().enumerate() {
        let g =
            GroupName::parse(g).map_err(|e| invalid(&format!("{field}[{i}]"), e.to_string()))?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

fn broker(e: BrokerAdminError) -> ApiError {
    tracing::warn!(error = %e, "broker management failed");
    ApiError::Unavailable("the broker's management API")
}

/// Makes a one-time token an executor registers with; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/join-tokens", tag = "executors",
    request_body = NewJoinTokenBody,
    responses(
        (status = 201, description = "The join token", body = fleet_core::api::executors::NewJoinToken),
        (status = 400, description = "A bad body, group or `ttl_secs`", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn create_join_token(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let b: NewJoinTokenBody = parse_body(&body)?;
    let groups = groups("groups", &b.groups)?;
    let ttl = b.ttl_secs.unwrap_or(3600);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(invalid("ttl_secs", format!("must be 1 to {MAX_TTL_SECS}")));
    }
    let client = s.pool().get().await.map_err(DbError::from)?;
    let made = admin::create_join_token(&client, &groups, ttl as f64).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Registers an executor: it gets a broker user of its own, held by RabbitMQ to its own
/// queue, groups and id. Authenticated by what the body carries (a join token, or the
/// fleet's executor bootstrap secret), not by a bearer token.
#[utoipa::path(post, operation_id = "register_executor", path = "/v1/executors/register", tag = "executors",
    request_body = RegistrationBody,
    responses(
        (status = 201, description = "Registered: the executor's broker credentials", body = Registered),
        (status = 400, description = "A bad body, executor id or group, or not one of join_token and bootstrap_secret", body = ErrorResponse),
        (status = 401, description = "The join token is unknown, already used or expired, or the bootstrap secret is not this fleet's", body = ErrorResponse),
        (status = 409, description = "The token does not allow a group asked for, or the executor is registered already", body = ErrorResponse),
        (status = 503, description = "The broker (or its management API) or the database is unavailable", body = ErrorResponse),
    ),
    security(()),
)]
async fn register(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: RegistrationBody = parse_body(&body)?;
    let id =
        ExecutorId::parse(&b.executor_id).map_err(|e| invalid("executor_id", e.to_string()))?;
    let mut wanted = groups("groups", &b.groups)?;
    if wanted.is_empty() {
        wanted.push(GroupName::default_group());
    }
    let admin_api = s.broker_admin()?;
    let publisher = s.publisher()?;
    let n = s.names();
    let user = n.executor_user(&id);
    // First the token is spent and the id claimed (one transaction, nothing slow in it);
    // then the broker; a broker failure gives the token back.
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    // A join token is spent (and may limit the groups); the bootstrap secret is not, and
    // allows any groups.
    let (token_id, allowed) = match (&b.join_token, &b.bootstrap_secret) {
        (Some(join), None) => admin::use_join_token(&tx, join, &id)
            .await?
            .map(|(t, allowed)| (Some(t), allowed))
            .ok_or(ApiError::BadJoinToken)?,
        (None, Some(secret)) if s.bootstrap_secret_is(secret) => (None, Vec::new()),
        (None, Some(_)) => return Err(ApiError::BadJoinToken),
        _ => {
            return Err(invalid(
                "join_token",
                "give a join_token or the bootstrap_secret (one of them)",
            ))
        }
    };
    if let Some(g) = wanted
        .iter()
        .find(|g| !allowed.is_empty() && !allowed.iter().any(|a| g.is_within(a)))
    {
        return Err(ApiError::Conflict(format!(
            "this join token does not allow the group '{g}'"
        )));
    }
    // The bootstrap secret registers new ids only: an executor revoked (or registered
    // before) comes back with a join token, which an administrator gives.
    if token_id.is_none() && admin::ever_registered(&tx, &id).await? {
        return Err(ApiError::Conflict(format!(
            "executor {id} was registered before: the bootstrap secret registers new \
             executor ids only; register it again with a join token"
        )));
    }
    let before = admin::registered_groups(&tx, &id).await?;
    // A live credential is not replaced: an administrator revokes it first.
    if !admin::record_credential(&tx, &id, &user, &wanted).await? {
        return Err(ApiError::Conflict(format!(
            "executor {id} is already registered; revoke it first to register it again"
        )));
    }
    tx.commit().await.map_err(DbError::from)?;
    let dropped: Vec<GroupName> = before.into_iter().filter(|g| !wanted.contains(g)).collect();

    let password = fleet_shared::auth::new_token();
    let granted = async {
        // What the executor may not declare itself, declared for it.
        amqp::declare_exchanges(publisher.channel(), n)
            .await
            .map_err(|e| BrokerAdminError::Config(e.to_string()))?;
        amqp::declare_executor_queue(publisher.channel(), n, &id, &wanted)
            .await
            .map_err(|e| BrokerAdminError::Config(e.to_string()))?;
        amqp::unbind_executor_queue(publisher.channel(), n, &id, &dropped)
            .await
            .map_err(|e| BrokerAdminError::Config(e.to_string()))?;
        admin_api
            .grant(&user, &password, &n.executor_permissions(&id, &wanted))
            .await
    }
    .await;
    if let Err(e) = granted {
        if let Err(undo) = admin::undo_registration(&client, token_id, &id).await {
            tracing::error!(error = %undo, executor_id = %id, "could not give the join token back");
        }
        return Err(broker(e));
    }
    tracing::info!(executor_id = %id, broker_user = %user, "executor registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            amqp_prefix: n.prefix().to_owned(),
            broker_password: password,
            broker_user: user,
            executor_id: id,
            groups: wanted,
        }),
    )
        .into_response())
}

/// Revokes an executor's registration: its broker user is deleted, which closes its
/// connections.
#[utoipa::path(post, operation_id = "revoke_executor", path = "/v1/executors/{id}/revoke", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "Not an executor id", body = ErrorResponse),
        (status = 404, description = "No registered executor with that id", body = ErrorResponse),
        (status = 503, description = "The broker's management API is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let id = ExecutorId::parse(&id).map_err(|e| invalid("executor_id", e.to_string()))?;
    let admin_api = s.broker_admin()?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let Some(user) = admin::revoke_executor(&client, &id).await? else {
        return Err(ApiError::NotFound("registered executor"));
    };
    // Recorded first: if the broker call fails, a retry finds it revoked and deletes.
    admin_api.delete_user(&user).await.map_err(broker)?;
    tracing::info!(executor_id = %id, "executor revoked");
    Ok((
        StatusCode::OK,
        Json(Revoked {
            executor_id: id,
            revoked: true,
        }),
    )
        .into_response())
}
