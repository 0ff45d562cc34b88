//! The collector: consumes results in batches, records each once, settles the tasks and
//! jobs they decide (writing their events to the event log in the same transaction), and
//! relays the event log to the broker where anyone listens. A batch is acked only after
//! its transaction committed, so a crash anywhere means redelivery, and redelivery is a
//! no-op on (task, attempt).

use std::time::Duration;

use fleet_shared::amqp::{self, keys, Delivery, Handled, Names, Outgoing, Publisher};
use fleet_shared::config::{Config, ConfigError};
use fleet_shared::db::{self, collect, events, DbError, HeldBy, Pool};
use fleet_shared::http::{self, Health};
use fleet_shared::proto::{self, TaskResult};
use fleet_shared::svc;
use lapin::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod gauges;
mod retention;
mod webhooks;

/// Why one look of a background loop (retention, webhook delivery) did not finish.
#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no answer within {0:?}")]
    Deadline(Duration),
}

pub const DEFAULT_ADDR: &str = "127.0.0.1:7072";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the collector needs of its configuration beyond [`Config::validate`]: the
/// webhook client, with `webhooks.ca_file` read (a bad one exits 64 before anything
/// binds).
pub fn check_config(cfg: &Config) -> Result<(), ConfigError> {
    webhooks::client(&cfg.webhooks).map(|_| ())
}

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
    // reqwest and the HTTPS listener speak TLS through rustls, with ring.
    fleet_shared::tls::install_provider();
    // Before anything else: a webhook client that cannot be made is a bad setting.
    let http_client = webhooks::client(&cfg.webhooks)?;
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
    // Its own task: purging never holds up recording results.
    let purging = tokio::spawn(retention::run(
        pool.clone(),
        cfg.retention.clone(),
        cfg.database.clone(),
        token.clone(),
    ));
    let delivering = tokio::spawn(webhooks::run(
        pool.clone(),
        http_client,
        cfg.webhooks.clone(),
        cfg.database.schema.clone(),
        token.clone(),
    ));
    let runs = gauges::Runs::new(cfg.metrics.run_time_window_secs);
    let publishing = tokio::spawn(gauges::run(
        pool.clone(),
        cfg.clone(),
        runs.clone(),
        token.clone(),
    ));
    let collector = Collector {
        runs,
        names: Names::new(&cfg.amqp.prefix),
        schema: cfg.database.schema.clone(),
        interest: events::Interest::default(),
        pool,
        cfg: cfg.clone(),
    };
    let mut sup = svc::Supervisor::new(&cfg.amqp, "fleet-collector", &health);
    while let Some(conn) = sup.connect(&token).await {
        let result = collector.session(&health, &conn, &token).await;
        if let Some(conn) = sup.ended(conn, result, &token).await {
            amqp::close(&conn, "shutdown").await;
            break;
        }
    }
    token.cancel();
    // It ends with the token; a batch in flight has its deadline too.
    let _ = tokio::time::timeout(Duration::from_secs(5), purging).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), delivering).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), publishing).await;
    let _ = server.await;
    Ok(())
}

struct Collector {
    cfg: Config,
    /// Run times lately recorded, for the gauges' desired executors.
    runs: gauges::Runs,
    pool: Pool,
    names: Names,
    schema: String,
    /// Which event kinds anyone listens to.
    interest: events::Interest,
}

/// How often the relay looks for new events: a pass is a transaction (and a commit when
/// the cursor moves), so it is paced, not woken by every batch of results.
const RELAY_EVERY: Duration = Duration::from_millis(100);

impl Collector {
    async fn session(
        &self,
        health: &Health,
        conn: &Connection,
        token: &CancellationToken,
    ) -> Result<(), amqp::AmqpError> {
        let n = &self.names;
        let publisher = Publisher::new(conn, &self.cfg.amqp).await?;
        amqp::declare_core(conn, n).await?;
        amqp::declare_shared_queue(
            publisher.channel(),
            n,
            &n.results_queue(),
            &n.root_exchange(),
            amqp::keys::ANY_RESULT,
        )
        .await?;
        let batch = self.cfg.collector.batch_size;
        let prefetch = u16::try_from(batch * 2).unwrap_or(u16::MAX);
        amqp::declare_logs_queue(publisher.channel(), n).await?;
        let (_ch, consumer) =
            amqp::consume(conn, &n.results_queue(), "fleet-collector", prefetch).await?;
        let (_logs_ch, logs_consumer) =
            amqp::consume(conn, &n.logs_queue(), "fleet-collector-logs", prefetch).await?;
        health.set_broker_up(true);
        // Live output on its own consumer: a flood of it never holds results back.
        let logs = self.store_logs(logs_consumer, &publisher, token);
        let results = self.record_results(consumer, &publisher, token);
        let relay = self.relay_events(&publisher, token);
        tokio::try_join!(logs, results, relay)?;
        Ok(())
    }

