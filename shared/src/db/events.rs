//! The event log (`events`): written in the transaction of the change each event
//! announces, read in `(xid, id)` order by `GET /v1/events`, the AMQP relay and the
//! webhook fan-out.
//!
//! Order without gaps: ids are taken when rows are inserted, not when they commit, so a
//! reader that went by id alone could pass an event whose transaction commits later.
//! Every row carries its transaction id (`xid`); a reader only reads rows whose xid is
//! below the oldest transaction still running (`pg_snapshot_xmin`), in (xid, id) order.
//! Every transaction that could still add a row below that point has ended, so what a
//! reader has passed never grows. The cost: an event is readable once every transaction
//! that started before its own has ended (milliseconds here; a transaction left open
//! delays events, never loses them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Client, DbError, Pool, Transaction};
use crate::amqp::{self, AmqpError, Names, Outgoing, Publisher};
use crate::auth::Principal;
use crate::event::{Event, Kind, NewEvent};
use crate::id::{JobId, TaskId, TokenId};

/// A position in the log: after the event (xid, id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub xid: u64,
    pub id: i64,
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub job: Option<JobId>,
    /// Events of tasks of this group or its subgroups, of jobs with such a task, and of
    /// executors serving such a group.
    pub group: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<Kind>,
    /// Only events of jobs this token submitted (a submitter's view); None: all.
    pub owner: Option<Option<TokenId>>,
}

impl Filter {
    /// What a caller may see of what it asked for: a submitter sees its own jobs' events.
    pub fn for_caller(mut self, caller: &Principal) -> Self {
        self.owner = crate::auth::list_scope(caller);
        self
    }
}

/// Writes events in the caller's transaction, in the order given.
pub async fn insert(tx: &Transaction<'_>, events: &[NewEvent]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let jobs: Vec<Option<uuid::Uuid>> = events.iter().map(|e| e.job_id.map(|j| j.uuid())).collect();
    let tasks: Vec<Option<uuid::Uuid>> =
        events.iter().map(|e| e.task_id.map(|t| t.uuid())).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    let executors: Vec<Option<&str>> = events.iter().map(|e| e.executor_id.as_deref()).collect();
    let states: Vec<Option<&str>> = events.iter().map(|e| e.state.as_deref()).collect();
    let waits: Vec<Option<f64>> = events
        .iter()
        .map(|e| e.retry_in.map(|d| d.as_secs_f64()))
        .collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (kind, job_id, task_id, attempt, executor_id, state, retry_at)
             SELECT kind, job_id, task_id, attempt, executor_id, state,
                    clock_timestamp() + make_interval(secs => wait)
             FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[],
                         $7::float8[]) WITH ORDINALITY
                  AS x(kind, job_id, task_id, attempt, executor_id, state, wait, n)
             ORDER BY n",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &kinds, &jobs, &tasks, &attempts, &executors, &states, &waits,
        ],
    )
    .await?;
    Ok(())
}

/// Whether the events of a group match: a task's group, any task of a job's, any group
/// an executor serves (`$g`: the group; a subgroup's name starts with it and a dot;
/// `default` holds every group).
const GROUP_MATCH: &str = "($g = 'default'
 OR EXISTS (SELECT 1 FROM tasks gt WHERE gt.id = e.task_id
              AND (gt.target_group = $g OR starts_with(gt.target_group, $g || '.')))
 OR (e.task_id IS NULL AND EXISTS (SELECT 1 FROM tasks gt WHERE gt.job_id = e.job_id
              AND (gt.target_group = $g OR starts_with(gt.target_group, $g || '.'))))
 OR (e.job_id IS NULL AND EXISTS (
              SELECT 1 FROM executors gx, jsonb_array_elements_text(gx.groups) AS gg(name)
              WHERE gx.id = e.executor_id AND (gg.name = $g OR starts_with(gg.name, $g || '.')))))";

