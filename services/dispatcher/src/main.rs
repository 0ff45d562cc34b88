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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    svc::main(
        &args.common,
        fleet_dispatcher::DEFAULT_ADDR,
        fleet_dispatcher::run,
    )
    .await
}
