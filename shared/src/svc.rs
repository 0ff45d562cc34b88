//! What every service's `main` does the same way: parse `--config` / `--print-config`,
//! load configuration (exit 64 when it is bad, before anything binds), log, and cancel
//! one token on SIGTERM.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Exit status for bad configuration (EX_CONFIG would be 78; 64 is EX_USAGE, which is
/// what an operator's mistake in flags or environment is).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, clap::Parser)]
pub struct CommonArgs {
    /// Configuration file (TOML); `FLEET_<SECTION>__<KEY>` variables override it.
    #[arg(long, env = "FLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (passwords redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Loads the configuration or exits the process with a clear message.
pub fn load_or_exit(args: &CommonArgs) -> Config {
    match Config::from_process_env(args.config.as_deref()) {
        Ok(cfg) => {
            if args.print_config {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cfg.redacted()).unwrap_or_default()
                );
                std::process::exit(0);
            }
            cfg
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
    }
}

/// A token cancelled on SIGTERM or ctrl-c.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        crate::http::shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        t.cancel();
    });
    token
}
