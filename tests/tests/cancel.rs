//! Cancel (issue 11, acceptance 2): a job with a running task (and its children), a
//! ready task and a dependent ends `cancelled` within 2 s with no process of it left;
//! and a cancel racing a finish leaves exactly one outcome.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fleet_shared::id::JobId;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// Live processes (not zombies) whose environment holds `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_ends_within_two_seconds_with_no_process_left() -> Result<()> {
    // One slot and no window: the second task stays ready in PostgreSQL.
    let mut fleet = TestFleet::start_with("cancel", |c| {
        c.dispatcher.window = 0;
        c.dispatcher.window_floor = 0;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("cancel-1", &["cx"], 1))
        .await?;
    fleet.wait_executors(&["cancel-1"]).await?;
    let marker = format!("FLEET_CANCEL_TEST={}", fleet.name);
    let (k, v) = marker.split_once('=').context("marker")?;
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "long", "group": "cx", "env": {k: v},
             "argv": ["sh", "-c", "echo started; sleep 60 & sleep 60 & wait"]},
            {"name": "ready", "group": "cx", "argv": ["true"]},
            {"name": "after", "group": "cx", "argv": ["true"], "depends_on": ["long"]}
        ]}))
        .await?;
    wait_for(
        "the long task and its children to run",
        DEADLINE,
        || async {
            let j = fleet.job(job).await?;
            Ok((j.tasks[0].state == "running" && processes_with(&marker).len() >= 3).then_some(()))
        },
    )
    .await?;
    assert_eq!(fleet.job(job).await?.tasks[1].state, "ready");

    let asked = Instant::now();
    let (s, b) = fleet
        .call(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
        .await?;
    assert_eq!(s, 202, "{b}");
    assert_eq!(
        (b["cancelled_now"].as_u64(), b["killing"].as_u64()),
        (Some(2), Some(1)),
        "{b}"
    );
    let done = fleet.wait_job(job, Duration::from_secs(2)).await?;
    let took = asked.elapsed();
    assert_eq!(done.state, "cancelled");
    let states: Vec<&str> = done.tasks.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(states, ["cancelled", "cancelled", "cancelled"]);
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    assert!(
        processes_with(&marker).is_empty(),
        "processes of the job remain: {:?}",
        processes_with(&marker)
    );
    // The killed task's result keeps its output so far; nothing ran again.
    let results = fleet.results(job).await?;
    let long = results
        .results
        .iter()
        .find(|r| r.name == "long")
        .context("long's result")?;
    assert_eq!(long.outcome, "cancelled");
    assert!(long.stdout.contains("started"), "{:?}", long.stdout);
    assert_eq!(done.tasks[0].attempts, 1);
    assert_eq!((done.tasks[1].attempts, done.tasks[2].attempts), (0, 0));

    // Again: nothing left to cancel, same answer shape.
    let (s, b) = fleet
        .call(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
        .await?;
    assert_eq!(
        (s, b["cancelled_now"].as_u64(), b["killing"].as_u64()),
        (202, Some(0), Some(0)),
        "{b}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancel_takes_its_dependents_and_leaves_the_rest() -> Result<()> {
    let mut fleet = TestFleet::start("canceltask").await?;
    fleet
        .add_executor(ExecutorSpec::new("ct-1", &["ct"], 2))
        .await?;
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "slow", "group": "ct", "argv": ["sleep", "60"]},
            {"name": "then", "group": "ct", "argv": ["true"], "depends_on": ["slow"]},
            {"name": "other", "group": "ct", "argv": ["true"]}
        ]}))
        .await?;
    fleet.wait_job_state(job, "running", DEADLINE).await?;
    let (s, b) = fleet
        .call(
            Method::POST,
            &format!("/v1/jobs/{job}/tasks/slow/cancel"),
            None,
        )
        .await?;
    assert_eq!(s, 202, "{b}");
    let done = fleet.wait_job(job, Duration::from_secs(10)).await?;
    let states: Vec<(&str, &str)> = done
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("slow", "cancelled"),
            ("then", "cancelled"),
            ("other", "succeeded")
        ]
    );
    assert_eq!(done.state, "cancelled");
    let (s, _) = fleet
        .call(
            Method::POST,
            &format!("/v1/jobs/{job}/tasks/nope/cancel"),
            None,
        )
        .await?;
    assert_eq!(s, 404);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_finish_leaves_exactly_one_outcome() -> Result<()> {
    let mut fleet = TestFleet::start("cancelrace").await?;
    fleet
        .add_executor(ExecutorSpec::new("race-1", &["race"], 4))
        .await?;
    fleet.wait_executors(&["race-1"]).await?;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..50u64 {
        let argv = if i % 2 == 0 {
            json!(["true"])
        } else {
            json!(["sleep", "0.02"])
        };
        let job: JobId = fleet
            .submit(&json!({"tasks": [{"group": "race", "argv": argv}]}))
            .await?;
        // Cancel at varied moments: before assignment, in flight, running, finishing.
        tokio::time::sleep(Duration::from_millis(i % 25)).await;
        let (s, b) = fleet
            .call(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
            .await?;
        assert_eq!(s, 202, "{b}");
        let done = fleet.wait_job(job, Duration::from_secs(10)).await?;
        let task = &done.tasks[0];
        assert!(
            matches!(task.state.as_str(), "succeeded" | "cancelled"),
            "race {i}: {}",
            task.state
        );
        assert_eq!(done.state, task.state, "race {i}: the job follows its task");
        assert!(
            task.attempts <= 1,
            "race {i}: tried again ({} attempts)",
            task.attempts
        );
        // The attempt (if any) ended as the task did, and at most one result counts.
        if let Some(a) = task.history.first() {
            assert_eq!(a.state, task.state, "race {i}: attempt vs task");
        }
        let results = fleet.results(job).await?.results;
        assert!(results.len() <= 1, "race {i}: {} results", results.len());
        if let Some(r) = results.first() {
            assert_eq!(r.outcome, task.state, "race {i}: result vs task");
        }
        *outcomes.entry(task.state.clone()).or_default() += 1;
    }
    eprintln!("50 races: {outcomes:?}");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_each_task_cancels_every_copy() -> Result<()> {
    let mut fleet = TestFleet::start("canceleach").await?;
    for id in ["ce-1", "ce-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["ce"], 1))
            .await?;
    }
    fleet.wait_executors(&["ce-1", "ce-2"]).await?;
    let job = fleet
        .submit(&json!({"tasks": [{"group": "ce", "each": true, "argv": ["sleep", "60"]}]}))
        .await?;
    wait_for("both copies to run", DEADLINE, || async {
        let j = fleet.job(job).await?;
        let running = j.tasks[0]
            .history
            .iter()
            .filter(|a| a.state == "running")
            .count();
        Ok((running == 2).then_some(()))
    })
    .await?;
    let (s, b) = fleet
        .call(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
        .await?;
    assert_eq!((s, b["killing"].as_u64()), (202, Some(2)), "{b}");
    let done = fleet.wait_job(job, Duration::from_secs(2)).await?;
    assert_eq!(done.state, "cancelled");
    wait_for(
        "every copy to end cancelled",
        Duration::from_secs(5),
        || async {
            let j = fleet.job(job).await?;
            let copies: Vec<String> = j.tasks[0].copies.iter().map(|c| c.state.clone()).collect();
            Ok((copies == ["cancelled", "cancelled"]).then_some(()))
        },
    )
    .await?;
    fleet.shutdown().await
}
