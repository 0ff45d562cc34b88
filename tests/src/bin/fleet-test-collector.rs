//! The collector as a process of its own, for fault tests that kill it.

use clap::Parser;
use fleet_shared::svc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
}

// One thread: a round, or a batch, is a chain of waits on the database and the
// broker; handing each step between threads added latency (about 0.5 ms per job from
// submit to start, measured with make bench-latency) and CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    svc::main_checked(
        &args.common,
        fleet_collector::DEFAULT_ADDR,
        fleet_collector::check_config,
        fleet_collector::run,
    )
    .await
}
