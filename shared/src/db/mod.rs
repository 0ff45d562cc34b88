//! The PostgreSQL layer: the pool, migrations, and one module of statements per owner
//! (see docs/design.md). Every statement on a hot path is batched: one round trip per
//! batch of jobs, assignments or results, never one per task.

pub mod admin;
pub mod collect;
pub mod control;
pub mod dispatch;
pub mod events;
pub mod logs;
pub mod read;
pub mod retention;
pub mod stats;
pub mod submit;
pub mod webhooks;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;
use crate::error::Transience;

pub use deadpool_postgres::{Object as Client, Pool, Transaction};

use crate::id::{ExecutorId, TaskId};

/// One attempt, named with the executor it was given to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldBy {
    pub task_id: TaskId,
    pub attempt: i32,
    pub executor_id: ExecutorId,
}

impl HeldBy {
    /// From a row of (task_id, attempt, executor_id).
    pub fn from_row(r: &tokio_postgres::Row) -> Result<Self, DbError> {
        let e: String = r.get(2);
        Ok(Self {
            task_id: crate::id::TaskId::from_uuid(r.get(0)),
            attempt: r.get(1),
            executor_id: crate::id::ExecutorId::parse(&e)
                .map_err(|e| DbError::Row(e.to_string()))?,
        })
    }
}

pub(crate) fn held_by_columns(held: &[HeldBy]) -> (Vec<uuid::Uuid>, Vec<i32>, Vec<String>) {
    (
        held.iter().map(|h| h.task_id.uuid()).collect(),
        held.iter().map(|h| h.attempt).collect(),
        held.iter().map(|h| h.executor_id.to_string()).collect(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {}", pool_detail(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool setup: {0}")]
    Build(String),
    #[error("database row: {0}")]
    Row(String),
}

impl DbError {
    /// No connection within the caller's wait: what the pool says when it has none to
    /// give, for waits that also cover a turn before the pool (the submitter's writers).
    pub fn no_connection_in_time() -> Self {
        Self::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ))
    }
}

/// A pool error that wraps a server's refusal (PostgreSQL's "too many clients", a
/// missing database, a bad password) says so, instead of deadpool's "db error".
fn pool_detail(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => {
            format!("cannot connect: {}", postgres_detail(pg))
        }
        other => other.to_string(),
    }
}

/// tokio-postgres' Display says only "db error" for a server error, and only "error
/// connecting to server" when it could not connect: the server's own message, or the
/// cause underneath (connection refused, no such host, timed out), is what an operator
/// needs.
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => crate::error::with_causes(e),
    }
}

impl Transience for DbError {
    fn is_transient(&self) -> bool {
        match self {
            // Pool timeouts and lost connections pass; a constraint violation does not.
            Self::Pool(_) => true,
            Self::Postgres(e) => {
                e.is_closed()
                    || e.code().is_none_or(|c| {
                        let c = c.code();
                        // 57014 is our own statement_timeout: the same statement
                        // would time out again, so it is not worth repeating as is.
                        c.starts_with("08")
                            || (c.starts_with("57") && c != "57014")
                            || c.starts_with("53")
                            || c == "40001"
                            || c == "40P01"
                    })
            }
            Self::Build(_) | Self::Row(_) => false,
        }
    }
}