    /// Publishes the event log to the broker as it grows (whoever wrote it), looking
    /// every [`RELAY_EVERY`], until shutdown. A broker error ends the session; a database error is waited out.
    async fn relay_events(
        &self,
        publisher: &Publisher,
        token: &CancellationToken,
    ) -> Result<(), amqp::AmqpError> {
        let mut backoff = amqp::Backoff::default();
        loop {
            match events::relay(
                &self.pool,
                publisher,
                &self.names,
                &self.schema,
                None,
                &self.interest,
            )
            .await
            {
                Ok(_) => backoff = amqp::Backoff::default(),
                Err(events::RelayError::Amqp(e)) => return Err(e),
                Err(events::RelayError::Db(e)) => {
                    tracing::warn!(error = %e, "relaying events postponed");
                    if !backoff.wait(token).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(RELAY_EVERY) => {}
            }
        }
    }

    /// Stores live output as it comes, a batch per transaction.
    async fn store_logs(
        &self,
        consumer: lapin::Consumer,
        publisher: &Publisher,
        token: &CancellationToken,
    ) -> Result<(), amqp::AmqpError> {
        let n = &self.names;
        let batch = self.cfg.collector.batch_size;
        let linger = amqp::Linger::WhenBusy(Duration::from_millis(self.cfg.collector.linger_ms));
        let mut batches = amqp::BatchConsumer::new(consumer, batch, linger);
        while let Some(deliveries) = batches.next(token).await? {
            let mut out = Vec::new();
            let mut chunks = Vec::new();
            for d in &deliveries {
                match proto::decode_logs(&d.data) {
                    // Only the sender's own: the routing key is what the broker checked.
                    Ok(list) => chunks.extend(
                        list.into_iter()
                            .filter(|c| d.routing_key.as_str() == keys::log(&c.executor_id)),
                    ),
                    Err(e) => out.push(amqp::dead_letter(
                        n,
                        d,
                        &n.logs_queue(),
                        e.reason(),
                        &e.to_string(),
                    )),
                }
            }
            let stored = svc::retry("storing live output", token, || async {
                let client = self.pool.get().await?;
                db::logs::store(&client, &self.schema, &chunks).await
            })
            .await;
            let handled = match stored {
                None => amqp::Handled::Shutdown,
                Some(Ok(new)) => {
                    metrics::counter!("fleet_collector_log_chunks_total").increment(new);
                    amqp::Handled::Publish(out)
                }
                Some(Err(e)) => {
                    // Live output the database refuses for good is dropped (the result
                    // still carries the capped output); it must not loop.
                    tracing::warn!(error = %e, chunks = chunks.len(), "live output dropped");
                    amqp::Handled::Publish(out)
                }
            };
            if !batches.finish(&deliveries, handled, publisher).await? {
                break;
            }
        }
        Ok(())
    }

    /// Records results as they come, a batch per transaction.
    async fn record_results(
        &self,
        consumer: lapin::Consumer,
        publisher: &Publisher,
        token: &CancellationToken,
    ) -> Result<(), amqp::AmqpError> {
        let publisher = publisher.clone();
        let batch = self.cfg.collector.batch_size;
        let linger = amqp::Linger::WhenBusy(Duration::from_millis(self.cfg.collector.linger_ms));
        let mut batches = amqp::BatchConsumer::new(consumer, batch, linger);
        while let Some(deliveries) = batches.next(token).await? {
            let handled = self.handle_batch(&deliveries, token).await;
            if !batches.finish(&deliveries, handled, &publisher).await? {
                break;
            }
        }
        Ok(())
    }

    /// Records a batch; says what to publish (dead letters) before the ack.
    async fn handle_batch(&self, deliveries: &[Delivery], token: &CancellationToken) -> Handled {
        let n = &self.names;
        let source = n.results_queue();
        let mut out = Vec::new();
        let mut results = Vec::with_capacity(deliveries.len());
        // For each result: the delivery it came in, and whether it came alone.
        let mut sources: Vec<(&Delivery, bool)> = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let decoded = match proto::decode_results(&d.data) {
                Ok(list) => list,
                Err(e) => {
                    out.push(amqp::dead_letter(n, d, &source, e.reason(), &e.to_string()));
                    continue;
                }
            };
            let alone = decoded.len() == 1;
            for r in decoded {
                // The routing key is what the broker checked against the sender's
                // permissions; a body naming another executor is a forgery.
                if d.routing_key.as_str() != keys::result(&r.executor_id) {
                    let detail = format!(
                        "result for executor {} sent with routing key {}",
                        r.executor_id, d.routing_key
                    );
                    out.push(refused(n, d, alone, &r, &source, "forged", &detail));
                    continue;
                }
                results.push(r);
                sources.push((d, alone));
            }
        }
        if results.is_empty() {
            return Handled::Publish(out);
        }
        // A result for an attempt that does not exist, or from an executor that does not
        // hold it, is not stored: it is dead-lettered with the reason.
        let refuse = |out: &mut Vec<Outgoing>, i: usize, why: collect::Refused| {
            let (d, alone) = sources[i];
            out.push(refused(
                n,
                d,
                alone,
                &results[i],
                &source,
                why.reason(),
                why.detail(),
            ));
        };
        // Results the database refuses for good (not for a passing reason): dead-lettered,
        // and their attempts lost, so that their tasks do not wait for a result that will
        // never be recorded.
        let mut unusable = Vec::new();
        match svc::retry("recording results", token, || self.record(&results)).await {
            None => return Handled::Shutdown,
            Some(Ok(refused)) => {
                for (i, why) in refused {
                    refuse(&mut out, i, why);
                }
            }
            Some(Err(e)) if results.len() == 1 => unusable.push((0, e)),
            Some(Err(e)) => {
                // One bad result must not take its batch down with it: record them one by
                // one, and dead-letter only what fails alone.
                tracing::warn!(error = %e, "a batch of results was refused; recording them one by one");
                for (i, r) in results.iter().enumerate() {
                    match svc::retry("recording a result", token, || {
                        self.record(std::slice::from_ref(r))
                    })
                    .await
                    {
                        None => return Handled::Shutdown,
                        Some(Ok(refused)) => {
                            for (_, why) in refused {
                                refuse(&mut out, i, why);
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
                self.lose(&held)
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
                let (d, alone) = sources[i];
                let detail = e.to_string();
                out.push(refused(
                    n,
                    d,
                    alone,
                    &results[i],
                    &source,
                    "rejected_by_database",
                    &detail,
                ));
            }
        }
        metrics::counter!("fleet_collector_results_total").increment(results.len() as u64);
        Handled::Publish(out)
    }

    /// Records results in one transaction with their events; the positions of those
    /// refused, with why.
    async fn record(
        &self,
        results: &[TaskResult],
    ) -> Result<Vec<(usize, collect::Refused)>, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let recorded = collect::record_results(&tx, &self.schema, results).await?;
        // The events are in the log if and only if this commits.
        events::insert(&tx, &recorded.settled.events).await?;
        // Tasks made ready (dependents released, lost attempts' tasks): hand them out.
        if recorded.settled.readied > 0 {
            db::notify_wake(&tx, &self.schema, true).await?;
        }
        tx.commit().await?;
        fleet_shared::metrics::observe_attempts(&recorded.times);
        fleet_shared::metrics::count_settled(&recorded.settled);
        self.runs.add(&recorded.times);
        Ok(recorded.refused)
    }

    /// Loses attempts (their results were refused) and settles their tasks, in one
    /// transaction with their events.
    async fn lose(&self, held: &[HeldBy]) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let settled = collect::lose(&tx, held).await?;
        events::insert(&tx, &settled.events).await?;
        if settled.readied > 0 {
            db::notify_wake(&tx, &self.schema, true).await?;
        }
        tx.commit().await?;
        fleet_shared::metrics::count_settled(&settled);
        Ok(())
    }
}

/// The dead letter for one result refused: the delivery itself when the result came
/// alone, else that result on its own (as a `result` message), so that what an operator
/// finds in the dead-letter queue is what was refused and nothing else.
fn refused(
    n: &Names,
    d: &Delivery,
    alone: bool,
    r: &TaskResult,
    source: &str,
    reason: &str,
    detail: &str,
) -> Outgoing {
    if alone {
        amqp::dead_letter(n, d, source, reason, detail)
    } else {
        amqp::dead_letter_body(n, d, source, reason, detail, proto::encode(r))
    }
}
