//! Statements the submitter owns: inserting jobs and their tasks, idempotently.

use serde_json::json;

use super::{notify_wake, DbError, Transaction};
use crate::id::{JobId, TaskId};
use crate::job::ValidJob;
use crate::state::TaskState;

pub struct NewJob {
    pub id: JobId,
    pub idempotency_key: Option<String>,
    pub job: ValidJob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub job_id: JobId,
    /// False when the idempotency key named an existing job.
    pub created: bool,
}

/// Inserts a batch of jobs in one transaction: three statements whatever the number of
/// jobs and tasks. A job whose idempotency key exists already (or repeats within the
/// batch) is not inserted again; its ticket names the existing job.
pub async fn insert_jobs(
    tx: &Transaction<'_>,
    schema: &str,
    jobs: &[NewJob],
) -> Result<Vec<Ticket>, DbError> {
    let job_rows: Vec<_> = jobs
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "name": j.job.name,
                "idempotency_key": j.idempotency_key,
                "task_count": j.job.tasks.len(),
            })
        })
        .collect();
    let created: Vec<uuid::Uuid> = tx
        .query(
            "INSERT INTO jobs (id, name, idempotency_key, task_count)
             SELECT x.id, x.name, x.idempotency_key, x.task_count
             FROM jsonb_to_recordset($1::jsonb)
                  AS x(id uuid, name text, idempotency_key text, task_count int)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id",
            &[&serde_json::Value::Array(job_rows)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    let missing_keys: Vec<&str> = jobs
        .iter()
        .filter(|j| !created.contains(&j.id.uuid()))
        .filter_map(|j| j.idempotency_key.as_deref())
        .collect();
    let existing: Vec<(String, uuid::Uuid)> = if missing_keys.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "SELECT idempotency_key, id FROM jobs WHERE idempotency_key = ANY($1)",
            &[&missing_keys],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };

    let mut task_rows = Vec::new();
    let mut tickets = Vec::with_capacity(jobs.len());
    for j in jobs {
        if created.contains(&j.id.uuid()) {
            tickets.push(Ticket {
                job_id: j.id,
                created: true,
            });
            for (idx, t) in j.job.tasks.iter().enumerate() {
                let state = if t.depends_on.is_empty() {
                    TaskState::Ready
                } else {
                    TaskState::Waiting
                };
                task_rows.push(json!({
                    "id": TaskId::new(),
                    "job_id": j.id,
                    "idx": idx,
                    "name": t.name,
                    "argv": t.argv,
                    "env": t.env,
                    "cwd": t.cwd,
                    "stdin": t.stdin,
                    "timeout_secs": t.timeout.as_secs(),
                    "priority": t.priority,
                    "target_group": t.group,
                    "labels": t.labels,
                    "depends_on": t.depends_on,
                    "max_attempts": t.max_attempts,
                    "each": t.each,
                    "quorum": t.quorum,
                    "state": state.as_str(),
                }));
            }
        } else {
            let key = j.idempotency_key.as_deref();
            let id = existing
                .iter()
                .find(|(k, _)| Some(k.as_str()) == key)
                .map(|(_, id)| JobId::from_uuid(*id))
                .ok_or_else(|| DbError::Row(format!("job {} neither inserted nor found", j.id)))?;
            tickets.push(Ticket {
                job_id: id,
                created: false,
            });
        }
    }
    if !task_rows.is_empty() {
        tx.execute(
            "INSERT INTO tasks (id, job_id, idx, name, argv, env, cwd, stdin, timeout_secs,
                                priority, target_group, labels, depends_on, max_attempts, each,
                                quorum, state)
             SELECT x.id, x.job_id, x.idx, x.name, x.argv, x.env, x.cwd, x.stdin,
                    x.timeout_secs, x.priority, x.target_group, x.labels, x.depends_on,
                    x.max_attempts, x.each, x.quorum, x.state
             FROM jsonb_to_recordset($1::jsonb) AS x(
                 id uuid, job_id uuid, idx int, name text, argv jsonb, env jsonb, cwd text,
                 stdin text, timeout_secs bigint, priority int, target_group text,
                 labels jsonb, depends_on jsonb, max_attempts int, each bool, quorum int,
                 state text)",
            &[&serde_json::Value::Array(task_rows)],
        )
        .await?;
        notify_wake(tx, schema).await?;
    }
    Ok(tickets)
}
