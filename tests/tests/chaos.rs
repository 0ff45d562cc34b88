//! The chaos soak at a size that fits CI (`make chaos` runs the full one).

use std::time::Duration;

use anyhow::Result;
use fleet_tests::chaos::{self, ChaosOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_process_kills_lose_nothing_and_record_nothing_twice() -> Result<()> {
    let report = chaos::run(ChaosOptions {
        jobs: 400,
        kill_every: Duration::from_millis(700),
        task_secs: 0.1,
        executors: 3,
        capacity: 4,
        clients: 4,
        seed: 0x5eed,
        binaries: [
            env!("CARGO_BIN_EXE_fleet-test-submitter").into(),
            env!("CARGO_BIN_EXE_fleet-test-dispatcher").into(),
            env!("CARGO_BIN_EXE_fleet-test-collector").into(),
            env!("CARGO_BIN_EXE_fleet-test-executor").into(),
        ],
    })
    .await?;
    eprintln!("{report}");
    assert_eq!(report.submitted, 400);
    assert_eq!(report.completed, 400, "every job completed");
    assert_eq!(report.duplicates, 0);
    assert!(report.kills.values().sum::<usize>() >= 3);
    Ok(())
}
