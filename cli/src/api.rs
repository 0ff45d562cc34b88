//! The API's JSON as the CLI reads and writes it (docs/api.md), kept apart from the
//! server's own types so the CLI builds on its own.
//!
//! Reading is lenient on purpose: states stay strings and most fields default, so a server
//! that grows a new state or field does not break an older CLI.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Body of POST /v1/jobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub each: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

/// Answer of POST /v1/jobs.
#[derive(Debug, Clone, Deserialize)]
pub struct Submitted {
    pub job_id: String,
    #[serde(default = "yes")]
    pub created: bool,
}

fn yes() -> bool {
    true
}

/// Answer of GET /v1/jobs/{job_id}.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub job_id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub state: String,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

impl Job {
    /// A job in one of these states will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// An event as `GET /v1/events` sends it (docs/events.md), as far as `wait` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EventLine {
    pub id: i64,
    pub kind: String,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub attempt: Option<i32>,
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
}

impl EventLine {
    /// The job ended (a job run again afterwards goes on: the caller checks its state).
    pub fn ends_job(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "job.succeeded" | "job.failed" | "job.cancelled"
        )
    }

    /// A line for a task's outcome or the job's end, as it happens; None for the rest.
    pub fn describe(&self) -> Option<String> {
        let task = self.task.as_deref().unwrap_or("?");
        let how = || {
            let mut parts = Vec::new();
            if let Some(o) = &self.outcome {
                parts.push(o.replace('_', " "));
            }
            if let Some(c) = self.exit_code {
                parts.push(format!("exit {c}"));
            }
            if let Some(s) = self.signal {
                parts.push(format!("signal {s}"));
            }
            if let Some(e) = &self.executor {
                parts.push(format!("on {e}"));
            }
            if let Some(ms) = self.duration_ms {
                parts.push(format!("{:.1} s", ms as f64 / 1000.0));
            }
            parts.join(", ")
        };
        match self.kind.as_str() {
            "task.finished" => Some(format!(
                "task {task}: {} ({})",
                self.state.as_deref().unwrap_or("finished"),
                how()
            )),
            "task.retrying" => Some(format!(
                "task {task}: attempt {} {}; retrying{}",
                self.attempt.unwrap_or(0),
                how(),
                self.retry_at
                    .map(|t| format!(" at {}", t.format("%H:%M:%S")))
                    .unwrap_or_default()
            )),
            "job.succeeded" | "job.failed" | "job.cancelled" => Some(format!(
                "job {}",
                self.state.as_deref().unwrap_or(&self.kind[4..])
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Counts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub done: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TaskStatus {
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub attempts: u64,
    #[serde(default)]
    pub executor_id: Option<String>,
    #[serde(flatten)]
    pub end: Ending,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub history: Vec<AttemptStatus>,
    /// Runs once on every member of its group.
    #[serde(default)]
    pub each: bool,
    #[serde(default)]
    pub quorum: Option<u64>,
    /// With `each`: one per member.
    #[serde(default)]
    pub copies: Vec<CopyStatus>,
    /// What it was submitted as (servers before the job listing do not send it).
    #[serde(default)]
    pub spec: Option<TaskSpecView>,
    /// Why a ready task is not handed out (no eligible executor, held, paused).
    #[serde(default)]
    pub hint: Option<String>,
}

/// What a task was submitted as (GET /v1/jobs/{id}); env values are null for callers
/// that may see only the names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskSpecView {
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub timeout_secs: u64,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub max_attempts: u64,
}

/// Answer of GET /v1/jobs.
#[derive(Debug, Clone, Deserialize)]
pub struct JobsPage {
    #[serde(default)]
    pub jobs: Vec<JobSummary>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobSummary {
    pub job_id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub state: String,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub submitted_by: SubmittedBy,
    #[serde(default)]
    pub task_count: u64,
    /// Tasks per state.
    #[serde(default)]
    pub tasks: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubmittedBy {
    #[serde(default)]
    pub name: String,
}

/// One member's copy of an `each` task.
#[derive(Debug, Clone, Deserialize)]
pub struct CopyStatus {
    pub executor_id: String,
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// One attempt of a task: where it ran and how it ended.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AttemptStatus {
    pub attempt: u64,
    pub executor_id: String,
    pub state: String,
    /// A lost attempt whose executor reported after all: kept, not counted.
    #[serde(default)]
    pub late_result: bool,
}

/// How a task (or one attempt of it) ended, as far as it is known.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ending {
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<Signal>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The API gives signals as numbers; a name is accepted too so a server that sends
/// "SIGKILL" is still shown rather than rejected.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Signal {
    Number(i64),
    Name(String),
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::Number(n) => write!(f, "{n}"),
            Signal::Name(name) => f.write_str(name),
        }
    }
}

/// Answer of GET /v1/jobs/{job_id}/results.
#[derive(Debug, Clone, Deserialize)]
pub struct Results {
    pub job_id: String,
    #[serde(default)]
    pub results: Vec<TaskResult>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TaskResult {
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub attempt: u64,
    #[serde(default)]
    pub executor_id: Option<String>,
    pub outcome: String,
    #[serde(flatten)]
    pub end: Ending,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Answer of GET /v1/executors.
#[derive(Debug, Clone, Deserialize)]
pub struct Executors {
    #[serde(default)]
    pub executors: Vec<Executor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Executor {
    pub executor_id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub queued: u64,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub last_info_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub alive: bool,
}

/// Answer of GET /v1/executors/{id}: the listing's fields, and more.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorDetail {
    #[serde(flatten)]
    pub executor: Executor,
    #[serde(default)]
    pub first_seen_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub assigned_groups: Vec<String>,
    #[serde(default)]
    pub registration: Option<Registration>,
    #[serde(default)]
    pub drain: Option<Drain>,
    #[serde(default)]
    pub attempts: Vec<HeldAttempt>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub registered_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Drain {
    #[serde(default)]
    pub drained_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub drained_by: String,
}

/// An attempt an executor holds now.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldAttempt {
    pub task_id: String,
    pub job_id: String,
    pub attempt: u64,
    pub state: String,
    #[serde(default)]
    pub assigned_at: Option<DateTime<Utc>>,
}

/// Answer of GET /v1/stats.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub groups: Vec<GroupStats>,
}

/// One group's figures, its subgroups' included.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupStats {
    pub group: String,
    #[serde(default)]
    pub tasks: TaskStats,
    #[serde(default)]
    pub executors: ExecutorStats,
    #[serde(default)]
    pub slots: SlotStats,
    #[serde(default)]
    pub finished: FinishedStats,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskStats {
    #[serde(default)]
    pub ready: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub waiting: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub oldest_ready_secs: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExecutorStats {
    #[serde(default)]
    pub alive: u64,
    #[serde(default)]
    pub draining: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlotStats {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub free: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FinishedStats {
    #[serde(default)]
    pub last_minute: Outcomes,
    #[serde(default)]
    pub last_hour: Outcomes,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Outcomes {
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
}

/// The error body every endpoint uses: `{"error": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    // `code` is left unread: the message is what users act on, and exit codes do not
    // depend on it.
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_job_shape() -> Result<(), serde_json::Error> {
        let job: Job = serde_json::from_str(
            r#"{"job_id":"j","name":"n","state":"running",
                "created_at":"2024-05-01T12:00:00Z","finished_at":null,
                "counts":{"total":3,"done":1,"succeeded":1,"failed":0,"cancelled":0},
                "tasks":[{"task_id":"t","index":0,"name":"a","state":"succeeded",
                          "attempts":1,"executor_id":"e","exit_code":0,"signal":null,"error":null}]}"#,
        )?;
        assert_eq!(job.counts.total, 3);
        assert!(!job.is_finished());
        assert_eq!(job.tasks[0].end.exit_code, Some(0));
        Ok(())
    }

    #[test]
    fn task_spec_leaves_out_what_was_not_given() -> Result<(), serde_json::Error> {
        let spec = JobSpec {
            name: None,
            tasks: vec![TaskSpec {
                argv: vec!["true".into()],
                ..TaskSpec::default()
            }],
        };
        assert_eq!(
            serde_json::to_value(&spec)?,
            serde_json::json!({"tasks": [{"argv": ["true"]}]})
        );
        Ok(())
    }
}
