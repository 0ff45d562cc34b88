//! Scheduler pause (issue 11, acceptance 5): no task of a paused group or its subgroups
//! starts, other groups run, and the pause holds across a dispatcher failover. And a
//! drained executor stays drained across its own restart.

use std::time::Duration;

use anyhow::Result;
use fleet_shared::id::JobId;
use fleet_tests::{job_of, wait_for, DispatcherPair, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");
const DEADLINE: Duration = Duration::from_secs(60);

async fn never_started(fleet: &TestFleet, ids: &[JobId]) -> Result<()> {
    for id in ids {
        let j = fleet.job(*id).await?;
        assert_eq!(
            (j.state.as_str(), j.tasks[0].attempts),
            ("pending", 0),
            "job {id} must not have started"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_group_starts_nothing_across_a_failover_while_others_run() -> Result<()> {
    let (
        mut fleet,
        DispatcherPair {
            leader,
            standby,
            epoch,
        },
    ) = TestFleet::with_dispatcher_pair("pause", DISPATCHER_BIN).await?;
    for (id, group) in [("web-1", "site.web"), ("other-1", "other")] {
        fleet
            .add_executor(ExecutorSpec::new(id, &[group], 2))
            .await?;
    }
    fleet.wait_executors(&["web-1", "other-1"]).await?;

    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/scheduler/pause",
            Some(json!({"group": "site"})),
        )
        .await?;
    assert_eq!((s, b["paused"].as_bool()), (200, Some(true)), "{b}");
    let (_, status) = fleet.call(Method::GET, "/v1/scheduler", None).await?;
    assert_eq!(status["pauses"][0]["group"], "site", "{status}");

    // Work for the paused group and its subgroup; and for another group, which runs.
    let mut paused = Vec::new();
    for group in ["site", "site.web"] {
        paused.push(
            fleet
                .submit(&job_of(1, &["true"], json!({"group": group})))
                .await?,
        );
    }
    let other = fleet
        .submit(&job_of(1, &["true"], json!({"group": "other"})))
        .await?;
    assert_eq!(fleet.wait_job(other, DEADLINE).await?.state, "succeeded");
    never_started(&fleet, &paused).await?;

    // The leader dies; the standby takes over and still starts nothing of `site`.
    leader.kill().await?;
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        Ok(fleet.leader().await?.filter(|(_, e)| *e > epoch))
    })
    .await?;
    let other = fleet
        .submit(&job_of(1, &["true"], json!({"group": "other"})))
        .await?;
    assert_eq!(fleet.wait_job(other, DEADLINE).await?.state, "succeeded");
    never_started(&fleet, &paused).await?;

    // A pause of the whole fleet stops the other group too; lifting both runs all.
    let (s, _) = fleet
        .call(Method::POST, "/v1/scheduler/pause", None)
        .await?;
    assert_eq!(s, 200);
    let held_back = fleet
        .submit(&job_of(1, &["true"], json!({"group": "other"})))
        .await?;
    // The subgroup's pause alone is lifted: the fleet-wide one still holds.
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/scheduler/resume",
            Some(json!({"group": "site"})),
        )
        .await?;
    assert_eq!((s, b["was_paused"].as_bool()), (200, Some(true)), "{b}");
    let marker = fleet
        .submit(&job_of(1, &["true"], json!({"group": "other"})))
        .await?;
    let (s, _) = fleet
        .call(Method::POST, "/v1/scheduler/resume", Some(json!({})))
        .await?;
    assert_eq!(s, 200);
    for id in paused.iter().chain([&held_back, &marker]) {
        assert_eq!(fleet.wait_job(*id, DEADLINE).await?.state, "succeeded");
    }
    let (_, status) = fleet.call(Method::GET, "/v1/scheduler", None).await?;
    assert_eq!(status["pauses"], json!([]), "{status}");
    drop(standby);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_executor_stays_drained_when_it_restarts() -> Result<()> {
    let mut fleet = TestFleet::start("drainkeep").await?;
    fleet
        .add_executor(ExecutorSpec::new("keep-1", &["keep"], 2))
        .await?;
    fleet.wait_executors(&["keep-1"]).await?;
    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/keep-1/drain", None)
        .await?;
    assert_eq!(s, 202, "{b}");
    fleet.wait_draining("keep-1", true).await?;

    // Restarted, it reports itself not draining; Fleet still gives it nothing.
    fleet.stop_executor("keep-1").await;
    fleet
        .add_executor(ExecutorSpec::new("keep-1", &["keep"], 2))
        .await?;
    fleet.wait_executors(&["keep-1"]).await?;
    fleet.wait_draining("keep-1", true).await?;
    let job = fleet
        .submit(&job_of(1, &["true"], json!({"group": "keep"})))
        .await?;
    // Another executor of the group joins and runs it: the drained one never did.
    fleet
        .add_executor(ExecutorSpec::new("keep-2", &["keep"], 2))
        .await?;
    let done = fleet.wait_job(job, DEADLINE).await?;
    assert_eq!(done.tasks[0].executor_id.as_deref(), Some("keep-2"));
    let attempts: Vec<Value> = fleet.job(job).await?.tasks[0]
        .history
        .iter()
        .map(|a| json!(a.executor_id))
        .collect();
    assert_eq!(attempts, vec![json!("keep-2")]);

    // Resumed, it takes work again.
    let (s, _) = fleet
        .call(Method::POST, "/v1/executors/keep-1/resume", None)
        .await?;
    assert_eq!(s, 202);
    fleet.wait_draining("keep-1", false).await?;
    fleet.stop_executor("keep-2").await;
    let job = fleet
        .submit(&job_of(1, &["true"], json!({"group": "keep"})))
        .await?;
    let done = fleet.wait_job(job, DEADLINE).await?;
    assert_eq!(done.tasks[0].executor_id.as_deref(), Some("keep-1"));
    fleet.shutdown().await
}

/// Requests already waiting in an executor's window when the pause comes are asked back:
/// nothing of the paused group starts, not even what was handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_on_an_executor_are_given_back_when_their_group_is_paused() -> Result<()> {
    let mut fleet = TestFleet::start_with("pausequeued", |c| {
        c.dispatcher.window = 8;
        c.dispatcher.window_floor = 8;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("q-1", &["q"], 1))
        .await?;
    fleet.wait_executors(&["q-1"]).await?;
    let busy = fleet
        .submit(&job_of(1, &["sleep", "1"], json!({"group": "q"})))
        .await?;
    fleet.wait_job_state(busy, "running", DEADLINE).await?;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(
            fleet
                .submit(&job_of(1, &["true"], json!({"group": "q"})))
                .await?,
        );
    }
    // Handed out: waiting in q-1's window behind the running sleep.
    wait_for("the requests to be handed out", DEADLINE, || async {
        let mut all = true;
        for id in &queued {
            all &= fleet.job(*id).await?.tasks[0].state == "assigned";
        }
        Ok(all.then_some(()))
    })
    .await?;
    let (s, _) = fleet
        .call(
            Method::POST,
            "/v1/scheduler/pause",
            Some(json!({"group": "q"})),
        )
        .await?;
    assert_eq!(s, 200);
    // Given back, they wait in PostgreSQL, unstarted, while the sleep ends.
    wait_for("the queued requests to come back", DEADLINE, || async {
        let mut all = true;
        for id in &queued {
            let j = fleet.job(*id).await?;
            all &= j.tasks[0].state == "ready" && j.tasks[0].history.is_empty();
        }
        Ok(all.then_some(()))
    })
    .await?;
    assert_eq!(fleet.wait_job(busy, DEADLINE).await?.state, "succeeded");
    let probe = fleet
        .submit(&job_of(1, &["true"], json!({"group": "other"})))
        .await?;
    fleet
        .add_executor(ExecutorSpec::new("o-1", &["other"], 1))
        .await?;
    fleet.wait_job(probe, DEADLINE).await?;
    never_started(&fleet, &queued).await?;
    let (s, _) = fleet
        .call(
            Method::POST,
            "/v1/scheduler/resume",
            Some(json!({"group": "q"})),
        )
        .await?;
    assert_eq!(s, 200);
    for id in &queued {
        assert_eq!(fleet.wait_job(*id, DEADLINE).await?.state, "succeeded");
    }
    fleet.shutdown().await
}
