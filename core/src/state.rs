//! Task and job states and the rules that move them. Pure: the services apply the
//! answer with conditional SQL, so that a stale writer's update matches no row.

use serde::{Deserialize, Serialize};

use crate::proto::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Not runnable yet: waiting on dependencies.
    Waiting,
    /// Runnable, in PostgreSQL, waiting for a free executor.
    Ready,
    /// An attempt ended in a way its retry policy tries again: waiting out the backoff
    /// (`tasks.retry_at`), then ready.
    Retrying,
    /// Handed to an executor, not yet reported started.
    Assigned,
    /// Reported started by its executor.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Ready => "ready",
            Self::Retrying => "retrying",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "waiting" => Self::Waiting,
            "ready" => Self::Ready,
            "retrying" => Self::Retrying,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Held by an executor: its fate depends on that executor's reports.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Every dependency succeeded.
    DependenciesMet,
    /// A dependency ended other than succeeded.
    DependencyFailed,
    /// The dispatcher handed it to an executor.
    Assigned,
    /// Its executor reported it started.
    Started,
    /// Its current attempt ended. `attempts_used` counts this attempt. `retry`: its
    /// retry policy tries this outcome again.
    AttemptEnded {
        outcome: Outcome,
        attempts_used: u32,
        max_attempts: u32,
        retry: bool,
    },
    /// Its backoff is over.
    RetryDue,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task in state {from:?} cannot take {event:?}")]
pub struct TransitionError {
    pub from: TaskState,
    pub event: TaskEvent,
}

/// A lost attempt is always retried (at once, while attempts remain): the command never
/// got to report, so running it again is the at-least-once promise. A command that ran
/// and failed is the user's answer, tried again only if the task's retry policy says so.
pub fn is_retryable(outcome: Outcome) -> bool {
    outcome == Outcome::Lost
}

/// How an attempt's end counts for a task whose cancel was asked: a success stands (the
/// command finished before the kill reached it: one outcome, the real one); any other
/// end, a lost attempt included, is the cancel, and nothing is tried again.
pub fn outcome_under_cancel(outcome: Outcome, cancel_requested: bool) -> Outcome {
    if cancel_requested && outcome != Outcome::Succeeded {
        Outcome::Cancelled
    } else {
        outcome
    }
}

