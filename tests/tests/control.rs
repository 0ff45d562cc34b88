//! Executor control (issue 5): drain, resume and cancel, sent as `control` messages on
//! the group exchanges, against the real RabbitMQ and PostgreSQL.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{job_of, wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::json;

const JOB_DEADLINE: Duration = Duration::from_secs(60);

async fn db_now(fleet: &TestFleet) -> Result<chrono::DateTime<chrono::Utc>> {
    let client = fleet.pool.get().await?;
    Ok(client
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_executor_finishes_its_work_takes_none_and_resumes() -> Result<()> {
    let mut fleet = TestFleet::start("drain").await?;
    fleet
        .add_executor(ExecutorSpec::new("a", &["pool", "a-only"], 2))
        .await?;
    fleet
        .add_executor(ExecutorSpec::new("b", &["pool"], 2))
        .await?;
    fleet.wait_executors(&["a", "b"]).await?;

    // A running task on `a`, then the drain.
    let long = fleet
        .submit(&job_of(
            1,
            &["sh", "-c", "sleep 2; echo finished"],
            json!({"group": "a-only"}),
        ))
        .await?;
    wait_for("the long task to run on a", JOB_DEADLINE, || async {
        let j = fleet.job(long).await?;
        Ok((j.tasks[0].state == "running").then_some(()))
    })
    .await?;
    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/a/drain", None)
        .await?;
    assert_eq!((s, &b["action"]), (202, &json!("drain")), "{b}");
    fleet.wait_draining("a", true).await?;
    let drained_at = db_now(&fleet).await?;

    // Work for the pool all goes to b; work only a can take waits.
    let pool = fleet
        .submit(&job_of(20, &["true"], json!({"group": "pool"})))
        .await?;
    let waits = fleet
        .submit(&job_of(1, &["true"], json!({"group": "a-only"})))
        .await?;
    assert_eq!(fleet.wait_job(pool, JOB_DEADLINE).await?.state, "succeeded");
    assert!(fleet
        .results(pool)
        .await?
        .results
        .iter()
        .all(|r| r.executor_id == "b"));
    // What it was running when drained, it finishes.
    let long_done = fleet.wait_job(long, JOB_DEADLINE).await?;
    assert_eq!(long_done.state, "succeeded");
    assert_eq!(fleet.results(long).await?.results[0].stdout, "finished\n");
    assert_eq!(fleet.job(waits).await?.tasks[0].state, "ready");

    let resumed_at = db_now(&fleet).await?;
    let (s, _) = fleet
        .call(Method::POST, "/v1/executors/a/resume", None)
        .await?;
    assert_eq!(s, 202);
    fleet.wait_draining("a", false).await?;
    assert_eq!(
        fleet.wait_job(waits, JOB_DEADLINE).await?.state,
        "succeeded"
    );
    assert_eq!(fleet.results(waits).await?.results[0].executor_id, "a");
    // Nothing was handed to `a` between the drain and the resume.
    let client = fleet.pool.get().await?;
    let during: i64 = client
        .query_one(
            "SELECT count(*) FROM attempts WHERE executor_id = 'a'
             AND assigned_at > $1 AND assigned_at < $2",
            &[&drained_at, &resumed_at],
        )
        .await?
        .get(0);
    let detail: Vec<String> = client
        .query(
            "SELECT a.task_id::text || ' ' || t.target_group || ' ' || a.state || ' ' || a.assigned_at::text
             FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.executor_id = 'a'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        during, 0,
        "attempts given to a drained executor (drained {drained_at}, resumed {resumed_at}): {detail:?}"
    );
    drop(client);

    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/nobody/drain", None)
        .await?;
    assert_eq!(s, 404, "{b}");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_a_parent_group_reaches_the_executors_of_its_subgroups() -> Result<()> {
    let mut fleet = TestFleet::start("draingroup").await?;
    for (id, g) in [
        ("web-1", "site.web"),
        ("db-1", "site.db"),
        ("other-1", "other"),
    ] {
        fleet.add_executor(ExecutorSpec::new(id, &[g], 1)).await?;
    }
    fleet.wait_executors(&["web-1", "db-1", "other-1"]).await?;
    let (s, b) = fleet
        .call(Method::POST, "/v1/groups/site/drain", None)
        .await?;
    assert_eq!(s, 202, "{b}");
    fleet.wait_draining("web-1", true).await?;
    fleet.wait_draining("db-1", true).await?;
    let (s, _) = fleet
        .call(Method::POST, "/v1/groups/site/resume", None)
        .await?;
    assert_eq!(s, 202);
    fleet.wait_draining("web-1", false).await?;
    fleet.wait_draining("db-1", false).await?;
    // `other` is not under `site`: it was never drained (checked after the resume went
    // through the same exchanges, so a stray drain would have arrived by now).
    let (s, _) = fleet
        .call(Method::POST, "/v1/groups/other/resume", None)
        .await?;
    assert_eq!(s, 202);
    let view: fleet_shared::db::read::ExecutorsView = fleet.get_json("/v1/executors").await?;
    assert!(view.executors.iter().all(|e| !e.draining), "{view:?}");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attempt_is_killed_and_its_task_ends_cancelled() -> Result<()> {
    let mut fleet = TestFleet::start("cancel").await?;
    fleet
        .add_executor(ExecutorSpec::new("c-1", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["c-1"]).await?;
    let job = fleet
        .submit(&job_of(1, &["sleep", "60"], json!({"group": "cpu"})))
        .await?;
    let running = wait_for("the task to run", JOB_DEADLINE, || async {
        let j = fleet.job(job).await?;
        Ok((j.tasks[0].state == "running").then_some(j))
    })
    .await?;
    let t = &running.tasks[0];
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/executors/c-1/cancel",
            Some(json!({"task_id": t.task_id, "attempt": t.attempts})),
        )
        .await?;
    assert_eq!(s, 202, "{b}");
    let done = fleet.wait_job(job, Duration::from_secs(20)).await?;
    assert_eq!(done.state, "cancelled");
    assert_eq!(fleet.results(job).await?.results[0].outcome, "cancelled");
    // A cancel that arrives before its request is remembered: drained, c-1 gets no
    // request yet; the cancel for the attempt to come goes first; after the resume the
    // request arrives and is reported cancelled without running.
    fleet
        .call(Method::POST, "/v1/executors/c-1/drain", None)
        .await?;
    fleet.wait_draining("c-1", true).await?;
    let job = fleet
        .submit(&job_of(1, &["sleep", "60"], json!({"group": "cpu"})))
        .await?;
    let task = fleet.job(job).await?.tasks[0].task_id;
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/executors/c-1/cancel",
            Some(json!({"task_id": task, "attempt": 1})),
        )
        .await?;
    assert_eq!(s, 202, "{b}");
    fleet
        .call(Method::POST, "/v1/executors/c-1/resume", None)
        .await?;
    let done = fleet.wait_job(job, Duration::from_secs(20)).await?;
    assert_eq!(done.state, "cancelled");
    let r = &fleet.results(job).await?.results[0];
    assert_eq!(r.outcome, "cancelled");
    assert_eq!(r.error.as_deref(), Some("cancelled before it started"));
    fleet.shutdown().await
}
