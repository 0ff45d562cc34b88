//! An executor that sends INFO but has no queue (a misconfigured or hostile sender):
//! the requests for it come back unroutable. They must be taken back and run elsewhere
//! at once, as if never assigned, without ending the dispatcher's broker session and
//! without moving leadership.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_shared::amqp::{keys, Names};
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;
use fleet_shared::proto::{self, Info};
use fleet_tests::{job_of, DispatcherPair, ExecutorSpec, TestFleet};
use serde_json::json;

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_from_an_executor_without_a_queue_costs_no_task_an_attempt() -> Result<()> {
    let (
        mut fleet,
        DispatcherPair {
            leader,
            standby,
            epoch,
        },
    ) = TestFleet::with_dispatcher_pair("ghost", DISPATCHER_BIN).await?;
    fleet
        .add_executor(ExecutorSpec::new("real-1", &["cpu"], 4))
        .await?;
    fleet.wait_executors(&["real-1"]).await?;

    // The ghost claims lots of room in the same group, so the balancer prefers it.
    let n = Names::new(&fleet.name);
    let ghost = ExecutorId::parse("ghost")?;
    let info = || {
        Info::idle(
            ghost.clone(),
            vec![GroupName::parse("cpu").expect("valid")],
            64,
        )
    };
    let job = job_of(1, &["true"], json!({"group": "cpu"}));
    let mut jobs = Vec::new();
    let started = Instant::now();
    let mut next_info = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if Instant::now() >= next_info {
            fleet
                .publish_raw(
                    &n.root_exchange(),
                    &keys::info(&ghost),
                    &proto::encode(&info()),
                )
                .await?;
            next_info = Instant::now() + Duration::from_millis(200);
        }
        jobs.push(fleet.submit(&job).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for id in &jobs {
        let j = fleet.wait_job(*id, Duration::from_secs(60)).await?;
        assert_eq!(j.state, "succeeded", "job {id}");
        let t = &j.tasks[0];
        assert_eq!(
            (t.attempts, t.history.len()),
            (1, 1),
            "job {id}: every task succeeds on its first attempt: {:?}",
            t.history
        );
        assert_eq!(t.executor_id.as_deref(), Some("real-1"));
    }
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM attempts WHERE executor_id = 'ghost'")
            .await?,
        0,
        "nothing is left assigned to the ghost"
    );
    let (_, now) = fleet.leader().await?.unwrap_or_default();
    assert_eq!(now, epoch, "leadership did not move");
    let bounced = leader
        .metric("fleet_dispatcher_unroutable_total")
        .await
        .unwrap_or(0.0);
    assert!(bounced > 0.0, "the ghost was offered work and it came back");
    eprintln!(
        "{} jobs through 60 s of INFO from an executor with no queue; its requests came back {bounced} times",
        jobs.len()
    );
    leader.kill().await?;
    standby.kill().await?;
    fleet.shutdown().await
}
