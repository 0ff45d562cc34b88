//! fleet-collector: records results and derives task and job states.

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::{http, svc};

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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = svc::load_or_exit(&args.common);
    http::init_tracing();
    let listener = match svc::bind(&cfg, fleet_collector::DEFAULT_ADDR).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot bind the HTTP address: {e}");
            return ExitCode::from(svc::EXIT_BAD_CONFIG as u8);
        }
    };
    match fleet_collector::run(cfg, listener, svc::shutdown_token()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "collector stopped");
            ExitCode::FAILURE
        }
    }
}
