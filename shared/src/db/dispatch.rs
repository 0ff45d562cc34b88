//! Statements the dispatcher owns: executors (from INFO), attempts (the leases), and
//! the ready -> assigned -> running moves of tasks.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::json;

pub use super::collect::lose;
use super::collect::{settle, settle_each, Ended, Settled};
use super::held_by_columns;
pub use super::HeldBy;
use super::{Client, DbError, Transaction};
use crate::group::GroupName;
use crate::id::{ExecutorId, JobId, TaskId};
use crate::proto::{Info, Outcome};

/// The states of an open attempt, as a parameter. A statement that writes a batch by key
/// compares states through a parameter (`state = ANY($n)`, `state = $n`), never a
/// literal: a literal would match the predicate of a partial index (`attempts_open`,
/// `tasks_ready`), and a planner that believes from stale statistics that the index is
/// nearly empty then reads all of it for a few keys (22 ms a round with 40,000 tasks
/// ready). Through a parameter, the only index left is the primary key.
pub(crate) const OPEN: [&str; 2] = ["assigned", "running"];

/// The columns [`task_row`] reads, in its order.
macro_rules! task_select {
    () => {
        "SELECT id, job_id, argv, env, cwd, stdin, timeout_secs, priority, seq,
                target_group, labels, each, attempts, env_secret
         FROM tasks t "
    };
}
/// The task `t` is in a group whose dispatching is paused (`default`: all of them).
macro_rules! paused {
    () => {
        " EXISTS (SELECT 1 FROM scheduler_pauses p
                  WHERE p.group_name = 'default' OR p.group_name = t.target_group
                     OR t.target_group LIKE p.group_name || '.%') "
    };
}
/// The task `t` is not in a paused group.
macro_rules! not_paused {
    () => {
        concat!(" NOT", paused!())
    };
}
/// A pending copy `c` of an undecided task `t` whose member is gone past the grace
/// period: silent now ($2 seconds), and since the loss or its last INFO, whichever is
/// later, for longer than $1 seconds times the task's attempts.
macro_rules! grace_gone {
    () => {
        "c.state = 'pending' AND t.state IN ('assigned', 'running')
         AND greatest(c.pending_since,
                      (SELECT e.last_info_at FROM executors e WHERE e.id = c.executor_id))
             < clock_timestamp() - make_interval(secs => $1::float8 * t.max_attempts)
         AND NOT EXISTS (
             SELECT 1 FROM executors e WHERE e.id = c.executor_id
             AND e.last_info_at >= clock_timestamp() - make_interval(secs => $2))"
    };
}

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
    let n = super::execute(
        client,
        "UPDATE dispatcher_leader SET expires_at = clock_timestamp() + make_interval(secs => $3)
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
        &[&lead.holder, &lead.epoch, &ttl_secs],
    )
    .await?;
    Ok(n == 1)
}

/// Gives leadership up (a shutdown, a lost broker): the lease ends now, so a standby
/// takes over at its next attempt instead of waiting out the TTL.
pub async fn release(client: &Client, lead: &Leadership) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE dispatcher_leader SET expires_at = clock_timestamp()
             WHERE id = 1 AND holder = $1 AND epoch = $2",
            &[&lead.holder, &lead.epoch],
        )
        .await?;
    Ok(n == 1)
}

