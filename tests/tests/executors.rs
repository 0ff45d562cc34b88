//! One executor (issue 11): `GET /v1/executors/{id}` shows what it holds and how it
//! stands; `DELETE /v1/executors/{id}` forgets one that is gone, refused while it is
//! alive or holds attempts. The executor is a real process, SIGKILLed.

use std::time::Duration;

use anyhow::{Context, Result};
use fleet_tests::{client_with_token, wait_for, ExecutorSpec, TestFleet};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::{json, Value};

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");
const DEADLINE: Duration = Duration::from_secs(60);

async fn show(fleet: &TestFleet) -> Result<(u16, Value)> {
    fleet.call(Method::GET, "/v1/executors/gone-1", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_is_shown_with_what_it_holds_and_forgotten_only_once_gone() -> Result<()> {
    let fleet = TestFleet::start_with("forget", |c| {
        c.dispatcher.executor_timeout_secs = 2;
        // Long enough to find the attempt still held after the executor is not alive.
        c.dispatcher.lease_timeout_secs = 20;
    })
    .await?;
    let (s, b) = fleet
        .call(Method::POST, "/v1/groups", Some(json!({"name": "extra"})))
        .await?;
    assert_eq!(s, 201, "{b}");
    let gone = fleet.spawn_executor_process(
        EXECUTOR_BIN,
        ExecutorSpec::new("gone-1", &["cpu"], 1).label("os=linux"),
    )?;
    fleet.wait_executors(&["gone-1"]).await?;
    let (s, b) = fleet
        .call(Method::PUT, "/v1/groups/extra/members/gone-1", None)
        .await?;
    assert_eq!(s, 204, "{b}");
    let job = fleet
        .submit(&json!({"tasks": [{"argv": ["sleep", "120"], "group": "cpu"}]}))
        .await?;
    let task = fleet
        .wait_job_state(job, "running", DEADLINE)
        .await?
        .tasks
        .remove(0)
        .task_id;
    // Drained once its task runs (a drained executor takes none).
    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/gone-1/drain", None)
        .await?;
    assert_eq!(s, 202, "{b}");

    // Shown: the fields of the listing, what it holds, how it stands.
    let v = wait_for(
        "gone-1 shown running the task, drained",
        DEADLINE,
        || async {
            let (s, v) = show(&fleet).await?;
            anyhow::ensure!(s == 200, "{s} {v}");
            let running = v["attempts"][0]["state"] == "running";
            Ok((running && v["draining"] == true).then_some(v))
        },
    )
    .await?;
    assert_eq!(v["executor_id"], "gone-1");
    assert_eq!(
        (v["alive"].as_bool(), v["capacity"].as_i64()),
        (Some(true), Some(1))
    );
    assert_eq!(v["groups"], json!(["cpu"]));
    assert_eq!(v["labels"], json!({"os": "linux"}));
    assert_eq!(v["assigned_groups"], json!(["extra"]));
    assert_eq!(v["registration"], Value::Null);
    assert_eq!(v["drain"]["drained_by"], "admin (configured)", "{v}");
    let attempts = v["attempts"].as_array().context("attempts")?;
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(
        (
            &attempts[0]["task_id"],
            &attempts[0]["job_id"],
            &attempts[0]["attempt"]
        ),
        (&json!(task), &json!(job), &json!(1))
    );
    for key in ["last_info_at", "first_seen_at", "running", "queued"] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }

    // Any role reads it; only an admin forgets.
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "viewer", "role": "reader"})),
        )
        .await?;
    assert_eq!(s, 201, "{b}");
    let reader = client_with_token(b["token"].as_str())?;
    let (s, _) = fleet
        .call_as(&reader, Method::GET, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 200);
    let (s, b) = fleet
        .call_as(&reader, Method::DELETE, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 403, "{b}");

    // Alive: refused, saying so.
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    let msg = b["error"]["message"].as_str().context("message")?;
    assert!(msg.contains("is alive"), "{msg}");

    // Gone, but its attempt's lease still runs: refused, naming the attempt.
    gone.signal(Signal::SIGKILL)?;
    wait_for("gone-1 to be shown not alive", DEADLINE, || async {
        Ok((show(&fleet).await?.1["alive"] == false).then_some(()))
    })
    .await?;
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    let msg = b["error"]["message"].as_str().context("message")?;
    assert!(
        msg.contains("still holds 1 attempt(s)") && msg.contains(&format!("task {task} attempt 1")),
        "{msg}"
    );

    // Once the lease sweep has lost it, the executor is forgotten with its membership
    // and its drain.
    wait_for("gone-1's attempt to be lost", DEADLINE, || async {
        let (_, v) = show(&fleet).await?;
        Ok(v["attempts"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(()))
    })
    .await?;
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 204, "{b}");
    let (s, _) = show(&fleet).await?;
    assert_eq!(s, 404);
    let (s, _) = fleet
        .call(Method::DELETE, "/v1/executors/gone-1", None)
        .await?;
    assert_eq!(s, 404);
    let (_, list) = fleet.call(Method::GET, "/v1/executors", None).await?;
    assert_eq!(list["executors"], json!([]), "{list}");
    for table in ["group_members", "executor_drains"] {
        assert_eq!(
            fleet
                .count(&format!(
                    "SELECT count(*) FROM {table} WHERE executor_id = 'gone-1'"
                ))
                .await?,
            0,
            "{table}"
        );
    }
    let (s, b) = fleet
        .call(Method::GET, "/v1/executors/Not%20an%20id", None)
        .await?;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("executor_id"))
    );
    fleet.shutdown().await
}
