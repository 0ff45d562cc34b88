//! An executor stopped with SIGTERM: it finishes what runs and acks it, gives back what
//! it holds unstarted so that runs elsewhere at once, and a restart under the same id
//! runs nothing again.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use nix::sys::signal::Signal;
use serde_json::json;

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_executor_runs_nothing_twice_and_hands_back_what_it_did_not_start() -> Result<()>
{
    // A long lease, so that waiting for one would show.
    let lease = Duration::from_secs(30);
    let mut fleet = TestFleet::start_with("drain", |c| {
        c.dispatcher.lease_timeout_secs = lease.as_secs();
        c.dispatcher.executor_timeout_secs = 2;
        // Two held from the start, before the executor has finished anything to pace
        // its window by.
        c.dispatcher.window_floor = 2;
    })
    .await?;
    let log = std::env::temp_dir().join(format!("{}-runs.log", fleet.name));
    let line = format!(
        "echo $FLEET_TASK_ID $FLEET_ATTEMPT $FLEET_EXECUTOR_ID >> {}",
        log.display()
    );
    // One slot: one task runs, two wait in its queue (the window holds them).
    let spec = || ExecutorSpec::new("drain-a", &["cpu"], 1).label("who=a");
    let a = fleet.spawn_executor_process(EXECUTOR_BIN, spec())?;
    fleet.wait_executors(&["drain-a"]).await?;
    let task = json!({"group": "cpu", "argv": ["sh", "-c", format!("{line}; sleep 2")]});
    let job = fleet
        .submit(&json!({"tasks": [task.clone(), task.clone(), task]}))
        .await?;
    wait_for(
        "one task running and two queued on drain-a",
        Duration::from_secs(30),
        || async {
            let j = fleet.job(job).await?;
            let on_a = |s: &str| {
                j.tasks
                    .iter()
                    .filter(|t| t.state == s && t.executor_id.as_deref() == Some("drain-a"))
                    .count()
            };
            Ok((on_a("running") == 1 && on_a("assigned") == 2).then_some(()))
        },
    )
    .await?;
    let queued: Vec<_> = fleet
        .job(job)
        .await?
        .tasks
        .iter()
        .filter(|t| t.state == "assigned")
        .map(|t| t.task_id)
        .collect();
    fleet
        .add_executor(ExecutorSpec::new("drain-b", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["drain-b"]).await?;

    let stopped_at = Instant::now();
    a.signal(Signal::SIGTERM)?;
    let done = fleet.wait_job(job, lease).await?;
    let took = stopped_at.elapsed();
    assert_eq!(done.state, "succeeded");
    for t in done.tasks.iter().filter(|t| queued.contains(&t.task_id)) {
        assert_eq!(t.executor_id.as_deref(), Some("drain-b"), "{t:?}");
        assert_eq!(t.attempts, 1, "given back, not lost: {:?}", t.history);
    }
    assert!(
        took < lease / 2,
        "the queued tasks ran elsewhere without waiting for the lease ({took:?})"
    );

    // Restarted under the same id, it must find nothing left to run. With one slot it
    // runs its queue in order, so once a task only it can take has run, whatever was
    // in front of it has run too.
    let mut a = a;
    a.wait_exit(Duration::from_secs(15)).await?;
    let a2 = fleet.spawn_executor_process(EXECUTOR_BIN, spec())?;
    let marker = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "labels": {"who": "a"},
            "argv": ["sh", "-c", format!("{line}")]}]}))
        .await?;
    assert_eq!(
        fleet.wait_job(marker, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    let runs = std::fs::read_to_string(&log)?;
    assert_eq!(
        runs.lines().count(),
        4,
        "each of the 3 tasks and the marker ran exactly once:\n{runs}"
    );
    assert_eq!(fleet.count("SELECT count(*) FROM results").await?, 4);
    eprintln!(
        "drain: the job finished {:.1}s after SIGTERM (lease {}s)",
        took.as_secs_f64(),
        lease.as_secs()
    );
    let _ = std::fs::remove_file(&log);
    a2.kill().await?;
    fleet.shutdown().await
}
