//! fleet-submitter: accepts jobs over HTTP and from `<prefix>.submit`, records them, and
//! serves the read API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_shared::svc;

/// Accepts jobs (HTTP POST /v1/jobs and AMQP submit messages) and serves the HTTP API.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configuration: FLEET_AMQP__URL, FLEET_DATABASE__URL, FLEET_HTTP__ADDR (default 127.0.0.1:7070), FLEET_AUTH__ADMIN_TOKEN (required: the bootstrap admin's bearer token), ...; see --print-config."
)]
struct Args {
    #[command(flatten)]
    common: svc::CommonArgs,
    /// Print the OpenAPI document of the HTTP API (what GET /openapi.json serves) and exit.
    #[arg(long)]
    print_openapi: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create (or reset) the submitter's, dispatcher's and collector's own broker users
    /// for amqp.prefix (<prefix>-submitter, ...), each allowed only what that service
    /// does, through the management API (amqp.management_url, as amqp.management_user or
    /// the user of amqp.url), with the passwords in FLEET_BROKER_PASSWORD_SUBMITTER,
    /// FLEET_BROKER_PASSWORD_DISPATCHER and FLEET_BROKER_PASSWORD_COLLECTOR; then exit.
    SetupBrokerUsers,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        let doc = fleet_submitter::openapi();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::SetupBrokerUsers) = args.command {
        let cfg = svc::load_or_exit(&args.common, |_| Ok(()));
        return match fleet_submitter::setup_broker_users(&cfg).await {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-submitter setup-broker-users: {e}");
                ExitCode::FAILURE
            }
        };
    }
    svc::main_checked(
        &args.common,
        fleet_submitter::DEFAULT_ADDR,
        fleet_shared::config::Config::validate_auth,
        fleet_submitter::run,
    )
    .await
}
