//! fleet-collector: records results and derives task and job states.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::svc;

/// Records results from executors (idempotently, per task and attempt), derives task and
/// job states, and announces them on `<prefix>.events`.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configuration: FLEET_AMQP__URL, FLEET_DATABASE__URL, FLEET_HTTP__ADDR (default 127.0.0.1:7072), FLEET_COLLECTOR__BATCH_SIZE, ...; see --print-config."
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
    svc::main_checked(
        &args.common,
        fleet_collector::DEFAULT_ADDR,
        fleet_collector::check_config,
        fleet_collector::run,
    )
    .await
}