/// Up to `limit` events after `after` that the filter lets through, in log order, with
/// their details joined in, and the cursor to read on from (past what was read even if
/// the filter left it out).
pub async fn read<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    after: Cursor,
    filter: &Filter,
    limit: i64,
) -> Result<(Vec<Event>, Cursor), DbError> {
    let sql = format!(
        "SELECT e.id, e.xid::text, e.at, e.kind, e.job_id, j.name, e.task_id, t.name,
                CASE WHEN e.task_id IS NOT NULL THEN t.target_group
                     WHEN e.job_id IS NULL THEN
                         (SELECT string_agg(g, ',') FROM executors x,
                                 jsonb_array_elements_text(x.groups) AS g
                          WHERE x.id = e.executor_id) END,
                e.attempt, coalesce(e.executor_id, a.executor_id), e.state,
                coalesce(r.outcome, a.state),
                r.exit_code, r.signal,
                (extract(epoch FROM r.finished_at - r.started_at) * 1000)::bigint,
                e.retry_at,
                ($4::bool AND ($5::uuid IS NULL OR j.owner_token IS DISTINCT FROM $5
                               OR e.job_id IS NULL))
                  OR ($6::uuid IS NOT NULL AND e.job_id IS DISTINCT FROM $6)
                  OR (cardinality($7::text[]) > 0 AND e.kind <> ALL($7))
                  OR ($8::text IS NOT NULL AND NOT {group})
         FROM (SELECT * FROM events
               WHERE (xid, id) > ($1::text::xid8, $2)
                 AND xid < pg_snapshot_xmin(pg_current_snapshot())
                 AND {job}
               ORDER BY xid, id LIMIT $3) e
         LEFT JOIN jobs j ON j.id = e.job_id
         LEFT JOIN tasks t ON t.id = e.task_id
         LEFT JOIN attempts a ON e.kind IN ('task.finished', 'task.retrying')
                             AND a.task_id = e.task_id AND a.attempt = e.attempt
         LEFT JOIN results r ON e.kind IN ('task.finished', 'task.retrying')
                            AND r.task_id = e.task_id AND r.attempt = e.attempt
         ORDER BY e.xid, e.id",
        group = GROUP_MATCH.replace("$g", "$8"),
        // Its own statement for one job's events, so that even a generic plan reads them
        // along events_job rather than the whole log from the cursor on.
        job = if filter.job.is_some() {
            "job_id = $6"
        } else {
            "$6::uuid IS NULL"
        },
    );
    let stmt = client.prepare_cached(&sql).await?;
    let (scoped, owner) = match filter.owner {
        Some(tok) => (true, tok.map(|t| t.uuid())),
        None => (false, None),
    };
    let kinds: Vec<&str> = filter.kinds.iter().map(|k| k.as_str()).collect();
    let rows = client
        .query(
            &stmt,
            &[
                &after.xid.to_string(),
                &after.id,
                &limit,
                &scoped,
                &owner,
                &filter.job.map(|j| j.uuid()),
                &kinds,
                &filter.group,
            ],
        )
        .await?;
    let mut next = after;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let xid: String = r.get(1);
        next = Cursor {
            xid: xid
                .parse()
                .map_err(|_| DbError::Row(format!("events.xid {xid:?}")))?,
            id: r.get(0),
        };
        let left_out: Option<bool> = r.get(17);
        if left_out == Some(true) {
            continue;
        }
        match event_row(r) {
            Ok(e) => out.push(e),
            // A row this build cannot show (a kind a newer one writes, during a rolling
            // upgrade) is passed over, never a wall every reader stops at.
            Err(e) => tracing::warn!(error = %e, "an event passed over"),
        }
    }
    Ok((out, next))
}

fn event_row(r: &tokio_postgres::Row) -> Result<Event, DbError> {
    let kind: String = r.get(3);
    let kind = Kind::parse(&kind).ok_or_else(|| DbError::Row(format!("event kind {kind:?}")))?;
    let state: Option<String> = r.get(11);
    // A retrying event's state column holds the attempt's outcome.
    let (state, outcome) = match kind {
        Kind::TaskRetrying => (
            Some("retrying".to_owned()),
            r.get::<_, Option<String>>(12).or(state),
        ),
        Kind::TaskFinished => (state, r.get(12)),
        _ => (state, None),
    };
    Ok(Event {
        id: r.get(0),
        kind,
        at: r.get(2),
        job_id: r.get::<_, Option<uuid::Uuid>>(4).map(JobId::from_uuid),
        job_name: r.get(5),
        task_id: r.get::<_, Option<uuid::Uuid>>(6).map(TaskId::from_uuid),
        task: r.get(7),
        group: r.get(8),
        attempt: r.get(9),
        executor: r.get(10),
        state,
        outcome,
        exit_code: r.get(13),
        signal: r.get(14),
        duration_ms: r.get(15),
        retry_at: r.get(16),
    })
}

