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
    let left_out = format!(
        "($4::bool AND ($5::uuid IS NULL OR j.owner_token IS DISTINCT FROM $5
                        OR e.job_id IS NULL))
         OR ($6::uuid IS NOT NULL AND e.job_id IS DISTINCT FROM $6)
         OR (cardinality($7::text[]) > 0 AND e.kind <> ALL($7))
         OR ($8::text IS NOT NULL AND NOT {group})",
        group = GROUP_MATCH.replace("$g", "$8"),
    );
    let source = format!(
        "SELECT * FROM events
         WHERE (xid, id) > ($1::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
           AND {job}
         ORDER BY xid, id LIMIT $3",
        // Its own statement for one job's events, so that even a generic plan reads them
        // along events_job rather than the whole log from the cursor on.
        job = if filter.job.is_some() {
            "job_id = $6"
        } else {
            "$6::uuid IS NULL"
        },
    );
    let sql = with_details(&source, &left_out);
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

/// The statement that reads events from `source` (a subquery of `events` rows, in log
/// order) with their details joined in; column 17 is `left_out` (the filter's verdict).
fn with_details(source: &str, left_out: &str) -> String {
    format!(
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
                {left_out}
         FROM ({source}) e
         LEFT JOIN jobs j ON j.id = e.job_id
         LEFT JOIN tasks t ON t.id = e.task_id
         LEFT JOIN attempts a ON e.kind IN ('task.finished', 'task.retrying')
                             AND a.task_id = e.task_id AND a.attempt = e.attempt
         LEFT JOIN results r ON e.kind IN ('task.finished', 'task.retrying')
                            AND r.task_id = e.task_id AND r.attempt = e.attempt
         ORDER BY e.xid, e.id"
    )
}

/// These events (those still kept), with their details, in log order.
pub async fn read_ids<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    ids: &[i64],
) -> Result<Vec<Event>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = with_details("SELECT * FROM events WHERE id = ANY($1)", "false");
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        match event_row(r) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(error = %e, "an event passed over"),
        }
    }
    Ok(out)
}

/// The positions and kinds of up to `limit` events after `after`: what a reader of the
/// whole log needs before it knows whether it wants their details (none, mostly).
async fn positions<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    after: Cursor,
    limit: i64,
) -> Result<Vec<(Cursor, Option<Kind>)>, DbError> {
    let stmt = client
        .prepare_cached(
            "SELECT xid::text, id, kind FROM events
             WHERE (xid, id) > ($1::text::xid8, $2)
               AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, id LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&after.xid.to_string(), &after.id, &limit])
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: String = r.get(2);
        out.push((cursor_of(Some(r))?, Kind::parse(&kind)));
    }
    Ok(out)
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

/// Which event kinds anyone listens to on the broker, as it last told this process. A
/// kind not known yet (or unwanted for [`PROBE_EVERY`] already) is probed: one event of
/// it is published (mandatory) first; if a queue took it, the rest of its kind follow
/// and it is wanted until a publish of it comes back; if none did, it is unwanted for
/// [`PROBE_EVERY`]. So a deployment that binds no queue to the events exchange sends one
/// message per kind every 10 s, and reads no event's details (the log still holds them
/// for HTTP readers and webhooks).
#[derive(Debug, Default)]
pub struct Interest {
    kinds: Mutex<HashMap<Kind, Wanted>>,
}

#[derive(Debug, Clone, Copy)]
enum Wanted {
    Yes,
    No { until: Instant },
}

/// What the relay does with a kind now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Publish every event of it.
    All,
    /// Publish one, and the rest only if a queue took it.
    Probe,
    /// Publish none.
    None,
}

impl Interest {
    pub fn relay(&self, kind: Kind) -> Relay {
        let Ok(map) = self.kinds.lock() else {
            return Relay::All;
        };
        match map.get(&kind) {
            Some(Wanted::Yes) => Relay::All,
            Some(Wanted::No { until }) if Instant::now() < *until => Relay::None,
            _ => Relay::Probe,
        }
    }

    pub fn took(&self, kind: Kind, taken: bool) {
        if let Ok(mut map) = self.kinds.lock() {
            let w = if taken {
                Wanted::Yes
            } else {
                Wanted::No {
                    until: Instant::now() + PROBE_EVERY,
                }
            };
            map.insert(kind, w);
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

    /// The next batch's positions and kinds, and where it ends.
    async fn next(&self) -> Result<(Vec<(Cursor, Option<Kind>)>, Cursor), DbError> {
        let batch = positions(&self.tx, self.at, BATCH).await?;
        let to = batch.last().map(|(c, _)| *c).unwrap_or(self.at);
        Ok((batch, to))
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
        let (batch, to) = c.next().await?;
        if to == c.at {
            return Ok(read_total);
        }
        read_total += batch.len();
        // Details are read only for the kinds some queue takes (or may: one probe each).
        // In log order: what comes after a probe waits for its answer, so a run of events
        // is published up to and including each probe, then the rest.
        let mut sent = 0;
        let mut run: Vec<i64> = Vec::new();
        for (n, (pos, kind)) in batch.iter().enumerate() {
            let Some(k) = kind else { continue };
            let probe = match interest.relay(*k) {
                Relay::None => continue,
                Relay::All => false,
                Relay::Probe => true,
            };
            run.push(pos.id);
            if probe || n + 1 == batch.len() {
                let events = read_ids(&c.tx, &run).await?;
                let returned = publish_events(publisher, names, &events).await?;
                for (i, e) in events.iter().enumerate() {
                    // A probe tells either way; any other only when it came back.
                    let taken = !returned.contains(&i);
                    if !taken || (probe && e.id == pos.id) {
                        interest.took(e.kind, taken);
                    }
                }
                sent += events.len();
                run.clear();
            }
        }
        if !run.is_empty() {
            let events = read_ids(&c.tx, &run).await?;
            for i in publish_events(publisher, names, &events).await? {
                interest.took(events[i].kind, false);
            }
            sent += events.len();
        }
        let full = batch.len() as i64 == BATCH;
        c.commit(to).await?;
        metrics::counter!("fleet_events_relayed_total").increment(sent as u64);
        // A short batch was the end: no second transaction just to find nothing.
        if !full {
            break;
        }
    }
    Ok(read_total)
}

/// Publishes events to `<prefix>.events` (routing key: the kind; `message_id`:
/// `<prefix>-event-<id>`), mandatory; the positions no queue took.
async fn publish_events(
    publisher: &Publisher,
    names: &Names,
    events: &[Event],
) -> Result<Vec<usize>, AmqpError> {
    let out: Vec<Outgoing> = events
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
    publisher.publish_batch(out).await
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
        let (batch, to) = c.next().await?;
        if to == c.at {
            return Ok(queued);
        }
        // Most fleets have no webhook: then the cursor just moves on.
        let any: bool =
            c.tx.query_one("SELECT EXISTS (SELECT 1 FROM webhooks)", &[])
                .await?
                .get(0);
        if !any {
            c.commit(to).await?;
            if (batch.len() as i64) < BATCH {
                break;
            }
            continue;
        }
        let ids: Vec<i64> = batch.iter().map(|(c, _)| c.id).collect();
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
        let stmt = c.tx.prepare_cached(&sql).await?;
        queued += c.tx.execute(&stmt, &[&ids]).await?;
        c.commit(to).await?;
        if (batch.len() as i64) < BATCH {
            break;
        }
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
