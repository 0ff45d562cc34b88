//! The retention loop: every `retention.interval_secs`, the jobs finished more than
//! `retention.finished_job_days` ago are purged with every row of theirs, a batch of
//! `retention.batch_size` per transaction and `retention.pause_ms` between batches. It
//! runs as a task of its own beside the results consumer and never holds it up: every
//! wait has a deadline or ends with the shutdown token, and a failure backs off.

use std::time::Duration;

use fleet_shared::amqp::Backoff;
use fleet_shared::config::{DatabaseConfig, RetentionConfig};
use fleet_shared::db::{events, retention, DbError, Pool};
use tokio_util::sync::CancellationToken;

use crate::LoopError;

pub async fn run(pool: Pool, cfg: RetentionConfig, db: DatabaseConfig, token: CancellationToken) {
    if cfg.finished_job_days == 0 {
        tracing::info!("retention.finished_job_days is 0: finished jobs are kept for ever");
        return;
    }
    let interval = Duration::from_secs(cfg.interval_secs);
    let pause = Duration::from_millis(cfg.pause_ms);
    // A batch is a connection and nine statements (the pick, eight deletes), each bounded
    // by the server's statement_timeout.
    let deadline = Duration::from_millis(db.pool_wait_ms + 9 * db.statement_timeout_ms);
    let limit = i64::from(cfg.batch_size);
    let mut backoff = fresh_backoff();
    loop {
        // One pass: batches until one comes back short.
        let mut purged = 0;
        loop {
            let batch = async {
                let mut client = pool.get().await.map_err(DbError::from)?;
                Ok::<_, LoopError>(
                    retention::purge_finished(&mut client, cfg.finished_job_days, limit).await?,
                )
            };
            let done = tokio::select! {
                _ = token.cancelled() => return,
                r = tokio::time::timeout(deadline, batch) => r.unwrap_or(Err(LoopError::Deadline(deadline))),
            };
            match done {
                Ok(n) => {
                    backoff = fresh_backoff();
                    purged += n;
                    metrics::counter!("fleet_collector_purged_jobs_total").increment(n);
                    if n < cfg.batch_size.into() {
                        break;
                    }
                    if !sleep(pause, &token).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging finished jobs failed; retrying");
                    if !backoff.wait(&token).await {
                        return;
                    }
                }
            }
        }
        // Events outlive their jobs by nothing: those of executors (and of jobs kept
        // past it) go after the same number of days.
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(cfg.finished_job_days));
        loop {
            let batch = async {
                let client = pool.get().await.map_err(DbError::from)?;
                Ok::<_, LoopError>(events::purge_older(&client, before, limit * 10).await?)
            };
            let done = tokio::select! {
                _ = token.cancelled() => return,
                r = tokio::time::timeout(deadline, batch) => r.unwrap_or(Err(LoopError::Deadline(deadline))),
            };
            match done {
                Ok(n) if n < (limit * 10) as u64 => break,
                Ok(_) => {
                    if !sleep(pause, &token).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging old events failed; next pass");
                    break;
                }
            }
        }
        match tokio::time::timeout(deadline, async {
            let client = pool.get().await.map_err(DbError::from)?;
            Ok::<_, LoopError>(events::purge_dead_deliveries(&client).await?)
        })
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "purging given-up webhook deliveries failed"),
            Err(_) => tracing::warn!("purging given-up webhook deliveries timed out"),
        }
        if purged > 0 {
            tracing::info!(
                purged,
                days = cfg.finished_job_days,
                "purged jobs finished more than retention.finished_job_days ago"
            );
        }
        if !sleep(interval, &token).await {
            return;
        }
    }
}

fn fresh_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(60))
}

/// Sleeps, unless shutdown comes first (then false).
async fn sleep(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
