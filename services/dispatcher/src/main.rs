//! fleet-dispatcher: hands ready tasks to executors, balancing queue depth.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::{http, svc};

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
    let cfg = svc::load_or_exit(&args.common);
    http::init_tracing();
    let listener = match svc::bind(&cfg, fleet_dispatcher::DEFAULT_ADDR).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot bind the HTTP address: {e}");
            return ExitCode::from(svc::EXIT_BAD_CONFIG as u8);
        }
    };
    match fleet_dispatcher::run(cfg, listener, svc::shutdown_token()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dispatcher stopped");
            ExitCode::FAILURE
        }
    }
}
