//! Configuration: defaults that work on a developer machine, then an optional file, then
//! `FLEET_<SECTION>__<KEY>` environment variables (`FLEET_EXECUTOR__CAPACITY=4`). Unknown
//! keys are errors, so a typo is caught at start-up instead of silently ignored.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::group::GroupName;
use crate::id::ExecutorId;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub submitter: SubmitterConfig,
    pub dispatcher: DispatcherConfig,
    pub executor: ExecutorConfig,
    pub collector: CollectorConfig,
    pub auth: AuthConfig,
    pub retention: RetentionConfig,
    pub webhooks: WebhooksConfig,
    pub metrics: MetricsConfig,
    pub secrets: SecretsConfig,
}

/// Secret environment values (docs/design.md, "Secrets").
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The key that seals secret env values at rest: 64 hex digits (`openssl rand -hex
    /// 32`), the same on the submitter (which seals) and the dispatcher (which opens).
    /// Without one, a job with a secret value is refused.
    pub key: Option<String>,
    /// Names of `env` variables whose values are treated as secret (`*` for any run of
    /// characters, case ignored), as if given in `env_secret`.
    pub env_patterns: Vec<String>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            key: None,
            env_patterns: [
                "*PASSWORD*",
                "*PASSWD*",
                "*SECRET*",
                "*TOKEN*",
                "*CREDENTIAL*",
                "*_KEY",
                "*PRIVATE_KEY*",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

impl std::fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsConfig")
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .field("env_patterns", &self.env_patterns)
            .finish()
    }
}

/// Fleet's own gauges, which the collector publishes (docs/design.md, "Metrics").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often the collector reads the fleet's figures (the `GET /v1/stats` query)
    /// into its `fleet_*` gauges.
    pub interval_secs: u64,
    /// `fleet_desired_executors`: how many executors would finish a group's ready and
    /// running work within this long.
    pub drain_target_secs: u64,
    /// The run times that make a group's recent mean: those recorded within this long.
    pub run_time_window_secs: u64,
    /// The slots assumed of an executor for a group that has none alive.
    pub default_executor_capacity: u32,
    /// How often the collector stores the figures as a sample of the fleet's history
    /// (`GET /v1/stats/history`, the console's charts).
    pub history_secs: u64,
    /// How long samples are kept.
    pub history_hours: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            interval_secs: 5,
            drain_target_secs: 300,
            run_time_window_secs: 600,
            default_executor_capacity: 1,
            history_secs: 60,
            history_hours: 24,
        }
    }
}

/// How the collector delivers webhooks (docs/events.md, "Webhooks").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// A receiver that has not answered within this has failed the try.
    pub timeout_secs: u64,
    /// The wait before the second try; each further one doubles it, up to `backoff_max_secs`.
    pub backoff_initial_ms: u64,
    pub backoff_max_secs: u64,
    /// Tries before a delivery is given up (kept as `dead`, shown by `fleetctl webhook list`).
    pub max_tries: u32,
    /// Deliveries in flight at once, in all (each is a waiting request, cheap: many, so
    /// that receivers that do not answer cannot take every one).
    pub concurrency: u32,
    /// Deliveries in flight at once to one URL (however many webhooks point at it).
    pub per_url: u32,
    /// How often the collector looks for new events and due retries.
    pub poll_ms: u64,
    /// Certificate authorities (PEM) an `https://` receiver's certificate may chain to,
    /// besides the system's roots: a receiver with a certificate of a private CA. Read
    /// when the collector starts; a file that cannot be read or holds no certificate
    /// stops it (exit 64). None: the system's roots only.
    pub ca_file: Option<String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 10,
            backoff_initial_ms: 1_000,
            backoff_max_secs: 600,
            max_tries: 15,
            concurrency: 512,
            per_url: 8,
            poll_ms: 200,
            ca_file: None,
        }
    }
}

