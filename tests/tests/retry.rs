//! Retry (issue 11, acceptance 3): a retry policy tries a failing task again after its
//! backoff, showing the wait in the task's state; a manual retry of a failed job reruns
//! only the failed task and its dependents.

use std::time::Duration;

use anyhow::{Context, Result};
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_twice_succeeds_on_attempt_three_after_its_backoff() -> Result<()> {
    let mut fleet = TestFleet::start("retry").await?;
    fleet
        .add_executor(ExecutorSpec::new("retry-1", &["rt"], 2))
        .await?;
    let dir = std::env::temp_dir().join(&fleet.name);
    std::fs::create_dir_all(&dir)?;
    let counter = dir.join("count");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo try $n; [ $n -ge 3 ]",
        c = counter.display()
    );
    let job = fleet
        .submit(
            &json!({"tasks": [{"group": "rt", "argv": ["sh", "-c", script],
            "retry": {"on": ["failed"], "max_attempts": 3,
                      "backoff": {"initial_secs": 0.5, "factor": 2, "max_secs": 10}}}]}),
        )
        .await?;
    // The wait is visible: `retrying`, with when the next attempt may start.
    let waiting = wait_for("the task to wait out its backoff", DEADLINE, || async {
        let j = fleet.job(job).await?;
        Ok((j.tasks[0].state == "retrying").then_some(j))
    })
    .await?;
    assert!(waiting.tasks[0].retry_at.is_some(), "retry_at shown");
    let spec_retry = waiting.tasks[0]
        .spec
        .retry
        .clone()
        .context("policy shown")?;
    assert_eq!((spec_retry.initial_secs, spec_retry.factor), (0.5, 2.0));

    let done = fleet.wait_job(job, DEADLINE).await?;
    assert_eq!(done.state, "succeeded");
    let t = &done.tasks[0];
    assert_eq!(t.attempts, 3);
    let states: Vec<&str> = t.history.iter().map(|a| a.state.as_str()).collect();
    assert_eq!(states, ["failed", "failed", "succeeded"]);
    // The backoff held: 0.5 s before attempt 2, 1 s before attempt 3.
    for (i, want) in [(1usize, 0.5f64), (2, 1.0)] {
        let ended = t.history[i - 1].finished_at.context("finished")?;
        let started = t.history[i].started_at.context("started")?;
        let gap = (started - ended).num_milliseconds() as f64 / 1000.0;
        assert!(
            gap >= want,
            "attempt {} started {gap}s after the one before, want >= {want}s",
            i + 1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Bad policies are named.
    for (retry, field) in [
        (json!({"on": ["lost"]}), "tasks[0].retry.on[0]"),
        (
            json!({"backoff": {"factor": 0.1}}),
            "tasks[0].retry.backoff.factor",
        ),
        (json!({"max_attempts": 50}), "tasks[0].retry.max_attempts"),
    ] {
        let (s, b) = fleet
            .post_job(
                &json!({"tasks": [{"argv": ["true"], "retry": retry}]}),
                None,
            )
            .await?;
        assert_eq!((s, b["error"]["field"].as_str()), (400, Some(field)), "{b}");
    }
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retry_reruns_only_the_failed_task_and_its_dependents() -> Result<()> {
    let mut fleet = TestFleet::start("rerun").await?;
    fleet
        .add_executor(ExecutorSpec::new("rerun-1", &["rr"], 2))
        .await?;
    let flag = std::env::temp_dir().join(format!("{}-ok", fleet.name));
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "a", "group": "rr", "argv": ["true"]},
            {"name": "b", "group": "rr", "argv": ["test", "-e", flag.display().to_string()],
             "depends_on": ["a"]},
            {"name": "c", "group": "rr", "argv": ["true"], "depends_on": ["b"]},
            {"name": "d", "group": "rr", "argv": ["true"]}
        ]}))
        .await?;
    let first = fleet.wait_job(job, DEADLINE).await?;
    assert_eq!(first.state, "failed");
    let states: Vec<&str> = first.tasks.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(states, ["succeeded", "failed", "cancelled", "succeeded"]);

    // A job still running cannot be rerun; this one is finished.
    std::fs::write(&flag, b"")?;
    let (s, b) = fleet
        .call(Method::POST, &format!("/v1/jobs/{job}/retry"), None)
        .await?;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["rerun"].as_array().map(Vec::len), Some(2), "b and c: {b}");
    let done = fleet.wait_job(job, DEADLINE).await?;
    let _ = std::fs::remove_file(&flag);
    assert_eq!(done.state, "succeeded");
    let attempts: Vec<(&str, i32, Vec<&str>)> = done
        .tasks
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.attempts,
                t.history.iter().map(|a| a.state.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("a", 1, vec!["succeeded"]),
            ("b", 2, vec!["failed", "succeeded"]),
            ("c", 1, vec!["succeeded"]),
            ("d", 1, vec!["succeeded"]),
        ],
        "a and d did not run again; b's first attempt is kept"
    );
    let (s, b) = fleet
        .call(Method::POST, &format!("/v1/jobs/{job}/retry"), None)
        .await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    fleet.shutdown().await
}