/// The fence: holds the leader row (FOR SHARE) for the rest of the transaction if we
/// still lead under our epoch. A takeover waits for this transaction to end; once it has
/// happened, this finds no row and the caller writes nothing.
pub async fn fence(tx: &Transaction<'_>, lead: &Leadership) -> Result<bool, DbError> {
    let rows = super::query(
        tx,
        "SELECT 1 FROM dispatcher_leader
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()
         FOR SHARE",
        &[&lead.holder, &lead.epoch],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Writes what the INFO heard says of each executor (groups, labels, capacity, load,
/// draining) and when it was heard, for the API and for `each` membership.
pub async fn upsert_executors(
    tx: &Transaction<'_>,
    infos: &[(&Info, DateTime<Utc>)],
) -> Result<(), DbError> {
    if infos.is_empty() {
        return Ok(());
    }
    let json = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| DbError::Row(format!("encoding an executor: {e}")))
    };
    let ids: Vec<&str> = infos.iter().map(|(i, _)| i.executor_id.as_str()).collect();
    let groups = infos
        .iter()
        .map(|(i, _)| json(serde_json::to_value(&i.groups)))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = infos
        .iter()
        .map(|(i, _)| json(serde_json::to_value(&i.labels)))
        .collect::<Result<Vec<_>, _>>()?;
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let capacity: Vec<i32> = infos.iter().map(|(i, _)| int(i.capacity)).collect();
    let running: Vec<i32> = infos.iter().map(|(i, _)| int(i.running)).collect();
    let queued: Vec<i32> = infos.iter().map(|(i, _)| int(i.queued)).collect();
    let draining: Vec<bool> = infos.iter().map(|(i, _)| i.draining).collect();
    let at: Vec<DateTime<Utc>> = infos.iter().map(|(_, at)| *at).collect();
    // `prev`: the rows as they were before this statement. An executor new, or back
    // after it was announced lost, is announced joined; one that began draining,
    // drained (unless an admin drained it: that drain was announced when recorded).
    let stmt = tx
        .prepare_cached(
            "WITH prev AS (
                 SELECT id, draining, lost_at IS NOT NULL AS lost FROM executors
                 WHERE id = ANY($1)),
             up AS (
                 INSERT INTO executors (id, groups, labels, capacity, running, queued, draining,
                                        last_info_at)
                 SELECT * FROM unnest($1::text[], $2::jsonb[], $3::jsonb[], $4::int[], $5::int[],
                                      $6::int[], $7::bool[], $8::timestamptz[])
                 ON CONFLICT (id) DO UPDATE SET groups = EXCLUDED.groups,
                      labels = EXCLUDED.labels, capacity = EXCLUDED.capacity,
                      running = EXCLUDED.running, queued = EXCLUDED.queued,
                      draining = EXCLUDED.draining, last_info_at = EXCLUDED.last_info_at,
                      lost_at = NULL
                 RETURNING id, draining)
             INSERT INTO events (kind, executor_id)
             SELECT CASE WHEN prev.id IS NULL OR prev.lost THEN 'executor.joined'
                         ELSE 'executor.drained' END, up.id
             FROM up LEFT JOIN prev ON prev.id = up.id
             WHERE prev.id IS NULL OR prev.lost
                OR (up.draining AND NOT prev.draining
                    AND NOT EXISTS (SELECT 1 FROM executor_drains x WHERE x.executor_id = up.id))
             ORDER BY up.id",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &ids, &groups, &labels, &capacity, &running, &queued, &draining, &at,
        ],
    )
    .await?;
    Ok(())
}

/// Marks the executors not heard from for `alive_secs` lost, and announces each once
/// (`executor.lost`). The table holds one row per executor, not per task: a scan is
/// cheap.
pub async fn lose_executors(tx: &Transaction<'_>, alive_secs: f64) -> Result<u64, DbError> {
    let stmt = tx
        .prepare_cached(
            "WITH gone AS (
                 UPDATE executors SET lost_at = clock_timestamp()
                 WHERE lost_at IS NULL
                   AND last_info_at < clock_timestamp() - make_interval(secs => $1)
                 RETURNING id)
             INSERT INTO events (kind, executor_id)
             SELECT 'executor.lost', id FROM gone ORDER BY id",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&alive_secs]).await?)
}

/// An attempt an executor reports holding, and whether it has started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub attempt: HeldBy,
    pub running: bool,
}