/// A pool whose waits are bounded: when PostgreSQL is down or the pool is exhausted,
/// callers fail fast with a transient error instead of hanging.
pub fn pool(cfg: &DatabaseConfig) -> Result<Pool, DbError> {
    let mut pg = pg_config(cfg)?;
    let tls = tls(cfg, &mut pg)?;
    let mgr = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Duration::from_millis(cfg.pool_wait_ms);
    Pool::builder(mgr)
        .max_size(cfg.pool_size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .recycle_timeout(Some(wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// How connections to PostgreSQL are secured, setting `pg`'s sslmode to match:
///
/// - `database.ca_file` given: TLS is required and the server's certificate must chain
///   to that file's CAs and name the URL's host (libpq's `verify-full`).
/// - no CA file, and the URL says `sslmode=require`: the same check against the system's
///   roots. (libpq's `require` checks nothing; a connection that any machine in the path
///   could answer is not what `require` is asked for.)
/// - otherwise: no TLS (tokio-postgres' default `prefer` would take an unverified
///   certificate; `disable` is what it amounts to, said plainly).
pub fn tls(
    cfg: &DatabaseConfig,
    pg: &mut tokio_postgres::Config,
) -> Result<MakeRustlsConnect, DbError> {
    let client = match (&cfg.ca_file, pg.get_ssl_mode()) {
        (Some(_), SslMode::Disable) => {
            return Err(DbError::Build(
                "database.ca_file is set but database.url says sslmode=disable".into(),
            ))
        }
        (Some(ca), _) => {
            pg.ssl_mode(SslMode::Require);
            crate::tls::client_config(Some(ca))
        }
        (None, SslMode::Require) => crate::tls::client_config(None),
        (None, _) => {
            pg.ssl_mode(SslMode::Disable);
            Ok(crate::tls::unused_client_config())
        }
    }
    .map_err(|e| DbError::Build(e.to_string()))?;
    Ok(MakeRustlsConnect::new(client))
}

/// One connection outside the pool (a listener, a tool), secured as the pool's are.
pub async fn connect(
    cfg: &DatabaseConfig,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
        >,
    ),
    DbError,
>{
    let mut pg = pg_config(cfg)?;
    let tls = tls(cfg, &mut pg)?;
    Ok(pg.connect(tls).await?)
}

/// How every service connects: the URL's settings, deadlines, keepalives, and the
/// session settings Fleet's statements rely on.
pub fn pg_config(cfg: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Build(e.to_string()))?;
    pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    // statement_timeout runs on the server and cannot see a half-open connection (a
    // partition, a lost host); TCP keepalives find one in about 20 seconds.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
    pg.keepalives_interval(Duration::from_secs(5));
    pg.keepalives_retries(2);
    // Generic plans for prepared statements: the hot statements are prepared once per
    // connection and would otherwise be planned again at every execution (a millisecond
    // for the collector's). And no sequential scan where an index serves: every
    // statement Fleet runs often reads by key, and the statistics of a new or
    // fast-growing table (none yet, or a few rows) make the planner choose, and the
    // cache keep, plans that scan the whole table at every batch. tests/tests/plans.rs
    // checks the plans, on fresh tables and with a long history. No JIT: Fleet's
    // statements are short, and the cost penalty that keeps scans out would otherwise
    // make PostgreSQL compile and optimise them with LLVM at every execution. No hash
    // or merge join where a nested loop serves: a batch written by key (`unnest` of a
    // few keys joined to tasks or attempts) must look each key up; a generic plan that
    // estimates the batch at a hundred rows otherwise hashes a whole index (every ready
    // task for a handful assigned: 22 ms and 24,000 buffers per round with a backlog of
    // 40,000). A statement that needs a hash join still gets one (these settings make a
    // plan costly, not impossible).
    pg.options(format!(
        "-c search_path={} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
         -c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c enable_hashjoin=off \
         -c enable_mergejoin=off -c jit=off",
        cfg.schema, cfg.statement_timeout_ms, cfg.idle_in_transaction_timeout_ms
    ));
    // The URL's application_name if it gives one (to tell deployments apart in
    // pg_stat_activity), else "fleet".
    if pg.get_application_name().is_none() {
        pg.application_name("fleet");
    }
    Ok(pg)
}

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        include_str!("../../../migrations/0002_dispatcher_leader.sql"),
    ),
    (3, include_str!("../../../migrations/0003_outbox.sql")),
    (
        4,
        include_str!("../../../migrations/0004_tokens_groups.sql"),
    ),
    (5, include_str!("../../../migrations/0005_each.sql")),
    (6, include_str!("../../../migrations/0006_identity.sql")),
    (7, include_str!("../../../migrations/0007_reported.sql")),
    (8, include_str!("../../../migrations/0008_ownership.sql")),
    (9, include_str!("../../../migrations/0009_hold_pause.sql")),
    (10, include_str!("../../../migrations/0010_ops.sql")),
    (11, include_str!("../../../migrations/0011_cancel.sql")),
    (12, include_str!("../../../migrations/0012_retry.sql")),
    (13, include_str!("../../../migrations/0013_logs.sql")),
    (14, include_str!("../../../migrations/0014_events.sql")),
    (15, include_str!("../../../migrations/0015_ready_at.sql")),
    (
        16,
        include_str!("../../../migrations/0016_fleet_samples.sql"),
    ),
    (17, include_str!("../../../migrations/0017_env_secret.sql")),
    (
        18,
        include_str!("../../../migrations/0018_ready_at_by_writers.sql"),
    ),
    (
        19,
        include_str!("../../../migrations/0019_idempotency_per_owner.sql"),
    ),
];

/// Creates the schema and applies missing migrations, all in one transaction under an
/// advisory lock, so services starting together neither race nor half-apply.
pub async fn migrate(pool: &Pool, schema: &str) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('fleet-migrate:' || $1::text))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
             version int PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, schema, "applying migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The NOTIFY channel that wakes the dispatcher; per schema, so test runs sharing a
