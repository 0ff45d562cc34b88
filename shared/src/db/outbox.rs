//! The outbox: messages written in the transaction whose commit they announce, relayed
//! to the broker afterwards. Delivery is at least once: a relay that dies between the
//! publish and the delete publishes again; each message carries its outbox id as
//! `message_id` for consumers to recognise a repeat.
//!
//! Events nobody listens to are not made at all: [`Interest`] remembers which event
//! types found no queue when last published, and those are left out for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::collect::Settled;
use super::{DbError, Pool, Transaction};
use crate::amqp::{self, AmqpError, Names, Outgoing, Publisher};
use crate::proto::{self, Event};

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
}

/// How long an event type that no queue took is left out before it is tried again:
/// a queue bound meanwhile starts receiving it within this.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Which event types anyone listens to, as the broker last told this process: an event
/// published (mandatory) that no queue took marks its type unwanted for
/// [`PROBE_EVERY`]; then the next one is made and published again, as a probe. So a
/// deployment with no consumer of events pays nothing for them (no outbox rows, no
/// messages), and one that binds a queue gets them.
#[derive(Debug, Default)]
pub struct Interest {
    unwanted_until: Mutex<HashMap<String, Instant>>,
}

impl Interest {
    pub fn wants(&self, routing_key: &str) -> bool {
        let Ok(map) = self.unwanted_until.lock() else {
            return true;
        };
        map.get(routing_key).is_none_or(|t| Instant::now() >= *t)
    }

    /// No queue took an event with this routing key.
    pub fn nobody_took(&self, routing_key: &str) {
        if let Ok(mut map) = self.unwanted_until.lock() {
            map.insert(routing_key.to_owned(), Instant::now() + PROBE_EVERY);
        }
    }
}

/// The events that a settled batch announces (each finished task, each job whose state
/// changed), of the types someone listens to.
pub fn events(n: &Names, settled: &Settled, interest: &Interest) -> Vec<Pending> {
    let now = Utc::now();
    let tasks = settled
        .finished
        .iter()
        .map(|(job_id, task_id, state)| Event {
            event: "task.finished".into(),
            job_id: *job_id,
            task_id: Some(*task_id),
            state: state.as_str().into(),
            at: now,
        });
    let jobs = settled.jobs.iter().map(|(job_id, state)| Event {
        event: format!("job.{}", state.as_str()),
        job_id: *job_id,
        task_id: None,
        state: state.as_str().into(),
        at: now,
    });
    tasks
        .chain(jobs)
        .filter(|ev| interest.wants(&ev.event))
        .map(|ev| Pending {
            exchange: n.events_exchange(),
            routing_key: ev.event.clone(),
            payload: proto::encode(&ev),
        })
        .collect()
}

pub async fn enqueue(tx: &Transaction<'_>, msgs: &[Pending]) -> Result<(), DbError> {
    if msgs.is_empty() {
        return Ok(());
    }
    let exchanges: Vec<&str> = msgs.iter().map(|m| m.exchange.as_str()).collect();
    let keys: Vec<&str> = msgs.iter().map(|m| m.routing_key.as_str()).collect();
    let payloads: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    tx.execute(
        "INSERT INTO outbox (exchange, routing_key, payload)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
        &[&exchanges, &keys, &payloads],
    )
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Rows relayed per transaction: small enough that the publish finishes well inside the
/// idle-in-transaction timeout.
const RELAY_BATCH: i64 = 500;

/// Publishes and deletes what the outbox holds, oldest first, until it is empty. Rows
/// another relay holds are skipped (SKIP LOCKED), so relays run side by side.
/// `max_batches`: stop after that many batches (None: until empty). Events no queue
/// took are dropped and their types marked unwanted in `interest`.
pub async fn relay(
    pool: &Pool,
    publisher: &Publisher,
    prefix: &str,
    max_batches: Option<usize>,
    interest: &Interest,
) -> Result<usize, RelayError> {
    let mut sent = 0;
    for _ in 0..max_batches.unwrap_or(usize::MAX) {
        let mut client = pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        // The transaction stays open across the publish and its confirms, which may
        // take up to the confirm deadline: longer than the pool's idle-in-transaction
        // limit, which would otherwise abort it and make the rows go out again.
        tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")
            .await
            .map_err(DbError::from)?;
        let rows = tx
            .query(
                "SELECT id, exchange, routing_key, payload FROM outbox
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&RELAY_BATCH],
            )
            .await
            .map_err(DbError::from)?;
        if rows.is_empty() {
            return Ok(sent);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let out: Vec<Outgoing> = rows
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let props =
                    amqp::json_properties().with_message_id(format!("{prefix}-outbox-{id}").into());
                Outgoing::new(r.get::<_, String>(1), r.get::<_, String>(2), r.get(3))
                    .with_properties(props)
                    .mandatory()
            })
            .collect();
        let keys: Vec<String> = out.iter().map(|o| o.routing_key.clone()).collect();
        // Published before the delete commits: a crash in between repeats, never loses.
        for i in publisher.publish_batch(out).await? {
            interest.nobody_took(&keys[i]);
        }
        tx.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        sent += ids.len();
        metrics::counter!("fleet_outbox_relayed_total").increment(ids.len() as u64);
    }
    Ok(sent)
}