impl WebhooksConfig {
    /// The wait after try `tries` failed.
    pub fn backoff(&self, tries: u32) -> Duration {
        let first = Duration::from_millis(self.backoff_initial_ms);
        let factor = 2u32.saturating_pow(tries.saturating_sub(1).min(30));
        first
            .saturating_mul(factor)
            .min(Duration::from_secs(self.backoff_max_secs))
    }
}

/// How long finished jobs are kept (the collector purges the older ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A job finished longer ago than this is purged with its tasks, attempts, results
    /// and copies. 0: kept for ever.
    pub finished_job_days: u32,
    /// How often the collector looks for jobs to purge.
    pub interval_secs: u64,
    /// Jobs purged per transaction: small, so that each holds its locks briefly.
    pub batch_size: u32,
    /// The pause between two batches of one pass, so that a large purge shares the
    /// database with the work.
    pub pause_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            finished_job_days: 14,
            interval_secs: 600,
            batch_size: 500,
            pause_ms: 200,
        }
    }
}

/// Who may use the HTTP API (the submitter reads this section).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The bootstrap administrator's bearer token (at least 16 characters), from which
    /// the other tokens are made (`fleetctl token create`). Required unless `disabled`.
    pub admin_token: Option<String>,
    /// Serve the API to anyone, as an administrator. Only for a trusted network.
    pub disabled: bool,
    /// A shared secret (at least 16 characters) with which any executor may register
    /// itself (`executor.bootstrap_secret`), as with a join token that works for any
    /// number of new executor ids and any groups: for executors started in numbers
    /// (`docker-compose up --scale executor=N`). It mints executor credentials only.
    pub executor_bootstrap_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    pub url: String,
    /// Every exchange and queue name starts with it, so deployments and test runs can
    /// share one broker.
    pub prefix: String,
    pub connect_timeout_ms: u64,
    /// How long a publish may wait for the broker's confirm.
    pub confirm_timeout_ms: u64,
    /// RabbitMQ's management API, where the submitter creates executors' broker users
    /// (with the user and password of `url`, unless `management_user` is set).
    pub management_url: String,
    /// The management API's user and password, when the submitter's own broker user
    /// (that of `url`) may not manage users: with a broker user per service.
    pub management_user: Option<String>,
    pub management_password: Option<String>,
    /// With an `amqps://` URL (and an `https://` management URL): trust only the
    /// certificate authorities in this PEM file, instead of the system's roots.
    pub ca_file: Option<String>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "fleet".into(),
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 10_000,
            management_url: "http://127.0.0.1:15672".into(),
            management_user: None,
            management_password: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    /// The schema holding Fleet's tables; tests use one schema each.
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// How long a caller waits for a pooled connection before failing fast.
    pub pool_wait_ms: u64,
    pub statement_timeout_ms: u64,
    /// A transaction left idle this long (its process frozen, say) is aborted by the
    /// server, releasing its locks: a frozen dispatcher cannot block its successor.
    pub idle_in_transaction_timeout_ms: u64,
    /// TLS to PostgreSQL, verified against the certificate authorities in this PEM file
    /// (libpq's verify-full). Without it, the URL's `sslmode=require` verifies against
    /// the system's roots, and any other sslmode connects without TLS.
    pub ca_file: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/fleet".into(),
            schema: "public".into(),
            pool_size: 8,
            connect_timeout_ms: 5_000,
            pool_wait_ms: 5_000,
            statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/healthz`, `/readyz`, `/metrics` (and the API, on the submitter). Each service
    /// has its own default.
    pub addr: Option<String>,
    /// HTTPS: the certificate chain (PEM, the server's first) and its private key (PEM).
    /// Both or neither; without them the service speaks plain HTTP.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitterConfig {
    pub max_body_bytes: usize,
    /// Submit messages handled per database transaction.
    pub batch_size: usize,
    /// Whether `POST /v1/jobs` accepts jobs while the submitter has no broker
    /// connection. Off by default: the client gets a 503 and retries, so it knows at once
    /// that the fleet cannot run work now. On, jobs are recorded (they need only
    /// PostgreSQL) and run once the broker is back.
    pub accept_without_broker: bool,
    /// Who may submit over AMQP. `token` (the default): a submit message carries an API
    /// token in its `authorization` header (`Bearer <token>`), checked with the same
    /// roles as HTTP, and the job is that token's. `broker`: whoever the broker lets
    /// publish to the submit exchange may submit, as `amqp-intake` (for deployments
    /// that rely on broker permissions alone).
    pub amqp_auth: AmqpAuth,
}

/// See [`SubmitterConfig::amqp_auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmqpAuth {
    #[default]
    Token,
    Broker,
}

