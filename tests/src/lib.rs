//! The test harness: a [`TestFleet`] runs the real services in-process against the real
//! RabbitMQ and PostgreSQL, isolated by its own prefix (exchanges, queues) and schema, so
//! tests run in parallel. Waiting is always on a condition with a deadline.

pub mod bench;
pub mod chaos;
pub mod sse;
pub mod webdriver;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleet_shared::config::Config;
use fleet_shared::db::read::{ExecutorsView, JobView, ResultsView};
use fleet_shared::db::{self, Pool};
use fleet_shared::id::JobId;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn init_logging() {
    // Every reqwest client (and the services run in-process) speaks TLS through rustls,
    // with ring: installed before any is built.
    fleet_shared::tls::install_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A unique, valid prefix and schema name: `t_<hint>_<random>`.
pub fn unique_name(hint: &str) -> String {
    let hint: String = hint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{hint}_{}", &rand[..8])
}

/// `url` with another user and password.
pub fn amqp_url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The development CA and server certificate that `infra/tls.sh local` made and serves
/// the local RabbitMQ and PostgreSQL with, when `FLEET_TEST_TLS_DIR` names their
/// directory: then every test fleet uses TLS on every hop (`make test-tls`).
#[derive(Debug, Clone)]
pub struct TestTls {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub ca_pem: Vec<u8>,
}

pub fn test_tls() -> Option<TestTls> {
    let dir = std::env::var("FLEET_TEST_TLS_DIR").ok()?;
    Some(TestTls::from_dir(&dir))
}

impl TestTls {
    /// FLEET_TEST_TLS_DIR's, else the directory `infra/tls.sh local` uses by default.
    pub fn dev() -> Self {
        test_tls().unwrap_or_else(|| {
            Self::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/dev-tls"))
        })
    }

    fn from_dir(dir: &str) -> Self {
        let path = |f: &str| format!("{}/{f}", dir.trim_end_matches('/'));
        let ca_file = path("ca.pem");
        let ca_pem = std::fs::read(&ca_file)
            .unwrap_or_else(|e| panic!("{ca_file}: {e}: run infra/tls.sh local (make test does)"));
        Self {
            ca_file,
            cert_file: path("server.pem"),
            key_file: path("server-key.pem"),
            ca_pem,
        }
    }

    /// TLS on every hop, as `infra/tls.sh local` serves it: AMQPS to `localhost:5671`,
    /// the management API at `https://localhost:15671`, PostgreSQL over TLS verified as
    /// `localhost`, the API over HTTPS; each trusting only this CA.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.amqp.url = "amqps://guest:guest@localhost:5671/%2f".into();
        cfg.amqp.management_url = "https://localhost:15671".into();
        cfg.amqp.ca_file = Some(self.ca_file.clone());
        cfg.database.url = "postgres://postgres@localhost:5432/fleet".into();
        cfg.database.ca_file = Some(self.ca_file.clone());
        cfg.executor.ca_file = Some(self.ca_file.clone());
        cfg.http.tls_cert_file = Some(self.cert_file.clone());
        cfg.http.tls_key_file = Some(self.key_file.clone());
    }
}

/// A certificate authority of a test's own and a certificate for `localhost` it signed,
/// as PEM texts; [`TestCa::write`] puts them in files.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `<name>-ca.pem`, `<name>-cert.pem` and `<name>-key.pem` in `dir`: their
    /// paths (CA, certificate, key).
    pub fn write(&self, dir: &std::path::Path, name: &str) -> Result<(String, String, String)> {
        let write = |suffix: &str, text: &str| -> Result<String> {
            let path = dir.join(format!("{name}-{suffix}.pem"));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path.display().to_string())
        };
        Ok((
            write("ca", &self.ca_pem)?,
            write("cert", &self.cert_pem)?,
            write("key", &self.key_pem)?,
        ))
    }
}

/// The configuration a test fleet runs with: fast ticks and heartbeats.
///
/// With `FLEET_TEST_TLS_DIR` ([`test_tls`]): AMQPS to `localhost:5671`, the management
/// API at `https://localhost:15671`, PostgreSQL over TLS verified as `localhost`, and the
/// API served over HTTPS; each trusting only that directory's CA.
pub fn test_config(name: &str) -> Config {
    let mut cfg = Config::default();
    if let Some(tls) = test_tls() {
        // A URL of its own would turn a hop plain while the run says TLS.
        for var in ["FLEET_TEST_AMQP_URL", "FLEET_TEST_DATABASE_URL"] {
            assert!(
                std::env::var_os(var).is_none(),
                "{var} with FLEET_TEST_TLS_DIR: the TLS run sets its own URLs"
            );
        }
        tls.apply(&mut cfg);
    }
    if let Ok(url) = std::env::var("FLEET_TEST_AMQP_URL") {
        cfg.amqp.url = url;
    }
    if let Ok(url) = std::env::var("FLEET_TEST_DATABASE_URL") {
        cfg.database.url = url;
    }
    cfg.amqp.prefix = name.to_owned();
    cfg.database.schema = name.to_owned();
    cfg.database.pool_size = 4;
    cfg.dispatcher.tick_ms = 100;
    cfg.executor.info_interval_ms = 200;
    cfg.executor.drain_timeout_secs = 5;
    cfg.auth.admin_token = Some(format!("admin-token-of-{name}"));
    // Test executors connect as the shared broker user, unregistered: the unsafe open
    // mode (tests of registration turn it off, as it is by default).
    cfg.dispatcher.unsafe_open_executors = true;
    // Each fleet its own key for secret env values.
    cfg.secrets.key = Some(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ));
    cfg
}

