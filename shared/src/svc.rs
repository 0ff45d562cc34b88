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

/// Binds the service's HTTP address: the configured one, else the service's default.
pub async fn bind(cfg: &Config, default_addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr = cfg.http.addr.as_deref().unwrap_or(default_addr);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
    Ok(listener)
}

/// Retries `f` with backoff while its error is transient; gives up on a permanent error
/// or when the token is cancelled (then returns `None`).
pub async fn retry<T, E, F, Fut>(
    what: &str,
    token: &CancellationToken,
    mut f: F,
) -> Option<Result<T, E>>
where
    E: crate::error::Transience + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = crate::amqp::Backoff::default();
    loop {
        match f().await {
            Ok(v) => return Some(Ok(v)),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                if !backoff.wait(token).await {
                    return None;
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}
