//! A task's live output, read as a page: `GET /v1/jobs/{id}/tasks/{task}/logs` (without
//! `follow`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{JobId, TaskId};

/// One stored chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Chunk {
    pub n: i64,
    pub stream: String,
    pub offset: i64,
    pub data: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub recorded_at: DateTime<Utc>,
}

/// A page of one attempt's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogsPage {
    pub attempt: i32,
    pub chunks: Vec<Chunk>,
    /// The attempt has ended: no more output will come.
    pub ended: bool,
    pub job_id: JobId,
    /// Pass as `after` for the next page.
    #[schema(required = true)]
    pub next: Option<i64>,
    pub task_id: TaskId,
}
