//! Priority and hold (issue 11, acceptance 4): with the executor saturated, a held job
//! never starts until released, and raising a queued job's priority makes it start
//! before older jobs of lower priority.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use fleet_shared::id::JobId;
use fleet_tests::{client_with_token, job_of, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

async fn started_at(fleet: &TestFleet, id: JobId) -> Result<DateTime<Utc>> {
    let j = fleet.job(id).await?;
    j.tasks[0].history[0]
        .started_at
        .context("the attempt has a start time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_waits_for_its_release_and_a_raised_priority_jumps_the_queue() -> Result<()> {
    // No requests queued in the executor's window: what waits, waits in PostgreSQL,
    // where priority and hold apply.
    let mut fleet = TestFleet::start_with("hold", |c| {
        c.dispatcher.window = 0;
        c.dispatcher.window_floor = 0;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("hold-1", &["default"], 1))
        .await?;
    fleet.wait_executors(&["hold-1"]).await?;

    // The slot is busy; behind it, three older jobs, then the one to raise, then the
    // one to hold.
    let blocker = fleet.submit(&job_of(1, &["sleep", "2"], json!({}))).await?;
    fleet.wait_job_state(blocker, "running", DEADLINE).await?;
    let mut older = Vec::new();
    for _ in 0..3 {
        older.push(fleet.submit(&job_of(1, &["true"], json!({}))).await?);
    }
    let raised = fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    let held = fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{held}"),
            Some(json!({"held": true})),
        )
        .await?;
    assert_eq!((s, b["held"].as_bool()), (200, Some(true)), "{b}");
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{raised}"),
            Some(json!({"priority": 100})),
        )
        .await?;
    assert_eq!((s, b["tasks_changed"].as_u64()), (200, Some(1)), "{b}");
    assert!(fleet.job(held).await?.held);

    for id in older.iter().chain([&raised]) {
        assert_eq!(fleet.wait_job(*id, DEADLINE).await?.state, "succeeded");
    }
    let first_older = {
        let mut t = Vec::new();
        for id in &older {
            t.push(started_at(&fleet, *id).await?);
        }
        t.into_iter().min().context("older jobs")?
    };
    assert!(
        started_at(&fleet, raised).await? < first_older,
        "the raised job started before every older job of lower priority"
    );

    // A job submitted after the held one runs while the held one waits: had the hold
    // not held, the older held job would have gone first.
    let later = fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    assert_eq!(fleet.wait_job(later, DEADLINE).await?.state, "succeeded");
    let j = fleet.job(held).await?;
    assert_eq!(
        (j.state.as_str(), j.tasks[0].attempts),
        ("pending", 0),
        "held: never started"
    );

    // Released, it runs.
    let (s, _) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{held}"),
            Some(json!({"held": false})),
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(fleet.wait_job(held, DEADLINE).await?.state, "succeeded");

    // A finished job has nothing left to change; bad input is named; a reader may not.
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{held}"),
            Some(json!({"held": true})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{raised}"),
            Some(json!({"priority": 5000})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("priority")),
        "{b}"
    );
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "r", "role": "reader"})),
        )
        .await?;
    assert_eq!(s, 201, "{b}");
    let reader = client_with_token(b["token"].as_str())?;
    let (s, b) = fleet
        .call_as(
            &reader,
            Method::PATCH,
            &format!("/v1/jobs/{later}"),
            Some(json!({"priority": 1})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    fleet.shutdown().await
}