/// The cursor just past the last event readable now: where a reader of what happens
/// from now on starts.
pub async fn tail(client: &Client) -> Result<Cursor, DbError> {
    let row = client
        .query_opt(
            "SELECT xid::text, id FROM events
             WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid DESC, id DESC LIMIT 1",
            &[],
        )
        .await?;
    cursor_of(row)
}

/// The cursor just past this event, if it is still kept.
pub async fn cursor_after(client: &Client, id: i64) -> Result<Option<Cursor>, DbError> {
    let row = client
        .query_opt("SELECT xid::text, id FROM events WHERE id = $1", &[&id])
        .await?;
    Ok(match row {
        Some(r) => Some(cursor_of(Some(r))?),
        None => None,
    })
}

fn cursor_of(row: Option<tokio_postgres::Row>) -> Result<Cursor, DbError> {
    let Some(r) = row else {
        return Ok(Cursor::default());
    };
    let xid: String = r.get(0);
    Ok(Cursor {
        xid: xid
            .parse()
            .map_err(|_| DbError::Row(format!("events.xid {xid:?}")))?,
        id: r.get(1),
    })
}

/// How long an event kind that no queue took is left out of the AMQP relay before it
/// is tried again: a queue bound meanwhile starts receiving it within this.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Which event kinds anyone listens to on the broker, as it last told this process: an
/// event published (mandatory) that no queue took marks its kind unwanted for
/// [`PROBE_EVERY`]; then the next one is published again, as a probe. So a deployment
/// that binds no queue to the events exchange sends no event messages at all (the log
/// still holds them for HTTP readers and webhooks).
#[derive(Debug, Default)]
pub struct Interest {
    unwanted_until: Mutex<HashMap<Kind, Instant>>,
}

impl Interest {
    pub fn wants(&self, kind: Kind) -> bool {
        let Ok(map) = self.unwanted_until.lock() else {
            return true;
        };
        map.get(&kind).is_none_or(|t| Instant::now() >= *t)
    }

