//! What the benchmarks share: the machine they ran on, the spawn baseline, a fleet of
//! real service processes with the default configuration, and the costs read from
//! outside the processes (CPU from /proc, PostgreSQL's own counters, RabbitMQ's).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fleet_shared::config::Config;

use crate::{ExecutorSpec, InProcess, ServiceProcess, TestFleet};

/// One line on the machine: cores, CPU model, memory.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cores} cores ({cpu}), {:.1} GiB memory",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// Sequential spawn-and-reap of /bin/true for `secs`, in this process: the most one
/// process runs no-op commands per second, with no queueing, broker or database.
pub fn spawn_baseline(secs: f64) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let status = std::process::Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The binaries of the services, built beside the running one (same target directory).
pub fn sibling(name: &str) -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned())
}

/// Every setting at its default but where the fleet is (broker and database URLs,
/// prefix, schema), how it is reached (TLS: `FLEET_TEST_TLS_DIR` benches the fleet with
/// TLS on every hop) and the admin token.
pub fn defaults_but_names(cfg: &mut Config) {
    let mut d = Config::default();
    d.amqp.url = cfg.amqp.url.clone();
    d.amqp.prefix = cfg.amqp.prefix.clone();
    d.amqp.management_url = cfg.amqp.management_url.clone();
    d.amqp.ca_file = cfg.amqp.ca_file.clone();
    d.database.url = cfg.database.url.clone();
    d.database.schema = cfg.database.schema.clone();
    d.database.ca_file = cfg.database.ca_file.clone();
    d.executor.ca_file = cfg.executor.ca_file.clone();
    d.http.tls_cert_file = cfg.http.tls_cert_file.clone();
    d.http.tls_key_file = cfg.http.tls_key_file.clone();
    d.auth.admin_token = cfg.auth.admin_token.clone();
    // The bench's executors connect unregistered, on the shared broker user: registering
    // each (a broker user of its own) changes nothing on the path measured, which starts
    // at the submission. Without this, the default gives them no work.
    d.dispatcher.unsafe_open_executors = true;
    *cfg = d;
}

/// A fleet of real processes with the default configuration: one submitter, one
/// dispatcher, one collector, and executors `bench-<i>` in group `default`.
pub struct ProcessFleet {
    pub fleet: TestFleet,
    pub services: Vec<ServiceProcess>,
}

impl ProcessFleet {
    pub async fn start(hint: &str, executors: u32, capacity: u32) -> Result<Self> {
        let none = InProcess {
            submitter: false,
            dispatcher: false,
            collector: false,
        };
        let mut fleet = TestFleet::start_opts(hint, none, defaults_but_names).await?;
        let mut services = vec![
            fleet
                .spawn_submitter_process(&sibling("fleet-test-submitter"), "submitter")
                .await?,
            fleet.spawn_process(&sibling("fleet-test-dispatcher"), "dispatcher", &[])?,
            fleet.spawn_process(&sibling("fleet-test-collector"), "collector", &[])?,
        ];
        let mut ids = Vec::new();
        for i in 0..executors {
            let id = format!("bench-{i}");
            services.push(fleet.spawn_executor_process(
                &sibling("fleet-test-executor"),
                ExecutorSpec::new(&id, &["default"], capacity),
            )?);
            ids.push(id);
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        fleet.wait_executors(&refs).await?;
        Ok(Self { fleet, services })
    }

    pub async fn stop(self) -> Result<()> {
        for s in self.services {
            s.kill().await?;
        }
        self.fleet.shutdown().await
    }
}

/// A process's CPU time in clock ticks: its own, and its waited-for children's.
fn proc_ticks(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(11)? + n(12)?, n(13)? + n(14)?))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Ticks of every process whose command name `matches`, children included (exited
/// PostgreSQL backends are counted in the postmaster's children).
fn ticks_of(matches: impl Fn(&str) -> bool) -> u64 {
    pids()
        .into_iter()
        .filter(|p| matches(&comm(*p)))
        .filter_map(proc_ticks)
        .map(|(own, children)| own + children)
        .sum()
}

fn tick_secs() -> f64 {
    // Linux reports CPU times in USER_HZ, 100 per second on every common platform.
    0.01
}

/// CPU time taken so far, by name: each Fleet process (its own time, and its
/// children's: the commands an executor ran), PostgreSQL, RabbitMQ.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub ticks: BTreeMap<String, u64>,
}

impl CpuSample {
    pub fn take(services: &[ServiceProcess], exclude_pg_backend: Option<i32>) -> Self {
        let mut ticks = BTreeMap::new();
        for s in services {
            let (own, children) = proc_ticks(s.pid()).unwrap_or_default();
            let kind = s.id.split('-').next().unwrap_or("other");
            let kind = match kind {
                "bench" => "executor",
                k => k,
            };
            *ticks.entry(format!("fleet {kind}")).or_default() += own;
            if children > 0 {
                *ticks
                    .entry("commands run (the jobs)".to_owned())
                    .or_default() += children;
            }
        }
        let own_backend = exclude_pg_backend
            .and_then(proc_ticks)
            .map_or(0, |(o, _)| o);
        ticks.insert(
            "postgresql".into(),
            ticks_of(|c| c == "postgres").saturating_sub(own_backend),
        );
        ticks.insert(
            "rabbitmq".into(),
            ticks_of(|c| matches!(c, "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost")),
        );
        Self { ticks }
    }

