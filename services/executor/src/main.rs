//! fleet-executor: runs tasks as child processes and reports INFO and results.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::svc;

/// Runs the tasks the dispatcher sends it, within its capacity, and reports results.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configuration: FLEET_EXECUTOR__ID (default: the host name), FLEET_EXECUTOR__CAPACITY (default: CPUs), FLEET_EXECUTOR__GROUPS (e.g. cpu,lab.gpu), FLEET_EXECUTOR__LABELS (e.g. gpu=yes), FLEET_AMQP__URL, FLEET_HTTP__ADDR (default 127.0.0.1:0); see --print-config."
)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
}

// One thread: the executor mostly waits (on children, pipes and the broker), and a
// multi-threaded runtime spent more CPU handing each attempt between its threads than
// running it (about 100 us per job of `make bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    svc::main(
        &args.common,
        fleet_executor::DEFAULT_ADDR,
        fleet_executor::run,
    )
    .await
}
