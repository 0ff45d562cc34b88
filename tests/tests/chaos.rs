//! The chaos soak at a size that fits CI (`make chaos` runs the full one).

use std::time::Duration;

use anyhow::Result;
use fleet_tests::chaos::{self, ChaosOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_process_kills_lose_nothing_and_record_nothing_twice() -> Result<()> {
    let report = chaos::run(ChaosOptions {
        jobs: 1500,
        kill_every: Duration::from_millis(700),
        task_secs: 0.1,
        // This seed's first five: an executor frozen past the lease, one stopped with
        // SIGTERM, one killed, the collector frozen, a dispatcher killed.
        min_faults: 5,
        executors: 3,
        capacity: 4,
        clients: 4,
        seed: 925,
        binaries: [
            env!("CARGO_BIN_EXE_fleet-test-submitter").into(),
            env!("CARGO_BIN_EXE_fleet-test-dispatcher").into(),
            env!("CARGO_BIN_EXE_fleet-test-collector").into(),
            env!("CARGO_BIN_EXE_fleet-test-executor").into(),
        ],
    })
    .await?;
    eprintln!("{report}");
    assert_eq!(report.submitted, 1500);
    assert_eq!(report.completed, 1500, "every job completed");
    assert_eq!(report.duplicates, 0);
    assert_eq!(
        report.unexplained_reruns, 0,
        "only tasks whose executor went silent run twice"
    );
    assert!(report.kills.values().sum::<usize>() >= 5);
    Ok(())
}
