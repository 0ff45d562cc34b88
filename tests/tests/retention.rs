//! Retention (issue 11): "retention purges an old job and all its rows and leaves newer
//! ones", through the running collector with a short interval; and `DELETE /v1/jobs/{id}`
//! removes a finished job at once, for its owner or an admin.

use std::time::Duration;

use anyhow::Result;
use fleet_shared::id::JobId;
use fleet_tests::{client_with_token, wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

/// The rows of a job in every table that holds some: jobs, tasks, attempts, results
/// (by job and by task), task_copies.
async fn rows_of(fleet: &TestFleet, job: JobId) -> Result<[i64; 6]> {
    let client = fleet.pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM jobs WHERE id = $1),
                    (SELECT count(*) FROM tasks WHERE job_id = $1),
                    (SELECT count(*) FROM attempts a
                     WHERE a.task_id IN (SELECT id FROM tasks WHERE job_id = $1)),
                    (SELECT count(*) FROM results WHERE job_id = $1),
                    (SELECT count(*) FROM results r
                     WHERE r.task_id IN (SELECT id FROM tasks WHERE job_id = $1)),
                    (SELECT count(*) FROM task_copies c
                     WHERE c.task_id IN (SELECT id FROM tasks WHERE job_id = $1))",
            &[&job.uuid()],
        )
        .await?;
    Ok([
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    ])
}

/// Rows left anywhere that name these tasks (after their job and tasks are gone).
async fn rows_of_tasks(fleet: &TestFleet, tasks: &[uuid::Uuid]) -> Result<i64> {
    let client = fleet.pool.get().await?;
    Ok(client
        .query_one(
            "SELECT (SELECT count(*) FROM tasks WHERE id = ANY($1))
                  + (SELECT count(*) FROM attempts WHERE task_id = ANY($1))
                  + (SELECT count(*) FROM results WHERE task_id = ANY($1))
                  + (SELECT count(*) FROM task_copies WHERE task_id = ANY($1))",
            &[&tasks],
        )
        .await?
        .get(0))
}

async fn finished_days_ago(fleet: &TestFleet, job: JobId, days: i32) -> Result<()> {
    fleet
        .pool
        .get()
        .await?
        .execute(
            "UPDATE jobs SET finished_at = now() - make_interval(days => $2) WHERE id = $1",
            &[&job.uuid(), &days],
        )
        .await?;
    Ok(())
}

