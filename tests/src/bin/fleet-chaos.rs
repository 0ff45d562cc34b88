//! `make chaos`: the soak of issue "Nothing lost, nothing twice". Runs every service as
//! a process, kills a random one every few seconds while jobs flow, and reports.

use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Parser;
use fleet_tests::chaos::{self, ChaosOptions};

#[derive(Parser)]
#[command(
    about = "Jobs through a fleet whose processes are SIGKILLed, SIGTERMed or SIGSTOPped past the lease at random; checks that nothing is lost or recorded twice, and that nothing ran twice unless a process that ran it went silent."
)]
struct Args {
    /// Jobs to submit.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Milliseconds between faults (SIGKILL, SIGTERM, or SIGSTOP past the lease).
    #[arg(long, default_value_t = 3000)]
    kill_every_ms: u64,
    #[arg(long, default_value_t = 3)]
    executors: u32,
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds each task runs (`sleep`).
    #[arg(long, default_value_t = 0.05)]
    task_secs: f64,
    /// Faults to make at least, even if every job is done before.
    #[arg(long, default_value_t = 3)]
    min_faults: usize,
    /// Seed of the choice of victims (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn sibling(name: &str) -> String {
    // The service binaries are built beside this one (same target directory).
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "chaos: {} jobs, a random process killed, stopped or frozen every {}ms, seed {seed}",
        args.jobs, args.kill_every_ms
    );
    let report = chaos::run(ChaosOptions {
        jobs: args.jobs,
        kill_every: Duration::from_millis(args.kill_every_ms),
        executors: args.executors,
        capacity: args.capacity,
        clients: args.clients,
        task_secs: args.task_secs,
        min_faults: args.min_faults,
        seed,
        binaries: [
            sibling("fleet-test-submitter"),
            sibling("fleet-test-dispatcher"),
            sibling("fleet-test-collector"),
            sibling("fleet-test-executor"),
        ],
    })
    .await?;
    println!("{report}");
    ensure!(report.duplicates == 0, "duplicates found");
    ensure!(
        report.unexplained_reruns == 0,
        "a task ran again though no process that ran it went silent"
    );
    ensure!(
        report.completed == report.submitted,
        "not every job completed"
    );
    Ok(())
}