/// Leases, liveness and leadership short enough for a fault test's patience: lease 3 s,
/// an executor silent 2 s is not alive, leader TTL 2 s, a transaction idle 2 s aborted.
pub fn short_leases(c: &mut Config) {
    c.dispatcher.lease_timeout_secs = 3;
    c.dispatcher.executor_timeout_secs = 2;
    c.dispatcher.leader_ttl_secs = 2;
    c.database.idle_in_transaction_timeout_ms = 2_000;
}

struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

/// Which services a [`TestFleet`] runs in-process.
#[derive(Debug, Clone, Copy)]
pub struct InProcess {
    pub submitter: bool,
    pub dispatcher: bool,
    pub collector: bool,
}

impl Default for InProcess {
    fn default() -> Self {
        Self {
            submitter: true,
            dispatcher: true,
            collector: true,
        }
    }
}

impl InProcess {
    /// Nothing in-process: the test starts every service it needs as a process.
    pub fn none() -> Self {
        Self {
            submitter: false,
            dispatcher: false,
            collector: false,
        }
    }

    /// The submitter and the collector in-process; dispatchers run as processes.
    pub fn no_dispatcher() -> Self {
        Self {
            dispatcher: false,
            ..Self::default()
        }
    }
}

pub struct ExecutorSpec {
    pub id: String,
    pub groups: Vec<String>,
    pub labels: Vec<String>,
    pub capacity: u32,
}

impl ExecutorSpec {
    pub fn new(id: &str, groups: &[&str], capacity: u32) -> Self {
        Self {
            id: id.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            labels: Vec::new(),
            capacity,
        }
    }

    pub fn label(mut self, kv: &str) -> Self {
        self.labels.push(kv.into());
        self
    }
}

pub struct TestFleet {
    pub name: String,
    pub cfg: Config,
    /// With [`TestFleet::start_with_service_users`]: each service's broker user and
    /// password, by service (`submitter`, `dispatcher`, `collector`).
    pub service_users: BTreeMap<String, (String, String)>,
    /// The submitter's base URL.
    pub api: String,
    pub http: reqwest::Client,
    pub pool: Pool,
    services: Vec<Running>,
    executors: BTreeMap<String, Running>,
    /// Ids of executors started as processes, whose queues shutdown removes too.
    process_executors: std::sync::Mutex<Vec<String>>,
}

impl TestFleet {
    /// Starts a submitter, a dispatcher and a collector; no executors yet.
    pub async fn start(hint: &str) -> Result<Self> {
        Self::start_with(hint, |_| {}).await
    }

    pub async fn start_with(hint: &str, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        Self::start_opts(hint, InProcess::default(), tweak).await
    }

    /// `in_process` says which services run inside the test; the others are the test's
    /// to start, as processes it can kill.
    pub async fn start_opts(
        hint: &str,
        in_process: InProcess,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        Self::start_full(hint, in_process, tweak, false, None).await
    }

    /// A fleet whose submitter, dispatcher and collector each connect as a broker user
    /// of their own (`fleet-submitter setup-broker-users`), made for this fleet's prefix
    /// with random passwords; the users and passwords are in `service_users`.
    pub async fn start_with_service_users(
        hint: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        Self::start_full(hint, InProcess::default(), tweak, true, None).await
    }

    /// A fleet whose submitter serves the API over HTTPS with `cert_file` and `key_file`
    /// (PEM) at `https://localhost:<port>`; the fleet's own client trusts `ca_pem` only.
    pub async fn start_https(
        hint: &str,
        ca_pem: &[u8],
        cert_file: &str,
        key_file: &str,
    ) -> Result<Self> {
        let (cert, key) = (cert_file.to_owned(), key_file.to_owned());
        let tweak = move |c: &mut Config| {
            c.http.tls_cert_file = Some(cert);
            c.http.tls_key_file = Some(key);
        };
        Self::start_full(hint, InProcess::default(), tweak, false, Some(ca_pem)).await
    }

