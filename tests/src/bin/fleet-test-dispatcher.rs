//! The dispatcher as a process of its own, for fault tests that kill or freeze it.

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
        fleet_dispatcher::DEFAULT_ADDR,
        fleet_dispatcher::run,
    )
    .await
}
