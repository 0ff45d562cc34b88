//! Executor identity: one-time join tokens (admin), registration (with a join token: the
//! executor gets a broker user of its own, restricted to its queue, its groups' exchanges
//! and routing keys carrying its id), and revocation (admin: the broker user is deleted,
//! which closes its connections; its attempts are lost at the dispatcher's next round).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleet_core::api::executors::{NewJoinTokenBody, Registered, RegistrationBody, Revoked};
use fleet_shared::amqp;
use fleet_shared::auth::Permission;
use fleet_shared::db::{admin, DbError};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;

use crate::auth::Caller;
use crate::broker_admin::BrokerAdminError;
use crate::error::{invalid, parse_body, ApiError};
use crate::state::AppState;

/// The longest a join token may live: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/executors/register", post(register))
        .route("/v1/executors/{id}/revoke", post(revoke))
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

/// Authenticated by the join token in the body, not by a bearer token.
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