    async fn start_full(
        hint: &str,
        in_process: InProcess,
        tweak: impl FnOnce(&mut Config),
        own_users: bool,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        init_logging();
        let name = unique_name(hint);
        let mut cfg = test_config(&name);
        tweak(&mut cfg);
        // The API over HTTPS: with the caller's CA, or the development CA
        // (FLEET_TEST_TLS_DIR, TestTls::apply).
        let ca_pem = match (ca_pem, &cfg.http.tls_cert_file) {
            (Some(pem), _) => Some(pem.to_vec()),
            (None, Some(_)) => Some(TestTls::dev().ca_pem),
            (None, None) => None,
        };
        let ca_pem = ca_pem.as_deref();
        let mut service_users = BTreeMap::new();
        let mut config_of = BTreeMap::new();
        for service in fleet_shared::amqp::Service::ALL {
            let mut c = cfg.clone();
            if own_users {
                let n = fleet_shared::amqp::Names::new(&cfg.amqp.prefix);
                let user = n.service_user(service);
                let password = uuid::Uuid::new_v4().simple().to_string();
                let admin = fleet_submitter::broker_admin::BrokerAdmin::new(&cfg.amqp)?;
                admin
                    .setup_service_users(&n, &[(service, password.clone())])
                    .await?;
                c.amqp.url = amqp_url_as(&cfg.amqp.url, &user, &password);
                if service == fleet_shared::amqp::Service::Submitter {
                    // It mints executors' users: the management API as the test's user.
                    let url = reqwest::Url::parse(&cfg.amqp.url)?;
                    c.amqp.management_user = Some(url.username().to_owned());
                    c.amqp.management_password = url.password().map(str::to_owned);
                }
                service_users.insert(service.as_str().to_owned(), (user, password));
            }
            config_of.insert(service.as_str(), c);
        }
        let service_cfg = |s: &str| config_of.get(s).cloned().unwrap_or_else(|| cfg.clone());
        let pool = db::pool(&cfg.database)?;
        // Migrate before the services start, so the test can query at once.
        db::migrate(&pool, &cfg.database.schema)
            .await
            .context("migrating the test schema")?;

        let mut services = Vec::new();
        let mut api = String::new();
        if in_process.submitter {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            api = match ca_pem {
                None => format!("http://{}", listener.local_addr()?),
                // The certificate names localhost.
                Some(_) => format!("https://localhost:{}", listener.local_addr()?.port()),
            };
            services.push(
                spawn_service(service_cfg("submitter"), listener, |c, l, t| async move {
                    if let Err(e) = fleet_submitter::run(c, l, t).await {
                        tracing::error!(error = %e, "submitter failed");
                    }
                })
                .await?,
            );
        }
        if in_process.dispatcher {
            services.push(
                spawn_service(
                    service_cfg("dispatcher"),
                    TcpListener::bind("127.0.0.1:0").await?,
                    |c, l, t| async move {
                        if let Err(e) = fleet_dispatcher::run(c, l, t).await {
                            tracing::error!(error = %e, "dispatcher failed");
                        }
                    },
                )
                .await?,
            );
        }
        if in_process.collector {
            services.push(
                spawn_service(
                    service_cfg("collector"),
                    TcpListener::bind("127.0.0.1:0").await?,
                    |c, l, t| async move {
                        if let Err(e) = fleet_collector::run(c, l, t).await {
                            tracing::error!(error = %e, "collector failed");
                        }
                    },
                )
                .await?,
            );
        }
        let http = match ca_pem {
            None => client_with_token(cfg.auth.admin_token.as_deref())?,
            Some(pem) => client_trusting(cfg.auth.admin_token.as_deref(), pem)?,
        };
        let fleet = Self {
            name,
            cfg,
            service_users,
            api,
            http,
            pool,
            services,
            executors: BTreeMap::new(),
            process_executors: std::sync::Mutex::default(),
        };
        if in_process.submitter {
            fleet.wait_api_ready().await?;
        }
        Ok(fleet)
    }

    /// Waits until the submitter at `self.api` answers `/readyz` with 200.
    pub async fn wait_api_ready(&self) -> Result<()> {
        wait_for(
            "the submitter to be ready",
            Duration::from_secs(30),
            || async {
                Ok(
                    match self.http.get(format!("{}/readyz", self.api)).send().await {
                        Ok(r) if r.status().is_success() => Some(()),
                        _ => None,
                    },
                )
            },
        )
        .await
    }

    /// Starts a submitter process on a free port and points `self.api` at it.
    pub async fn spawn_submitter_process(
        &mut self,
        binary: &str,
        id: &str,
    ) -> Result<ServiceProcess> {
        let port = match self
            .api
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        {
            // Restarting: the same address, as clients know it.
            Some(p) => p,
            None => {
                let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
                probe.local_addr()?.port()
            }
        };
        let addr = format!("127.0.0.1:{port}");
        let p = self.spawn_process(binary, id, &[("FLEET_HTTP__ADDR", addr.clone())])?;
        self.api = match self.cfg.http.tls_cert_file {
            // The certificate names localhost.
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://{addr}"),
        };
        self.wait_api_ready().await?;
        Ok(p)
    }