/// Extends the lease of attempts their executor reports holding, and marks those it
/// reports started as running, task included. Both are conditional, so an attempt closed
/// meanwhile (a result recorded, a lease swept) is left alone.
pub async fn extend_leases(
    tx: &Transaction<'_>,
    held: &[Held],
    lease_secs: f64,
) -> Result<(), DbError> {
    if held.is_empty() {
        return Ok(());
    }
    let tasks: Vec<uuid::Uuid> = held.iter().map(|h| h.attempt.task_id.uuid()).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.attempt.attempt).collect();
    let executors: Vec<&str> = held
        .iter()
        .map(|h| h.attempt.executor_id.as_str())
        .collect();
    let running: Vec<bool> = held.iter().map(|h| h.running).collect();
    // The outer UPDATE sees the CTE's RETURNING rows, so a task moves to running in the
    // same statement as its attempt. `prev` reads the attempts as they were before the
    // statement: those not started until now announce `task.started` (the collector
    // announces it instead for an attempt whose result comes first).
    let stmt = tx
        .prepare_cached(
            "WITH prev AS (
                 SELECT a.task_id, a.attempt FROM attempts a
                 JOIN unnest($1::uuid[], $2::int[], $3::text[], $4::bool[])
                      AS x(task_id, attempt, executor_id, running)
                   ON a.task_id = x.task_id AND a.attempt = x.attempt
                  AND a.executor_id = x.executor_id
                 WHERE x.running AND a.started_at IS NULL AND a.state = ANY($6)),
             upd AS (
                 UPDATE attempts a
                 SET lease_deadline = clock_timestamp() + make_interval(secs => $5),
                     state = CASE WHEN x.running THEN 'running' ELSE a.state END,
                     started_at = CASE WHEN x.running AND a.started_at IS NULL
                                       THEN clock_timestamp() ELSE a.started_at END
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::bool[])
                      AS x(task_id, attempt, executor_id, running)
                 WHERE a.task_id = x.task_id AND a.attempt = x.attempt
                   AND a.executor_id = x.executor_id AND a.state = ANY($6)
                 RETURNING a.task_id, a.attempt, a.state, a.executor_id),
             moved AS (
                 UPDATE tasks t SET state = 'running', updated_at = clock_timestamp()
                 FROM upd
                 WHERE t.id = upd.task_id AND (t.attempts = upd.attempt OR t.each)
                   AND upd.state = 'running' AND t.state = 'assigned')
             INSERT INTO events (kind, job_id, task_id, attempt, executor_id)
             SELECT 'task.started', t.job_id, upd.task_id, upd.attempt, upd.executor_id
             FROM upd JOIN prev ON prev.task_id = upd.task_id AND prev.attempt = upd.attempt
             JOIN tasks t ON t.id = upd.task_id
             WHERE upd.state = 'running'
             ORDER BY upd.task_id, upd.attempt",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tasks,
            &attempts,
            &executors,
            &running,
            &lease_secs,
            &&OPEN[..],
        ],
    )
    .await?;
    Ok(())
}

/// Every attempt handed out and not finished (nor reported finished), with its executor:
/// what a new leader starts counting slots from.
pub async fn open_attempts(client: &Client) -> Result<Vec<HeldBy>, DbError> {
    let rows = client
        .query(
            "SELECT task_id, attempt, executor_id FROM attempts
             WHERE state IN ('assigned', 'running')",
            &[],
        )
        .await?;
    rows.iter().map(HeldBy::from_row).collect()
}

