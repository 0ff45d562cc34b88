//! Jobs: submitting (`POST /v1/jobs`, `POST /v1/jobs/batch`), reading (`GET /v1/jobs`,
//! `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/results`) and changing them (`PATCH
//! /v1/jobs/{id}`, cancelling an attempt). The job itself, as submitted, is
//! [`crate::job::JobSpec`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{JobId, TaskId, TokenId};
use crate::job::JobSpec;

/// The answer to `POST /v1/jobs`, and each entry of the answer to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// False when the idempotency key named a job that the same API token submitted
    /// before (keys are per token).
    pub created: bool,
    pub job_id: JobId,
}

/// `POST /v1/jobs/batch`: many jobs, each with its own idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub jobs: Vec<BatchItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub job: JobSpec,
    /// Optional, with the rules of the `Idempotency-Key` header: the caller's token's own.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The answer to `POST /v1/jobs/batch`, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmitted {
    pub jobs: Vec<Submitted>,
}

/// The answer to `POST /v1/jobs/{id}/cancel` (or one task's: `.../tasks/{task}/cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// Tasks that ended `cancelled` at once (dependents included).
    pub cancelled_now: u64,
    pub job_id: JobId,
    /// Attempts running or queued on executors, being killed.
    pub killing: u64,
    /// The task named, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
}

/// The answer to `POST /v1/jobs/{id}/retry` (or one task's): the tasks run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rerun {
    pub job_id: JobId,
    pub rerun: Vec<TaskId>,
}

/// The answer to `PATCH /v1/jobs/{id}`: what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobChanged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// With `priority`: the tasks not yet handed out that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_changed: Option<u64>,
}

/// `PATCH /v1/jobs/{id}`: what may change of a job once submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    /// For the tasks not yet handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Hold (never dispatch its tasks not yet handed out) or release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub job_id: JobId,
    #[schema(required = true)]
    pub name: Option<String>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Who submitted it.
    #[serde(default)]
    #[schema(required = true)]
    pub submitted_by: SubmittedBy,
    /// Held: its tasks not yet handed out wait until it is released.
    #[serde(default)]
    #[schema(required = true)]
    pub held: bool,
    pub counts: CountsView,
    pub tasks: Vec<TaskView>,
}

/// The token that submitted a job: its id (`None` for the configured admin token and the
/// AMQP intake) and its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmittedBy {
    #[schema(required = true)]
    pub token_id: Option<TokenId>,
    pub name: String,
}

/// What a task was submitted as. `env` values are `None` for a caller that may see only
/// the names (neither the job's owner nor an admin).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskSpecView {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, Option<String>>,
    /// The names of its secret variables: their values are never shown, to anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_secret: Vec<String>,
    #[schema(required = true)]
    pub cwd: Option<String>,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub timeout_secs: i64,
    /// Names of the tasks of the same job it waits for.
    pub depends_on: Vec<String>,
    pub max_attempts: i32,
    /// Its retry policy, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::retry::RetryPolicy>,
}

impl JobView {
    /// Succeeded, failed or cancelled: it changes no more (unless run again).
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// Blanks every env value, keeping the names.
    pub fn hide_env_values(&mut self) {
        for t in &mut self.tasks {
            for v in t.spec.env.values_mut() {
                *v = None;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct CountsView {
    pub total: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub task_id: TaskId,
    pub index: i32,
    pub name: String,
    /// The task state, or `unknown` while it is held by an executor that stopped
    /// reporting (its fate is settled when the lease runs out).
    pub state: String,
    pub attempts: i32,
    #[schema(required = true)]
    pub executor_id: Option<String>,
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    #[schema(required = true)]
    pub signal: Option<i32>,
    #[schema(required = true)]
    pub error: Option<String>,
    /// Every attempt, oldest first: where it ran and how it ended.
    #[serde(default)]
    #[schema(required = true)]
    pub history: Vec<AttemptView>,
    /// Runs once on every member of its group.
    #[serde(default)]
    #[schema(required = true)]
    pub each: bool,
    /// With `each`: the successes needed (`None`: every member).
    #[serde(default)]
    #[schema(required = true)]
    pub quorum: Option<i32>,
    /// With `each`: one entry per member, in executor order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyView>,
    /// What it was submitted as.
    #[serde(default)]
    #[schema(required = true)]
    pub spec: TaskSpecView,
    /// While `retrying`: when the next attempt may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Why a ready task is not handed out (no eligible executor, its job held, its group
    /// paused); `None` when there is nothing to say.
    #[serde(default)]
    #[schema(required = true)]
    pub hint: Option<String>,
}

/// One member's copy of an `each` task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CopyView {
    pub executor_id: String,
    /// `pending`, `assigned`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts this member used.
    pub attempts: i32,
    #[schema(required = true)]
    pub error: Option<String>,
}

/// One attempt of a task, for operators to see what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub executor_id: String,
    /// `assigned`, `running`, or how it ended (`succeeded`, `failed`, `timed_out`,
    /// `spawn_failed`, `cancelled`, `lost`).
    pub state: String,
    pub assigned_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    /// A lost attempt whose executor reported a result after all: kept, not counted.
    pub late_result: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultView {
    pub task_id: TaskId,
    pub index: i32,
    pub name: String,
    pub attempt: i32,
    pub executor_id: String,
    pub outcome: String,
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    #[schema(required = true)]
    pub signal: Option<i32>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub recorded_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultsView {
    pub job_id: JobId,
    pub results: Vec<ResultView>,
}

/// One job in a listing, with how many of its tasks are in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub job_id: JobId,
    #[schema(required = true)]
    pub name: Option<String>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    pub submitted_by: SubmittedBy,
    pub held: bool,
    pub task_count: i32,
    /// Tasks per state (`waiting`, `ready`, `assigned`, `running`, `succeeded`, ...);
    /// states with no task are absent.
    pub tasks: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobsPage {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submit_answer_keeps_its_field_order() -> Result<(), serde_json::Error> {
        let id: JobId = "0190c5a4-7b1e-7000-8000-000000000001"
            .parse()
            .map_err(serde::de::Error::custom)?;
        let answer = Submitted {
            created: false,
            job_id: id,
        };
        assert_eq!(
            serde_json::to_string(&answer)?,
            r#"{"created":false,"job_id":"0190c5a4-7b1e-7000-8000-000000000001"}"#
        );
        let back: Submitted = serde_json::from_str(&serde_json::to_string(&answer)?)?;
        assert_eq!(back, answer);
        Ok(())
    }

    #[test]
    fn a_patch_says_only_what_changes() -> Result<(), serde_json::Error> {
        let patch = JobPatch {
            priority: Some(5),
            held: None,
        };
        assert_eq!(serde_json::to_string(&patch)?, r#"{"priority":5}"#);
        assert!(serde_json::from_str::<JobPatch>(r#"{"priority":5,"x":1}"#).is_err());
        Ok(())
    }
}