    pub fn nobody_took(&self, kind: Kind) {
        if let Ok(mut map) = self.unwanted_until.lock() {
            map.insert(kind, Instant::now() + PROBE_EVERY);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Events a relay or the fan-out takes per transaction.
const BATCH: i64 = 500;

/// A consumer of the whole log that must see each event once (the AMQP relay, the
/// webhook fan-out): one at a time (a transaction-scoped advisory lock: another runs
/// when this one commits), from its cursor row.
struct Consumer<'a> {
    tx: Transaction<'a>,
    name: &'static str,
    at: Cursor,
}

impl<'a> Consumer<'a> {
    /// None: another process is at it now.
    async fn begin(
        client: &'a mut Client,
        schema: &str,
        name: &'static str,
    ) -> Result<Option<Consumer<'a>>, DbError> {
        let tx = client.transaction().await?;
        // Open across a publish and its confirms (up to the confirm deadline), longer
        // than the pool's idle-in-transaction limit would allow. No row is locked and no
        // transaction id taken until the cursor moves, so readers are not held up.
        tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")
            .await?;
        let got: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtext('fleet-events:' || $1 || ':' || $2))",
                &[&schema, &name],
            )
            .await?
            .get(0);
        if !got {
            return Ok(None);
        }
        let row = tx
            .query_opt(
                "SELECT xid::text, id FROM event_cursors WHERE name = $1",
                &[&name],
            )
            .await?;
        let at = cursor_of(row)?;
        Ok(Some(Consumer { tx, name, at }))
    }

    async fn read(&self) -> Result<(Vec<Event>, Cursor), DbError> {
        read(&self.tx, self.at, &Filter::default(), BATCH).await
    }

    async fn commit(self, to: Cursor) -> Result<(), DbError> {
        if to != self.at {
            self.tx
                .execute(
                    "INSERT INTO event_cursors (name, xid, id) VALUES ($1, $2::text::xid8, $3)
                     ON CONFLICT (name) DO UPDATE SET xid = EXCLUDED.xid, id = EXCLUDED.id",
                    &[&self.name, &to.xid.to_string(), &to.id],
                )
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Publishes the log's new events to `<prefix>.events` (routing key: the kind;
/// `message_id`: `<prefix>-event-<id>`), a batch per transaction, until none is left
/// or `max_batches` were sent. At least once: a relay that dies between a publish and
/// its commit publishes those again. Returns how many were read.
pub async fn relay(
    pool: &Pool,
    publisher: &Publisher,
    names: &Names,
    schema: &str,
    max_batches: Option<usize>,
    interest: &Interest,
) -> Result<usize, RelayError> {
    let mut read_total = 0;
    for _ in 0..max_batches.unwrap_or(usize::MAX) {
        let mut client = pool.get().await.map_err(DbError::from)?;
        let Some(c) = Consumer::begin(&mut client, schema, "amqp").await? else {
            return Ok(read_total);
        };
        let (events, to) = c.read().await?;
        if to == c.at {
            return Ok(read_total);
        }
        read_total += events.len();
        let wanted: Vec<&Event> = events.iter().filter(|e| interest.wants(e.kind)).collect();
        let out: Vec<Outgoing> = wanted
            .iter()
            .map(|e| {
                let props = amqp::json_properties()
                    .with_message_id(format!("{}-event-{}", names.prefix(), e.id).into());
                Outgoing::new(
                    names.events_exchange(),
                    e.kind.as_str(),
                    serde_json::to_vec(e).unwrap_or_default(),
                )
                .with_properties(props)
                .mandatory()
            })
            .collect();
        if !out.is_empty() {
            // Published before the cursor moves: a crash in between repeats, never loses.
            for i in publisher.publish_batch(out).await? {
                interest.nobody_took(wanted[i].kind);
            }
        }
        c.commit(to).await?;
        metrics::counter!("fleet_events_relayed_total").increment(wanted.len() as u64);
    }
    Ok(read_total)
}

/// Queues a delivery for each new event and each webhook that wants it (fleet-wide
/// ones by kind and group, a job's own by kind), a batch per transaction, until none is
/// left or `max_batches` were done. Returns how many deliveries were queued.
pub async fn fan_out(pool: &Pool, schema: &str, max_batches: usize) -> Result<u64, DbError> {
    let mut queued = 0;
    for _ in 0..max_batches {
        let mut client = pool.get().await?;
        let Some(c) = Consumer::begin(&mut client, schema, "webhooks").await? else {
            return Ok(queued);
        };
        let (events, to) = c.read().await?;
        if to == c.at {
            return Ok(queued);
        }
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        // A job's own webhook by its job (webhooks_job), the fleet-wide ones (few, by
        // webhooks_fleet): never every job's webhook for every event.
        let sql = format!(
            "INSERT INTO webhook_deliveries (webhook_id, event_id)
             SELECT w.id, e.id FROM events e
             JOIN webhooks w ON w.job_id = e.job_id
             WHERE e.id = ANY($1) AND (cardinality(w.kinds) = 0 OR e.kind = ANY(w.kinds))
             UNION ALL
             SELECT w.id, e.id FROM events e
             JOIN webhooks w ON w.job_id IS NULL
             WHERE e.id = ANY($1) AND (cardinality(w.kinds) = 0 OR e.kind = ANY(w.kinds))
               AND (w.group_name IS NULL OR {group})
             ON CONFLICT DO NOTHING",
            group = GROUP_MATCH.replace("$g", "w.group_name"),
        );
        // Most fleets have no webhook: then nothing is joined, and the cursor moves on.
        let stmt = c.tx.prepare_cached(&sql).await?;
        queued += c.tx.execute(&stmt, &[&ids]).await?;
        c.commit(to).await?;
    }
    Ok(queued)
}

/// Deletes events older than `before`, oldest first, up to `batch` of them; returns how
/// many. Reads the oldest `batch` by id (the primary key), never the whole table.
pub async fn purge_older(
    client: &Client,
    before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM events WHERE id IN (
                 SELECT id FROM (SELECT id, at FROM events ORDER BY id LIMIT $2) o
                 WHERE at < $1)",
            &[&before, &batch],
        )
        .await?)
}

/// Deletes the given-up webhook deliveries whose event is no longer kept (the queue
/// holds only undelivered rows, so reading its dead ones is cheap); returns how many.
pub async fn purge_dead_deliveries(client: &Client) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM webhook_deliveries d WHERE d.state = 'dead'
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)",
            &[],
        )
        .await?)
}
