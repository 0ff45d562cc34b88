//! Purging finished jobs: every row of a job (its tasks, attempts, results, `each`
//! copies, live output, events and own webhook) goes with it, in one transaction. The collector's retention loop purges the
//! jobs finished longer ago than `retention.finished_job_days`, a small batch per
//! transaction; `DELETE /v1/jobs/{id}` (the submitter) one job at once. Only finished
//! jobs are touched, and those of them with an attempt still held (a member of an `each`
//! task decided before it finished) are left for later: nothing a dispatcher or a
//! collector works on is locked.

use super::{Client, DbError, Transaction};
use crate::id::JobId;

/// Deletes every row of these jobs, which the caller has locked and found finished,
/// children first (the foreign keys: copies and attempts, then tasks, then jobs).
async fn purge(tx: &Transaction<'_>, jobs: &[uuid::Uuid]) -> Result<(), DbError> {
    let statements = [
        "DELETE FROM events WHERE job_id = ANY($1)",
        "DELETE FROM webhooks WHERE job_id = ANY($1)",
        "DELETE FROM results WHERE job_id = ANY($1)",
        "DELETE FROM log_chunks WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ANY($1))",
        "DELETE FROM task_copies WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ANY($1))",
        "DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ANY($1))",
        "DELETE FROM tasks WHERE job_id = ANY($1)",
        "DELETE FROM jobs WHERE id = ANY($1)",
    ];
    for sql in statements {
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, &[&jobs]).await?;
    }
    Ok(())
}

/// A job holds an attempt (open, or reported and not yet recorded). The states as a
/// literal: the predicate of `attempts_lease`, read by key from each task.
const HOLDS_AN_ATTEMPT: &str = "EXISTS (SELECT 1 FROM tasks t JOIN attempts a ON a.task_id = t.id
                                       WHERE t.job_id = j.id
                                         AND a.state IN ('assigned', 'running', 'reported'))";

/// Purges at most `limit` jobs that finished more than `days` days ago, oldest first, in
/// one transaction; how many. Jobs another transaction holds locked are skipped.
pub async fn purge_finished(client: &mut Client, days: u32, limit: i64) -> Result<u64, DbError> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let tx = client.transaction().await?;
    let pick = tx
        .prepare_cached(&format!(
            "SELECT j.id FROM jobs j
             WHERE j.finished_at < now() - make_interval(days => $1) AND NOT {HOLDS_AN_ATTEMPT}
             ORDER BY j.finished_at
             LIMIT $2
             FOR UPDATE OF j SKIP LOCKED"
        ))
        .await?;
    let jobs: Vec<uuid::Uuid> = tx
        .query(&pick, &[&days, &limit])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !jobs.is_empty() {
        purge(&tx, &jobs).await?;
    }
    tx.commit().await?;
    Ok(jobs.len() as u64)
}

/// What asking to delete a job came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NoSuchJob,
    /// Not finished yet.
    NotFinished,
    /// Finished, but this many of its attempts are still held (members of an `each`
    /// task decided before they finished).
    AttemptsHeld(i64),
}

/// Deletes a finished job with all its rows, at once.
pub async fn delete_job(client: &mut Client, id: JobId) -> Result<Deleted, DbError> {
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT j.finished_at IS NOT NULL,
                    (SELECT count(*) FROM tasks t JOIN attempts a ON a.task_id = t.id
                     WHERE t.job_id = j.id AND a.state IN ('assigned', 'running', 'reported'))
             FROM jobs j WHERE j.id = $1 FOR UPDATE OF j",
            &[&id.uuid()],
        )
        .await?
    else {
        return Ok(Deleted::NoSuchJob);
    };
    let (finished, held): (bool, i64) = (row.get(0), row.get(1));
    if !finished {
        return Ok(Deleted::NotFinished);
    }
    if held > 0 {
        return Ok(Deleted::AttemptsHeld(held));
    }
    purge(&tx, &[id.uuid()]).await?;
    tx.commit().await?;
    Ok(Deleted::Deleted)
}
