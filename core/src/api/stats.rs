//! `GET /v1/stats`: per group, the work waiting and running, the executors and their
//! slots, and the jobs finished lately.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::JobState;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StatsView {
    /// The database's clock when the figures were read (one snapshot).
    pub at: DateTime<Utc>,
    /// `default` first, then each group before its subgroups.
    pub groups: Vec<GroupStats>,
}

/// One group's figures, its subgroups' included.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GroupStats {
    pub group: String,
    pub tasks: TaskStats,
    pub executors: ExecutorStats,
    pub slots: SlotStats,
    pub finished: FinishedStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TaskStats {
    pub ready: u64,
    pub held: u64,
    pub waiting: u64,
    pub running: u64,
    /// Seconds since the oldest ready (not held) task was submitted; `None` when none is
    /// ready.
    #[schema(required = true)]
    pub oldest_ready_secs: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ExecutorStats {
    pub alive: u64,
    /// Of those alive, how many take no new work.
    pub draining: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SlotStats {
    /// The capacity of the alive executors.
    pub total: u64,
    /// Capacity less running, of the alive executors that are not draining.
    pub free: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FinishedStats {
    pub last_minute: Outcomes,
    pub last_hour: Outcomes,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Outcomes {
    /// Counts `n` jobs that ended so (a job not ended counts nowhere).
    pub fn add(&mut self, outcome: JobState, n: u64) {
        match outcome {
            JobState::Succeeded => self.succeeded += n,
            JobState::Failed => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
            JobState::Pending | JobState::Running => {}
        }
    }
}

/// `GET /v1/stats/history`: each group's figures over a past span, as the collector
/// sampled them every `step_secs` (one point per sample; a gap where no collector ran).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StatsHistory {
    /// The sampling step (`metrics.history_secs` of the collector that serves it).
    pub step_secs: u64,
    /// The start of the span asked for (the database's clock).
    pub since: DateTime<Utc>,
    /// The groups sampled in the span, `default` first, then each before its subgroups.
    pub groups: Vec<GroupHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GroupHistory {
    pub group: String,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

/// One sample of one group (its subgroups included), as `GET /v1/stats` gave it then.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct HistoryPoint {
    pub at: DateTime<Utc>,
    pub ready: u64,
    pub held: u64,
    pub waiting: u64,
    pub running: u64,
    pub executors_alive: u64,
    pub slots_total: u64,
    pub slots_free: u64,
    /// Jobs that finished in the minute before `at`: the throughput, per minute.
    pub jobs_finished_last_minute: u64,
}

/// The query of `GET /v1/stats/history`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// How far back, in minutes: 1 to 1,440 (a day), default 60.
    pub minutes: Option<u32>,
}

impl HistoryQuery {
    pub const DEFAULT_MINUTES: u32 = 60;
    pub const MAX_MINUTES: u32 = 1440;

    /// The span in minutes, or why it is refused.
    pub fn minutes(&self) -> Result<u32, String> {
        match self.minutes.unwrap_or(Self::DEFAULT_MINUTES) {
            m @ 1..=Self::MAX_MINUTES => Ok(m),
            m => Err(format!(
                "minutes must be 1 to {} (got {m})",
                Self::MAX_MINUTES
            )),
        }
    }
}