/// Attempts handed out but not started whose group is paused (requests waiting in an
/// executor's window when the pause came): the dispatcher asks their holders to give
/// them back, so that nothing of a paused group starts. Reads the open attempts only
/// (`attempts_open`), and only while a pause exists.
pub async fn paused_unstarted(client: &Client) -> Result<Vec<HeldBy>, DbError> {
    // The task's group through a subplan keyed by the attempt's task (not a join): the
    // open attempts are listed alone, along their partial index, and only while some
    // pause exists (a one-time filter).
    let rows = super::query(
        client,
        concat!(
            "SELECT a.task_id, a.attempt, a.executor_id FROM attempts a
             WHERE EXISTS (SELECT 1 FROM scheduler_pauses)
               AND a.state IN ('assigned', 'running') AND a.started_at IS NULL
               AND (SELECT count(*) FROM tasks t WHERE t.id = a.task_id AND",
            paused!(),
            ") > 0"
        ),
        &[],
    )
    .await?;
    rows.iter().map(HeldBy::from_row).collect()
}

/// Makes ready the `retrying` tasks whose backoff is over (along `tasks_retrying`).
/// Returns how many.
pub async fn retries_due(client: &Client) -> Result<u64, DbError> {
    super::execute(
        client,
        "UPDATE tasks SET state = 'ready', retry_at = NULL, ready_at = clock_timestamp(),
             updated_at = clock_timestamp()
         WHERE state = 'retrying' AND retry_at <= clock_timestamp()",
        &[],
    )
    .await
}

/// Open attempts whose cancel was asked (`collect::cancel`): the dispatcher sends each
/// holder a cancel until the attempt ends. Read along `attempts_cancelling`.
pub async fn attempts_to_kill(client: &Client) -> Result<Vec<HeldBy>, DbError> {
    let rows = super::query(
        client,
        "SELECT task_id, attempt, executor_id FROM attempts
         WHERE cancel_requested AND state IN ('assigned', 'running')",
        &[],
    )
    .await?;
    rows.iter().map(HeldBy::from_row).collect()
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
    /// Run once on every member of the group.
    pub each: bool,
    /// Attempts handed out so far: the next one is this plus one.
    pub attempts: i32,
    /// The secret env values, sealed (`secrets::SecretBox::seal`), until the dispatcher
    /// opens them into `env` for the request.
    pub env_secret: Option<Vec<u8>>,
}

fn parse<T: serde::de::DeserializeOwned>(col: &str, v: serde_json::Value) -> Result<T, DbError> {
    serde_json::from_value(v).map_err(|e| DbError::Row(format!("tasks.{col}: {e}")))
}

/// Where the next page of ready tasks starts: after (priority, seq) in
/// "highest priority, then oldest" order.
pub type ReadyCursor = (i32, i64);

/// Ready tasks (not `each`) for one of `groups`, highest priority then oldest first,
/// after `after`: read along the `tasks_ready` index, which has that order.
pub async fn ready_page(
    client: &Client,
    groups: &[&str],
    after: Option<ReadyCursor>,
    limit: i64,
) -> Result<Vec<ReadyRow>, DbError> {
    let rows = match after {
        None => {
            let stmt = client
                .prepare_cached(concat!(
                    task_select!(),
                    "WHERE state = 'ready' AND NOT held AND NOT each AND target_group = ANY($2)
                       AND",
                    not_paused!(),
                    "ORDER BY priority DESC, seq LIMIT $1"
                ))
                .await?;
            client.query(&stmt, &[&limit, &groups]).await?
        }
        Some((p, s)) => {
            let stmt = client
                .prepare_cached(concat!(
                    task_select!(),
                    "WHERE state = 'ready' AND NOT held AND NOT each AND target_group = ANY($4)
                       AND priority <= $1 AND (priority < $1 OR seq > $2) AND",
                    not_paused!(),
                    "ORDER BY priority DESC, seq LIMIT $3"
                ))
                .await?;
            client.query(&stmt, &[&p, &s, &limit, &groups]).await?
        }
    };
    rows.iter().map(task_row).collect()
}

/// Ready `each` tasks, to fan out (highest priority, then oldest, first).
pub async fn ready_each(client: &Client, limit: i64) -> Result<Vec<ReadyRow>, DbError> {
    let rows = super::query(
        client,
        concat!(
            task_select!(),
            "WHERE state = 'ready' AND NOT held AND each AND",
            not_paused!(),
            "ORDER BY priority DESC, seq LIMIT $1"
        ),
        &[&limit],
    )
    .await?;
    rows.iter().map(task_row).collect()
}

fn task_row(r: &tokio_postgres::Row) -> Result<ReadyRow, DbError> {
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
        each: r.get(11),
        attempts: r.get(12),
        env_secret: r.get(13),
    })
}

/// The commands of these tasks, for the requests of `each` copies.
pub async fn task_rows(
    client: &Client,
    ids: &[TaskId],
) -> Result<HashMap<TaskId, ReadyRow>, DbError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|t| t.uuid()).collect();
    let rows = client
        .query(concat!(task_select!(), "WHERE id = ANY($1)"), &[&ids])
        .await?;
    rows.iter()
        .map(|r| task_row(r).map(|t| (t.id, t)))
        .collect()
}

/// Fans `each` tasks out: one pending copy per member, and the task moves from ready to
/// assigned. A task no longer ready is skipped. Returns the tasks fanned out.
pub async fn fan_out(
    tx: &Transaction<'_>,
    members: &[(TaskId, Vec<ExecutorId>)],
) -> Result<Vec<TaskId>, DbError> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = members
        .iter()
        .map(|(t, m)| json!({"task_id": t, "members": m}))
        .collect();
    let out = tx
        .query(
            "WITH x AS (
                 SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(task_id uuid, members jsonb)),
             t AS (
                 UPDATE tasks t SET state = 'assigned', updated_at = clock_timestamp()
                 FROM x WHERE t.id = x.task_id AND t.state = 'ready' AND t.each
                 RETURNING t.id, x.members),
             c AS (
                 INSERT INTO task_copies (task_id, executor_id, state, pending_since)
                 SELECT t.id, m.id, 'pending', clock_timestamp()
                 FROM t, jsonb_array_elements_text(t.members) AS m(id))
             SELECT id FROM t",
            &[&serde_json::Value::Array(rows)],
        )
        .await?;
    Ok(out.iter().map(|r| TaskId::from_uuid(r.get(0))).collect())
}