    pub async fn add_executor(&mut self, spec: ExecutorSpec) -> Result<()> {
        let mut cfg = self.cfg.clone();
        cfg.executor.id = Some(spec.id.clone());
        cfg.executor.groups = spec.groups;
        cfg.executor.labels = spec.labels;
        cfg.executor.capacity = Some(spec.capacity);
        let running = spawn_service(
            cfg,
            TcpListener::bind("127.0.0.1:0").await?,
            |c, l, t| async move {
                if let Err(e) = fleet_executor::run(c, l, t).await {
                    tracing::error!(error = %e, "executor failed");
                }
            },
        )
        .await?;
        self.executors.insert(spec.id, running);
        Ok(())
    }

    /// Waits until the API lists these executors as alive.
    pub async fn wait_executors(&self, ids: &[&str]) -> Result<()> {
        wait_for("executors to report", Duration::from_secs(30), || async {
            let view: ExecutorsView = self.get_json("/v1/executors").await?;
            let alive = ids.iter().all(|id| {
                view.executors
                    .iter()
                    .any(|e| e.executor_id == *id && e.alive)
            });
            Ok(alive.then_some(()))
        })
        .await
    }

    pub async fn stop_executor(&mut self, id: &str) {
        if let Some(r) = self.executors.remove(id) {
            r.stop().await;
        }
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.http.get(format!("{}{path}", self.api)).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
    }

