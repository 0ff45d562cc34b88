//! Operators' and owners' control of jobs and of dispatching: priority, hold, scheduler
//! pause, executor drain. Written by the submitter; the dispatcher reads the effect in
//! the statements that read ready work (held tasks and paused groups are left out).

use super::{notify_wake, Client, DbError};
use crate::group::GroupName;
use crate::id::JobId;

/// What a change to a job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobChange {
    /// Applied to this many tasks not yet handed out.
    Applied(u64),
    NoSuchJob,
    /// The job is finished: there is nothing left to change.
    Finished,
}

/// Sets the priority of the job's tasks not yet handed out (waiting or ready); tasks
/// already assigned or running keep theirs.
pub async fn set_priority(
    client: &mut Client,
    schema: &str,
    job: JobId,
    priority: i32,
) -> Result<JobChange, DbError> {
    let tx = client.transaction().await?;
    if let Some(refused) = refuse_finished(&tx, job).await? {
        return Ok(refused);
    }
    let n = tx
        .execute(
            "UPDATE tasks SET priority = $2, updated_at = clock_timestamp()
             WHERE job_id = $1 AND state = ANY($3)",
            &[&job.uuid(), &priority, &vec!["waiting", "ready"]],
        )
        .await?;
    notify_wake(&tx, schema, true).await?;
    tx.commit().await?;
    Ok(JobChange::Applied(n))
}

/// Holds or releases a job: a held job's tasks not yet handed out are never dispatched
/// until it is released (tasks already running go on). A release wakes the dispatcher.
pub async fn set_held(
    client: &mut Client,
    schema: &str,
    job: JobId,
    held: bool,
) -> Result<JobChange, DbError> {
    let tx = client.transaction().await?;
    if let Some(refused) = refuse_finished(&tx, job).await? {
        return Ok(refused);
    }
    tx.execute(
        "UPDATE jobs SET held = $2 WHERE id = $1",
        &[&job.uuid(), &held],
    )
    .await?;
    // Every task, whatever its state: one that goes back to ready later (a lost
    // attempt, a dependency met) stays held too.
    let n = tx
        .execute(
            "UPDATE tasks SET held = $2,
                 ready_at = CASE WHEN held AND NOT $2 THEN clock_timestamp() ELSE ready_at END
             WHERE job_id = $1 AND held <> $2",
            &[&job.uuid(), &held],
        )
        .await?;
    if !held {
        notify_wake(&tx, schema, true).await?;
    }
    tx.commit().await?;
    Ok(JobChange::Applied(n))
}

/// Locks the job's row; the answer when it cannot change (absent, or finished).
async fn refuse_finished(
    tx: &deadpool_postgres::Transaction<'_>,
    job: JobId,
) -> Result<Option<JobChange>, DbError> {
    Ok(match lock_job(tx, job).await? {
        None => Some(JobChange::NoSuchJob),
        Some(true) => Some(JobChange::Finished),
        Some(false) => None,
    })
}

/// Locks the job's row; `Some(finished)` if it exists.
async fn lock_job(
    tx: &deadpool_postgres::Transaction<'_>,
    job: JobId,
) -> Result<Option<bool>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT finished_at IS NOT NULL FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job.uuid()],
        )
        .await?
        .map(|r| r.get(0)))
}

pub use fleet_core::api::scheduler::Pause;

/// Pauses dispatching for `group` and its subgroups (`default`: the whole fleet).
/// Idempotent: pausing again keeps the first pause's time and author. Wakes the
/// dispatcher, which asks for the group's requests not started yet back. Returns whether
/// it was newly paused.
pub async fn pause(
    client: &mut Client,
    schema: &str,
    group: &GroupName,
    by: &str,
) -> Result<bool, DbError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "INSERT INTO scheduler_pauses (group_name, paused_by) VALUES ($1, $2)
             ON CONFLICT (group_name) DO NOTHING",
            &[&group.as_str(), &by],
        )
        .await?;
    notify_wake(&tx, schema, true).await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Resumes dispatching for `group` (its pause only: a pause of an enclosing group still
/// holds). Wakes the dispatcher. Returns whether it was paused.
pub async fn resume(client: &mut Client, schema: &str, group: &GroupName) -> Result<bool, DbError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "DELETE FROM scheduler_pauses WHERE group_name = $1",
            &[&group.as_str()],
        )
        .await?;
    notify_wake(&tx, schema, true).await?;
    tx.commit().await?;
    Ok(n == 1)
}