/// Copies waiting for their executor, of tasks not yet decided: highest priority, then
/// oldest, first.
pub async fn pending_copies(client: &Client) -> Result<Vec<(TaskId, ExecutorId)>, DbError> {
    let rows = super::query(
        client,
        concat!(
            "SELECT c.task_id, c.executor_id FROM task_copies c JOIN tasks t ON t.id = c.task_id
             WHERE c.state = 'pending' AND t.state IN ('assigned', 'running') AND",
            not_paused!(),
            "ORDER BY t.priority DESC, t.seq, c.executor_id"
        ),
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let e: String = r.get(1);
            Ok((
                TaskId::from_uuid(r.get(0)),
                ExecutorId::parse(&e).map_err(|e| DbError::Row(e.to_string()))?,
            ))
        })
        .collect()
}

/// Opens one attempt for each chosen copy (on its own member), numbered on from the
/// task's attempt counter. A copy no longer pending, or of a task decided meanwhile, is
/// skipped.
pub async fn assign_copies(
    tx: &Transaction<'_>,
    pairs: &[(TaskId, ExecutorId)],
    lease_secs: f64,
    epoch: i64,
) -> Result<Vec<Assignment>, DbError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<uuid::Uuid> = pairs.iter().map(|(t, _)| t.uuid()).collect();
    ids.sort();
    ids.dedup();
    // Locking the tasks first (in id order, as settle() does) keeps their copies still
    // while we number the attempts.
    let counters: HashMap<uuid::Uuid, i32> = tx
        .query(
            "SELECT id, attempts FROM tasks
             WHERE id = ANY($1) AND state IN ('assigned', 'running') ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pending: std::collections::HashSet<(uuid::Uuid, String)> = tx
        .query(
            "SELECT task_id, executor_id FROM task_copies
             WHERE task_id = ANY($1) AND state = 'pending'",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut next = counters;
    let mut rows = Vec::new();
    for (t, e) in pairs {
        if !pending.contains(&(t.uuid(), e.as_str().to_owned())) {
            continue;
        }
        let Some(n) = next.get_mut(&t.uuid()) else {
            continue;
        };
        *n += 1;
        rows.push(json!({"task_id": t, "executor_id": e, "attempt": *n}));
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let counters: Vec<_> = next
        .iter()
        .map(|(id, n)| json!({"id": id, "attempts": n}))
        .collect();
    tx.execute(
        "UPDATE tasks t SET attempts = x.attempts, updated_at = clock_timestamp()
         FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, attempts int)
         WHERE t.id = x.id AND t.attempts < x.attempts",
        &[&serde_json::Value::Array(counters)],
    )
    .await?;
    let rows = serde_json::Value::Array(rows);
    tx.execute(
        "UPDATE task_copies c SET state = 'assigned', attempts = c.attempts + 1,
             current_attempt = x.attempt, pending_since = NULL
         FROM jsonb_to_recordset($1::jsonb) AS x(task_id uuid, executor_id text, attempt int)
         WHERE c.task_id = x.task_id AND c.executor_id = x.executor_id",
        &[&rows],
    )
    .await?;
    let out = tx
        .query(
            "INSERT INTO attempts (task_id, attempt, executor_id, state, lease_deadline, epoch)
             SELECT x.task_id, x.attempt, x.executor_id, 'assigned',
                    clock_timestamp() + make_interval(secs => $2), $3
             FROM jsonb_to_recordset($1::jsonb) AS x(task_id uuid, executor_id text, attempt int)
             RETURNING task_id, attempt, executor_id, lease_deadline",
            &[&rows, &lease_secs, &epoch],
        )
        .await?;
    tx.execute(
        "INSERT INTO events (kind, job_id, task_id, attempt, executor_id)
         SELECT 'task.assigned', t.job_id, x.task_id, x.attempt, x.executor_id
         FROM jsonb_to_recordset($1::jsonb) AS x(task_id uuid, executor_id text, attempt int)
         JOIN tasks t ON t.id = x.task_id
         ORDER BY x.task_id, x.attempt",
        &[&rows],
    )
    .await?;
    out.iter().map(assignment).collect()
}

fn assignment(r: &tokio_postgres::Row) -> Result<Assignment, DbError> {
    let e: String = r.get(2);
    Ok(Assignment {
        task_id: TaskId::from_uuid(r.get(0)),
        attempt: r.get(1),
        executor_id: ExecutorId::parse(&e).map_err(|e| DbError::Row(e.to_string()))?,
        lease_deadline: r.get(3),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: TaskId,
    pub attempt: i32,
    pub executor_id: ExecutorId,
    pub lease_deadline: DateTime<Utc>,
}

/// What assigning a round came to.
#[derive(Debug, Default)]
pub struct Assigned {
    /// Whether the leader row was ours (the fence): if not, nothing was written.
    pub led: bool,
    /// The tasks whose attempt was opened; a task no longer ready, or whose attempt
    /// counter moved meanwhile, is not among them.
    pub tasks: Vec<TaskId>,
}

/// Opens the planned attempts in one statement (one commit), fenced by our leadership:
/// each task moves from ready to assigned with the attempt number planned (its counter
/// plus one) and gets an attempt row with its lease. The leader row is locked FOR SHARE
/// for the statement, so a takeover waits for it, and after one this writes nothing.
pub async fn assign_planned(
    client: &Client,
    lead: &Leadership,
    planned: &[(TaskId, ExecutorId, i32)],
    lease_secs: f64,
) -> Result<Assigned, DbError> {
    let tasks: Vec<uuid::Uuid> = planned.iter().map(|p| p.0.uuid()).collect();
    let executors: Vec<&str> = planned.iter().map(|p| p.1.as_str()).collect();
    let attempts: Vec<i32> = planned.iter().map(|p| p.2).collect();
    let stmt = client
        .prepare_cached(
            "WITH lead AS (
                 SELECT 1 FROM dispatcher_leader
                 WHERE id = 1 AND holder = $4 AND epoch = $5 AND expires_at > clock_timestamp()
                 FOR SHARE),
             picked AS (
                 UPDATE tasks t SET state = 'assigned', attempts = x.attempt,
                                    updated_at = clock_timestamp()
                 FROM unnest($1::uuid[], $2::text[], $3::int[]) AS x(task_id, executor_id, attempt)
                 WHERE t.id = x.task_id AND t.state = $7 AND t.attempts = x.attempt - 1
                   AND EXISTS (SELECT 1 FROM lead)
                 RETURNING t.id, t.job_id, x.attempt, x.executor_id),
             opened AS (
                 INSERT INTO attempts (task_id, attempt, executor_id, state, lease_deadline, epoch)
                 SELECT id, attempt, executor_id, 'assigned',
                        clock_timestamp() + make_interval(secs => $6), $5
                 FROM picked
                 RETURNING task_id),
             announced AS (
                 INSERT INTO events (kind, job_id, task_id, attempt, executor_id)
                 SELECT 'task.assigned', job_id, id, attempt, executor_id FROM picked
                 ORDER BY id)
             SELECT task_id FROM opened
             UNION ALL SELECT NULL FROM lead",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[
                &tasks,
                &executors,
                &attempts,
                &lead.holder,
                &lead.epoch,
                &lease_secs,
                &"ready",
            ],
        )
        .await?;
    let mut out = Assigned::default();
    for r in &rows {
        match r.get::<_, Option<uuid::Uuid>>(0) {
            Some(id) => out.tasks.push(TaskId::from_uuid(id)),
            None => out.led = true,
        }
    }
    Ok(out)
}

/// Takes back attempts that never reached their executor (the broker returned the
/// request: no queue for it) or that it gave back unstarted (its request acked, never
/// run): the attempt row goes, and its task (or `each` copy) is ready again as if it had
/// never been assigned; the attempt's number is used again. Only attempts still
/// `assigned`, never started, held by that executor and without a result are taken
/// back. Returns how many were.
pub async fn unassign(tx: &Transaction<'_>, held: &[HeldBy]) -> Result<u64, DbError> {
    if held.is_empty() {
        return Ok(0);
    }
    let (tasks, attempts, executors) = held_by_columns(held);
    // One UPDATE of tasks for both kinds: a plain task goes back to ready with its
    // counter down; an `each` task keeps its state, and its counter goes down only if
    // no later copy took a number meanwhile.
    let rows = tx
        .query(
            "WITH gone AS (
                 DELETE FROM attempts a
                 USING unnest($1::uuid[], $2::int[], $3::text[]) AS x(task_id, attempt, executor_id)
                 WHERE a.task_id = x.task_id AND a.attempt = x.attempt
                   AND a.executor_id = x.executor_id
                   AND a.state = $4 AND a.started_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM results r
                                   WHERE r.task_id = a.task_id AND r.attempt = a.attempt)
                   AND NOT EXISTS (SELECT 1 FROM tasks c
                                   WHERE c.id = a.task_id AND c.cancel_requested_at IS NOT NULL)
                 RETURNING a.task_id, a.attempt, a.executor_id),
             tasks_back AS (
                 UPDATE tasks t
                 SET state = CASE WHEN t.each THEN t.state ELSE 'ready' END,
                     ready_at = CASE WHEN t.each OR t.state = 'ready' THEN t.ready_at
                                     ELSE clock_timestamp() END,
                     attempts = CASE WHEN t.attempts = g.attempt THEN t.attempts - 1
                                     ELSE t.attempts END,
                     updated_at = clock_timestamp()
                 FROM gone g
                 WHERE t.id = g.task_id
                   AND (t.each OR (t.attempts = g.attempt AND t.state = 'assigned'))
                 RETURNING t.id),
             copies_back AS (
                 UPDATE task_copies c
                 SET state = 'pending', attempts = c.attempts - 1,
                     pending_since = clock_timestamp()
                 FROM gone g
                 WHERE c.task_id = g.task_id AND c.executor_id = g.executor_id
                   AND c.current_attempt = g.attempt AND c.state = 'assigned'
                 RETURNING c.task_id)
             SELECT count(*) FROM gone",
            &[&tasks, &attempts, &executors, &"assigned"],
        )
        .await?;
    let n: i64 = rows.first().map_or(0, |r| r.get(0));
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Ends the attempts given back unstarted whose task's cancel was asked (which
/// [`unassign`] leaves alone): `cancelled`, and their tasks with them.
pub async fn end_cancelled(
    tx: &Transaction<'_>,
    held: &[HeldBy],
) -> Result<super::collect::Settled, DbError> {
    if held.is_empty() {
        return Ok(super::collect::Settled::default());
    }
    let (tasks, attempts, executors) = held_by_columns(held);
    let rows = tx
        .query(
            "UPDATE attempts a SET state = 'cancelled', finished_at = clock_timestamp()
             FROM unnest($1::uuid[], $2::int[], $3::text[]) AS x(task_id, attempt, executor_id),
                  tasks t
             WHERE a.task_id = x.task_id AND a.attempt = x.attempt
               AND a.executor_id = x.executor_id AND a.state = ANY($4)
               AND t.id = a.task_id AND t.cancel_requested_at IS NOT NULL
             RETURNING a.task_id, a.attempt",
            &[&tasks, &attempts, &executors, &&OPEN[..]],
        )
        .await?;
    let ended: Vec<super::collect::Ended> = rows
        .iter()
        .map(|r| super::collect::Ended {
            task_id: TaskId::from_uuid(r.get(0)),
            attempt: r.get(1),
            outcome: crate::proto::Outcome::Cancelled,
        })
        .collect();
    super::collect::settle(tx, &ended).await
}

