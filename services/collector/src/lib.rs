//! The collector: consumes results in batches, records each once, settles the tasks and
//! jobs they decide, wakes the dispatcher (slots freed) and announces events. A batch is
//! acked only after its transaction committed and its events were confirmed, so a crash
//! anywhere means redelivery, and redelivery is a no-op on (task, attempt).

use std::time::Duration;

use fleet_shared::amqp::{self, keys, Delivery, Handled, Names, Publisher};
use fleet_shared::config::Config;
use fleet_shared::db::{self, collect, outbox, DbError, HeldBy, Pool};
use fleet_shared::http::{self, Health};
use fleet_shared::proto::{self, TaskResult};
use fleet_shared::svc;
use lapin::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_ADDR: &str = "127.0.0.1:7072";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
    let (pool, health) = svc::db_and_health(&cfg)?;
    let server = tokio::spawn(http::serve(
        listener,
        http::health_routes(health.clone()),
        token.clone(),
    ));
    if !svc::migrate(&cfg, &pool, &health, &token).await? {
        let _ = server.await;
        return Ok(());
    }
    let mut sup = svc::Supervisor::new(&cfg.amqp, "fleet-collector", &health);
    while let Some(conn) = sup.connect(&token).await {
        let result = session(&cfg, &pool, &health, &conn, &token).await;
        if let Some(conn) = sup.ended(conn, result, &token).await {
            amqp::close(&conn, "shutdown").await;
            break;
        }
    }
    token.cancel();
    let _ = server.await;
    Ok(())
}

async fn session(
    cfg: &Config,
    pool: &Pool,
    health: &Health,
    conn: &Connection,
    token: &CancellationToken,
) -> Result<(), amqp::AmqpError> {
    let n = Names::new(&cfg.amqp.prefix);
    let publisher = Publisher::new(conn, &cfg.amqp).await?;
    let ch = publisher.channel();
    amqp::declare_core(conn, &n).await?;
    amqp::declare_shared_queue(
        ch,
        &n,
        &n.results_queue(),
        &n.root_exchange(),
        amqp::keys::ANY_RESULT,
    )
    .await?;
    let batch = cfg.collector.batch_size;
    let linger = Duration::from_millis(cfg.collector.linger_ms);
    let prefetch = u16::try_from(batch * 2).unwrap_or(u16::MAX);
    let (_ch, consumer) =
        amqp::consume(conn, &n.results_queue(), "fleet-collector", prefetch).await?;
    health.set_broker_up(true);
    relay(pool, &publisher, &n).await?;
    let mut batches = amqp::BatchConsumer::new(consumer, batch, linger);
    while let Some(deliveries) = batches.next(token).await? {
        let handled = handle_batch(cfg, pool, &n, &deliveries, token).await;
        if !batches.finish(&deliveries, handled, &publisher).await? {
            break;
        }
        relay(pool, &publisher, &n).await?;
    }
    Ok(())
}