    /// Seconds of CPU per name between `before` and `self`.
    pub fn since(&self, before: &Self) -> BTreeMap<String, f64> {
        self.ticks
            .iter()
            .map(|(k, v)| {
                let b = before.ticks.get(k).copied().unwrap_or(0);
                (k.clone(), v.saturating_sub(b) as f64 * tick_secs())
            })
            .collect()
    }
}

/// The local TCP ports of a process's sockets (from /proc: its descriptors' socket
/// inodes, found in the TCP tables).
fn local_ports(pid: i32) -> std::collections::HashSet<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let link = link.to_str()?;
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect()
        })
        .unwrap_or_default();
    let mut ports = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (f.get(1), f.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// The PostgreSQL backends serving the fleet's processes (their connections' client
/// ports): their CPU is the fleet's, whoever else uses the same server meanwhile.
pub async fn fleet_backends(
    client: &tokio_postgres::Client,
    services: &[ServiceProcess],
) -> Result<Vec<i32>> {
    let ports: std::collections::HashSet<i32> = services
        .iter()
        .flat_map(|s| local_ports(s.pid()))
        .map(i32::from)
        .collect();
    Ok(client
        .query(
            "SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .filter(|r| ports.contains(&r.get::<_, i32>(1)))
        .map(|r| r.get(0))
        .collect())
}

/// CPU ticks of these backends (their own).
pub fn backend_ticks(pids: &[i32]) -> BTreeMap<i32, u64> {
    pids.iter()
        .filter_map(|p| proc_ticks(*p).map(|(own, _)| (*p, own)))
        .collect()
}

/// PostgreSQL's own counters for the fleet's database and schema.
#[derive(Debug, Clone, Default)]
pub struct PgCounters {
    /// Write transactions (those that took a transaction id), cluster-wide.
    pub write_xacts: i64,
    /// Every transaction committed in the database, reads included.
    pub commits: i64,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
}

impl PgCounters {
    /// Reads the counters. The statistics of other backends are flushed when they have
    /// been idle for 10 s: call this after such a pause for exact figures.
    pub async fn take(client: &tokio_postgres::Client, schema: &str) -> Result<Self> {
        let row = client
            .query_one(
                "SELECT pg_current_xact_id()::text::bigint,
                        (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                        coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_upd), 0)::bigint,
                        coalesce(sum(n_tup_del), 0)::bigint
                 FROM pg_stat_user_tables WHERE schemaname = $1",
                &[&schema],
            )
            .await
            .context("reading PostgreSQL's counters")?;
        Ok(Self {
            write_xacts: row.get(0),
            commits: row.get(1),
            inserts: row.get(2),
            updates: row.get(3),
            deletes: row.get(4),
        })
    }
}

/// Messages published on the broker's virtual host so far, and those confirmed, as
/// RabbitMQ's management API counts them (its statistics lag by up to 5 s). Run alone,
/// these are the fleet's.
pub async fn published(fleet: &TestFleet) -> Result<(i64, i64)> {
    let vhost = crate::management(&fleet.cfg, reqwest::Method::GET, "vhosts/%2F").await?;
    let stat = |k: &str| vhost["message_stats"][k].as_i64().unwrap_or(0);
    Ok((stat("publish"), stat("confirm")))
}

/// A dedicated connection to the fleet's database, and its backend's pid (whose CPU is
/// the benchmark's, not the fleet's).
pub async fn connect(fleet: &TestFleet) -> Result<(tokio_postgres::Client, i32)> {
    let mut pg: tokio_postgres::Config = fleet.cfg.database.url.parse()?;
    pg.options(format!("-c search_path={}", fleet.cfg.database.schema));
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    Ok((client, pid))
}

/// Stores `n` finished one-task jobs (with their attempts and results) directly.
pub async fn preload(client: &tokio_postgres::Client, n: usize) -> Result<()> {
    let n = i64::try_from(n)?;
    client
        .execute(
            "WITH j AS (
                 INSERT INTO jobs (id, state, task_count, finished_at)
                 SELECT gen_random_uuid(), 'succeeded', 1, clock_timestamp()
                 FROM generate_series(1::bigint, $1::bigint) RETURNING id),
             t AS (
                 INSERT INTO tasks (id, job_id, idx, name, argv, timeout_secs, target_group,
                                    max_attempts, state, attempts, final_attempt)
                 SELECT gen_random_uuid(), j.id, 0, 'task-0', '[\"/bin/true\"]', 3600,
                        'default', 3, 'succeeded', 1, 1
                 FROM j RETURNING id, job_id),
             a AS (
                 INSERT INTO attempts (task_id, attempt, executor_id, state, lease_deadline,
                                       started_at, finished_at)
                 SELECT t.id, 1, 'preloaded', 'succeeded', clock_timestamp(),
                        clock_timestamp(), clock_timestamp()
                 FROM t)
             INSERT INTO results (task_id, attempt, job_id, executor_id, outcome, exit_code,
                                  stdout, stderr, stdout_truncated, stderr_truncated,
                                  started_at, finished_at)
             SELECT t.id, 1, t.job_id, 'preloaded', 'succeeded', 0, '', '', false, false,
                    clock_timestamp(), clock_timestamp()
             FROM t",
            &[&n],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

/// Percentile `p` (0..=1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
