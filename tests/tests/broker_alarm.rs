//! A RabbitMQ memory alarm: the broker blocks every connection that publishes, so
//! nothing submitted could start. The submitter must say so (503) rather than accept
//! work, and take work again once the alarm clears. Alone in its own test binary: it
//! raises an alarm on the shared broker.

use std::time::Duration;

use anyhow::{bail, Result};
use fleet_tests::{job_of, shared_broker, wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

/// RabbitMQ's default memory watermark, put back whatever happens to the test.
const DEFAULT_WATERMARK: &str = "0.4";

struct AlarmGuard;
impl Drop for AlarmGuard {
    fn drop(&mut self) {
        let _ = shared_broker::rabbitmqctl(&["set_vm_memory_high_watermark", DEFAULT_WATERMARK]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_refused_while_a_broker_alarm_is_raised() -> Result<()> {
    let mut fleet = TestFleet::start("alarm").await?;
    fleet
        .add_executor(ExecutorSpec::new("al-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["al-1"]).await?;
    let job = job_of(1, &["true"], json!({"group": "cpu"}));
    let before = fleet.submit(&job).await?;
    assert_eq!(
        fleet.wait_job(before, Duration::from_secs(30)).await?.state,
        "succeeded"
    );

    let _guard = AlarmGuard;
    // A watermark far below what the node uses: the memory alarm goes off at once.
    shared_broker::rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"])?;
    let refusal = wait_for(
        "a submission to be refused",
        Duration::from_secs(30),
        || async {
            let (status, body) = fleet.post_job(&job, None).await?;
            match status {
                503 => Ok(Some(body)),
                // Taken in the moment before the submitter learnt of the alarm.
                201 => Ok(None),
                other => bail!("submit during the alarm answered {other}: {body}"),
            }
        },
    )
    .await?;
    assert_eq!(refusal["error"]["code"], "unavailable", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("alarm"), "{message}");
    let (status, _) = fleet.call(reqwest::Method::GET, "/readyz", None).await?;
    assert_eq!(status, 503);

    shared_broker::rabbitmqctl(&["set_vm_memory_high_watermark", DEFAULT_WATERMARK])?;
    let after = wait_for(
        "submissions to be taken again",
        Duration::from_secs(30),
        || async {
            let (status, body) = fleet.post_job(&job, None).await?;
            Ok((status == 201).then(|| body["job_id"].clone()))
        },
    )
    .await?;
    let after = serde_json::from_value(after)?;
    assert_eq!(
        fleet.wait_job(after, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    // Whatever was taken during the alarm runs too.
    wait_for("every job to finish", Duration::from_secs(60), || async {
        let open = fleet
            .count(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
            )
            .await?;
        Ok((open == 0).then_some(()))
    })
    .await?;
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
            .await?,
        0
    );
    fleet.shutdown().await
}