/// Records a batch; says what to publish (events, dead letters) before the ack.
async fn handle_batch(
    cfg: &Config,
    pool: &Pool,
    n: &Names,
    deliveries: &[Delivery],
    token: &CancellationToken,
) -> Handled {
    let source = n.results_queue();
    let mut out = Vec::new();
    let mut results = Vec::with_capacity(deliveries.len());
    let mut sources = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        match proto::decode::<TaskResult>(&d.data) {
            // The routing key is what the broker checked against the sender's
            // permissions; a body naming another executor is a forgery.
            Ok(r) if d.routing_key.as_str() != keys::result(&r.executor_id) => {
                out.push(amqp::dead_letter(
                    n,
                    d,
                    &source,
                    "forged",
                    &format!(
                        "result for executor {} sent with routing key {}",
                        r.executor_id, d.routing_key
                    ),
                ));
            }
            Ok(r) => {
                results.push(r);
                sources.push(d);
            }
            Err(e) => out.push(amqp::dead_letter(n, d, &source, e.reason(), &e.to_string())),
        }
    }
    if results.is_empty() {
        return Handled::Publish(out);
    }
    let schema = &cfg.database.schema;
    // A result for an attempt that does not exist, or from an executor that does not
    // hold it, is not stored: it is dead-lettered with the reason.
    let refuse = |out: &mut Vec<_>, d: &Delivery, why: collect::Refused| {
        out.push(amqp::dead_letter(n, d, &source, why.reason(), why.detail()));
    };
    // Results the database refuses for good (not for a passing reason): dead-lettered,
    // and their attempts lost, so that their tasks do not wait for a result that will
    // never be recorded.
    let mut unusable = Vec::new();
    match svc::retry("recording results", token, || {
        record(pool, n, schema, &results)
    })
    .await
    {
        None => return Handled::Shutdown,
        Some(Ok(refused)) => {
            for (i, why) in refused {
                refuse(&mut out, sources[i], why);
            }
        }
        Some(Err(e)) if results.len() == 1 => unusable.push((0, e)),
        Some(Err(e)) => {
            // One bad result must not take its batch down with it: record them one by
            // one, and dead-letter only what fails alone.
            tracing::warn!(error = %e, "a batch of results was refused; recording them one by one");
            for (i, (r, d)) in results.iter().zip(&sources).enumerate() {
                match svc::retry("recording a result", token, || {
                    record(pool, n, schema, std::slice::from_ref(r))
                })
                .await
                {
                    None => return Handled::Shutdown,
                    Some(Ok(refused)) => {
                        for (_, why) in refused {
                            refuse(&mut out, d, why);
                        }
                    }
                    Some(Err(e)) => unusable.push((i, e)),
                }
            }
        }
    }
    if !unusable.is_empty() {
        let held: Vec<HeldBy> = unusable
            .iter()
            .map(|(i, _)| HeldBy {
                task_id: results[*i].task_id,
                attempt: results[*i].attempt,
                executor_id: results[*i].executor_id.clone(),
            })
            .collect();
        match svc::retry("losing attempts whose results were refused", token, || {
            lose(pool, n, schema, &held)
        })
        .await
        {
            None => return Handled::Shutdown,
            Some(Ok(())) => {}
            // The attempts stay open; the result timeout loses them later.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not lose attempts whose results were refused")
            }
        }
        for (i, e) in unusable {
            out.push(amqp::dead_letter(
                n,
                sources[i],
                &source,
                "rejected_by_database",
                &e.to_string(),
            ));
        }
    }
    metrics::counter!("fleet_collector_results_total").increment(results.len() as u64);
    Handled::Publish(out)
}

/// Records results in one transaction; returns those refused (by position), with why.
async fn record(
    pool: &Pool,
    n: &Names,
    schema: &str,
    results: &[TaskResult],
) -> Result<Vec<(usize, collect::Refused)>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let recorded = collect::record_results(&tx, results).await?;
    // The events go out if and only if this commits: through the outbox.
    outbox::enqueue(&tx, &outbox::events(n, &recorded.settled)).await?;
    // Every recorded result frees a slot on its executor: let the dispatcher refill it.
    db::notify_wake(&tx, schema).await?;
    tx.commit().await?;
    Ok(recorded.refused)
}

/// Loses attempts (their results were refused) and settles their tasks, in one
/// transaction with their events and the dispatcher's wake-up.
async fn lose(pool: &Pool, n: &Names, schema: &str, held: &[HeldBy]) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let settled = collect::lose(&tx, held).await?;
    outbox::enqueue(&tx, &outbox::events(n, &settled)).await?;
    db::notify_wake(&tx, schema).await?;
    tx.commit().await?;
    Ok(())
}

/// Publishes what the outbox holds. A database error leaves it for the next batch; a
/// broker error ends the session.
async fn relay(pool: &Pool, publisher: &Publisher, n: &Names) -> Result<(), amqp::AmqpError> {
    match outbox::relay(pool, publisher, n.prefix(), None).await {
        Ok(_) => Ok(()),
        Err(outbox::RelayError::Amqp(e)) => Err(e),
        Err(outbox::RelayError::Db(e)) => {
            tracing::warn!(error = %e, "outbox relay postponed");
            Ok(())
        }
    }
}