/// database do not wake each other.
pub fn wake_channel(schema: &str) -> String {
    format!("{schema}_fleet_wake")
}

/// The payload of a wake-up that may concern `each` tasks (the dispatcher then also
/// looks for tasks to fan out); other wake-ups carry none.
pub const WAKE_EACH: &str = "each";

/// Queues a wake-up that PostgreSQL delivers when (and only if) the transaction commits:
/// there is no window in which a row is committed and its wake-up is lost. `each`: the
/// tasks made ready may include `each` tasks.
pub async fn notify_wake(tx: &Transaction<'_>, schema: &str, each: bool) -> Result<(), DbError> {
    let payload = if each { WAKE_EACH } else { "" };
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&wake_channel(schema), &payload],
    )
    .await?;
    Ok(())
}

/// Runs a statement prepared once per connection (and kept in its statement cache).
pub async fn query<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let stmt = client.prepare_cached(sql).await?;
    Ok(client.query(&stmt, params).await?)
}

/// [`query`], for a statement whose row count is what matters.
pub async fn execute<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, DbError> {
    let stmt = client.prepare_cached(sql).await?;
    Ok(client.execute(&stmt, params).await?)
}

/// Cheap liveness probe for `/readyz`.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// Listens on the wake channel on a dedicated connection, calling `wake.notify_one()` for
/// each notification (and `each.notify_one()` too for those that may concern `each`
/// tasks), and reconnecting with backoff; returns when `token` is cancelled. A wake-up
/// lost while reconnecting only costs latency: the dispatcher also ticks.
pub async fn listen_for_wakes(
    cfg: DatabaseConfig,
    wake: std::sync::Arc<tokio::sync::Notify>,
    each: std::sync::Arc<tokio::sync::Notify>,
    token: tokio_util::sync::CancellationToken,
) {
    let channel = wake_channel(&cfg.schema);
    listen(cfg, channel, token, move |payload| {
        // None: (re)connected, and a notification may have been missed meanwhile.
        if payload.is_none_or(|p| p == WAKE_EACH) {
            each.notify_one();
        }
        wake.notify_one();
    })
    .await
}

/// Listens on `channel` on a dedicated connection, calling `heard` with each
/// notification's payload (and with `None` on each (re)connection, as one may have been
/// missed), reconnecting with backoff; returns when `token` is cancelled.
pub async fn listen(
    cfg: DatabaseConfig,
    channel: String,
    token: tokio_util::sync::CancellationToken,
    heard: impl Fn(Option<&str>) + Send,
) {
    use futures_util::StreamExt;
    let mut backoff = crate::amqp::Backoff::default();
    while !token.is_cancelled() {
        let session = async {
            let (client, mut connection) = connect(&cfg).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let name = channel.clone();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                            let _ = tx.send(n.payload().to_owned());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, channel = %name, "listener connection failed");
                            break;
                        }
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await?;
            backoff.reset(Duration::from_millis(100));
            heard(None);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(payload) => heard(Some(&payload)),
                        None => break,
                    },
                }
            }
            driver.abort();
            Ok::<(), DbError>(())
        };
        // Connecting and LISTEN wait on a database that may never answer: shutdown
        // must not wait with them.
        let ended = tokio::select! {
            _ = token.cancelled() => break,
            ended = session => ended,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, %channel, "cannot listen; retrying");
        }
        if !backoff.wait(&token).await {
            break;
        }
    }
}
