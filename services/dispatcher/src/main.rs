//! fleet-dispatcher: hands ready tasks to executors, balancing queue depth.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::svc;

/// Hands ready tasks (highest priority, then oldest, first) to eligible executors, keeping
/// each near capacity + window from their INFO heartbeats, and expires lost leases.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configuration: FLEET_AMQP__URL, FLEET_DATABASE__URL, FLEET_HTTP__ADDR (default 127.0.0.1:7071), FLEET_DISPATCHER__WINDOW, FLEET_DISPATCHER__LEASE_TIMEOUT_SECS, ...; see --print-config."
)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
}

// One thread: a round, or a batch, is a chain of waits on the database and the
// broker; handing each step between threads added latency (about 0.5 ms per job from
// submit to start, measured with make bench-latency) and CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    svc::main(
        &args.common,
        fleet_dispatcher::DEFAULT_ADDR,
        fleet_dispatcher::run,
    )
    .await
}
