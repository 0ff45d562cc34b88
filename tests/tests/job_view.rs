//! What the job view says of a task (issue 11, bugs of the job view): an `each` task's
//! row says how its quorum decided it (not the last copy's executor and exit code), and
//! a ready task that waits says why (no eligible executor, a held job, a paused group).
//! Read as raw JSON, as a client of the API would.

use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::id::JobId;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

async fn view(fleet: &TestFleet, id: JobId) -> Result<Value> {
    let (s, v) = fleet
        .call(Method::GET, &format!("/v1/jobs/{id}"), None)
        .await?;
    anyhow::ensure!(s == 200, "GET /v1/jobs/{id}: {s} {v}");
    Ok(v)
}

fn each_task(script: &str, quorum: u32) -> Value {
    json!({"tasks": [{"argv": ["sh", "-c", script], "group": "site", "each": true,
                      "quorum": quorum}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_each_task_row_says_how_its_quorum_decided_it() -> Result<()> {
    let mut fleet = TestFleet::start("eachrow").await?;
    for id in ["e-1", "e-2", "e-3"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["site"], 2))
            .await?;
    }
    fleet.wait_executors(&["e-1", "e-2", "e-3"]).await?;

    // Two of three succeed (e-3 exits 3): quorum 2 is met.
    let met = fleet
        .submit(&each_task(
            r#"[ "$FLEET_EXECUTOR_ID" = e-3 ] && exit 3; true"#,
            2,
        ))
        .await?;
    assert_eq!(fleet.wait_job(met, DEADLINE).await?.state, "succeeded");
    // Whatever e-3 did meanwhile, the row is the same: let every copy end first.
    let v = wait_for("every copy to end", DEADLINE, || async {
        let v = view(&fleet, met).await?;
        let open = v["tasks"][0]["copies"]
            .as_array()
            .context("copies")?
            .iter()
            .any(|c| c["state"] == "pending" || c["state"] == "assigned");
        Ok((!open).then_some(v))
    })
    .await?;
    let t = &v["tasks"][0];
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(
        t["executor_id"],
        Value::Null,
        "no one executor decided it: {t}"
    );
    assert_eq!(t["exit_code"], Value::Null, "{t}");
    assert_eq!(t["signal"], Value::Null, "{t}");
    assert_eq!(t["error"], "2 of 3 members succeeded; quorum 2 met", "{t}");

    // Every member must succeed and e-3 fails: decided at once, the others still run.
    let failed = fleet
        .submit(&each_task(
            r#"[ "$FLEET_EXECUTOR_ID" = e-3 ] && exit 3; sleep 1"#,
            3,
        ))
        .await?;
    assert_eq!(fleet.wait_job(failed, DEADLINE).await?.state, "failed");
    let v = view(&fleet, failed).await?;
    let t = &v["tasks"][0];
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(
        (&t["executor_id"], &t["exit_code"], &t["signal"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "{t}"
    );
    let error = t["error"].as_str().context("an error")?;
    assert!(
        error.starts_with("failed: 1 of 3 members failed")
            && error.ends_with("quorum 3 can no longer be met"),
        "{error}"
    );
    fleet.shutdown().await
}

/// The hint of the job's first task.
async fn hint(fleet: &TestFleet, id: JobId) -> Result<Value> {
    Ok(view(fleet, id).await?["tasks"][0]["hint"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_task_says_why_it_waits() -> Result<()> {
    let mut fleet = TestFleet::start("hint").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 2).label("os=linux"))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;

    // A group nobody serves, and a group served without the label asked for.
    let nobody = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "lab.gpu",
                                   "labels": {"gpu": "a100"}}]}))
        .await?;
    let unlabelled = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "cpu",
                                   "labels": {"os": "windows"}}]}))
        .await?;
    assert_eq!(
        hint(&fleet, nobody).await?,
        "no executor is eligible: none alive in group lab.gpu (or its subgroups) with \
         labels gpu=a100"
    );
    assert_eq!(
        hint(&fleet, unlabelled).await?,
        "no executor is eligible: none alive in group cpu (or its subgroups) with labels \
         os=windows"
    );

    // A paused group, its subgroup, and a held job in it.
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/scheduler/pause",
            Some(json!({"group": "cpu"})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let paused = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "cpu"},
                                  {"argv": ["true"], "group": "cpu", "depends_on": ["task-0"]}]}))
        .await?;
    assert_eq!(
        hint(&fleet, paused).await?,
        "dispatching is paused for group cpu (fleetctl scheduler resume cpu)"
    );
    let v = view(&fleet, paused).await?;
    assert_eq!(
        (&v["tasks"][1]["state"], &v["tasks"][1]["hint"]),
        (&json!("waiting"), &Value::Null),
        "only a ready task gets a hint: {v}"
    );
    let sub = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "cpu.fast"}]}))
        .await?;
    let h = hint(&fleet, sub).await?;
    let h = h.as_str().context("a hint")?;
    assert!(
        h.contains("none alive in group cpu.fast")
            && h.contains("dispatching is paused for group cpu "),
        "{h}"
    );
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{paused}"),
            Some(json!({"held": true})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        hint(&fleet, paused).await?,
        format!(
            "the job is held: its tasks wait until it is released (fleetctl release {paused}); \
             dispatching is paused for group cpu (fleetctl scheduler resume cpu)"
        )
    );

    // Released and resumed, it runs; a finished task has nothing to say.
    for (path, body) in [
        (format!("/v1/jobs/{paused}"), json!({"held": false})),
        ("/v1/scheduler/resume".to_owned(), json!({"group": "cpu"})),
    ] {
        let method = if path.starts_with("/v1/jobs") {
            Method::PATCH
        } else {
            Method::POST
        };
        let (s, b) = fleet.call(method, &path, Some(body)).await?;
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(fleet.wait_job(paused, DEADLINE).await?.state, "succeeded");
    assert_eq!(hint(&fleet, paused).await?, Value::Null);
    fleet.shutdown().await
}