impl Default for SubmitterConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            batch_size: 64,
            accept_without_broker: false,
            amqp_auth: AmqpAuth::Token,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// The most work queued on an executor beyond its capacity, so it never idles between
    /// tasks; each executor's own window follows how fast it finishes (at least
    /// `window_floor`).
    pub window: u32,
    /// The least of each executor's paced window (at most `window`): what an executor
    /// that has finished nothing lately holds beyond its slots.
    pub window_floor: u32,
    /// Rounds run at least this often even without a wake-up.
    pub tick_ms: u64,
    /// An attempt whose executor has not reported it for this long is lost.
    pub lease_timeout_secs: u64,
    /// An executor not heard from for this long gets no new work.
    pub executor_timeout_secs: u64,
    /// How long a dispatcher's leadership lasts unless renewed (every round); a standby
    /// takes over this long after the leader dies or freezes.
    pub leader_ttl_secs: u64,
    /// UNSAFE, for development and tests only: give work to executors that did not
    /// register too (any user of the broker that can publish an INFO then receives
    /// requests, their env included). Off by default: only executors that registered
    /// (join token or bootstrap secret), each with a broker user of its own, get work.
    pub unsafe_open_executors: bool,
    /// Gone: `unsafe_open_executors` (inverted) took its place. Read only to say so.
    #[serde(default, skip_serializing)]
    pub require_registration: Option<bool>,
    /// An attempt its executor reported finished (its result published) whose result
    /// is not recorded within this long is lost after all: the result was refused or
    /// lost on the way. Long, because a slow or stopped collector is no reason to run a
    /// finished task again.
    pub result_timeout_secs: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            window: 8,
            window_floor: 1,
            tick_ms: 500,
            lease_timeout_secs: 15,
            executor_timeout_secs: 5,
            leader_ttl_secs: 5,
            unsafe_open_executors: false,
            require_registration: None,
            result_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Stable id; defaults to the host name.
    pub id: Option<String>,
    /// Slots; defaults to the number of CPUs.
    pub capacity: Option<u32>,
    pub groups: Vec<String>,
    /// `key=value` pairs.
    pub labels: Vec<String>,
    pub info_interval_ms: u64,
    /// Bytes of stdout (and of stderr) kept per attempt; the rest is counted, not kept.
    pub max_output_bytes: usize,
    /// Bytes of live output (both streams) sent per attempt while it runs; then a
    /// truncation marker. 0: no live output.
    pub max_live_output_bytes: usize,
    /// How long a draining executor waits for its running tasks on SIGTERM.
    pub drain_timeout_secs: u64,
    /// A one-time join token (from `fleetctl executor join-token`): the executor
    /// registers with it at `register_url` and gets a broker user of its own. Without one
    /// (and without a saved credential) it connects with `amqp.url` as given.
    pub join_token: Option<String>,
    /// The submitter's `auth.executor_bootstrap_secret`: registers with it instead of a
    /// join token.
    pub bootstrap_secret: Option<String>,
    /// The submitter's API, where an executor registers.
    pub register_url: String,
    /// With an `https://` register_url: trust only the certificate authorities in this
    /// PEM file, instead of the system's roots.
    pub ca_file: Option<String>,
    /// Where the credential from registration is kept (and read back on restarts).
    pub credentials_file: Option<String>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            id: None,
            capacity: None,
            groups: vec!["default".into()],
            labels: Vec::new(),
            info_interval_ms: 1_000,
            max_output_bytes: 256 * 1024,
            max_live_output_bytes: 8 * 1024 * 1024,
            drain_timeout_secs: 30,
            join_token: None,
            bootstrap_secret: None,
            register_url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            credentials_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Results recorded per database transaction.
    pub batch_size: usize,
    /// Under load (more than one result message waiting as a batch starts), how long
    /// the batch waits for more, up to `batch_size`: fewer, larger transactions when the
    /// fleet is busy. A result that arrives alone is recorded at once, so an idle fleet
    /// pays no latency for it. 0: a batch is whatever arrived while the previous one was
    /// being written.
    pub linger_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            linger_ms: 10,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `FLEET_*__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        // Only sectioned variables (FLEET_EXECUTOR__ID) are configuration; FLEET_ADDR and
        // FLEET_TOKEN belong to fleetctl and must not trip the unknown-key check.
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLEET_") && k.contains("__"))
            .collect();
        let env_source = config::Environment::with_prefix("FLEET")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("executor.groups")
            .with_list_parse_key("executor.labels")
            .with_list_parse_key("secrets.env_patterns")
            .source(Some(vars));
        let cfg: Config = builder.add_source(env_source).build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_process_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(file, std::env::vars())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.amqp.prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "amqp.prefix",
                "1 to 64 characters of a-z, A-Z, 0-9, '-', '_'",
            ));
        }
        let s = &self.database.schema;
        if s.is_empty()
            || s.len() > 63
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || s.as_bytes()[0].is_ascii_digit()
        {
            return Err(invalid("database.schema", "a lower-case SQL identifier"));
        }
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        let pg = self
            .database
            .url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid("database.url", e.to_string()))?;
        if self.database.ca_file.is_some()
            && pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable
        {
            return Err(invalid(
                "database.ca_file",
                "is set, but database.url says sslmode=disable",
            ));
        }
        if !self.amqp.url.starts_with("amqp://") && !self.amqp.url.starts_with("amqps://") {
            return Err(invalid("amqp.url", "must start with amqp:// or amqps://"));
        }
        if let Some(ca) = &self.amqp.ca_file {
            crate::tls::ca_pem(ca).map_err(|e| invalid("amqp.ca_file", e.to_string()))?;
            // A CA file says TLS is wanted: a plain URL beside it would send the broker
            // password in clear while the operator believes otherwise.
            if !self.amqp.url.starts_with("amqps://") {
                return Err(invalid(
                    "amqp.ca_file",
                    "is set, but amqp.url is not amqps://",
                ));
            }
        }
        if let Some(ca) = &self.database.ca_file {
            crate::tls::ca_pem(ca).map_err(|e| invalid("database.ca_file", e.to_string()))?;
        }
        if let Some(ca) = &self.executor.ca_file {
            crate::tls::ca_pem(ca).map_err(|e| invalid("executor.ca_file", e.to_string()))?;
            // Registering sends the join token or bootstrap secret: not in clear when a
            // CA file says TLS is wanted.
            let registers =
                self.executor.join_token.is_some() || self.executor.bootstrap_secret.is_some();
            if registers && !self.executor.register_url.starts_with("https://") {
                return Err(invalid(
                    "executor.ca_file",
                    "is set, but executor.register_url is not https://",
                ));
            }
        }
        if let Some(addr) = &self.http.addr {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("http.addr", format!("{addr:?}: {e}")))?;
        }
        if self.dispatcher.tick_ms == 0 || self.executor.info_interval_ms == 0 {
            return Err(invalid("dispatcher.tick_ms", "intervals must be positive"));
        }
        if self.dispatcher.leader_ttl_secs == 0 {
            return Err(invalid("dispatcher.leader_ttl_secs", "must be positive"));
        }
        if self.dispatcher.lease_timeout_secs == 0 {
            return Err(invalid("dispatcher.lease_timeout_secs", "must be positive"));
        }
        if self.dispatcher.result_timeout_secs < self.dispatcher.lease_timeout_secs {
            return Err(invalid(
                "dispatcher.result_timeout_secs",
                "must be at least dispatcher.lease_timeout_secs",
            ));
        }
        if self.collector.batch_size == 0 || self.submitter.batch_size == 0 {
            return Err(invalid(
                "collector.batch_size",
                "batch sizes must be positive",
            ));
        }
        let w = &self.webhooks;
        if w.timeout_secs == 0 || w.poll_ms == 0 || w.concurrency == 0 || w.per_url == 0 {
            return Err(invalid(
                "webhooks",
                "timeout_secs, poll_ms, concurrency and per_url must be positive",
            ));
        }
        if w.max_tries == 0 {
            return Err(invalid("webhooks.max_tries", "must be 1 or more"));
        }
        let m = &self.metrics;
        if m.interval_secs == 0
            || m.drain_target_secs == 0
            || m.run_time_window_secs == 0
            || m.default_executor_capacity == 0
            || m.history_secs == 0
            || m.history_hours == 0
        {
            return Err(invalid(
                "metrics",
                "interval_secs, drain_target_secs, run_time_window_secs, \
                 default_executor_capacity, history_secs and history_hours must be positive",
            ));
        }
        crate::secrets::from_config(&self.secrets)
            .map_err(|e| invalid("secrets.key", e.to_string()))?;
        if self.retention.interval_secs == 0 {
            return Err(invalid("retention.interval_secs", "must be positive"));
        }
        if !(1..=10_000).contains(&self.retention.batch_size) {
            return Err(invalid("retention.batch_size", "must be 1 to 10000"));
        }
        if let Some(id) = &self.executor.id {
            ExecutorId::parse(id).map_err(|e| invalid("executor.id", e.to_string()))?;
        }
        if self.executor.capacity == Some(0) {
            return Err(invalid("executor.capacity", "must be at least 1"));
        }
        self.executor_groups()?;
        self.executor_labels()?;
        if self.http.tls_cert_file.is_some() != self.http.tls_key_file.is_some() {
            return Err(invalid(
                "http.tls_cert_file",
                "give http.tls_cert_file and http.tls_key_file together",
            ));
        }
        if let Some(required) = self.dispatcher.require_registration {
            return Err(invalid(
                "dispatcher.require_registration",
                format!(
                    "is gone: only registered executors get work by default now; \
                     dispatcher.unsafe_open_executors = true (development only) gives work \
                     to unregistered ones too{}",
                    if required {
                        " (remove the setting: true is the default)"
                    } else {
                        " (what require_registration = false did)"
                    }
                ),
            ));
        }
        let registers =
            self.executor.join_token.is_some() || self.executor.bootstrap_secret.is_some();
        if registers && self.executor.credentials_file.is_none() {
            return Err(invalid(
                "executor.credentials_file",
                "is needed with executor.join_token or executor.bootstrap_secret: an id \
                 registers once, and the credential it gets must be kept for restarts",
            ));
        }
        if self.executor.join_token.is_some() && self.executor.bootstrap_secret.is_some() {
            return Err(invalid(
                "executor.bootstrap_secret",
                "give executor.join_token or executor.bootstrap_secret, not both",
            ));
        }
        if self
            .auth
            .executor_bootstrap_secret
            .as_ref()
            .is_some_and(|s| s.trim().chars().count() < 16)
        {
            return Err(invalid(
                "auth.executor_bootstrap_secret",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }

    /// What only the API server needs: a way to authenticate its administrator.
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        // The API's certificate and key are read now: a bad one exits 64 before anything
        // binds, as any bad setting does.
        if let (Some(cert), Some(key)) = (&self.http.tls_cert_file, &self.http.tls_key_file) {
            crate::tls::server_config(cert, key)
                .map_err(|e| invalid("http.tls_cert_file", e.to_string()))?;
        }
        // The submitter speaks to the management API with the administrator's password:
        // with the broker on TLS, that hop must be too.
        if self.amqp.ca_file.is_some() && !self.amqp.management_url.starts_with("https://") {
            return Err(invalid(
                "amqp.management_url",
                "must be https:// when amqp.ca_file is set (the management password would \
                 cross in clear)",
            ));
        }
        match &self.auth.admin_token {
            Some(t) if t.trim().len() < 16 => Err(invalid(
                "auth.admin_token",
                "must be at least 16 characters",
            )),
            None if !self.auth.disabled => Err(invalid(
                "auth.admin_token",
                "is not set: set FLEET_AUTH__ADMIN_TOKEN to a secret of at least 16 \
                 characters (or auth.disabled = true, only on a trusted network)",
            )),
            _ => Ok(()),
        }
    }

    pub fn executor_groups(&self) -> Result<Vec<GroupName>, ConfigError> {
        let mut groups = Vec::new();
        for g in &self.executor.groups {
            let g = GroupName::parse(g.trim())
                .map_err(|e| invalid("executor.groups", e.to_string()))?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        if groups.is_empty() {
            groups.push(GroupName::default_group());
        }
        Ok(groups)
    }

    pub fn executor_labels(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
        self.executor
            .labels
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match l.trim().split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(invalid(
                    "executor.labels",
                    format!("{l:?} is not key=value"),
                )),
            })
            .collect()
    }

    /// The configuration as JSON with the passwords in URLs replaced, for `--print-config`.
    pub fn redacted(&self) -> serde_json::Value {
        let mut c = self.clone();
        c.amqp.url = redact_url(&c.amqp.url);
        c.database.url = redact_url(&c.database.url);
        if c.auth.admin_token.is_some() {
            c.auth.admin_token = Some("***".into());
        }
        for secret in [
            &mut c.executor.join_token,
            &mut c.executor.bootstrap_secret,
            &mut c.auth.executor_bootstrap_secret,
            &mut c.secrets.key,
            &mut c.amqp.management_password,
        ] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        serde_json::to_value(&c).unwrap_or_default()
    }
}

impl AmqpConfig {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[])).expect("defaults load");
        assert_eq!(c.amqp.prefix, "fleet");
        assert_eq!(c.retention.finished_job_days, 14);
        let c = Config::load(None, env(&[("FLEET_RETENTION__FINISHED_JOB_DAYS", "0")]))
            .expect("kept for ever");
        assert_eq!(c.retention.finished_job_days, 0);
        assert_eq!(
            c.executor_groups().expect("groups"),
            vec![GroupName::default_group()]
        );
    }

    #[test]
    fn a_ca_file_beside_a_plain_url_is_refused() {
        let dir = std::env::temp_dir().join(format!("fleet-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        // Any certificate will do: only that the file holds one is checked here.
        std::fs::write(&ca, TEST_CERT).expect("write");
        let ca = ca.display().to_string();
        let refused = |pairs: &[(&str, &str)], key: &str| {
            let err = Config::load(None, env(pairs)).expect_err("refused");
            assert!(err.to_string().contains(key), "{err}");
        };
        refused(&[("FLEET_AMQP__CA_FILE", &ca)], "amqp.ca_file");
        refused(
            &[
                ("FLEET_DATABASE__CA_FILE", &ca),
                ("FLEET_DATABASE__URL", "postgres://h/db?sslmode=disable"),
            ],
            "database.ca_file",
        );
        refused(
            &[
                ("FLEET_EXECUTOR__CA_FILE", &ca),
                ("FLEET_EXECUTOR__BOOTSTRAP_SECRET", "0123456789abcdefgh"),
                ("FLEET_EXECUTOR__CREDENTIALS_FILE", "/tmp/x.json"),
            ],
            "executor.ca_file",
        );
        let amqps = [
            ("FLEET_AMQP__CA_FILE", ca.as_str()),
            ("FLEET_AMQP__URL", "amqps://u:p@broker:5671/%2f"),
            ("FLEET_AUTH__ADMIN_TOKEN", "0123456789abcdefgh"),
        ];
        let c = Config::load(None, env(&amqps)).expect("amqps with a CA file");
        // The submitter's management hop too.
        let err = c
            .validate_auth()
            .expect_err("http management with a CA file");
        assert!(err.to_string().contains("amqp.management_url"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed CA certificate (openssl, CN "fleet config test"), for the CA file checks.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUMunE6Qr+3UUT19YK9c9FWSAk7okwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRZmxlZXQgY29uZmlnIHRlc3QwIBcNMjYxMjAxMjMzMzU4WhgP
MjEyNjExMDcyMzMzNThaMBwxGjAYBgNVBAMMEWZsZWV0IGNvbmZpZyB0ZXN0MFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEoNGlqBmAlBBO2HKx+tIHls3tPI3k0tA3
kx1k07D3dgfhJW1RPsF0xroUePVQsPVASkyTeANdbfQHyk/4+W2phaNTMFEwHQYD
VR0OBBYEFJEV0qhTM1i8sP9UHfZng6am4cEMMB8GA1UdIwQYMBaAFJEV0qhTM1i8
sP9UHfZng6am4cEMMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh
APecxTVqcu7hhiaFKWT9/ZaFT+k4bZPK+4p6b+Yja75pAiBjO9r7UW32SckSTfnY
MikN34fqB9+ZW1O0xm5Z68kRYA==
-----END CERTIFICATE-----
";

    #[test]
    fn environment_overrides_and_lists_parse() {
        let c = Config::load(
            None,
            env(&[
                ("FLEET_AMQP__PREFIX", "t1"),
                ("FLEET_EXECUTOR__CAPACITY", "3"),
                ("FLEET_EXECUTOR__GROUPS", "cpu,lab.gpu"),
                ("FLEET_EXECUTOR__LABELS", "gpu=yes,os=linux"),
                ("FLEET_ADDR", "http://ignored"),
                ("FLEET_TOKEN", "ignored"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.amqp.prefix, "t1");
        assert_eq!(c.executor.capacity, Some(3));
        assert_eq!(c.executor_groups().expect("groups").len(), 2);
        assert_eq!(c.executor_labels().expect("labels")["gpu"], "yes");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = Config::load(None, env(&[("FLEET_EXECUTOR__CAPACITY", "lots")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("capacity"), "{err}");
        let err = Config::load(None, env(&[("FLEET_EXECUTOR__CAPCITY", "3")])).expect_err("typo");
        assert!(err.to_string().contains("capcity"), "{err}");
        let err = Config::load(None, env(&[("FLEET_EXECUTOR__ID", "Bad Id")])).expect_err("id");
        assert!(err.to_string().contains("executor.id"), "{err}");
        let err = Config::load(None, env(&[("FLEET_EXECUTOR__LABELS", "gpu")])).expect_err("label");
        assert!(err.to_string().contains("executor.labels"), "{err}");
        let err = Config::load(None, env(&[("FLEET_RETENTION__BATCH_SIZE", "0")]))
            .expect_err("an empty batch");
        assert!(err.to_string().contains("retention.batch_size"), "{err}");
        let err = Config::load(None, env(&[("FLEET_METRICS__DRAIN_TARGET_SECS", "0")]))
            .expect_err("no time to drain in");
        assert!(err.to_string().contains("metrics"), "{err}");
        let err = Config::load(None, env(&[("FLEET_HTTP__ADDR", "nowhere")])).expect_err("addr");
        assert!(err.to_string().contains("http.addr"), "{err}");
        let err = Config::load(None, env(&[("FLEET_EXECUTOR__JOIN_TOKEN", "fjt_x")]))
            .expect_err("a join token without a place to keep the credential");
        assert!(
            err.to_string().contains("executor.credentials_file"),
            "{err}"
        );
    }

    #[test]
    fn printed_configuration_hides_passwords() {
        let mut c = Config::default();
        c.amqp.url = "amqp://guest:hunter2@rabbit:5672/%2f".into();
        let shown = c.redacted().to_string();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("guest:***@rabbit"));
    }
}