/// Marks attempts reported finished by their executor (INFO `finished`): their slots
/// are free, and they are not lost for silence any more, only if no result is recorded
/// within `result_secs`.
pub async fn mark_reported(
    tx: &Transaction<'_>,
    held: &[HeldBy],
    result_secs: f64,
) -> Result<(), DbError> {
    if held.is_empty() {
        return Ok(());
    }
    let (tasks, attempts, executors) = held_by_columns(held);
    tx.execute(
        "UPDATE attempts a SET state = 'reported',
             lease_deadline = clock_timestamp() + make_interval(secs => $4)
         FROM unnest($1::uuid[], $2::int[], $3::text[]) AS x(task_id, attempt, executor_id)
         WHERE a.task_id = x.task_id AND a.attempt = x.attempt
           AND a.executor_id = x.executor_id AND a.state = ANY($5)",
        &[&tasks, &attempts, &executors, &result_secs, &&OPEN[..]],
    )
    .await?;
    Ok(())
}

/// Marks every attempt whose lease ran out (or whose executor was revoked) as lost and
/// settles its task: back to ready while attempts remain, else failed. Returns what it
/// settled, and the attempts it lost.
pub async fn sweep_leases(tx: &Transaction<'_>) -> Result<(Settled, Vec<HeldBy>), DbError> {
    sweep_attempts(tx).await
}

