//! Webhooks and their durable delivery queue. Fleet-wide webhooks are an admin's (the
//! submitter writes them); a job's own one is written with the job. The event log's
//! fan-out (`events::fan_out`) queues a delivery per (webhook, event); the collector's
//! delivery loop claims due ones, POSTs them and records how it went.

use chrono::{DateTime, Utc};

pub use fleet_core::api::webhooks::WebhookView;

use super::{Client, DbError};
use crate::event::{Event, Kind};

pub struct NewWebhook {
    pub url: String,
    pub kinds: Vec<Kind>,
    pub group: Option<String>,
    pub secret: String,
    pub created_by: String,
}

pub async fn create(client: &Client, w: &NewWebhook) -> Result<WebhookView, DbError> {
    let kinds: Vec<&str> = w.kinds.iter().map(|k| k.as_str()).collect();
    let id = uuid::Uuid::new_v4();
    let row = client
        .query_one(
            "INSERT INTO webhooks (id, url, secret, kinds, group_name, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
            &[&id, &w.url, &w.secret, &kinds, &w.group, &w.created_by],
        )
        .await?;
    Ok(WebhookView {
        id,
        url: w.url.clone(),
        events: kinds.iter().map(|k| k.to_string()).collect(),
        group: w.group.clone(),
        job_id: None,
        created_by: w.created_by.clone(),
        created_at: row.get(0),
        pending: 0,
        dead: 0,
        last_delivered_at: None,
        last_error: None,
        last_error_at: None,
        secret: Some(w.secret.clone()),
    })
}

/// Every webhook, fleet-wide ones first, then jobs' own, newest first; at most 1,000.
pub async fn list(client: &Client) -> Result<Vec<WebhookView>, DbError> {
    let rows = client
        .query(
            "SELECT w.id, w.url, w.kinds, w.group_name, w.job_id, w.created_by, w.created_at,
                    (SELECT count(*) FROM webhook_deliveries d
                     WHERE d.webhook_id = w.id AND d.state = 'pending'),
                    (SELECT count(*) FROM webhook_deliveries d
                     WHERE d.webhook_id = w.id AND d.state = 'dead'),
                    w.last_delivered_at, w.last_error, w.last_error_at
             FROM webhooks w
             ORDER BY w.job_id IS NOT NULL, w.created_at DESC LIMIT 1000",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WebhookView {
            id: r.get(0),
            url: r.get(1),
            events: r.get(2),
            group: r.get(3),
            job_id: r.get(4),
            created_by: r.get(5),
            created_at: r.get(6),
            pending: r.get(7),
            dead: r.get(8),
            last_delivered_at: r.get(9),
            last_error: r.get(10),
            last_error_at: r.get(11),
            secret: None,
        })
        .collect())
}

/// Deletes a webhook and its queued deliveries; false if there was none.
pub async fn delete(client: &Client, id: uuid::Uuid) -> Result<bool, DbError> {
    Ok(client
        .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
        .await?
        > 0)
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: uuid::Uuid,
    pub url: String,
    pub secret: String,
    /// This is try number `tries` (1 for the first).
    pub tries: i32,
    pub event_id: i64,
}

