//! Statements the collector owns: results, and the task and job states that follow
//! from them. `settle` is also what the dispatcher's lease sweep runs for lost attempts,
//! so that one code path decides every task outcome.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;

use super::{DbError, Transaction};
use crate::id::{JobId, TaskId};
use crate::proto::{Outcome, TaskResult};
use crate::state::{
    job_state, resolve_dependencies, transition, DepNode, JobState, TaskCounts, TaskEvent,
    TaskState,
};

/// An attempt that ended, as the collector (result) or the lease sweep (lost) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub task_id: TaskId,
    pub attempt: i32,
    pub outcome: Outcome,
}

/// What settling a batch changed, for events and wake-ups.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Tasks that reached a final state, with it.
    pub finished: Vec<(JobId, TaskId, TaskState)>,
    /// Tasks that went back to ready, or became ready as dependencies finished.
    pub readied: usize,
    /// Jobs whose state changed, with the new state.
    pub jobs: Vec<(JobId, JobState)>,
}

/// Stores a batch of results (each once: a redelivered result is a no-op), closes the
/// attempts they report, and settles the tasks whose current attempt that was. A late
/// result of an attempt already lost is stored but decides nothing.
pub async fn record_results(
    tx: &Transaction<'_>,
    results: &[TaskResult],
) -> Result<Settled, DbError> {
    if results.is_empty() {
        return Ok(Settled::default());
    }
    // An executor restarted under its id may rerun an attempt and report it twice; two
    // rows for one attempt in one statement would let the stored result and the closed
    // attempt disagree. The first one reported is the one kept, as ON CONFLICT does.
    let mut seen = std::collections::HashSet::new();
    let results: Vec<&TaskResult> = results
        .iter()
        .filter(|r| seen.insert((r.task_id, r.attempt)))
        .collect();
    let rows: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "task_id": r.task_id, "attempt": r.attempt, "job_id": r.job_id,
                "executor_id": r.executor_id, "outcome": r.outcome.as_str(),
                "exit_code": r.exit_code, "signal": r.signal, "error": r.error,
                "stdout": r.stdout.replace('\0', "\u{FFFD}"),
                "stderr": r.stderr.replace('\0', "\u{FFFD}"),
                "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
                "started_at": r.started_at, "finished_at": r.finished_at,
            })
        })
        .collect();
    // Only the executor the attempt was given to may close it: a result naming another
    // executor is stored (for the record) but does not count.
    let closed = tx
        .query(
            "WITH x AS (
                 SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(
                     task_id uuid, attempt int, job_id uuid, executor_id text, outcome text,
                     exit_code int, signal int, error text, stdout text, stderr text,
                     stdout_truncated bool, stderr_truncated bool,
                     started_at timestamptz, finished_at timestamptz)),
             ins AS (
                 INSERT INTO results (task_id, attempt, job_id, executor_id, outcome, exit_code,
                     signal, error, stdout, stderr, stdout_truncated, stderr_truncated,
                     started_at, finished_at)
                 SELECT task_id, attempt, job_id, executor_id, outcome, exit_code, signal,
                     error, stdout, stderr, stdout_truncated, stderr_truncated, started_at,
                     finished_at
                 FROM x
                 ON CONFLICT (task_id, attempt) DO NOTHING)
             UPDATE attempts a SET state = x.outcome, finished_at = x.finished_at,
                                   started_at = coalesce(a.started_at, x.started_at)
             FROM x
             WHERE a.task_id = x.task_id AND a.attempt = x.attempt
               AND a.executor_id = x.executor_id AND a.state IN ('assigned', 'running')
             RETURNING a.task_id, a.attempt, x.outcome",
            &[&serde_json::Value::Array(rows)],
        )
        .await?;
    let ended: Vec<Ended> = closed
        .iter()
        .filter_map(|r| {
            let outcome: String = r.get(2);
            Some(Ended {
                task_id: TaskId::from_uuid(r.get(0)),
                attempt: r.get(1),
                outcome: Outcome::parse(&outcome)?,
            })
        })
        .collect();
    settle(tx, &ended).await
}

