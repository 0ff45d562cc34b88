//! fleet-executor: runs tasks as child processes and reports INFO and results.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::{http, svc};

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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = svc::load_or_exit(&args.common);
    http::init_tracing();
    if let Err(e) = fleet_executor::Identity::from_config(&cfg) {
        eprintln!("error: {e}");
        return ExitCode::from(svc::EXIT_BAD_CONFIG as u8);
    }
    let listener = match svc::bind(&cfg, fleet_executor::DEFAULT_ADDR).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot bind the HTTP address: {e}");
            return ExitCode::from(svc::EXIT_BAD_CONFIG as u8);
        }
    };
    match fleet_executor::run(cfg, listener, svc::shutdown_token()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "executor stopped");
            ExitCode::FAILURE
        }
    }
}
