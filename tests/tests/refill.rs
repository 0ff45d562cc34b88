//! A slot that frees is refilled at once, from ready tasks the previous round had read but
//! could not place for want of room: not at the dispatcher's next tick.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{ExecutorSpec, TestFleet};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_slot_takes_the_next_ready_task_without_waiting_for_the_tick() -> Result<()> {
    // One slot, no window, and a tick far longer than the test: only a slot freeing can
    // hand out the tasks after the first.
    let mut fleet = TestFleet::start_with("refill", |c| {
        c.dispatcher.tick_ms = 120_000;
        c.dispatcher.window = 0;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("refill-1", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["refill-1"]).await?;
    let task = json!({"group": "cpu", "argv": ["true"]});
    let job = fleet
        .submit(&json!({"tasks": [task.clone(), task.clone(), task.clone(), task.clone(), task]}))
        .await?;
    let done = fleet.wait_job(job, Duration::from_secs(30)).await?;
    assert_eq!(done.state, "succeeded");
    assert!(
        done.tasks.iter().all(|t| t.attempts == 1),
        "{:?}",
        done.tasks
    );
    fleet.shutdown().await
}