/// A job with a task run on every member of `site` and one after it.
fn each_and_after() -> Value {
    json!({"tasks": [
        {"name": "all", "argv": ["echo", "member"], "group": "site", "each": true},
        {"name": "after", "argv": ["echo", "done"], "depends_on": ["all"]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_an_old_job_and_all_its_rows_and_leaves_newer_ones() -> Result<()> {
    let mut fleet = TestFleet::start_with("retention", |c| {
        c.retention.interval_secs = 1;
        c.retention.batch_size = 2;
        c.retention.pause_ms = 10;
    })
    .await?;
    for id in ["m-1", "m-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["site"], 2))
            .await?;
    }
    fleet.wait_executors(&["m-1", "m-2"]).await?;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(fleet.submit(&each_and_after()).await?);
    }
    for id in &jobs {
        assert_eq!(fleet.wait_job(*id, DEADLINE).await?.state, "succeeded");
    }
    // Each: a job, 2 tasks, 3 attempts and results (two members, then one), 2 copies.
    for id in &jobs {
        assert_eq!(rows_of(&fleet, *id).await?, [1, 2, 3, 3, 3, 2], "{id}");
    }
    let (old, older, young, fresh) = (jobs[0], jobs[1], jobs[2], jobs[3]);
    let mut old_tasks = Vec::new();
    for id in [old, older] {
        old_tasks.extend(fleet.job(id).await?.tasks.iter().map(|t| t.task_id.uuid()));
    }

    // Past the 14 days kept by default: two of them (a full batch of 2, then an empty
    // one after the pause). Within them: one, and the fresh one.
    finished_days_ago(&fleet, old, 15).await?;
    finished_days_ago(&fleet, older, 400).await?;
    finished_days_ago(&fleet, young, 13).await?;
    wait_for("the old jobs to be purged", DEADLINE, || async {
        let gone = rows_of(&fleet, old).await?[0] == 0 && rows_of(&fleet, older).await?[0] == 0;
        Ok(gone.then_some(()))
    })
    .await?;
    for id in [old, older] {
        assert_eq!(rows_of(&fleet, id).await?, [0; 6], "{id}");
        let (s, _) = fleet
            .call(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await?;
        assert_eq!(s, 404);
    }
    assert_eq!(rows_of_tasks(&fleet, &old_tasks).await?, 0);
    for id in [young, fresh] {
        assert_eq!(rows_of(&fleet, id).await?, [1, 2, 3, 3, 3, 2], "{id}");
        assert_eq!(fleet.job(id).await?.state, "succeeded");
    }
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_deleted_at_once_by_its_owner_or_an_admin() -> Result<()> {
    let mut fleet = TestFleet::start("deljob").await?;
    fleet
        .add_executor(ExecutorSpec::new("d-1", &["site"], 2))
        .await?;
    fleet.wait_executors(&["d-1"]).await?;
    let mut tokens = Vec::new();
    for (name, role) in [
        ("alice", "submitter"),
        ("bob", "submitter"),
        ("eve", "reader"),
    ] {
        let (s, b) = fleet
            .call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "role": role})),
            )
            .await?;
        assert_eq!(s, 201, "{b}");
        tokens.push(client_with_token(b["token"].as_str())?);
    }
    let (alice, bob, eve) = (&tokens[0], &tokens[1], &tokens[2]);

    // Not finished: refused.
    let running = fleet
        .submit(&json!({"tasks": [{"argv": ["sleep", "60"], "group": "site"}]}))
        .await?;
    fleet.wait_job_state(running, "running", DEADLINE).await?;
    let (s, b) = fleet
        .call(Method::DELETE, &format!("/v1/jobs/{running}"), None)
        .await?;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not finished")),
        "{b}"
    );

    // Alice's finished job: not Bob's to see, not a reader's to delete; hers to delete.
    let (s, b) = fleet
        .call_as(alice, Method::POST, "/v1/jobs", Some(each_and_after()))
        .await?;
    assert_eq!(s, 201, "{b}");
    let job: JobId = serde_json::from_value(b["job_id"].clone())?;
    assert_eq!(fleet.wait_job(job, DEADLINE).await?.state, "succeeded");
    let path = format!("/v1/jobs/{job}");
    let tasks: Vec<uuid::Uuid> = fleet
        .job(job)
        .await?
        .tasks
        .iter()
        .map(|t| t.task_id.uuid())
        .collect();
    let (s, _) = fleet.call_as(bob, Method::DELETE, &path, None).await?;
    assert_eq!(s, 404, "another submitter does not see it");
    let (s, _) = fleet.call_as(eve, Method::DELETE, &path, None).await?;
    assert_eq!(s, 403, "a reader sees it but may not delete it");
    assert_eq!(rows_of(&fleet, job).await?, [1, 2, 2, 2, 2, 1]);
    let (s, b) = fleet.call_as(alice, Method::DELETE, &path, None).await?;
    assert_eq!(s, 204, "{b}");
    assert_eq!(rows_of(&fleet, job).await?, [0; 6]);
    assert_eq!(rows_of_tasks(&fleet, &tasks).await?, 0);
    let (s, _) = fleet.call_as(alice, Method::DELETE, &path, None).await?;
    assert_eq!(s, 404);

    // An admin deletes anyone's; a malformed id is a 400.
    let (_, b) = fleet
        .call_as(
            bob,
            Method::POST,
            "/v1/jobs",
            Some(json!({"tasks": [{"argv": ["true"], "group": "site"}]})),
        )
        .await?;
    let job: JobId = serde_json::from_value(b["job_id"].clone())?;
    fleet.wait_job(job, DEADLINE).await?;
    let (s, b) = fleet
        .call(Method::DELETE, &format!("/v1/jobs/{job}"), None)
        .await?;
    assert_eq!(s, 204, "{b}");
    let (s, b) = fleet.call(Method::DELETE, "/v1/jobs/nope", None).await?;
    assert_eq!((s, b["error"]["field"].as_str()), (400, Some("job_id")));
    fleet.shutdown().await
}