/// Applies ended attempts to their tasks through the state machine, then moves the
/// dependents of finished tasks and re-derives the state of every job touched.
pub async fn settle(tx: &Transaction<'_>, ended: &[Ended]) -> Result<Settled, DbError> {
    let mut settled = Settled::default();
    if ended.is_empty() {
        return Ok(settled);
    }
    let ids: Vec<uuid::Uuid> = ended.iter().map(|e| e.task_id.uuid()).collect();
    let rows = tx
        .query(
            "SELECT id, job_id, state, attempts, max_attempts FROM tasks
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
    let mut tasks = HashMap::with_capacity(rows.len());
    for r in &rows {
        let state: String = r.get(2);
        let state = TaskState::parse(&state)
            .ok_or_else(|| DbError::Row(format!("task state {state:?}")))?;
        let id: uuid::Uuid = r.get(0);
        let job: uuid::Uuid = r.get(1);
        tasks.insert(
            id,
            (
                JobId::from_uuid(job),
                state,
                r.get::<_, i32>(3),
                r.get::<_, i32>(4),
            ),
        );
    }
    let mut updates = Vec::new();
    let mut jobs = BTreeSet::new();
    for e in ended {
        let Some(&(job_id, state, attempts, max_attempts)) = tasks.get(&e.task_id.uuid()) else {
            continue;
        };
        // Only the current attempt decides; an older one's end is history.
        if attempts != e.attempt {
            continue;
        }
        let event = TaskEvent::AttemptEnded {
            outcome: e.outcome,
            attempts_used: u32::try_from(e.attempt).unwrap_or(0),
            max_attempts: u32::try_from(max_attempts).unwrap_or(0),
        };
        let Ok(to) = transition(state, event) else {
            continue;
        };
        let final_attempt = to.is_terminal().then_some(e.attempt);
        updates
            .push(json!({"id": e.task_id, "state": to.as_str(), "final_attempt": final_attempt}));
        jobs.insert(job_id);
        if to.is_terminal() {
            settled.finished.push((job_id, e.task_id, to));
        } else {
            settled.readied += 1;
        }
    }
    apply_task_states(tx, updates).await?;
    resolve_jobs(tx, &jobs, &mut settled).await?;
    Ok(settled)
}

/// Locks the jobs (in id order, so concurrent settlers cannot deadlock) before their
/// tasks are read for dependencies and job state: two transactions settling tasks of one
/// job then run one after the other, and the second sees the first's committed states.
async fn lock_jobs(tx: &Transaction<'_>, ids: &[uuid::Uuid]) -> Result<(), DbError> {
    tx.execute(
        "SELECT 1 FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    Ok(())
}

async fn apply_task_states(
    tx: &Transaction<'_>,
    updates: Vec<serde_json::Value>,
) -> Result<(), DbError> {
    if updates.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE tasks t SET state = x.state, final_attempt = coalesce(x.final_attempt, t.final_attempt),
                            updated_at = clock_timestamp()
         FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, state text, final_attempt int)
         WHERE t.id = x.id",
        &[&serde_json::Value::Array(updates)],
    )
    .await?;
    Ok(())
}

/// For each job: release or cancel waiting dependents, then derive the job's state.
async fn resolve_jobs(
    tx: &Transaction<'_>,
    jobs: &BTreeSet<JobId>,
    settled: &mut Settled,
) -> Result<(), DbError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.uuid()).collect();
    lock_jobs(tx, &ids).await?;
    let rows = tx
        .query(
            "SELECT job_id, id, idx, state, depends_on, attempts FROM tasks
             WHERE job_id = ANY($1) ORDER BY job_id, idx",
            &[&ids],
        )
        .await?;
    struct Row {
        id: uuid::Uuid,
        node: DepNode,
        attempts: i32,
    }
    let mut by_job: HashMap<uuid::Uuid, Vec<Row>> = HashMap::new();
    for r in &rows {
        let state: String = r.get(3);
        let deps: serde_json::Value = r.get(4);
        by_job.entry(r.get(0)).or_default().push(Row {
            id: r.get(1),
            node: DepNode {
                state: TaskState::parse(&state)
                    .ok_or_else(|| DbError::Row(format!("task state {state:?}")))?,
                depends_on: serde_json::from_value(deps)
                    .map_err(|e| DbError::Row(e.to_string()))?,
            },
            attempts: r.get(5),
        });
    }
    let mut updates = Vec::new();
    let mut job_states = Vec::new();
    for (job, mut tasks) in by_job {
        let job_id = JobId::from_uuid(job);
        let nodes: Vec<DepNode> = tasks.iter().map(|t| t.node.clone()).collect();
        for (i, to) in resolve_dependencies(&nodes) {
            tasks[i].node.state = to;
            updates.push(json!({"id": tasks[i].id, "state": to.as_str(), "final_attempt": null}));
            if to.is_terminal() {
                settled
                    .finished
                    .push((job_id, TaskId::from_uuid(tasks[i].id), to));
            } else {
                settled.readied += 1;
            }
        }
        let mut c = TaskCounts::default();
        for t in &tasks {
            c.total += 1;
            c.started_any |= t.attempts > 0;
            match t.node.state {
                TaskState::Waiting | TaskState::Ready => c.queued += 1,
                TaskState::Assigned | TaskState::Running => c.active += 1,
                TaskState::Succeeded => c.succeeded += 1,
                TaskState::Failed => c.failed += 1,
                TaskState::Cancelled => c.cancelled += 1,
            }
        }
        job_states.push(json!({"id": job, "state": job_state(&c).as_str()}));
    }
    apply_task_states(tx, updates).await?;
    let changed = tx
        .query(
            "UPDATE jobs j SET state = x.state,
                 finished_at = CASE WHEN x.state IN ('succeeded', 'failed', 'cancelled')
                                    THEN clock_timestamp() END
             FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, state text)
             WHERE j.id = x.id AND j.state IS DISTINCT FROM x.state
             RETURNING j.id, j.state",
            &[&serde_json::Value::Array(job_states)],
        )
        .await?;
    for r in &changed {
        let s: String = r.get(1);
        if let Some(state) = JobState::parse(&s) {
            settled.jobs.push((JobId::from_uuid(r.get(0)), state));
        }
    }
    Ok(())
}