    /// POSTs a job; returns the status and the JSON body.
    pub async fn post_job(&self, job: &Value, key: Option<&str>) -> Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}/v1/jobs", self.api)).json(job);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    /// Makes an API token of `role` named `name` (as the admin); returns (its id, the
    /// token).
    pub async fn token(&self, name: &str, role: &str) -> Result<(String, String)> {
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"name": name, "role": role})),
            )
            .await?;
        if s != 201 {
            bail!("making a token: {s} {b}");
        }
        Ok((
            b["token_id"].as_str().context("token_id")?.to_owned(),
            b["token"].as_str().context("token")?.to_owned(),
        ))
    }

    /// Any API call as the fleet's admin; returns the status and the JSON body (Null when
    /// there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        self.call_as(&self.http, method, path, body).await
    }

    /// [`Self::call`] with another client (another token, or none).
    pub async fn call_as(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = http.request(method, format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A queue of its own bound to the fleet's events exchange (every kind), and a
    /// consumer of it (no ack): what another system listening to Fleet sees. Keep the
    /// connection open as long as the consumer is read.
    pub async fn listen_events(&self) -> Result<(lapin::Connection, lapin::Consumer)> {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let names = fleet_shared::amqp::Names::new(&self.cfg.amqp.prefix);
        let conn = fleet_shared::amqp::connect(&self.cfg.amqp, "event-listener").await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            names.events_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((conn, consumer))
    }

    /// Waits until the API shows `id` with `draining` as given.
    pub async fn wait_draining(&self, id: &str, draining: bool) -> Result<()> {
        wait_for(
            &format!("{id} to report draining={draining}"),
            Duration::from_secs(30),
            || async {
                let view: ExecutorsView = self.get_json("/v1/executors").await?;
                Ok(view
                    .executors
                    .iter()
                    .any(|e| e.executor_id == id && e.alive && e.draining == draining)
                    .then_some(()))
            },
        )
        .await
    }

    pub async fn submit(&self, job: &Value) -> Result<JobId> {
        let (status, body) = self.post_job(job, None).await?;
        if status != 201 {
            bail!("submit answered {status}: {body}");
        }
        Ok(serde_json::from_value(body["job_id"].clone())?)
    }

    pub async fn job(&self, id: JobId) -> Result<JobView> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    pub async fn results(&self, id: JobId) -> Result<ResultsView> {
        self.get_json(&format!("/v1/jobs/{id}/results")).await
    }

    /// Waits until the job's first task is in `state` (e.g. `running`); returns the view.
    pub async fn wait_job_state(
        &self,
        id: JobId,
        state: &str,
        deadline: Duration,
    ) -> Result<JobView> {
        wait_for(
            &format!("job {id}'s task to be {state}"),
            deadline,
            || async {
                let j = self.job(id).await?;
                Ok((j.tasks.first().map(|t| t.state.as_str()) == Some(state)).then_some(j))
            },
        )
        .await
    }

    /// Waits until the job is finished; returns its final view.
    pub async fn wait_job(&self, id: JobId, deadline: Duration) -> Result<JobView> {
        wait_for(&format!("job {id} to finish"), deadline, || async {
            let j = self.job(id).await?;
            Ok(matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled").then_some(j))
        })
        .await
    }

    /// Stops every service, then removes the test's schema and broker objects. Called at
    /// the end of a passing test; a failing one leaves them to inspect.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut executors: Vec<String> = self.executors.keys().cloned().collect();
        for id in &executors {
            self.stop_executor(id).await;
        }
        for s in self.services.drain(..) {
            s.stop().await;
        }
        let client = self.pool.get().await?;
        // FLEET_TEST_KEEP=1 keeps the schema to look into after the run.
        if std::env::var_os("FLEET_TEST_KEEP").is_none() {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
                .await?;
        }
        if let Ok(ids) = self.process_executors.lock() {
            executors.extend(ids.iter().cloned());
        }
        if !self.service_users.is_empty() {
            let admin = fleet_submitter::broker_admin::BrokerAdmin::new(&self.cfg.amqp)?;
            for (user, _) in self.service_users.values() {
                admin.delete_user(user).await?;
            }
        }
        cleanup_broker(&self.cfg, &executors).await
    }
}

async fn spawn_service<F, Fut>(cfg: Config, listener: TcpListener, f: F) -> Result<Running>
where
    F: FnOnce(Config, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let token = CancellationToken::new();
    let handle = tokio::spawn(f(cfg, listener, token.clone()));
    Ok(Running { token, handle })
}

async fn cleanup_broker(cfg: &Config, executors: &[String]) -> Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let n = fleet_shared::amqp::Names::new(&cfg.amqp.prefix);
    let conn = fleet_shared::amqp::connect(&cfg.amqp, "fleet-test-cleanup").await?;
    let ch = conn.create_channel().await?;
    let mut queues = vec![
        n.dead_queue(),
        n.info_queue(),
        n.results_queue(),
        n.submit_queue(),
    ];
    for e in executors {
        if let Ok(id) = fleet_shared::id::ExecutorId::parse(e) {
            queues.push(n.executor_queue(&id));
        }
    }
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let mut exchanges = vec![n.submit_exchange(), n.events_exchange(), n.dlx()];
    for g in [
        "default", "cpu", "lab", "lab.gpu", "site", "site.web", "site.db",
    ] {
        if let Ok(g) = fleet_shared::group::GroupName::parse(g) {
            exchanges.push(n.group_exchange(&g));
        }
    }
    // Whatever else carries the prefix (groups a test made up, registered executors'
    // queues and broker users), as the management API lists it.
    let listed = management_names(cfg).await;
    let mine = format!("{}.", cfg.amqp.prefix);
    exchanges.extend(
        listed
            .exchanges
            .into_iter()
            .filter(|e| e.starts_with(&mine)),
    );
    let extra_queues: Vec<String> = listed
        .queues
        .into_iter()
        .filter(|q| q.starts_with(&mine))
        .collect();
    for q in extra_queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let users = format!("{}-exec-", cfg.amqp.prefix);
    for u in listed.users.into_iter().filter(|u| u.starts_with(&users)) {
        let _ = management(cfg, reqwest::Method::DELETE, &format!("users/{u}")).await;
    }
    for ex in exchanges {
        let _ = ch
            .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

#[derive(Default)]
struct Listed {
    exchanges: Vec<String>,
    queues: Vec<String>,
    users: Vec<String>,
}

/// A call of RabbitMQ's management API as the user of `amqp.url` (trusting
/// `amqp.ca_file` over https); `Null` when the answer is not JSON.
pub async fn management(cfg: &Config, method: reqwest::Method, path: &str) -> Result<Value> {
    let url = reqwest::Url::parse(&cfg.amqp.url)?;
    let mut http = reqwest::Client::builder();
    if let Some(ca) = &cfg.amqp.ca_file {
        http = http.tls_backend_preconfigured(fleet_shared::tls::client_config(Some(ca))?);
    }
    let resp = http
        .build()?
        .request(method, format!("{}/api/{path}", cfg.amqp.management_url))
        .basic_auth(url.username(), url.password())
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    Ok(resp.json().await.unwrap_or(Value::Null))
}

/// Names the broker holds; empty where the management API does not answer.
async fn management_names(cfg: &Config) -> Listed {
    let names = |v: Result<Value>| -> Vec<String> {
        v.ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x["name"].as_str().map(str::to_owned))
            .collect()
    };
    Listed {
        exchanges: names(management(cfg, reqwest::Method::GET, "exchanges/%2F?columns=name").await),
        queues: names(management(cfg, reqwest::Method::GET, "queues/%2F?columns=name").await),
        users: names(management(cfg, reqwest::Method::GET, "users?columns=name").await),
    }
}

/// An HTTP client that sends `token` (if any) as its bearer token, with a 10 s deadline.
pub fn client_with_token(token: Option<&str>) -> Result<reqwest::Client> {
    Ok(client_builder(token)?.build()?)
}

/// [`client_with_token`] for https, trusting only the CAs of `ca_pem`.
pub fn client_trusting(token: Option<&str>, ca_pem: &[u8]) -> Result<reqwest::Client> {
    Ok(client_builder(token)?
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem)?)
        .build()?)
}

fn client_builder(token: Option<&str>) -> Result<reqwest::ClientBuilder> {
    fleet_shared::tls::install_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?,
        );
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers))
}

/// A job of `n` tasks each running `argv`.
pub fn job_of(n: usize, argv: &[&str], extra: Value) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|_| {
            let mut t = serde_json::json!({ "argv": argv });
            if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
                t.extend(extra.clone());
            }
            t
        })
        .collect();
    serde_json::json!({ "tasks": tasks })
}

