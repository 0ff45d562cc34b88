//! PostgreSQL stopped and started while jobs are submitted and run. Alone in its own
//! test binary: it stops the shared database, which would disturb tests beside it.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fleet_tests::{job_of, wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

fn pg_ctl(action: &str) -> Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap_or_default();
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .output()?;
    if !out.status.success() {
        bail!(
            "pg_ctlcluster {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Brings the database back whatever happens to the test.
struct StartGuard;
impl Drop for StartGuard {
    fn drop(&mut self) {
        let _ = pg_ctl("start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_completes_exactly_once_across_a_database_restart() -> Result<()> {
    let mut fleet = TestFleet::start_with("pgrestart", |c| {
        // Fail fast while the database is down, so a submission gets its 503 promptly.
        c.database.pool_wait_ms = 2_000;
        c.database.connect_timeout_ms = 2_000;
    })
    .await?;
    for id in ["p-1", "p-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["p-1", "p-2"]).await?;
    let job = job_of(1, &["sh", "-c", "sleep 0.01"], json!({"group": "cpu"}));
    let mut jobs = Vec::new();
    for _ in 0..1000 {
        jobs.push(fleet.submit(&job).await?);
    }

    let _guard = StartGuard;
    let stopped_at = Instant::now();
    pg_ctl("stop")?;
    // A submission while the database is down is refused clearly, not hung or lost.
    let asked = Instant::now();
    let (status, body) = fleet.post_job(&job, None).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let answer_took = asked.elapsed();
    pg_ctl("start")?;
    let outage = stopped_at.elapsed();

    // Services reconnect on their own; the pool hands out fresh connections.
    let more = wait_for(
        "the submitter to accept again",
        Duration::from_secs(60),
        || async { Ok(fleet.submit(&job).await.ok()) },
    )
    .await?;
    jobs.push(more);
    for _ in 0..999 {
        jobs.push(fleet.submit(&job).await?);
    }
    let total = jobs.len() as i64;
    wait_for("every job to finish", Duration::from_secs(300), || async {
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await
            .unwrap_or(0);
        Ok((done == total).then_some(()))
    })
    .await?;
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await?,
        total
    );
    assert_eq!(
        fleet.count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND final_attempt IS NOT NULL").await?,
        total,
        "every task decided exactly once"
    );
    let retried = fleet
        .count("SELECT count(*) FROM attempts WHERE state = 'lost'")
        .await?;
    eprintln!(
        "database outage {:.1}s (a submission meanwhile got 503 in {:.1}s); all {total} jobs done {:.1}s after the stop; {retried} attempts lost and retried",
        outage.as_secs_f64(),
        answer_took.as_secs_f64(),
        stopped_at.elapsed().as_secs_f64()
    );
    fleet.shutdown().await
}