pub async fn pauses(client: &Client) -> Result<Vec<Pause>, DbError> {
    Ok(client
        .query(
            "SELECT group_name, paused_at, paused_by FROM scheduler_pauses ORDER BY group_name",
            &[],
        )
        .await?
        .iter()
        .map(|r| Pause {
            group: r.get(0),
            paused_at: r.get(1),
            paused_by: r.get(2),
        })
        .collect())
}

/// Records that an administrator drained (or resumed) an executor: the dispatcher gives
/// a drained executor no new work, across its restarts and the dispatcher's.
pub async fn set_drained(
    client: &mut Client,
    schema: &str,
    executor_id: &str,
    drained: bool,
    by: &str,
) -> Result<(), DbError> {
    if drained {
        // Announced once, when the drain is first recorded.
        client
            .execute(
                "WITH d AS (
                     INSERT INTO executor_drains (executor_id, drained_by) VALUES ($1, $2)
                     ON CONFLICT (executor_id) DO NOTHING RETURNING executor_id)
                 INSERT INTO events (kind, executor_id)
                 SELECT 'executor.drained', executor_id FROM d",
                &[&executor_id, &by],
            )
            .await?;
    } else {
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM executor_drains WHERE executor_id = $1",
            &[&executor_id],
        )
        .await?;
        notify_wake(&tx, schema, true).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Executors an administrator drained.
pub async fn drained_executors(
    client: &Client,
) -> Result<std::collections::HashSet<String>, DbError> {
    Ok(client
        .query("SELECT executor_id FROM executor_drains", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What a cancel request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CancelReport {
    /// Tasks that ended `cancelled` at once (dependents included).
    pub cancelled_now: usize,
    /// Attempts running or queued on executors, being killed: their tasks end when
    /// the executors report.
    pub killing: usize,
}

/// Cancels a job's unfinished tasks, or one task and its dependents (see
/// `collect::cancel`), in one transaction with the events it causes; wakes the
/// dispatcher, which tells the executors holding attempts to kill them. `None`: no such
/// job (or no such task in it).
pub async fn cancel(
    client: &mut Client,
    schema: &str,
    job: JobId,
    task: Option<crate::id::TaskId>,
) -> Result<Option<CancelReport>, DbError> {
    let tx = client.transaction().await?;
    let exists = match task {
        None => tx
            .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&job.uuid()])
            .await?
            .is_some(),
        Some(t) => tx
            .query_opt(
                "SELECT 1 FROM tasks WHERE id = $1 AND job_id = $2",
                &[&t.uuid(), &job.uuid()],
            )
            .await?
            .is_some(),
    };
    if !exists {
        return Ok(None);
    }
    let done = super::collect::cancel(&tx, job, task).await?;
    super::events::insert(&tx, &done.settled.events).await?;
    if !done.killing.is_empty() {
        notify_wake(&tx, schema, true).await?;
    }
    tx.commit().await?;
    crate::metrics::count_settled(&done.settled);
    Ok(Some(CancelReport {
        cancelled_now: done.settled.finished.len(),
        killing: done.killing.len(),
    }))
}

/// A task of a job named by its id, its name or its index.
pub async fn find_task(
    client: &Client,
    job: JobId,
    task: &str,
) -> Result<Option<crate::id::TaskId>, DbError> {
    let by_id = task.parse::<uuid::Uuid>().ok();
    let by_idx = task.parse::<i32>().ok();
    Ok(client
        .query_opt(
            "SELECT id FROM tasks WHERE job_id = $1
               AND (id = $2 OR name = $3 OR idx = $4)
             ORDER BY (id = $2) DESC NULLS LAST, (name = $3) DESC LIMIT 1",
            &[&job.uuid(), &by_id, &task, &by_idx],
        )
        .await?
        .map(|r| crate::id::TaskId::from_uuid(r.get(0))))
}

/// What a manual rerun found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rerun {
    /// These tasks run again (new attempts; the old ones stay in the history).
    Started(Vec<crate::id::TaskId>),
    NoSuchJob,
    /// The job is not finished: its tasks are still running or waiting.
    NotFinished,
    /// Nothing failed or was cancelled (or the task named did not).
    NothingToRerun,
}

