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

fn job_id(body: &serde_json::Value) -> Result<fleet_shared::id::JobId> {
    Ok(serde_json::from_value(body["job_id"].clone())?)
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
    let down_at = Instant::now();
    let before_refusal = jobs.len();
    // The submitter notices the broker is gone (its connection is closed) and refuses
    // submissions with a 503 rather than hanging. What it accepted before noticing is
    // recorded and must run like the rest.
    let refusal = loop {
        if stopped_at.elapsed() > Duration::from_secs(30) {
            bail!("no submission was refused within 30s of the broker stopping");
        }
        let (status, body) = fleet.post_job(&job, None).await?;
        match status {
            201 => jobs.push(job_id(&body)?),
            503 => break body,
            other => bail!("submit during the outage answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused_after = down_at.elapsed();
    let accepted_while_noticing = jobs.len() - before_refusal;
    assert_eq!(refusal["error"]["code"], "unavailable", "{refusal}");
    // Every submission while the broker is down gets the same clear answer, at once.
    let mut refused = 1usize;
    for _ in 0..50 {
        let asked = Instant::now();
        let (status, body) = fleet.post_job(&job, None).await?;
        assert_eq!(status, 503, "while the broker is down: {body}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a refusal must not hang"
        );
        refused += 1;
    }
    rabbitmqctl("start_app")?;
    let outage = stopped_at.elapsed();
    // As a client would: retry the 503s until the submitter is connected again.
    let id = wait_for(
        "submissions to be accepted again",
        Duration::from_secs(60),
        || async {
            let (status, body) = fleet.post_job(&job, None).await?;
            match status {
                201 => Ok(Some(job_id(&body)?)),
                503 => Ok(None),
                other => bail!("submit after the outage answered {other}: {body}"),
            }
        },
    )
    .await?;
    jobs.push(id);
    while jobs.len() < total {
        jobs.push(fleet.submit(&job).await?);
    }
    let total = jobs.len();

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
        "broker outage {:.1}s; first 503 {:.2}s after stop_app returned \
         ({accepted_while_noticing} accepted before it), {refused} submissions refused; \
         all {total} jobs done {:.1}s after the stop; {retried} attempts lost and retried",
        outage.as_secs_f64(),
        refused_after.as_secs_f64(),
        recovered.as_secs_f64()
    );
    fleet.shutdown().await
}