/// `each` tasks with a copy whose member has been gone past the grace period
/// (`lease_secs` times the task's attempts, from the loss or the member's last INFO,
/// whichever is later). Read without locks; [`sweep_grace`] checks again under them.
pub async fn grace_candidates(
    client: &Client,
    lease_secs: f64,
    alive_secs: f64,
) -> Result<Vec<uuid::Uuid>, DbError> {
    Ok(super::query(
        client,
        concat!(
            "SELECT DISTINCT c.task_id FROM task_copies c JOIN tasks t ON t.id = c.task_id
             WHERE ",
            grace_gone!()
        ),
        &[&lease_secs, &alive_secs],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Fails the copies of these tasks whose member is gone past the grace period, and
/// re-decides the tasks. The tasks are locked first, in id order, then their copies, then
/// their jobs: the order settle() takes them in.
pub async fn sweep_grace(
    tx: &Transaction<'_>,
    candidates: &[uuid::Uuid],
    lease_secs: f64,
    alive_secs: f64,
) -> Result<Settled, DbError> {
    if candidates.is_empty() {
        return Ok(Settled::default());
    }
    let mut ids = candidates.to_vec();
    ids.sort();
    ids.dedup();
    tx.execute(
        "SELECT 1 FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let failed = tx
        .query(
            concat!(
                "UPDATE task_copies c
                 SET state = 'failed', pending_since = NULL,
                     error = 'its executor did not come back within the grace period'
                 FROM tasks t
                 WHERE c.task_id = t.id AND c.task_id = ANY($3) AND ",
                grace_gone!(),
                " RETURNING c.task_id, c.executor_id, t.job_id"
            ),
            &[&lease_secs, &alive_secs, &ids],
        )
        .await?;
    let ids: Vec<TaskId> = failed
        .iter()
        .map(|r| {
            tracing::warn!(job_id = %r.get::<_, uuid::Uuid>(2), task_id = %r.get::<_, uuid::Uuid>(0),
                           executor_id = %r.get::<_, String>(1),
                           "member gone past the grace period: its copy fails");
            TaskId::from_uuid(r.get(0))
        })
        .collect();
    settle_each(tx, &ids).await
}

async fn sweep_attempts(tx: &Transaction<'_>) -> Result<(Settled, Vec<HeldBy>), DbError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE attempts SET state = 'lost', finished_at = clock_timestamp()
             WHERE (state IN ('assigned', 'running', 'reported')
                    AND lease_deadline < clock_timestamp())
                -- A revoked executor runs nothing more; what it reported finished may
                -- still be recorded.
                OR (state IN ('assigned', 'running')
                    AND executor_id IN (SELECT executor_id FROM executor_credentials
                                        WHERE revoked_at IS NOT NULL))
             RETURNING task_id, attempt, executor_id,
                       (SELECT t.job_id FROM tasks t WHERE t.id = attempts.task_id)",
        )
        .await?;
    let rows = tx.query(&stmt, &[]).await?;
    let mut ended = Vec::with_capacity(rows.len());
    let mut lost = Vec::with_capacity(rows.len());
    for r in &rows {
        let executor: String = r.get(2);
        let task_id = TaskId::from_uuid(r.get(0));
        let attempt: i32 = r.get(1);
        let job_id = r
            .try_get::<_, uuid::Uuid>(3)
            .map(|j| j.to_string())
            .unwrap_or_default();
        tracing::warn!(%job_id, %task_id, attempt, executor_id = %executor, "lease expired: attempt lost");
        ended.push(Ended {
            task_id,
            attempt,
            outcome: Outcome::Lost,
        });
        if let Ok(executor_id) = ExecutorId::parse(&executor) {
            lost.push(HeldBy {
                task_id,
                attempt,
                executor_id,
            });
        }
    }
    Ok((settle(tx, &ended).await?, lost))
}
