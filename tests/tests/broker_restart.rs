//! RabbitMQ restarted while jobs are submitted and run. Alone in its own test binary:
//! it stops the shared broker, which would disturb tests running beside it.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fleet_tests::{job_of, wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

fn rabbitmqctl(arg: &str) -> Result<()> {
    let out = Command::new("rabbitmqctl").arg(arg).output()?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Brings the broker back whatever happens to the test.
struct RestartGuard;
impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = rabbitmqctl("start_app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_completes_exactly_once_across_a_broker_restart() -> Result<()> {
    let mut fleet = TestFleet::start("rabbitrestart").await?;
    for id in ["r-1", "r-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["r-1", "r-2"]).await?;
    let job = job_of(1, &["sh", "-c", "sleep 0.01"], json!({"group": "cpu"}));
    let total = 2000usize;
    let mut jobs = Vec::with_capacity(total);
    for _ in 0..total / 2 {
        jobs.push(fleet.submit(&job).await?);
    }

    let _guard = RestartGuard;
    let stopped_at = Instant::now();
    rabbitmqctl("stop_app")?;
    // Submissions need only PostgreSQL: they are accepted (durable) during the outage.
    for _ in 0..total / 4 {
        jobs.push(fleet.submit(&job).await?);
    }
    rabbitmqctl("start_app")?;
    let outage = stopped_at.elapsed();
    for _ in 0..total / 4 {
        jobs.push(fleet.submit(&job).await?);
    }

    let total_i = total as i64;
    wait_for("every job to finish", Duration::from_secs(300), || async {
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await?;
        Ok((done == total_i).then_some(()))
    })
    .await?;
    let recovered = stopped_at.elapsed();
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await?,
        total_i
    );
    assert_eq!(
        fleet.count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND final_attempt IS NOT NULL").await?,
        total_i,
        "every task decided exactly once"
    );
    let retried = fleet
        .count("SELECT count(*) FROM attempts WHERE state = 'lost'")
        .await?;
    eprintln!(
        "broker outage {:.1}s; all {total} jobs done {:.1}s after the stop; {retried} attempts lost and retried",
        outage.as_secs_f64(),
        recovered.as_secs_f64()
    );
    fleet.shutdown().await
}
