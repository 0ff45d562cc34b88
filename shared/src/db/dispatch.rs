//! Statements the dispatcher owns: executors (from INFO), attempts (the leases), and
//! the ready -> assigned -> running moves of tasks.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::collect::{settle, Ended, Settled};
use super::{Client, DbError, Transaction};
use crate::group::GroupName;
use crate::id::{ExecutorId, JobId, TaskId};
use crate::proto::{Info, Outcome};

/// This dispatcher's hold on leadership: who, and under which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub holder: String,
    pub epoch: i64,
}

/// Takes leadership if nobody holds it or the holder's lease expired (with the next
/// epoch), or renews it if we hold it already. `None`: someone else leads.
pub async fn try_lead(
    client: &Client,
    holder: &str,
    ttl_secs: f64,
) -> Result<Option<Leadership>, DbError> {
    let row = client
        .query_opt(
            "INSERT INTO dispatcher_leader AS l (id, holder, epoch, expires_at)
             VALUES (1, $1, 1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (id) DO UPDATE
                 SET holder = $1,
                     epoch = CASE WHEN l.holder = $1 THEN l.epoch ELSE l.epoch + 1 END,
                     expires_at = clock_timestamp() + make_interval(secs => $2)
                 WHERE l.holder = $1 OR l.expires_at < clock_timestamp()
             RETURNING epoch",
            &[&holder, &ttl_secs],
        )
        .await?;
    Ok(row.map(|r| Leadership {
        holder: holder.to_owned(),
        epoch: r.get(0),
    }))
}

/// Extends our lease; false when we no longer hold it (a standby took over).
pub async fn renew(client: &Client, lead: &Leadership, ttl_secs: f64) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE dispatcher_leader SET expires_at = clock_timestamp() + make_interval(secs => $3)
             WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
            &[&lead.holder, &lead.epoch, &ttl_secs],
        )
        .await?;
    Ok(n == 1)
}

/// The fence: holds the leader row (FOR SHARE) for the rest of the transaction if we
/// still lead under our epoch. A takeover waits for this transaction to end; once it has
/// happened, this finds no row and the caller writes nothing.
pub async fn fence(tx: &Transaction<'_>, lead: &Leadership) -> Result<bool, DbError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM dispatcher_leader
             WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()
             FOR SHARE",
            &[&lead.holder, &lead.epoch],
        )
        .await?;
    Ok(row.is_some())
}

/// Records the latest INFO of each executor and extends the lease of every attempt it
/// reports holding, marking the ones it reports started as running. One transaction for
/// a whole round of heartbeats.
pub async fn apply_infos(
    tx: &Transaction<'_>,
    infos: &[(Info, DateTime<Utc>)],
    lease_secs: f64,
) -> Result<(), DbError> {
    if infos.is_empty() {
        return Ok(());
    }
    let executors: Vec<_> = infos
        .iter()
        .map(|(i, at)| {
            json!({
                "id": i.executor_id, "groups": i.groups, "labels": i.labels,
                "capacity": i.capacity, "running": i.running, "queued": i.queued,
                "draining": i.draining, "last_info_at": at,
            })
        })
        .collect();
    tx.execute(
        "INSERT INTO executors (id, groups, labels, capacity, running, queued, draining, last_info_at)
         SELECT x.id, x.groups, x.labels, x.capacity, x.running, x.queued, x.draining, x.last_info_at
         FROM jsonb_to_recordset($1::jsonb) AS x(id text, groups jsonb, labels jsonb, capacity int,
              running int, queued int, draining bool, last_info_at timestamptz)
         ON CONFLICT (id) DO UPDATE SET groups = EXCLUDED.groups, labels = EXCLUDED.labels,
              capacity = EXCLUDED.capacity, running = EXCLUDED.running, queued = EXCLUDED.queued,
              draining = EXCLUDED.draining, last_info_at = EXCLUDED.last_info_at",
        &[&serde_json::Value::Array(executors)],
    )
    .await?;
    let held: Vec<_> = infos
        .iter()
        .flat_map(|(i, _)| {
            i.in_flight.iter().map(move |h| {
                json!({"task_id": h.task_id, "attempt": h.attempt,
                       "executor_id": i.executor_id, "running": h.running})
            })
        })
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    // The outer UPDATE sees the CTE's RETURNING rows, so a task moves to running in the
    // same statement as its attempt; both are conditional, so a result recorded
    // meanwhile by the collector is never overwritten.
    tx.execute(
        "WITH x AS (
             SELECT * FROM jsonb_to_recordset($1::jsonb)
                 AS x(task_id uuid, attempt int, executor_id text, running bool)),
         upd AS (
             UPDATE attempts a
             SET lease_deadline = clock_timestamp() + make_interval(secs => $2),
                 state = CASE WHEN x.running THEN 'running' ELSE a.state END,
                 started_at = CASE WHEN x.running AND a.started_at IS NULL
                                   THEN clock_timestamp() ELSE a.started_at END
             FROM x
             WHERE a.task_id = x.task_id AND a.attempt = x.attempt
               AND a.executor_id = x.executor_id AND a.state IN ('assigned', 'running')
             RETURNING a.task_id, a.attempt, a.state)
         UPDATE tasks t SET state = 'running', updated_at = clock_timestamp()
         FROM upd
         WHERE t.id = upd.task_id AND t.attempts = upd.attempt
           AND upd.state = 'running' AND t.state = 'assigned'",
        &[&serde_json::Value::Array(held), &lease_secs],
    )
    .await?;
    Ok(())
}

