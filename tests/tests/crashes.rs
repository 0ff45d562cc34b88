//! Services killed with SIGKILL while work flows: nothing accepted is lost, nothing is
//! recorded twice.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_tests::{job_of, wait_for, ExecutorSpec, InProcess, TestFleet};
use nix::sys::signal::Signal;
use serde_json::json;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-collector");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_collector_while_results_flow_loses_nothing_and_records_nothing_twice(
) -> Result<()> {
    let mut fleet = TestFleet::start_opts(
        "killcoll",
        InProcess {
            dispatcher: true,
            collector: false,
        },
        |_| {},
    )
    .await?;
    for id in ["k-1", "k-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["k-1", "k-2"]).await?;
    let mut collector = fleet.spawn_process(COLLECTOR_BIN, "collector-1", &[])?;

    let total = 300usize;
    let mut jobs = Vec::with_capacity(total);
    let mut kills = 0;
    for i in 0..total {
        jobs.push(
            fleet
                .submit(&job_of(
                    1,
                    &["sh", "-c", "echo $PPID"],
                    json!({"group": "cpu"}),
                ))
                .await?,
        );
        // Kill the collector three times in the stream, each time once it has recorded
        // something since its start, so that it dies with results in flight.
        if i % 100 == 50 {
            let before = fleet.count("SELECT count(*) FROM results").await?;
            wait_for(
                "the collector to record results",
                Duration::from_secs(30),
                || async {
                    Ok((fleet.count("SELECT count(*) FROM results").await? > before).then_some(()))
                },
            )
            .await?;
            collector.signal(Signal::SIGKILL)?;
            collector.kill().await?;
            kills += 1;
            collector =
                fleet.spawn_process(COLLECTOR_BIN, &format!("collector-{}", kills + 1), &[])?;
        }
    }
    let started = Instant::now();
    for id in &jobs {
        let j = fleet.wait_job(*id, Duration::from_secs(120)).await?;
        assert_eq!(j.state, "succeeded", "job {id}");
    }
    assert_eq!(kills, 3);
    assert_eq!(
        fleet.count("SELECT count(*) FROM results").await?,
        total as i64
    );
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND final_attempt = 1")
            .await?,
        total as i64,
        "every task decided once, by its first attempt"
    );
    eprintln!("all {total} jobs recorded {:.1}s after the last submission, across {kills} collector kills",
        started.elapsed().as_secs_f64());
    collector.kill().await?;
    fleet.shutdown().await
}
