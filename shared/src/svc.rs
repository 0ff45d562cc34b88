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

/// Loads the configuration or exits the process with a clear message. `check` adds the
/// service's own requirements.
pub fn load_or_exit(
    args: &CommonArgs,
    check: fn(&Config) -> Result<(), crate::config::ConfigError>,
) -> Config {
    match Config::from_process_env(args.config.as_deref()).and_then(|c| check(&c).map(|()| c)) {
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

/// The whole of a service's `main` after argument parsing: configuration (exit 64 when
/// bad, before anything binds), logging, the HTTP listener, and `run` until SIGTERM.
pub async fn main<F, Fut, E>(
    common: &CommonArgs,
    default_addr: &str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Config, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    main_checked(common, default_addr, |_| Ok(()), run).await
}

/// [`main`] with a service-specific configuration check (exit 64 when it fails).
pub async fn main_checked<F, Fut, E>(
    common: &CommonArgs,
    default_addr: &str,
    check: fn(&Config) -> Result<(), crate::config::ConfigError>,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Config, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let cfg = load_or_exit(common, check);
    crate::http::init_tracing();
    let listener = match bind(&cfg, default_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot bind the HTTP address: {e}");
            // EX_UNAVAILABLE: the address is taken or not ours, not a bad configuration.
            return std::process::ExitCode::from(69);
        }
    };
    match run(cfg, listener, shutdown_token()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps a broker session going, as a loop in the caller:
///
/// ```ignore
/// let mut sup = Supervisor::new(&cfg.amqp, "fleet-collector", &health);
/// while let Some(conn) = sup.connect(&token).await {
///     let ended = session(&conn).await;
///     if let Some(conn) = sup.ended(conn, ended, &token).await { /* drain, close */ break; }
/// }
/// ```
///
/// Connecting backs off while the broker is unreachable; a session that fails marks the
/// broker down, is closed (within [`crate::amqp::CLOSE_TIMEOUT`]), and is followed by
/// another after a backoff, which starts again from its first step once a session has
/// lasted longer than the longest step.
pub struct Supervisor<'a> {
    cfg: &'a crate::config::AmqpConfig,
    name: String,
    health: &'a crate::http::Health,
    backoff: crate::amqp::Backoff,
    connected_at: Option<std::time::Instant>,
}

impl<'a> Supervisor<'a> {
    pub fn new(
        cfg: &'a crate::config::AmqpConfig,
        name: &str,
        health: &'a crate::http::Health,
    ) -> Self {
        Self {
            cfg,
            name: name.to_owned(),
            health,
            backoff: crate::amqp::Backoff::default(),
            connected_at: None,
        }
    }

    /// A connection, or `None` once the token is cancelled.
    pub async fn connect(&mut self, token: &CancellationToken) -> Option<lapin::Connection> {
        if token.is_cancelled() {
            return None;
        }
        let conn = crate::amqp::connect_with_backoff(self.cfg, &self.name, token).await?;
        self.connected_at = Some(std::time::Instant::now());
        self.health.set_connection(Some(conn.status().clone()));
        Some(conn)
    }

    /// Takes a session's end: `Some(conn)` when it ended cleanly (shutdown: the caller
    /// drains and closes), `None` after closing a failed one and backing off.
    pub async fn ended<E: std::fmt::Display>(
        &mut self,
        conn: lapin::Connection,
        result: Result<(), E>,
        token: &CancellationToken,
    ) -> Option<lapin::Connection> {
        self.health.set_broker_up(false);
        match result {
            Ok(()) => Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, "{}: broker session ended; reconnecting", self.name);
                self.health.set_connection(None);
                crate::amqp::close(&conn, "reconnecting").await;
                drop(conn);
                // A session that ran for a while was a success: the next failure starts
                // the backoff from its first step again.
                if self
                    .connected_at
                    .is_some_and(|t| t.elapsed() >= crate::amqp::Backoff::default().max())
                {
                    self.backoff = crate::amqp::Backoff::default();
                }
                self.backoff.wait(token).await;
                None
            }
        }
    }
}

/// The pool and the health of a database-backed service, made without touching the
/// database (the pool connects lazily): the service can serve `/healthz` and `/readyz`
/// before PostgreSQL answers.
pub fn db_and_health(
    cfg: &Config,
) -> Result<(crate::db::Pool, crate::http::Health), crate::db::DbError> {
    let pool = crate::db::pool(&cfg.database)?;
    Ok((pool, crate::http::Health::new(true)))
}

/// What every database-backed service does once its HTTP server runs: probes the
/// database for `/readyz`, and applies the migrations, retried while the database is
/// unreachable. `false` when shutdown came first. A migration that fails for good stops
/// the service (its token is cancelled, so its HTTP server and probe end too).
pub async fn migrate(
    cfg: &Config,
    pool: &crate::db::Pool,
    health: &crate::http::Health,
    token: &CancellationToken,
) -> Result<bool, crate::db::DbError> {
    health.spawn_db_probe(pool.clone(), token.clone());
    let schema = cfg.database.schema.clone();
    match retry("migrating the database", token, || {
        crate::db::migrate(pool, &schema)
    })
    .await
    {
        None => Ok(false),
        Some(Err(e)) => {
            token.cancel();
            Err(e)
        }
        Some(Ok(())) => {
            health.set_migrated();
            Ok(true)
        }
    }
}
