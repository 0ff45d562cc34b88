//! Pausing dispatching: `GET /v1/scheduler`, `POST /v1/scheduler/pause|resume`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of a pause or resume (an empty body is the whole fleet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseTarget {
    /// A group (with its subgroups); absent: the whole fleet (`default`).
    #[serde(default)]
    pub group: Option<String>,
}

/// A pause of dispatching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pause {
    pub group: String,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
}

/// The answer to `GET /v1/scheduler`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SchedulerStatus {
    /// The whole fleet (`default`) is paused.
    pub fleet_paused: bool,
    pub pauses: Vec<Pause>,
}

/// The answer to a pause or a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PauseChanged {
    pub group: String,
    /// Whether it is paused now.
    pub paused: bool,
    /// Whether it was paused before.
    pub was_paused: bool,
}
