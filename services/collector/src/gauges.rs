//! The fleet-wide gauges: every `metrics.interval_secs`, the figures of `GET /v1/stats`
//! (one read-only snapshot, the same statements, less the count of jobs finished, which
//! the gauges do not show) become the `fleet_*{group}` gauges, with
//! each group's desired executors. Every `metrics.history_secs` the look also counts the
//! last minute's finished jobs and stores the figures as a sample of the fleet's history
//! (`GET /v1/stats/history`). Only the collector publishes them (there is one), so
//! that no sum over services counts them twice. A look that fails or takes longer than
//! the interval leaves the previous values; the loop ends with the shutdown token.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_shared::config::Config;
use fleet_shared::db::{stats, DbError, Pool};
use fleet_shared::metrics::{fleet_gauges, publish_fleet_gauges, RunTimes};
use tokio_util::sync::CancellationToken;

/// Recent run times per group (the collector adds each result's), on a clock of seconds
/// since the collector started.
#[derive(Clone)]
pub struct Runs {
    since: Instant,
    times: Arc<Mutex<RunTimes>>,
}

impl Runs {
    pub fn new(window_secs: u64) -> Self {
        Self {
            since: Instant::now(),
            times: Arc::new(Mutex::new(RunTimes::new(window_secs))),
        }
    }

    fn now(&self) -> u64 {
        self.since.elapsed().as_secs()
    }

    pub fn add(&self, times: &[fleet_shared::metrics::AttemptTimes]) {
        let now = self.now();
        if let Ok(mut r) = self.times.lock() {
            for t in times {
                let (Some(secs), Ok(group)) =
                    (t.run_secs, fleet_shared::group::GroupName::parse(&t.group))
                else {
                    continue;
                };
                r.add(now, group, secs);
            }
        }
    }
}

pub async fn run(pool: Pool, cfg: Config, runs: Runs, token: CancellationToken) {
    let every = Duration::from_secs(cfg.metrics.interval_secs);
    let silent_after = cfg.dispatcher.executor_timeout_secs as f64;
    let mut published = BTreeSet::new();
    // A failure is logged once until a look succeeds again.
    let mut failing = false;
    let history_every = Duration::from_secs(cfg.metrics.history_secs);
    // A look takes a sample when it is in a step (of `history_secs`, from the epoch) not
    // sampled yet: one sample per step, none skipped whatever the two intervals are.
    let mut sampled_step = None;
    loop {
        let step = stats::sample_time(chrono::Utc::now(), cfg.metrics.history_secs);
        let due = sampled_step != Some(step);
        let look = async {
            let mut client = pool.get().await.map_err(DbError::from)?;
            if due {
                stats::sample(
                    &mut client,
                    silent_after,
                    cfg.metrics.history_secs,
                    cfg.metrics.history_hours,
                )
                .await
            } else {
                stats::current(&mut client, silent_after).await
            }
        };
        match tokio::time::timeout(every.max(Duration::from_secs(1)), look).await {
            Ok(Ok(view)) => {
                if due {
                    sampled_step = Some(step);
                }
                let now = runs.now();
                let gauges = match runs.times.lock() {
                    Ok(mut r) => {
                        r.expire(now);
                        fleet_gauges(&view, &r, now, &cfg.metrics)
                    }
                    Err(_) => Vec::new(),
                };
                publish_fleet_gauges(&gauges, &mut published);
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "reading the fleet's figures for the gauges failed");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!("reading the fleet's figures for the gauges took too long");
            }
            _ => {}
        }
        // The histograms this collector records keep each sample until they are folded
        // into their buckets, which only a scrape did: without one, memory grew with
        // every result. The exporter's own upkeep task comes with `install`, which the
        // services do not use (they serve `/metrics` themselves).
        fleet_shared::http::metrics_handle().run_upkeep();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every.min(history_every)) => {}
        }
    }
}