/// Attempts handed out and not finished, per executor.
pub async fn outstanding(client: &Client) -> Result<HashMap<String, u32>, DbError> {
    let rows = client
        .query(
            "SELECT executor_id, count(*) FROM attempts
             WHERE state IN ('assigned', 'running') GROUP BY executor_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n: i64 = r.get(1);
            (r.get(0), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect())
}

#[derive(Debug, Clone)]
pub struct ReadyRow {
    pub id: TaskId,
    pub job_id: JobId,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    pub timeout_secs: u64,
    pub priority: i32,
    pub seq: i64,
    pub group: GroupName,
    pub labels: BTreeMap<String, String>,
}

fn parse<T: serde::de::DeserializeOwned>(col: &str, v: serde_json::Value) -> Result<T, DbError> {
    serde_json::from_value(v).map_err(|e| DbError::Row(format!("tasks.{col}: {e}")))
}

/// Where the next page of ready tasks starts: after (priority, seq) in
/// "highest priority, then oldest" order.
pub type ReadyCursor = (i32, i64);

pub async fn ready_page(
    client: &Client,
    after: Option<ReadyCursor>,
    limit: i64,
) -> Result<Vec<ReadyRow>, DbError> {
    let (p, s) = after.unwrap_or((i32::MAX, i64::MIN));
    let rows = client
        .query(
            "SELECT id, job_id, argv, env, cwd, stdin, timeout_secs, priority, seq,
                    target_group, labels
             FROM tasks
             WHERE state = 'ready' AND (priority < $1 OR (priority = $1 AND seq > $2))
             ORDER BY priority DESC, seq
             LIMIT $3",
            &[&p, &s, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let group: String = r.get(9);
            Ok(ReadyRow {
                id: TaskId::from_uuid(r.get(0)),
                job_id: JobId::from_uuid(r.get(1)),
                argv: parse("argv", r.get(2))?,
                env: parse("env", r.get(3))?,
                cwd: r.get(4),
                stdin: r.get(5),
                timeout_secs: u64::try_from(r.get::<_, i64>(6)).unwrap_or(1),
                priority: r.get(7),
                seq: r.get(8),
                group: GroupName::parse(&group).map_err(|e| DbError::Row(e.to_string()))?,
                labels: parse("labels", r.get(10))?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: TaskId,
    pub attempt: i32,
    pub executor_id: ExecutorId,
    pub lease_deadline: DateTime<Utc>,
}

/// Moves the chosen tasks from ready to assigned and opens one attempt (a lease) each,
/// in one statement. A task no longer ready (cancelled meanwhile) is skipped.
pub async fn assign(
    tx: &Transaction<'_>,
    pairs: &[(TaskId, ExecutorId)],
    lease_secs: f64,
    epoch: i64,
) -> Result<Vec<Assignment>, DbError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = pairs
        .iter()
        .map(|(t, e)| json!({"task_id": t, "executor_id": e}))
        .collect();
    let out = tx
        .query(
            "WITH picked AS (
                 UPDATE tasks t SET state = 'assigned', attempts = t.attempts + 1,
                                    updated_at = clock_timestamp()
                 FROM jsonb_to_recordset($1::jsonb) AS x(task_id uuid, executor_id text)
                 WHERE t.id = x.task_id AND t.state = 'ready'
                 RETURNING t.id, t.attempts, x.executor_id)
             INSERT INTO attempts (task_id, attempt, executor_id, state, lease_deadline, epoch)
             SELECT id, attempts, executor_id, 'assigned',
                    clock_timestamp() + make_interval(secs => $2), $3
             FROM picked
             RETURNING task_id, attempt, executor_id, lease_deadline",
            &[&serde_json::Value::Array(rows), &lease_secs, &epoch],
        )
        .await?;
    out.iter()
        .map(|r| {
            let e: String = r.get(2);
            Ok(Assignment {
                task_id: TaskId::from_uuid(r.get(0)),
                attempt: r.get(1),
                executor_id: ExecutorId::parse(&e).map_err(|e| DbError::Row(e.to_string()))?,
                lease_deadline: r.get(3),
            })
        })
        .collect()
}

/// Marks every attempt whose lease ran out as lost and settles its task: back to ready
/// while attempts remain, else failed.
pub async fn sweep_leases(tx: &Transaction<'_>) -> Result<Settled, DbError> {
    let rows = tx
        .query(
            "UPDATE attempts SET state = 'lost', finished_at = clock_timestamp()
             WHERE state IN ('assigned', 'running') AND lease_deadline < clock_timestamp()
             RETURNING task_id, attempt, executor_id",
            &[],
        )
        .await?;
    let ended: Vec<Ended> = rows
        .iter()
        .map(|r| {
            let executor: String = r.get(2);
            tracing::warn!(task_id = %r.get::<_, uuid::Uuid>(0), attempt = r.get::<_, i32>(1),
                           executor_id = %executor, "lease expired: attempt lost");
            Ended {
                task_id: TaskId::from_uuid(r.get(0)),
                attempt: r.get(1),
                outcome: Outcome::Lost,
            }
        })
        .collect();
    settle(tx, &ended).await
}
