//! What one round gives an executor travels in one `requests` message, and the broker
//! keeps that message until the last attempt it carried has reported.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_s_requests_share_one_message_acked_when_the_last_attempt_reports() -> Result<()> {
    let mut fleet = TestFleet::start("batched").await?;
    fleet
        .add_executor(ExecutorSpec::new("batched-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["batched-1"]).await?;
    // Both tasks are written in one statement, so the round that reads them reads both,
    // and the one executor with two free slots gets both.
    let job = fleet
        .submit(&json!({"tasks": [
            {"group": "cpu", "argv": ["true"]},
            {"group": "cpu", "argv": ["sleep", "5"]},
        ]}))
        .await?;
    wait_for(
        "the short task recorded while the long one runs",
        Duration::from_secs(30),
        || async {
            let j = fleet.job(job).await?;
            let state = |i: i32| {
                j.tasks
                    .iter()
                    .find(|t| t.index == i)
                    .map(|t| t.state.clone())
            };
            Ok((state(0).as_deref() == Some("succeeded")
                && !matches!(state(1).as_deref(), Some("succeeded" | "failed")))
            .then_some(()))
        },
    )
    .await?;
    let queue = format!("{}.exec.batched-1", fleet.cfg.amqp.prefix);
    assert_eq!(
        fleet.unacked(&queue)?,
        1,
        "the message stays unacked while an attempt it carried runs"
    );

    let done = fleet.wait_job(job, Duration::from_secs(30)).await?;
    assert_eq!(done.state, "succeeded");
    assert!(
        done.tasks.iter().all(|t| t.attempts == 1),
        "{:?}",
        done.tasks
    );
    wait_for(
        "the message acked once the last attempt reported",
        Duration::from_secs(10),
        || async { Ok((fleet.unacked(&queue)? == 0).then_some(())) },
    )
    .await?;
    // The broker's statistics lag; once they show the ack (seconds after the publish),
    // they show every publish of the round too.
    let stats = wait_for(
        "the broker's statistics to show the ack",
        Duration::from_secs(30),
        || async {
            let q = fleet.queue_info(&queue).await?;
            let stats = q["message_stats"].clone();
            Ok((stats["ack"].as_u64().unwrap_or(0) >= 1).then_some(stats))
        },
    )
    .await?;
    assert_eq!(
        stats["publish"].as_u64(),
        Some(1),
        "both requests in one message: {stats}"
    );
    fleet.shutdown().await
}
