//! The submitter as a process of its own, for fault tests that kill it.

use clap::Parser;
use fleet_shared::svc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    svc::main(
        &args.common,
        fleet_submitter::DEFAULT_ADDR,
        fleet_submitter::run,
    )
    .await
}
