//! Operators' control of executors (admin): drain, resume, cancel an attempt. Sent as
//! `control` messages on the group exchanges: to one executor (`control.<id>`, published
//! on `default`, from where it reaches the executor's queue through any of its groups) or
//! to every executor of a group and its subgroups (`control.all` on the group's exchange).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::executors::{CancelAttemptBody, ControlSent};
use fleet_core::api::ErrorResponse;
use fleet_shared::amqp::{self, keys, AmqpError, Outgoing};
use fleet_shared::auth::Permission;
use fleet_shared::db::{control, DbError};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;
use fleet_shared::proto::{self, Control, ControlAction};

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(drain_executor))
        .routes(routes!(resume_executor))
        .routes(routes!(cancel_attempt))
        .routes(routes!(drain_group))
        .routes(routes!(resume_group))
}

enum Target {
    Executor(ExecutorId),
    Group(GroupName),
}

/// Publishes one control message (confirmed, mandatory: nobody to receive it is a 404).
async fn send(s: &AppState, target: &Target, action: ControlAction) -> Result<Response, ApiError> {
    let publisher = s.publisher()?;
    let n = s.names();
    let mut answer = ControlSent {
        action: action.name().to_owned(),
        executor_id: None,
        group: None,
        sent: true,
    };
    let (exchange, key) = match target {
        Target::Executor(id) => {
            answer.executor_id = Some(id.clone());
            (n.root_exchange(), keys::control(id))
        }
        Target::Group(g) => {
            // Publishing to an exchange that does not exist would close the channel;
            // declaring it (and its lineage) is idempotent.
            amqp::declare_group(publisher.channel(), n, g)
                .await
                .map_err(broker)?;
            answer.group = Some(g.clone());
            (n.group_exchange(g), keys::CONTROL_ALL.to_owned())
        }
    };
    let body = proto::encode(&Control {
        action: action.clone(),
    });
    match publisher
        .publish(Outgoing::new(exchange, key, body).mandatory())
        .await
    {
        Ok(()) => {}
        Err(AmqpError::Unroutable { .. }) => {
            return Err(ApiError::NotFound(match target {
                Target::Executor(_) => "executor (none with that id has a queue on the broker)",
                Target::Group(_) => "executor in that group or its subgroups",
            }))
        }
        Err(e) => return Err(broker(e)),
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

fn broker(e: AmqpError) -> ApiError {
    tracing::warn!(error = %e, "control message not sent");
    ApiError::Unavailable("the message broker")
}

fn executor(id: &str) -> Result<Target, ApiError> {
    ExecutorId::parse(id)
        .map(Target::Executor)
        .map_err(|e| invalid("executor_id", e.to_string()))
}

fn group(name: &str) -> Result<Target, ApiError> {
    GroupName::parse(name)
        .map(Target::Group)
        .map_err(|e| invalid("group", e.to_string()))
}

/// Drains an executor: it takes no new work and finishes what it holds. Kept until
/// resumed, across restarts.
#[utoipa::path(post, path = "/v1/executors/{id}/drain", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    responses(
        (status = 202, description = "The control message was sent", body = ControlSent),
        (status = 400, description = "Not an executor id", body = ErrorResponse),
        (status = 404, description = "No executor with that id has a queue on the broker", body = ErrorResponse),
        (status = 503, description = "The broker is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn drain_executor(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let target = executor(&id)?;
    let answer = send(&s, &target, ControlAction::Drain).await?;
    // Kept, so that it holds across the executor's restarts and the dispatcher's.
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    control::set_drained(&mut client, s.schema(), &id, true, &caller.who.name).await?;
    Ok(answer)
}

/// Resumes a drained executor.
#[utoipa::path(post, path = "/v1/executors/{id}/resume", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    responses(
        (status = 202, description = "The control message was sent", body = ControlSent),
        (status = 400, description = "Not an executor id", body = ErrorResponse),
        (status = 404, description = "No executor with that id has a queue on the broker", body = ErrorResponse),
        (status = 503, description = "The broker is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn resume_executor(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let target = executor(&id)?;
    let mut client = s.pool().get().await.map_err(DbError::from)?;
    control::set_drained(&mut client, s.schema(), &id, false, &caller.who.name).await?;
    drop(client);
    send(&s, &target, ControlAction::Resume).await
}

/// Drains every executor of a group and its subgroups.
#[utoipa::path(post, path = "/v1/groups/{name}/drain", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses(
        (status = 202, description = "The control message was sent", body = ControlSent),
        (status = 400, description = "Not a group name", body = ErrorResponse),
        (status = 404, description = "No executor in that group or its subgroups", body = ErrorResponse),
        (status = 503, description = "The broker is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn drain_group(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    send(&s, &group(&name)?, ControlAction::Drain).await
}

/// Resumes every executor of a group and its subgroups.
#[utoipa::path(post, path = "/v1/groups/{name}/resume", tag = "groups",
    params(("name" = String, Path, description = "The group's name")),
    responses(
        (status = 202, description = "The control message was sent", body = ControlSent),
        (status = 400, description = "Not a group name", body = ErrorResponse),
        (status = 404, description = "No executor in that group or its subgroups", body = ErrorResponse),
        (status = 503, description = "The broker is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn resume_group(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    send(&s, &group(&name)?, ControlAction::Resume).await
}

/// Kills one attempt an executor holds (the task then follows its retry rules).
#[utoipa::path(post, path = "/v1/executors/{id}/cancel", tag = "executors",
    params(("id" = String, Path, description = "The executor's id")),
    request_body = CancelAttemptBody,
    responses(
        (status = 202, description = "The control message was sent", body = ControlSent),
        (status = 400, description = "Not an executor id, or a bad body", body = ErrorResponse),
        (status = 404, description = "No executor with that id has a queue on the broker", body = ErrorResponse),
        (status = 503, description = "The broker is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn cancel_attempt(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let b: CancelAttemptBody = crate::error::parse_body(&body)?;
    send(
        &s,
        &executor(&id)?,
        ControlAction::Cancel {
            task_id: b.task_id,
            attempt: b.attempt,
        },
    )
    .await
}