/// Claims due deliveries, oldest due first, at most `per_url` in flight to one URL
/// (whatever number of webhooks, jobs' own included, point at it): a receiver that does
/// not answer holds at most that many, and every other receiver's deliveries go on. Each
/// is leased for `lease_secs`; one whose sender died is claimed again after that. One
/// claimer at a time (an advisory lock), so two collectors never send the same delivery
/// at once.
///
/// The webhooks with pending deliveries are found by walking the pending index one
/// webhook at a time (an index probe each), not by reading every pending delivery: a
/// dead receiver's backlog costs one probe, not a scan of the backlog.
pub async fn claim(
    client: &mut Client,
    schema: &str,
    limit: i64,
    per_url: i64,
    lease_secs: f64,
) -> Result<Vec<Delivery>, DbError> {
    let tx = client.transaction().await?;
    let got: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext('fleet-webhooks-claim:' || $1))",
            &[&schema],
        )
        .await?
        .get(0);
    if !got {
        return Ok(Vec::new());
    }
    // The statement's own time (stable), not the clock's (volatile): a volatile function
    // cannot bound an index scan, and every due row would be read to compare.
    let stmt = tx
        .prepare_cached(
            "WITH RECURSIVE hooks(id) AS (
                 (SELECT webhook_id FROM webhook_deliveries WHERE state = 'pending'
                  ORDER BY webhook_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT d.webhook_id FROM webhook_deliveries d
                         WHERE d.state = 'pending' AND d.webhook_id > h.id
                         ORDER BY d.webhook_id LIMIT 1)
                 FROM hooks h WHERE h.id IS NOT NULL),
             busy AS (
                 SELECT w.url, count(*) AS n
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.state = 'pending' AND d.lease_until IS NOT NULL
                   AND d.lease_until >= statement_timestamp()
                 GROUP BY w.url),
             candidates AS (
                 SELECT p.id, p.next_at, w.url
                 FROM hooks h JOIN webhooks w ON w.id = h.id
                 CROSS JOIN LATERAL (
                     SELECT d.id, d.next_at FROM webhook_deliveries d
                     WHERE d.webhook_id = h.id AND d.state = 'pending'
                       AND d.next_at <= statement_timestamp()
                       AND (d.lease_until IS NULL OR d.lease_until < statement_timestamp())
                     ORDER BY d.next_at, d.id LIMIT $2) p),
             ranked AS (
                 SELECT c.id, c.next_at,
                        row_number() OVER (PARTITION BY c.url ORDER BY c.next_at, c.id)
                          + coalesce(b.n, 0) AS k
                 FROM candidates c LEFT JOIN busy b ON b.url = c.url),
             picked AS (
                 SELECT id FROM ranked WHERE k <= $2 ORDER BY next_at, id LIMIT $1)
             UPDATE webhook_deliveries d
             SET lease_until = clock_timestamp() + make_interval(secs => $3),
                 tries = d.tries + 1
             FROM picked, webhooks w
             WHERE d.id = picked.id AND w.id = d.webhook_id
             RETURNING d.id, d.webhook_id, w.url, w.secret, d.tries, d.event_id",
        )
        .await?;
    let rows = tx.query(&stmt, &[&limit, &per_url, &lease_secs]).await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get(0),
            webhook_id: r.get(1),
            url: r.get(2),
            secret: r.get(3),
            tries: r.get(4),
            event_id: r.get(5),
        })
        .collect())
}

/// The events these deliveries carry, as announced (details joined in), by id.
pub async fn events_of(
    client: &Client,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Event>, DbError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    Ok(super::events::read_ids(client, &ids)
        .await?
        .into_iter()
        .map(|e| (e.id, e))
        .collect())
}

/// How a delivery went.
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>, String),
    /// Given up (too many tries, or its event is gone).
    Dead(String),
}

/// Records how deliveries went: delivered ones go, failed ones wait for their next try
/// (or are kept dead), and their webhook's last success or error is noted. Only the
/// claim that sent it may: an outcome that comes after the delivery was claimed again
/// (its lease ran out) changes nothing of the newer claim.
pub async fn record(client: &Client, done: &[(Delivery, Outcome)]) -> Result<(), DbError> {
    for (d, outcome) in done {
        let (state, next, error) = match outcome {
            Outcome::Delivered => {
                client
                    .execute(
                        "WITH gone AS (DELETE FROM webhook_deliveries
                                       WHERE id = $1 AND tries = $3 AND state = 'pending')
                         UPDATE webhooks SET last_delivered_at = clock_timestamp()
                         WHERE id = $2",
                        &[&d.id, &d.webhook_id, &d.tries],
                    )
                    .await?;
                continue;
            }
            Outcome::Retry(at, error) => ("pending", Some(*at), error),
            Outcome::Dead(error) => ("dead", None, error),
        };
        client
            .execute(
                "WITH d AS (
                     UPDATE webhook_deliveries
                     SET state = $2, next_at = coalesce($3, next_at), lease_until = NULL,
                         last_error = $4
                     WHERE id = $1 AND tries = $6 AND state = 'pending')
                 UPDATE webhooks SET last_error = $4, last_error_at = clock_timestamp()
                 WHERE id = $5",
                &[&d.id, &state, &next, error, &d.webhook_id, &d.tries],
            )
            .await?;
    }
    Ok(())
}