pub fn transition(from: TaskState, event: TaskEvent) -> Result<TaskState, TransitionError> {
    use TaskState::*;
    let to = match (from, event) {
        (Waiting, TaskEvent::DependenciesMet) => Ready,
        (Waiting, TaskEvent::DependencyFailed) => Cancelled,
        (Ready, TaskEvent::Assigned) => Assigned,
        (Assigned, TaskEvent::Started) => Running,
        (
            Assigned | Running,
            TaskEvent::AttemptEnded {
                outcome,
                attempts_used,
                max_attempts,
                retry,
            },
        ) => match outcome {
            Outcome::Succeeded => Succeeded,
            Outcome::Cancelled => Cancelled,
            o if is_retryable(o) && attempts_used < max_attempts => Ready,
            _ if retry && attempts_used < max_attempts => Retrying,
            _ => Failed,
        },
        (Retrying, TaskEvent::RetryDue) => Ready,
        (Waiting | Ready | Retrying | Assigned | Running, TaskEvent::Cancel) => Cancelled,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted; no task has been handed out yet.
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// How many of a job's tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub total: u64,
    /// Waiting or ready, never handed out in their current life.
    pub queued: u64,
    pub active: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Whether any task has ever been handed to an executor.
    pub started_any: bool,
}

impl TaskCounts {
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// A job's state follows from its tasks: done when all are, failed if any failed.
pub fn job_state(c: &TaskCounts) -> JobState {
    if c.total == 0 {
        return JobState::Pending;
    }
    if c.done() < c.total {
        return if c.active > 0 || c.started_any || c.done() > 0 {
            JobState::Running
        } else {
            JobState::Pending
        };
    }
    if c.failed > 0 {
        JobState::Failed
    } else if c.cancelled > 0 {
        JobState::Cancelled
    } else {
        JobState::Succeeded
    }
}

/// One member's copy of an `each` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Waiting for its executor (at fan-out, or after a lost attempt).
    Pending,
    /// An attempt is open on its executor.
    Assigned,
    Succeeded,
    Failed,
    /// The task was decided before this copy ran.
    Cancelled,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "assigned" => Self::Assigned,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Where a copy goes when its attempt ends. Like a task, only a lost attempt is tried
/// again, and always on the same member: a copy never moves to another executor.
pub fn copy_after(outcome: Outcome, attempts_used: u32, max_attempts: u32) -> CopyState {
    match outcome {
        Outcome::Succeeded => CopyState::Succeeded,
        Outcome::Cancelled => CopyState::Cancelled,
        o if is_retryable(o) && attempts_used < max_attempts => CopyState::Pending,
        _ => CopyState::Failed,
    }
}

/// The successes an `each` task needs: its quorum, or every member.
pub fn quorum_needed(members: u32, quorum: Option<u32>) -> u32 {
    quorum.unwrap_or(members)
}

/// An `each` task's outcome from its copies: succeeded once `needed` members succeeded,
/// failed as soon as the members still open cannot make up the difference, else still
/// undecided (`None`).
pub fn quorum_decision(
    members: u32,
    needed: u32,
    succeeded: u32,
    ended_otherwise: u32,
) -> Option<TaskState> {
    let open = members.saturating_sub(succeeded + ended_otherwise);
    if succeeded >= needed {
        Some(TaskState::Succeeded)
    } else if succeeded + open < needed {
        Some(TaskState::Failed)
    } else {
        None
    }
}

/// A task of one job as dependency resolution sees it; its index is its `idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepNode {
    pub state: TaskState,
    pub depends_on: Vec<usize>,
}

/// A manual rerun of a finished job: the tasks that run again, each with the state it
/// starts in. `seeds` are the tasks asked for (every failed or cancelled task when the
/// whole job is rerun); with them go every task that depends on one of them, directly
/// or not, unless it succeeded. A task starts `ready` when every dependency succeeded
/// and is not rerun, else `waiting`.
pub fn rerun_plan(nodes: &[DepNode], seeds: &[usize]) -> Vec<(usize, TaskState)> {
    let mut rerun = vec![false; nodes.len()];
    for &s in seeds {
        if let Some(r) = rerun.get_mut(s) {
            *r = true;
        }
    }
    loop {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            if !rerun[i]
                && n.state != TaskState::Succeeded
                && n.depends_on.iter().any(|&d| rerun.get(d) == Some(&true))
            {
                rerun[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    (0..nodes.len())
        .filter(|&i| rerun[i])
        .map(|i| {
            let ready = nodes[i].depends_on.iter().all(|&d| {
                rerun.get(d) == Some(&false)
                    && nodes.get(d).map(|n| n.state) == Some(TaskState::Succeeded)
            });
            (
                i,
                if ready {
                    TaskState::Ready
                } else {
                    TaskState::Waiting
                },
            )
        })
        .collect()
}

/// The waiting tasks of a job that can move: to ready once every dependency succeeded,
/// to cancelled once any dependency ended otherwise (which cascades to their own
/// dependents). Returns (index, new state) for each task that moves.
pub fn resolve_dependencies(nodes: &[DepNode]) -> Vec<(usize, TaskState)> {
    let mut states: Vec<TaskState> = nodes.iter().map(|n| n.state).collect();
    let mut moved = Vec::new();
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            if states[i] != TaskState::Waiting {
                continue;
            }
            let dep_states = node
                .depends_on
                .iter()
                .filter_map(|&d| states.get(d).copied());
            let event = if dep_states
                .clone()
                .any(|s| matches!(s, TaskState::Failed | TaskState::Cancelled))
            {
                TaskEvent::DependencyFailed
            } else if dep_states.clone().all(|s| s == TaskState::Succeeded) {
                TaskEvent::DependenciesMet
            } else {
                continue;
            };
            if let Ok(to) = transition(TaskState::Waiting, event) {
                states[i] = to;
                moved.push((i, to));
                changed = true;
            }
        }
        if !changed {
            return moved;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn ended(outcome: Outcome, used: u32, max: u32) -> TaskEvent {
        TaskEvent::AttemptEnded {
            outcome,
            attempts_used: used,
            max_attempts: max,
            retry: false,
        }
    }

    #[test]
    fn a_retry_policy_waits_then_tries_again_while_attempts_remain() {
        let failed = |used| TaskEvent::AttemptEnded {
            outcome: Outcome::Failed,
            attempts_used: used,
            max_attempts: 3,
            retry: true,
        };
        assert_eq!(transition(Running, failed(1)), Ok(Retrying));
        assert_eq!(transition(Retrying, TaskEvent::RetryDue), Ok(Ready));
        assert_eq!(transition(Running, failed(2)), Ok(Retrying));
        assert_eq!(
            transition(Running, failed(3)),
            Ok(Failed),
            "no attempt left"
        );
        assert_eq!(transition(Retrying, TaskEvent::Cancel), Ok(Cancelled));
        assert!(transition(Ready, TaskEvent::RetryDue).is_err());
        assert_eq!(TaskState::parse("retrying"), Some(Retrying));
    }

    #[test]
    fn the_happy_path() {
        let s = transition(Waiting, TaskEvent::DependenciesMet).expect("ok");
        let s = transition(s, TaskEvent::Assigned).expect("ok");
        let s = transition(s, TaskEvent::Started).expect("ok");
        assert_eq!(
            transition(s, ended(Outcome::Succeeded, 1, 3)),
            Ok(Succeeded)
        );
    }

    #[test]
    fn a_lost_attempt_goes_back_to_ready_while_attempts_remain() {
        assert_eq!(transition(Running, ended(Outcome::Lost, 1, 3)), Ok(Ready));
        assert_eq!(transition(Assigned, ended(Outcome::Lost, 2, 3)), Ok(Ready));
        assert_eq!(transition(Running, ended(Outcome::Lost, 3, 3)), Ok(Failed));
    }

    #[test]
    fn a_command_that_ran_and_failed_is_not_retried() {
        for o in [Outcome::Failed, Outcome::TimedOut, Outcome::SpawnFailed] {
            assert_eq!(transition(Running, ended(o, 1, 3)), Ok(Failed), "{o:?}");
        }
        assert_eq!(
            transition(Running, ended(Outcome::Cancelled, 1, 3)),
            Ok(Cancelled)
        );
    }

    #[test]
    fn under_a_cancel_only_a_success_stands_and_nothing_is_tried_again() {
        for o in [
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::SpawnFailed,
            Outcome::Lost,
            Outcome::Cancelled,
        ] {
            let under = outcome_under_cancel(o, true);
            assert_eq!(under, Outcome::Cancelled, "{o:?}");
            // A lost attempt with attempts left would have gone back to ready.
            assert_eq!(transition(Running, ended(under, 1, 3)), Ok(Cancelled));
            assert_eq!(outcome_under_cancel(o, false), o);
        }
        assert_eq!(
            outcome_under_cancel(Outcome::Succeeded, true),
            Outcome::Succeeded
        );
    }

    #[test]
    fn a_finished_task_takes_no_second_outcome() {
        for s in [Succeeded, Failed, Cancelled] {
            assert!(transition(s, ended(Outcome::Succeeded, 2, 3)).is_err());
            assert!(transition(s, TaskEvent::Assigned).is_err());
            assert!(transition(s, TaskEvent::Cancel).is_err());
        }
        assert!(transition(Waiting, TaskEvent::Assigned).is_err());
        assert!(transition(Ready, ended(Outcome::Succeeded, 1, 3)).is_err());
    }

    #[test]
    fn a_rerun_takes_the_failed_task_and_its_dependents_only() {
        let n = |state, deps: &[usize]| DepNode {
            state,
            depends_on: deps.to_vec(),
        };
        // 0 ok -> 1 failed -> 2 cancelled -> 3 cancelled; 4 ok (after 0); 5 cancelled
        // on its own (a task cancel), 6 after 4 and 1.
        let job = [
            n(Succeeded, &[]),
            n(Failed, &[0]),
            n(Cancelled, &[1]),
            n(Cancelled, &[2]),
            n(Succeeded, &[0]),
            n(Cancelled, &[]),
            n(Cancelled, &[4, 1]),
        ];
        assert_eq!(
            rerun_plan(&job, &[1]),
            [(1, Ready), (2, Waiting), (3, Waiting), (6, Waiting)]
        );
        // The whole job: every failed or cancelled task.
        let seeds: Vec<usize> = (0..job.len())
            .filter(|&i| matches!(job[i].state, Failed | Cancelled))
            .collect();
        assert_eq!(
            rerun_plan(&job, &seeds),
            [
                (1, Ready),
                (2, Waiting),
                (3, Waiting),
                (5, Ready),
                (6, Waiting)
            ]
        );
        assert!(rerun_plan(&job, &[]).is_empty());
    }

    #[test]
    fn dependents_become_ready_or_cancelled_in_cascade() {
        let n = |state, deps: &[usize]| DepNode {
            state,
            depends_on: deps.to_vec(),
        };
        // 0 succeeded, 1 failed; 2 needs 0 (ready); 3 needs 1 (cancelled); 4 needs 3.
        let nodes = vec![
            n(Succeeded, &[]),
            n(Failed, &[]),
            n(Waiting, &[0]),
            n(Waiting, &[1]),
            n(Waiting, &[3]),
            n(Waiting, &[0, 2]),
        ];
        let mut moved = resolve_dependencies(&nodes);
        moved.sort_by_key(|m| m.0);
        assert_eq!(moved, vec![(2, Ready), (3, Cancelled), (4, Cancelled)]);
    }

    #[test]
    fn a_failed_dependency_cancels_the_dependent() {
        assert_eq!(
            transition(Waiting, TaskEvent::DependencyFailed),
            Ok(Cancelled)
        );
    }

    #[test]
    fn job_state_derives_from_task_counts() {
        let c = |total, queued, active, ok, failed, cancelled, started_any| TaskCounts {
            total,
            queued,
            active,
            succeeded: ok,
            failed,
            cancelled,
            started_any,
        };
        assert_eq!(job_state(&c(3, 3, 0, 0, 0, 0, false)), JobState::Pending);
        assert_eq!(job_state(&c(3, 2, 1, 0, 0, 0, true)), JobState::Running);
        assert_eq!(job_state(&c(3, 2, 0, 1, 0, 0, true)), JobState::Running);
        assert_eq!(job_state(&c(3, 0, 0, 3, 0, 0, true)), JobState::Succeeded);
        assert_eq!(job_state(&c(3, 0, 0, 1, 1, 1, true)), JobState::Failed);
        assert_eq!(job_state(&c(2, 0, 0, 1, 0, 1, true)), JobState::Cancelled);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in [
            Waiting, Ready, Assigned, Running, Succeeded, Failed, Cancelled,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_copy_is_retried_only_when_lost_and_only_while_attempts_remain() {
        assert_eq!(copy_after(Outcome::Succeeded, 1, 3), CopyState::Succeeded);
        assert_eq!(copy_after(Outcome::Failed, 1, 3), CopyState::Failed);
        assert_eq!(copy_after(Outcome::TimedOut, 1, 3), CopyState::Failed);
        assert_eq!(copy_after(Outcome::Lost, 1, 3), CopyState::Pending);
        assert_eq!(copy_after(Outcome::Lost, 3, 3), CopyState::Failed);
        assert_eq!(copy_after(Outcome::Cancelled, 1, 3), CopyState::Cancelled);
    }

    #[test]
    fn the_quorum_decides_as_soon_as_it_is_reached_or_out_of_reach() {
        // 4 members, quorum 3.
        assert_eq!(quorum_decision(4, 3, 0, 0), None);
        assert_eq!(
            quorum_decision(4, 3, 2, 1),
            None,
            "one open member can still make it"
        );
        assert_eq!(quorum_decision(4, 3, 3, 1), Some(TaskState::Succeeded));
        assert_eq!(
            quorum_decision(4, 3, 3, 0),
            Some(TaskState::Succeeded),
            "the 4th need not finish"
        );
        assert_eq!(
            quorum_decision(4, 3, 0, 2),
            Some(TaskState::Failed),
            "two failures: out of reach"
        );
        assert_eq!(quorum_decision(4, 3, 1, 2), Some(TaskState::Failed));
        // Default quorum: all members.
        let all = quorum_needed(4, None);
        assert_eq!(all, 4);
        assert_eq!(quorum_decision(4, all, 3, 0), None);
        assert_eq!(quorum_decision(4, all, 3, 1), Some(TaskState::Failed));
        assert_eq!(quorum_decision(4, all, 4, 0), Some(TaskState::Succeeded));
        // A quorum larger than the group can never be met.
        assert_eq!(quorum_decision(2, 3, 0, 0), Some(TaskState::Failed));
    }
}
