//! `DELETE /v1/jobs/{id}`: a finished job goes at once, with every row of it (its owner
//! or an admin). The collector purges the rest once `retention.finished_job_days` old.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use fleet_core::api::ErrorResponse;
use fleet_shared::db::retention::{self, Deleted};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(delete_job))
}

/// Deletes a finished job at once, with every row of it.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job has not finished, or attempts of it still run", body = ErrorResponse),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = [])),
)]
async fn delete_job(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (mut client, id) = crate::jobs::controlled(&s, &caller, &id).await?;
    match retention::delete_job(&mut client, id).await? {
        Deleted::Deleted => {
            tracing::info!(job = %id, by = %caller.who.name, "job deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Deleted::NoSuchJob => Err(ApiError::NotFound("job")),
        Deleted::NotFinished => Err(ApiError::Conflict(
            "the job has not finished: it can be deleted once it has".into(),
        )),
        Deleted::AttemptsHeld(n) => Err(ApiError::Conflict(format!(
            "the job has finished, but {n} attempt(s) of it still run (members of a task run \
             on every member, decided before they ended); delete it once they end"
        ))),
    }
}
