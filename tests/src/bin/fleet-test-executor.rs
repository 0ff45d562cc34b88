//! The executor as a process of its own, for fault tests that kill or stop it: the same
//! `fleet_executor::run` as the `fleet-executor` binary, built with this package so that
//! its path is known to the tests (`CARGO_BIN_EXE_fleet-test-executor`).

use clap::Parser;
use fleet_shared::svc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
}

// One thread: the executor mostly waits (on children, pipes and the broker), and a
// multi-threaded runtime spent more CPU handing each attempt between its threads than
// running it (about 100 us per job of `make bench`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    svc::main(
        &args.common,
        fleet_executor::DEFAULT_ADDR,
        fleet_executor::run,
    )
    .await
}