impl TestFleet {
    /// Publishes raw bytes to `<prefix>.submit` as another system would, and waits for
    /// the reply on a private queue.
    pub async fn submit_amqp(&self, body: &[u8], message_id: Option<&str>) -> Result<Value> {
        let admin = self.cfg.auth.admin_token.clone();
        self.submit_amqp_as(admin.as_deref(), body, message_id)
            .await
    }

    /// The `authorization` header of a submit message carrying `token`.
    pub fn submit_headers(token: Option<&str>) -> lapin::types::FieldTable {
        let mut headers = lapin::types::FieldTable::default();
        if let Some(t) = token {
            headers.insert(
                fleet_shared::proto::SUBMIT_TOKEN_HEADER.into(),
                lapin::types::AMQPValue::LongString(format!("Bearer {t}").into()),
            );
        }
        headers
    }

    /// [`Self::submit_amqp`] with another API token (`None`: none at all).
    pub async fn submit_amqp_as(
        &self,
        api_token: Option<&str>,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Result<Value> {
        use futures_util::StreamExt;
        use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let n = fleet_shared::amqp::Names::new(&self.cfg.amqp.prefix);
        let conn = fleet_shared::amqp::connect(&self.cfg.amqp, "fleet-test-client").await?;
        let ch = conn.create_channel().await?;
        let reply = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut consumer = ch
            .basic_consume(
                reply.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let correlation = uuid::Uuid::new_v4().to_string();
        let mut props = fleet_shared::amqp::json_properties()
            .with_reply_to(reply.name().clone())
            .with_correlation_id(correlation.as_str().into())
            .with_headers(Self::submit_headers(api_token));
        if let Some(m) = message_id {
            props = props.with_message_id(m.into());
        }
        // The intake queue is declared by the submitter; wait until it exists so the
        // message is routed rather than dropped.
        wait_for(
            "the submit intake queue",
            Duration::from_secs(30),
            || async {
                let probe = conn.create_channel().await?;
                let ok = probe
                    .queue_declare(
                        n.submit_queue().as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .is_ok();
                Ok(ok.then_some(()))
            },
        )
        .await?;
        ch.basic_publish(
            n.submit_exchange().as_str().into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await?;
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("no reply within 30s")?
            .context("reply consumer ended")??;
        let got = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string());
        if got.as_deref() != Some(correlation.as_str()) {
            bail!("reply carries correlation id {got:?}, expected {correlation}");
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(serde_json::from_slice(&delivery.data)?)
    }

    /// A SQL count over the test's schema, for assertions the API does not expose.
    pub async fn count(&self, sql: &str) -> Result<i64> {
        let client = self.pool.get().await?;
        Ok(client.query_one(sql, &[]).await?.get(0))
    }
}

/// Two dispatcher processes, one leading under `epoch`.
pub struct DispatcherPair {
    pub leader: ServiceProcess,
    pub standby: ServiceProcess,
    pub epoch: i64,
}

/// A message the fleet dead-lettered, as a reader of `<prefix>.dead` sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `x-fleet-reason`: `malformed`, `forged`, `unknown_attempt`, ...
    pub reason: String,
    /// `x-fleet-source`: the queue it was refused on.
    pub source: String,
    pub detail: String,
    /// The names of every header it carries.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl TestFleet {
    /// Takes `n` messages off the dead-letter queue (waiting at most `deadline` for
    /// them); fewer if they do not come.
    pub async fn dead_letters(&self, n: usize, deadline: Duration) -> Result<Vec<DeadLetter>> {
        let names = fleet_shared::amqp::Names::new(&self.cfg.amqp.prefix);
        let conn = fleet_shared::amqp::connect(&self.cfg.amqp, "fleet-test-dead-reader").await?;
        let ch = conn.create_channel().await?;
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while out.len() < n && tokio::time::Instant::now() < until {
            let got = ch
                .basic_get(
                    names.dead_queue().as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await?;
            let Some(m) = got else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            let header = |k: &str| match headers.inner().get(k) {
                Some(lapin::types::AMQPValue::LongString(v)) => {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            };
            out.push(DeadLetter {
                reason: header("x-fleet-reason"),
                source: header("x-fleet-source"),
                detail: header("x-fleet-detail"),
                headers: headers.inner().keys().map(|k| k.to_string()).collect(),
                body: m.delivery.data.clone(),
            });
        }
        fleet_shared::amqp::close(&conn, "done").await;
        Ok(out)
    }

    /// Publishes `body` on `exchange` with `key` as the broker user of the fleet's
    /// configuration would (another system, or an impostor), and waits for the confirm.
    pub async fn publish_raw(&self, exchange: &str, key: &str, body: &[u8]) -> Result<()> {
        let conn = fleet_shared::amqp::connect(&self.cfg.amqp, "fleet-test-publisher").await?;
        let publisher = fleet_shared::amqp::Publisher::new(&conn, &self.cfg.amqp).await?;
        let sent = publisher
            .publish(fleet_shared::amqp::Outgoing::new(
                exchange,
                key,
                body.to_vec(),
            ))
            .await;
        fleet_shared::amqp::close(&conn, "done").await;
        Ok(sent?)
    }

    /// A queue's arguments as the broker's management API shows them.
    pub async fn queue_arguments(&self, queue: &str) -> Result<Value> {
        Ok(self.queue_info(queue).await?["arguments"].clone())
    }

    /// A queue as the broker's management API shows it (its `message_stats` lag by up
    /// to 5 s).
    pub async fn queue_info(&self, queue: &str) -> Result<Value> {
        management(
            &self.cfg,
            reqwest::Method::GET,
            &format!("queues/%2F/{queue}"),
        )
        .await
    }

    /// Messages delivered from a queue and not acked yet, as the broker has it now
    /// (`rabbitmqctl`, not the lagging statistics).
    pub fn unacked(&self, queue: &str) -> Result<u64> {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_unacknowledged",
            ])
            .output()
            .context("rabbitmqctl list_queues")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .map(|(_, n)| n.trim().parse::<u64>())
            .transpose()?
            .with_context(|| format!("queue {queue} not listed by rabbitmqctl: {text}"))
    }
}

/// The shared RabbitMQ node, for the fault tests that pause it or raise its alarms.
/// Such a test lives alone in its test binary: cargo runs test binaries one at a time,
/// so nothing else uses the broker meanwhile.
pub mod shared_broker {
    use anyhow::{bail, Context, Result};

    pub fn rabbitmqctl(args: &[&str]) -> Result<()> {
        let out = std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The process id of the broker node (its Erlang VM).
    pub fn pid() -> Result<i32> {
        let out = std::process::Command::new("pgrep")
            .args(["-o", "-x", "beam.smp"])
            .output()
            .context("pgrep")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("no beam.smp process found ({text:?})"))
    }

    /// Sends `sig` to the broker node.
    pub fn signal(sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid()?), sig)?;
        Ok(())
    }
}

/// A service running as a real process, which a fault test can kill or stop.
pub struct ServiceProcess {
    pub id: String,
    child: tokio::process::Child,
    /// Where its output (the log) goes.
    pub log: std::path::PathBuf,
    /// Its HTTP address (`/healthz`, `/readyz`, `/metrics`; the API on a submitter).
    pub addr: String,
}

/// A free local address to give a process (bound, then released).
pub fn free_addr() -> Result<String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.to_string())
}

