//! `GET /v1/stats`: per group, the work waiting and running, the executors and their
//! slots, and the jobs finished lately.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::JobState;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    /// The database's clock when the figures were read (one snapshot).
    pub at: DateTime<Utc>,
    /// `default` first, then each group before its subgroups.
    pub groups: Vec<GroupStats>,
}

/// One group's figures, its subgroups' included.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupStats {
    pub group: String,
    pub tasks: TaskStats,
    pub executors: ExecutorStats,
    pub slots: SlotStats,
    pub finished: FinishedStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskStats {
    pub ready: u64,
    pub held: u64,
    pub waiting: u64,
    pub running: u64,
    /// Seconds since the oldest ready (not held) task was submitted; `None` when none is
    /// ready.
    pub oldest_ready_secs: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecutorStats {
    pub alive: u64,
    /// Of those alive, how many take no new work.
    pub draining: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStats {
    /// The capacity of the alive executors.
    pub total: u64,
    /// Capacity less running, of the alive executors that are not draining.
    pub free: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FinishedStats {
    pub last_minute: Outcomes,
    pub last_hour: Outcomes,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