/// Runs a finished job's failed and cancelled tasks again (`task`: that one only), with
/// every task that depends on one of them unless it succeeded (`state::rerun_plan`).
/// Each starts a new attempt budget (`attempt_base`); numbering goes on, so the history
/// keeps every earlier attempt and result. `each` tasks lose their copies, and fan out
/// again when ready.
pub async fn rerun(
    client: &mut Client,
    schema: &str,
    job: JobId,
    task: Option<crate::id::TaskId>,
) -> Result<Rerun, DbError> {
    use crate::state::{rerun_plan, DepNode, TaskState};
    let tx = client.transaction().await?;
    // The tasks first, in id order, then the job: the order every settler takes.
    let rows = tx
        .query(
            "SELECT id, idx, state, depends_on, each FROM tasks WHERE job_id = $1
             ORDER BY id FOR UPDATE",
            &[&job.uuid()],
        )
        .await?;
    let Some(finished) = lock_job(&tx, job).await? else {
        return Ok(Rerun::NoSuchJob);
    };
    if !finished {
        return Ok(Rerun::NotFinished);
    }
    let mut by_idx: Vec<(uuid::Uuid, DepNode, bool)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let state: &str = r.get(2);
        let deps: Vec<usize> = serde_json::from_value(r.get(3))
            .map_err(|e| DbError::Row(format!("tasks.depends_on: {e}")))?;
        let idx = usize::try_from(r.get::<_, i32>(1)).unwrap_or(usize::MAX);
        if by_idx.len() <= idx {
            by_idx.resize_with(idx + 1, || {
                (
                    uuid::Uuid::nil(),
                    DepNode {
                        state: TaskState::Succeeded,
                        depends_on: Vec::new(),
                    },
                    false,
                )
            });
        }
        by_idx[idx] = (
            r.get(0),
            DepNode {
                state: TaskState::parse(state)
                    .ok_or_else(|| DbError::Row(format!("task state {state:?}")))?,
                depends_on: deps,
            },
            r.get(4),
        );
    }
    let nodes: Vec<DepNode> = by_idx.iter().map(|t| t.1.clone()).collect();
    let redo = |s: TaskState| matches!(s, TaskState::Failed | TaskState::Cancelled);
    let seeds: Vec<usize> = match task {
        None => (0..nodes.len()).filter(|&i| redo(nodes[i].state)).collect(),
        Some(t) => by_idx
            .iter()
            .position(|x| x.0 == t.uuid())
            .filter(|&i| redo(nodes[i].state))
            .into_iter()
            .collect(),
    };
    let plan = rerun_plan(&nodes, &seeds);
    if plan.is_empty() {
        return Ok(Rerun::NothingToRerun);
    }
    let ids: Vec<uuid::Uuid> = plan.iter().map(|(i, _)| by_idx[*i].0).collect();
    let states: Vec<&str> = plan.iter().map(|(_, s)| s.as_str()).collect();
    tx.execute(
        "UPDATE tasks t SET state = x.state, attempt_base = t.attempts, final_attempt = NULL,
             ready_at = CASE WHEN x.state = 'ready' AND t.state <> 'ready'
                             THEN clock_timestamp() ELSE t.ready_at END,
             cancel_requested_at = NULL, retry_at = NULL, updated_at = clock_timestamp()
         FROM unnest($1::uuid[], $2::text[]) AS x(id, state)
         WHERE t.id = x.id",
        &[&ids, &states],
    )
    .await?;
    let each: Vec<uuid::Uuid> = plan
        .iter()
        .filter(|(i, _)| by_idx[*i].2)
        .map(|(i, _)| by_idx[*i].0)
        .collect();
    if !each.is_empty() {
        tx.execute("DELETE FROM task_copies WHERE task_id = ANY($1)", &[&each])
            .await?;
    }
    tx.execute(
        "UPDATE jobs SET state = 'running', finished_at = NULL WHERE id = $1",
        &[&job.uuid()],
    )
    .await?;
    notify_wake(&tx, schema, true).await?;
    tx.commit().await?;
    Ok(Rerun::Started(
        ids.into_iter().map(crate::id::TaskId::from_uuid).collect(),
    ))
}
