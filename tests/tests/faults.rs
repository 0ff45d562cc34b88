//! Fault tests: executors killed or frozen mid-task, as real processes against the real
//! broker and database. Every task must end with exactly one recorded outcome.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_shared::db::read::JobView;
use fleet_shared::id::JobId;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use nix::sys::signal::Signal;
use serde_json::json;

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");

/// Short leases, so recovery happens within a test's patience.
async fn fleet(hint: &str) -> Result<TestFleet> {
    TestFleet::start_with(hint, |c| {
        c.dispatcher.lease_timeout_secs = 3;
        c.dispatcher.executor_timeout_secs = 2;
    })
    .await
}

async fn wait_running_on(fleet: &TestFleet, job: JobId, executor: &str) -> Result<JobView> {
    wait_for(
        &format!("the task to run on {executor}"),
        Duration::from_secs(30),
        || async {
            let j = fleet.job(job).await?;
            let t = &j.tasks[0];
            Ok((t.state == "running" && t.executor_id.as_deref() == Some(executor)).then_some(j))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_killed_executor_runs_again_elsewhere_and_is_recorded_once() -> Result<()> {
    let mut fleet = fleet("kill9").await?;
    let doomed =
        fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new("doomed", &["cpu"], 1))?;
    fleet.wait_executors(&["doomed"]).await?;
    // On doomed it runs until the kill, however slow the machine is in between; on
    // any other executor it finishes at once.
    let command = r#"[ "$FLEET_EXECUTOR_ID" = doomed ] && sleep 30; echo finished"#;
    let job = fleet
        .submit(&json!({"tasks": [{"argv": ["sh", "-c", command], "group": "cpu"}]}))
        .await?;
    let view = wait_running_on(&fleet, job, "doomed").await?;
    let task = view.tasks[0].task_id;

    fleet
        .add_executor(ExecutorSpec::new("survivor", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["survivor"]).await?;
    let killed_at = Instant::now();
    doomed.kill().await?;

    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded");
    let results = fleet.results(job).await?.results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].executor_id, "survivor");
    assert_eq!(results[0].stdout, "finished\n");
    assert_eq!(
        fleet.attempts_of(task).await?,
        vec![
            ("doomed".into(), "lost".into()),
            ("survivor".into(), "succeeded".into())
        ]
    );
    assert_eq!(fleet.count("SELECT count(*) FROM results").await?, 1);
    eprintln!(
        "recovery: executor killed -> task rerun and recorded in {:.1}s (lease 3s)",
        killed_at.elapsed().as_secs_f64()
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_executors_late_result_is_kept_but_does_not_count_twice() -> Result<()> {
    let mut fleet = fleet("sigstop").await?;
    let frozen =
        fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new("frozen", &["cpu"], 1))?;
    fleet.wait_executors(&["frozen"]).await?;
    // Still running when the executor is frozen, however slow the machine is; at once
    // on the peer.
    let command = r#"[ "$FLEET_EXECUTOR_ID" = frozen ] && sleep 8; echo done"#;
    let job = fleet
        .submit(&json!({"tasks": [{"argv": ["sh", "-c", command], "group": "cpu"}]}))
        .await?;
    let view = wait_running_on(&fleet, job, "frozen").await?;
    let task = view.tasks[0].task_id;

    frozen.signal(Signal::SIGSTOP)?;
    fleet
        .add_executor(ExecutorSpec::new("thawed-peer", &["cpu"], 1))
        .await?;
    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded");

    frozen.signal(Signal::SIGCONT)?;
    // The frozen executor wakes, reaps its child and reports attempt 1: stored, not counted.
    wait_for(
        "the late result to be stored",
        Duration::from_secs(30),
        || async { Ok((fleet.count("SELECT count(*) FROM results").await? == 2).then_some(())) },
    )
    .await?;
    let results = fleet.results(job).await?.results;
    assert_eq!(results.len(), 1, "one deciding result per task");
    assert_eq!(results[0].executor_id, "thawed-peer");
    assert_eq!(results[0].attempt, 2);
    let attempts = fleet.attempts_of(task).await?;
    assert_eq!(attempts[0], ("frozen".into(), "lost".into()));
    assert_eq!(attempts[1], ("thawed-peer".into(), "succeeded".into()));
    let j = fleet.job(job).await?;
    assert_eq!(
        (j.state.as_str(), j.counts.succeeded, j.counts.done),
        ("succeeded", 1, 1)
    );
    let history = &j.tasks[0].history;
    assert_eq!(history.len(), 2);
    assert!(
        history[0].late_result,
        "the lost attempt's late result shows in the history"
    );
    frozen.kill().await?;
    fleet.shutdown().await
}