impl ServiceProcess {
    pub fn pid(&self) -> i32 {
        self.child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)?;
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub async fn kill(mut self) -> Result<()> {
        self.kill_in_place().await
    }

    /// SIGKILL and reap, keeping the handle: once this returns the process is gone, and
    /// so are its sockets, so a successor may bind the same address.
    pub async fn kill_in_place(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs `path` from the process's HTTP server: the status and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        fleet_shared::tls::install_provider();
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// The value of an unlabelled metric the process exports; `None` while it cannot
    /// be asked or has not exported it yet.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, metrics) = self.get("/metrics").await.ok()?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether this dispatcher process says it leads (its `fleet_dispatcher_leader`
    /// gauge); `None` while it cannot be asked.
    pub async fn leads(&self) -> Option<bool> {
        Some(self.metric("fleet_dispatcher_leader").await? == 1.0)
    }

    /// Waits (at most `deadline`) for the process to exit by itself; its exit status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {deadline:?}", self.id))?
            .map_err(Into::into)
    }
}

impl TestFleet {
    /// Starts an executor as a separate process (`binary`: the path of an executor binary,
    /// `env!("CARGO_BIN_EXE_fleet-test-executor")` in this package's tests).
    pub fn spawn_executor_process(
        &self,
        binary: &str,
        spec: ExecutorSpec,
    ) -> Result<ServiceProcess> {
        self.spawn_executor_process_with(binary, spec, &[])
    }

    /// As [`Self::spawn_executor_process`], with more environment (a join token, say).
    pub fn spawn_executor_process_with(
        &self,
        binary: &str,
        spec: ExecutorSpec,
        extra: &[(&str, String)],
    ) -> Result<ServiceProcess> {
        if let Ok(mut ids) = self.process_executors.lock() {
            ids.push(spec.id.clone());
        }
        let mut env = vec![
            ("FLEET_EXECUTOR__ID", spec.id.clone()),
            ("FLEET_EXECUTOR__GROUPS", spec.groups.join(",")),
            ("FLEET_EXECUTOR__LABELS", spec.labels.join(",")),
            ("FLEET_EXECUTOR__CAPACITY", spec.capacity.to_string()),
        ];
        env.extend(extra.iter().cloned());
        self.spawn_process(binary, &spec.id, &env)
    }

    /// Starts a service binary against this fleet's broker prefix and schema, with the
    /// fleet's timing settings, its log (at info) in a file.
    pub fn spawn_process(
        &self,
        binary: &str,
        id: &str,
        extra: &[(&str, String)],
    ) -> Result<ServiceProcess> {
        let c = &self.cfg;
        let d = &c.dispatcher;
        let log = std::env::temp_dir().join(format!("{}-{id}.log", self.name));
        let stderr = std::fs::File::create(&log)?;
        let addr = match extra.iter().find(|(k, _)| *k == "FLEET_HTTP__ADDR") {
            Some((_, a)) => a.clone(),
            None => free_addr()?,
        };
        let child = tokio::process::Command::new(binary)
            .env("FLEET_AMQP__URL", &c.amqp.url)
            .env("FLEET_AMQP__PREFIX", &c.amqp.prefix)
            .env("FLEET_DATABASE__URL", &c.database.url)
            .env("FLEET_DATABASE__SCHEMA", &c.database.schema)
            .env(
                "FLEET_DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_MS",
                c.database.idle_in_transaction_timeout_ms.to_string(),
            )
            .env("FLEET_DISPATCHER__TICK_MS", d.tick_ms.to_string())
            .env(
                "FLEET_DISPATCHER__LEASE_TIMEOUT_SECS",
                d.lease_timeout_secs.to_string(),
            )
            .env(
                "FLEET_DISPATCHER__EXECUTOR_TIMEOUT_SECS",
                d.executor_timeout_secs.to_string(),
            )
            .env(
                "FLEET_DISPATCHER__LEADER_TTL_SECS",
                d.leader_ttl_secs.to_string(),
            )
            .env(
                "FLEET_EXECUTOR__INFO_INTERVAL_MS",
                c.executor.info_interval_ms.to_string(),
            )
            .env("FLEET_HTTP__ADDR", &addr)
            .env(
                "FLEET_AUTH__ADMIN_TOKEN",
                c.auth.admin_token.clone().unwrap_or_default(),
            )
            .envs(
                c.secrets
                    .key
                    .iter()
                    .map(|k| ("FLEET_SECRETS__KEY", k.as_str())),
            )
            .env(
                "FLEET_DISPATCHER__UNSAFE_OPEN_EXECUTORS",
                d.unsafe_open_executors.to_string(),
            )
            // TLS settings (FLEET_TEST_TLS_DIR, or a test's own), as the fleet has them.
            .envs(
                [
                    ("FLEET_AMQP__CA_FILE", &c.amqp.ca_file),
                    ("FLEET_DATABASE__CA_FILE", &c.database.ca_file),
                    ("FLEET_EXECUTOR__CA_FILE", &c.executor.ca_file),
                    ("FLEET_HTTP__TLS_CERT_FILE", &c.http.tls_cert_file),
                    ("FLEET_HTTP__TLS_KEY_FILE", &c.http.tls_key_file),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (k, v))),
            )
            .env("FLEET_AMQP__MANAGEMENT_URL", &c.amqp.management_url)
            // FLEET_TEST_LOG sets the services' log filter (RUST_LOG's syntax).
            .env(
                "RUST_LOG",
                std::env::var("FLEET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(ServiceProcess {
            id: id.to_owned(),
            child,
            log,
            addr,
        })
    }

    /// A fleet with short leases whose dispatching is done by two dispatcher processes
    /// (`binary`), once one of them leads.
    pub async fn with_dispatcher_pair(hint: &str, binary: &str) -> Result<(Self, DispatcherPair)> {
        let fleet = Self::start_opts(hint, InProcess::no_dispatcher(), short_leases).await?;
        let pair = fleet.spawn_dispatcher_pair(binary).await?;
        Ok((fleet, pair))
    }

    /// Starts two dispatcher processes (`binary`) and waits until one leads.
    pub async fn spawn_dispatcher_pair(&self, binary: &str) -> Result<DispatcherPair> {
        let a = self.spawn_process(binary, "dispatcher-a", &[])?;
        let b = self.spawn_process(binary, "dispatcher-b", &[])?;
        let (holder, epoch) = wait_for("a dispatcher to lead", Duration::from_secs(30), || {
            self.leader()
        })
        .await?;
        let (leader, standby) = if holder.contains(&format!("-{}-", a.pid())) {
            (a, b)
        } else {
            (b, a)
        };
        if !holder.contains(&format!("-{}-", leader.pid())) {
            bail!("leader {holder} is neither process");
        }
        Ok(DispatcherPair {
            leader,
            standby,
            epoch,
        })
    }

    /// The leader row, (holder, epoch), once some dispatcher leads.
    pub async fn leader(&self) -> Result<Option<(String, i64)>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT holder, epoch FROM dispatcher_leader WHERE id = 1",
                &[],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Rows of `SELECT executor_id, state FROM attempts` for one task, in attempt order.
    pub async fn attempts_of(
        &self,
        task: fleet_shared::id::TaskId,
    ) -> Result<Vec<(String, String)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT executor_id, state FROM attempts WHERE task_id = $1 ORDER BY attempt",
                &[&task.uuid()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
