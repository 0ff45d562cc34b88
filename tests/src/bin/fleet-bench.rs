//! `make bench`, `make bench-latency`, `make bench-balance`: jobs through a fleet of real
//! service processes (default configuration) against the real broker and database, with
//! what each job costs read from outside the processes, compared with a spawn baseline
//! measured in the same run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use fleet_shared::id::JobId;
use fleet_tests::bench::{self, CpuSample, PgCounters, ProcessFleet};
use fleet_tests::TestFleet;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    about = "Jobs through a fleet of real service processes with the default configuration: throughput and cost, latency, balance."
)]
struct Args {
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(Subcommand)]
enum What {
    /// Throughput and the cost of a job (the default).
    Throughput(Throughput),
    /// One job in flight at a time: submit -> start and submit -> recorded.
    Latency(Latency),
    /// Jobs of mixed lengths submitted at once: makespan against the ideal.
    Balance(Balance),
}

#[derive(Parser, Clone)]
struct Throughput {
    /// Jobs to submit (one `/bin/true` task each).
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Finished jobs stored before the run (history the hot statements must not scan).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    #[arg(long, default_value_t = 2)]
    executors: u32,
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Jobs per request (1: POST /v1/jobs; more: POST /v1/jobs/batch).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds to measure the spawn baseline, before the fleet and again after it.
    #[arg(long, default_value_t = 3.0)]
    baseline_secs: f64,
}

#[derive(Parser, Clone)]
struct Latency {
    #[arg(long, default_value_t = 500)]
    jobs: usize,
    #[arg(long, default_value_t = 2)]
    executors: u32,
    #[arg(long, default_value_t = 4)]
    capacity: u32,
}

#[derive(Parser, Clone)]
struct Balance {
    #[arg(long, default_value_t = 150)]
    jobs: usize,
    #[arg(long, default_value_t = 3)]
    executors: u32,
    #[arg(long, default_value_t = 2)]
    capacity: u32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("machine: {}", bench::machine());
    match args
        .what
        .unwrap_or(What::Throughput(Throughput::parse_from(["throughput"])))
    {
        What::Throughput(t) => throughput(t).await,
        What::Latency(l) => latency(l).await,
        What::Balance(b) => balance(b).await,
    }
}

fn job(argv: &[&str]) -> Value {
    json!({"tasks": [{"argv": argv}]})
}

/// Submits `jobs` (bodies) with `concurrency` requests in flight, `batch` per request;
/// returns each job's id and the wall time its request started, in the order given.
async fn submit_all(
    fleet: &TestFleet,
    jobs: Vec<Value>,
    concurrency: usize,
    batch: usize,
) -> Result<Vec<(JobId, DateTime<Utc>)>> {
    let chunks: Vec<Vec<Value>> = jobs.chunks(batch.max(1)).map(<[Value]>::to_vec).collect();
    let answers = futures_util::stream::iter(chunks)
        .map(|chunk| async move {
            let started = Utc::now();
            let ids: Vec<JobId> = if batch <= 1 {
                vec![fleet.submit(&chunk[0]).await?]
            } else {
                let items: Vec<Value> = chunk.iter().map(|j| json!({"job": j})).collect();
                let (status, body) = fleet
                    .call(
                        reqwest::Method::POST,
                        "/v1/jobs/batch",
                        Some(json!({"jobs": items})),
                    )
                    .await?;
                if status != 200 {
                    bail!("batch submit answered {status}: {body}");
                }
                body["jobs"]
                    .as_array()
                    .context("no jobs in the answer")?
                    .iter()
                    .map(|j| Ok(serde_json::from_value(j["job_id"].clone())?))
                    .collect::<Result<_>>()?
            };
            anyhow::Ok(ids.into_iter().map(|id| (id, started)).collect::<Vec<_>>())
        })
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::with_capacity(jobs.len());
    for a in answers {
        out.extend(a?);
    }
    Ok(out)
}

/// Waits until every job is finished, reading the jobs not yet seen finished (oldest
/// first, a hundred at a time) every 50 ms; returns when it saw the last one.
/// Waits until every job is finished, polling every 50 ms, or at once on each of the
/// collector's notifications when `notified` is given (then the time returned is within
/// a query of the commit that recorded the last result, not up to 50 ms after it).
async fn wait_all(
    client: &tokio_postgres::Client,
    ids: &[JobId],
    deadline: Duration,
    mut notified: Option<&mut tokio::sync::mpsc::UnboundedReceiver<Instant>>,
) -> Result<Instant> {
    let stmt = client
        .prepare(
            "SELECT id FROM jobs WHERE id = ANY($1)
             AND state IN ('succeeded', 'failed', 'cancelled')",
        )
        .await?;
    let mut pending: Vec<uuid::Uuid> = ids.iter().map(|j| j.uuid()).collect();
    let until = Instant::now() + deadline;
    let mut last_print = Instant::now();
    while !pending.is_empty() {
        let head: Vec<uuid::Uuid> = pending.iter().take(100).copied().collect();
        let done: std::collections::HashSet<uuid::Uuid> = client
            .query(&stmt, &[&head])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        pending.retain(|id| !done.contains(id));
        if pending.is_empty() {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {} of {} recorded", ids.len() - pending.len(), ids.len());
            last_print = Instant::now();
        }
        if Instant::now() > until {
            bail!(
                "{} of {} jobs not finished in {deadline:?}",
                pending.len(),
                ids.len()
            );
        }
        let poll = Duration::from_millis(50);
        match notified.as_deref_mut() {
            Some(rx) => {
                let _ = tokio::time::timeout(poll, rx.recv()).await;
                while rx.try_recv().is_ok() {}
            }
            None => tokio::time::sleep(poll).await,
        }
    }
    Ok(Instant::now())
}

/// PostgreSQL flushes other backends' statistics once they have been idle for 10 s.
const STATS_FLUSH: Duration = Duration::from_secs(11);

async fn throughput(a: Throughput) -> Result<()> {
    println!(
        "baseline: spawning /bin/true for {:.0}s ...",
        a.baseline_secs
    );
    let secs = a.baseline_secs;
    let before = tokio::task::spawn_blocking(move || bench::spawn_baseline(secs)).await??;
    let pf = ProcessFleet::start("bench", a.executors, a.capacity).await?;
    let (client, backend) = bench::connect(&pf.fleet).await?;
    if a.preload > 0 {
        eprintln!("storing {} finished jobs first ...", a.preload);
        bench::preload(&client, a.preload).await?;
    }
    // Warm up (connections, caches, plans), then let statistics settle.
    let warm = submit_all(&pf.fleet, vec![job(&["/bin/true"]); 64], 8, 1).await?;
    let warm: Vec<JobId> = warm.into_iter().map(|(id, _)| id).collect();
    wait_all(&client, &warm, Duration::from_secs(120), None).await?;
    tokio::time::sleep(STATS_FLUSH).await;
    let pg0 = PgCounters::take(&client, &pf.fleet.cfg.database.schema).await?;
    let pub0 = bench::published(&pf.fleet).await?;
    // PostgreSQL's CPU above is every backend's on this machine (other sessions too);
    // this is the fleet's own connections' only (a backend that ends meanwhile is lost).
    let be0 = bench::backend_ticks(&bench::fleet_backends(&client, &pf.services).await?);
    let cpu0 = CpuSample::take(&pf.services, Some(backend));

    println!(
        "fleet: {} jobs, {} executors x {} slots, {} requests in flight, {} job(s) per request{}",
        a.jobs,
        a.executors,
        a.capacity,
        a.concurrency,
        a.batch,
        if a.preload > 0 {
            format!(", {} finished jobs stored before", a.preload)
        } else {
            String::new()
        }
    );
    let started = Instant::now();
    let jobs = vec![job(&["/bin/true"]); a.jobs];
    let submitted = submit_all(&pf.fleet, jobs, a.concurrency, a.batch).await?;
    eprintln!(
        "  submitted {} jobs in {:.2}s",
        a.jobs,
        started.elapsed().as_secs_f64()
    );
    let ids: Vec<JobId> = submitted.iter().map(|(id, _)| *id).collect();
    let ended = wait_all(&client, &ids, Duration::from_secs(900), None).await?;
    let span = ended.duration_since(started).as_secs_f64();
    let cpu1 = CpuSample::take(&pf.services, Some(backend));
    let mut be_pids = bench::fleet_backends(&client, &pf.services).await?;
    be_pids.extend(be0.keys().copied());
    be_pids.sort_unstable();
    be_pids.dedup();
    let be1 = bench::backend_ticks(&be_pids);
    let be_secs = be1
        .iter()
        .map(|(p, t)| t.saturating_sub(be0.get(p).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        * 0.01;
    let be_dead = be0.keys().filter(|p| !be1.contains_key(p)).count();
    let write_xacts_end: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await?
        .get(0);

    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state <> 'succeeded'",
            &[&ids.iter().map(|j| j.uuid()).collect::<Vec<_>>()],
        )
        .await?
        .get(0);
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    // Submit -> start: from the client's request start to the executor's spawn.
    let submit_at: HashMap<uuid::Uuid, DateTime<Utc>> =
        submitted.iter().map(|(id, t)| (id.uuid(), *t)).collect();
    let rows = client
        .query(
            "SELECT job_id, started_at FROM results WHERE job_id = ANY($1)",
            &[&ids.iter().map(|j| j.uuid()).collect::<Vec<_>>()],
        )
        .await?;
    let mut to_start: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let started: Option<DateTime<Utc>> = r.get(1);
            let at = submit_at.get(&r.get::<_, uuid::Uuid>(0))?;
            Some((started? - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    to_start.sort_by(f64::total_cmp);

    tokio::time::sleep(STATS_FLUSH).await;
    let pg1 = PgCounters::take(&client, &pf.fleet.cfg.database.schema).await?;
    let pub1 = bench::published(&pf.fleet).await?;
    let secs = a.baseline_secs;
    let after = tokio::task::spawn_blocking(move || bench::spawn_baseline(secs)).await??;
    let baseline = (before + after) / 2.0;

    let n = a.jobs as f64;
    let jobs_per_sec = n / span;
    let cpu = cpu1.since(&cpu0);
    println!();
    println!("machine:                  {}", bench::machine());
    println!(
        "fleet throughput:         {jobs_per_sec:.0} jobs/s ({} jobs, first request to last result recorded: {span:.2}s)",
        a.jobs
    );
    println!(
        "baseline (same run):      {baseline:.0} /bin/true spawn+reap/s in one process (before {before:.0}, after {after:.0})"
    );
    println!("ratio fleet/baseline:     {:.2}", jobs_per_sec / baseline);
    println!(
        "submit -> start:          p50 {:.1} ms, p99 {:.1} ms (client request start to the executor's spawn)",
        bench::percentile(&to_start, 0.5),
        bench::percentile(&to_start, 0.99)
    );
    println!("CPU per job (microseconds, from /proc):");
    let mut fleet_total = 0.0;
    let mut infra_total = 0.0;
    for (name, s) in &cpu {
        let us = s / n * 1e6;
        println!("  {name:<28} {us:>8.0}");
        if name.starts_with("fleet ") {
            fleet_total += us;
        } else if name == "postgresql" || name == "rabbitmq" {
            infra_total += us;
        }
    }
    println!(
        "  {:<28} {:>8.0}  (Fleet {fleet_total:.0} + PostgreSQL and RabbitMQ {infra_total:.0}; the commands themselves not counted)",
        "total",
        fleet_total + infra_total
    );
    let bench_xacts = 2.0; // this tool's own reads of pg_current_xact_id
    println!(
        "  {:<28} {:>8.0}  ({} backends; {be_dead} ended during the run, not counted)",
        "postgresql (fleet backends)",
        be_secs / n * 1e6,
        be1.len()
    );
    println!(
        "PostgreSQL per job:       {:.2} commits of writing transactions, {:.2} transactions in all (reads included), {:.2} rows inserted, {:.2} updated, {:.2} deleted",
        ((write_xacts_end - pg0.write_xacts) as f64 - bench_xacts) / n,
        (pg1.commits - pg0.commits) as f64 / n,
        (pg1.inserts - pg0.inserts) as f64 / n,
        (pg1.updates - pg0.updates) as f64 / n,
        (pg1.deletes - pg0.deletes) as f64 / n,
    );
    println!(
        "RabbitMQ per job:         {:.2} messages published ({:.2} confirmed)",
        (pub1.0 - pub0.0) as f64 / n,
        (pub1.1 - pub0.1) as f64 / n
    );
    drop(client);
    pf.stop().await
}

/// Notifications of recorded results: the collector's NOTIFY arrives after the commit
/// that made a result durable (on the results channel; Fleet before 2026-12 sent it on
/// the wake-up channel). Each carries when it arrived.
async fn listen_recorded(
    pf: &ProcessFleet,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Instant>> {
    let schema = &pf.fleet.cfg.database.schema;
    let channels = [
        fleet_shared::db::collect::results_channel(schema),
        fleet_shared::db::wake_channel(schema),
    ];
    let (notify_tx, notified) = tokio::sync::mpsc::unbounded_channel();
    let mut pg: tokio_postgres::Config = pf.fleet.cfg.database.url.parse()?;
    pg.options(format!("-c search_path={}", pf.fleet.cfg.database.schema));
    let (listener, mut conn) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                let _ = notify_tx.send(Instant::now());
            }
        }
    });
    for channel in channels {
        listener
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
    }
    // The connection lives as long as its client: keep it for the rest of the run.
    tokio::spawn(async move {
        let _listening = listener;
        std::future::pending::<()>().await
    });
    Ok(notified)
}

async fn latency(a: Latency) -> Result<()> {
    let pf = ProcessFleet::start("latency", a.executors, a.capacity).await?;
    let (client, _) = bench::connect(&pf.fleet).await?;
    let mut notified = listen_recorded(&pf).await?;
    let find = client
        .prepare(
            "SELECT r.started_at, r.finished_at, r.recorded_at, a.assigned_at, j.created_at
             FROM results r JOIN attempts a USING (task_id, attempt) JOIN jobs j ON j.id = r.job_id
             WHERE r.job_id = $1",
        )
        .await?;
    println!(
        "latency: {} jobs, one in flight, {} executors x {} slots",
        a.jobs, a.executors, a.capacity
    );
    let body = job(&["/bin/true"]);
    let mut to_start = Vec::with_capacity(a.jobs);
    let mut to_recorded = Vec::with_capacity(a.jobs);
    // Where the time goes, from the services' own timestamps: accepted (the job row),
    // assigned, started, finished, stored (before its commit).
    let mut steps: [Vec<f64>; 5] = Default::default();
    for i in 0..a.jobs + 20 {
        while notified.try_recv().is_ok() {}
        let t0 = Instant::now();
        let wall0 = Utc::now();
        let id = pf.fleet.submit(&body).await?;
        let (row, recorded) = loop {
            let at = tokio::time::timeout(Duration::from_secs(30), notified.recv())
                .await
                .context("no notification within 30 s")?
                .context("listener ended")?;
            if let Some(r) = client.query_opt(&find, &[&id.uuid()]).await? {
                break (r, at);
            }
        };
        let started: DateTime<Utc> = row.get::<_, Option<_>>(0).context("no start time")?;
        let finished: DateTime<Utc> = row.get(1);
        let stored: DateTime<Utc> = row.get(2);
        let assigned: DateTime<Utc> = row.get(3);
        let created: DateTime<Utc> = row.get(4);
        let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        // The first twenty warm the fleet up.
        if i >= 20 {
            to_start.push(ms(wall0, started));
            to_recorded.push(recorded.duration_since(t0).as_secs_f64() * 1000.0);
            for (k, (from, to)) in [
                (wall0, created),
                (created, assigned),
                (assigned, started),
                (started, finished),
                (finished, stored),
            ]
            .into_iter()
            .enumerate()
            {
                steps[k].push(ms(from, to));
            }
        }
    }
    to_start.sort_by(f64::total_cmp);
    to_recorded.sort_by(f64::total_cmp);
    println!();
    println!("machine:               {}", bench::machine());
    println!(
        "submit -> start:       p50 {:.2} ms, p99 {:.2} ms (client request start to the executor's spawn)",
        bench::percentile(&to_start, 0.5),
        bench::percentile(&to_start, 0.99)
    );
    println!(
        "submit -> recorded:    p50 {:.2} ms, p99 {:.2} ms (client request start to the notification sent by the commit of the result)",
        bench::percentile(&to_recorded, 0.5),
        bench::percentile(&to_recorded, 0.99)
    );
    let names = [
        "request -> job stored",
        "stored -> assigned",
        "assigned -> started",
        "started -> finished",
        "finished -> result stored",
    ];
    println!("steps (p50, from the services' timestamps; each before its commit):");
    for (name, mut v) in names.into_iter().zip(steps) {
        v.sort_by(f64::total_cmp);
        println!("  {name:<26} {:.2} ms", bench::percentile(&v, 0.5));
    }
    drop(client);
    pf.stop().await
}

/// The seeded job lengths: 70 % 0.05 s, 25 % 0.3 s, 5 % 3 s.
fn lengths(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 100 {
                0..70 => 0.05,
                70..95 => 0.3,
                _ => 3.0,
            }
        })
        .collect()
}

/// The makespan if each job, in submit order, went to the first free slot at once and
/// ran with no overhead at all.
fn in_order_ideal(lengths: &[f64], slots: usize) -> f64 {
    let mut free = vec![0.0f64; slots.max(1)];
    for l in lengths {
        let (i, _) = free
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        free[i] += l;
    }
    free.into_iter().fold(0.0, f64::max)
}

async fn balance(a: Balance) -> Result<()> {
    let pf = ProcessFleet::start("balance", a.executors, a.capacity).await?;
    let (client, _) = bench::connect(&pf.fleet).await?;
    let mut notified = listen_recorded(&pf).await?;
    let slots = (a.executors * a.capacity) as usize;
    let lengths = lengths(a.jobs, a.seed);
    let jobs: Vec<Value> = lengths
        .iter()
        .map(|l| job(&["sleep", &l.to_string()]))
        .collect();
    println!(
        "balance: {} sleep jobs (seed {}: {} x 0.05 s, {} x 0.3 s, {} x 3 s), {} executors x {} slots, submitted at once",
        a.jobs,
        a.seed,
        lengths.iter().filter(|l| **l == 0.05).count(),
        lengths.iter().filter(|l| **l == 0.3).count(),
        lengths.iter().filter(|l| **l == 3.0).count(),
        a.executors,
        a.capacity
    );
    let started = Instant::now();
    // All at once, in order: one request per job, every request in flight together.
    let submitted = submit_all(&pf.fleet, jobs, a.jobs, 1).await?;
    let ids: Vec<JobId> = submitted.iter().map(|(id, _)| *id).collect();
    let ended = wait_all(&client, &ids, Duration::from_secs(300), Some(&mut notified)).await?;
    let makespan = ended.duration_since(started).as_secs_f64();
    let sum: f64 = lengths.iter().sum();
    let max = lengths.iter().copied().fold(0.0, f64::max);
    let bound = (sum / slots as f64).max(max);
    // "Submit order" is the order the fleet accepted the jobs in (their tasks' `seq`):
    // requests sent together arrive in any order.
    let seq: HashMap<uuid::Uuid, i64> = client
        .query(
            "SELECT job_id, seq FROM tasks WHERE job_id = ANY($1)",
            &[&ids.iter().map(|j| j.uuid()).collect::<Vec<_>>()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut accepted: Vec<(i64, f64)> = ids
        .iter()
        .zip(&lengths)
        .map(|(id, l)| (seq.get(&id.uuid()).copied().unwrap_or(i64::MAX), *l))
        .collect();
    accepted.sort_by_key(|(s, _)| *s);
    let in_accepted_order: Vec<f64> = accepted.into_iter().map(|(_, l)| l).collect();
    let ideal = in_order_ideal(&in_accepted_order, slots);
    println!();
    println!("machine:               {}", bench::machine());
    println!("makespan:              {makespan:.3} s (first request to last result recorded)");
    println!("lower bound:           {bound:.3} s (max(sum / slots, longest))");
    println!("in-order ideal:        {ideal:.3} s (each job, in the order the fleet accepted them, to the first free slot, no overhead)");
    println!(
        "  (in draw order:       {:.3} s; requests sent together are accepted in any order)",
        in_order_ideal(&lengths, slots)
    );
    println!("makespan / ideal:      {:.3}", makespan / ideal);
    // Where the difference goes, from the executors' own times (for whoever tunes this).
    let rows = client
        .query(
            "SELECT r.executor_id, extract(epoch FROM r.started_at)::float8,
                    extract(epoch FROM r.finished_at)::float8, (t.argv->>1)::float8,
                    extract(epoch FROM a.assigned_at)::float8
             FROM results r JOIN tasks t ON t.id = r.task_id
             JOIN attempts a ON a.task_id = r.task_id AND a.attempt = r.attempt
             WHERE t.job_id = ANY($1) AND r.started_at IS NOT NULL",
            &[&ids.iter().map(|j| j.uuid()).collect::<Vec<_>>()],
        )
        .await?;
    let runs: Vec<Run> = rows
        .iter()
        .map(|r| Run {
            executor: r.get(0),
            started: r.get(1),
            finished: r.get(2),
            length: r.get(3),
            assigned: r.get(4),
        })
        .collect();
    let mut overhead: Vec<f64> = runs
        .iter()
        .map(|r| (r.finished - r.started - r.length) * 1000.0)
        .collect();
    overhead.sort_by(f64::total_cmp);
    let mut held: Vec<f64> = runs
        .iter()
        .map(|r| (r.started - r.assigned) * 1000.0)
        .collect();
    held.sort_by(f64::total_cmp);
    let idle = idle_while_waiting(&runs, a.capacity);
    println!("where it goes (from the executors' times):");
    println!(
        "  a command's own cost beyond its length: p50 {:.1} ms ({:.0} ms of makespan over the slots)",
        bench::percentile(&overhead, 0.5),
        overhead.iter().sum::<f64>() / slots as f64
    );
    println!(
        "  held by its executor before it started: p50 {:.1} ms, p99 {:.1} ms",
        bench::percentile(&held, 0.5),
        bench::percentile(&held, 0.99)
    );
    println!(
        "  slots idle before the last hand-out: {idle:.3} slot-s ({:.0} ms of makespan)",
        idle * 1000.0 / slots as f64
    );
    drop(client);
    pf.stop().await
}

/// One attempt as its executor saw it (seconds since the epoch), and its task's length.
struct Run {
    executor: String,
    started: f64,
    finished: f64,
    length: f64,
    assigned: f64,
}

/// Slot-seconds the executors left idle from the first start to the last hand-out: while
/// work was still waiting to be handed out, every idle slot was time lost.
fn idle_while_waiting(runs: &[Run], capacity: u32) -> f64 {
    let (Some(first), Some(last)) = (
        runs.iter().map(|r| r.started).min_by(f64::total_cmp),
        runs.iter().map(|r| r.assigned).max_by(f64::total_cmp),
    ) else {
        return 0.0;
    };
    let mut by_executor: HashMap<&str, Vec<(f64, i32)>> = HashMap::new();
    for r in runs {
        let events = by_executor.entry(r.executor.as_str()).or_default();
        events.push((r.started, 1));
        events.push((r.finished, -1));
    }
    let mut idle = 0.0;
    for events in by_executor.values_mut() {
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut running, mut at) = (0i32, first);
        for &(t, d) in events.iter() {
            let t = t.clamp(first, last);
            idle += f64::from((capacity as i32 - running).max(0)) * (t - at);
            at = t;
            running += d;
        }
        idle += f64::from((capacity as i32 - running).max(0)) * (last - at);
    }
    idle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(executor: &str, started: f64, finished: f64) -> Run {
        Run {
            executor: executor.into(),
            started,
            finished,
            length: finished - started,
            assigned: started,
        }
    }

    #[test]
    fn idle_slots_count_only_until_the_last_hand_out() {
        // One executor, two slots: both busy 0-1; one idle 1-2 (the other runs 1-3,
        // handed out last at 1).
        let runs = [run("a", 0.0, 1.0), run("a", 0.0, 1.0), run("a", 1.0, 3.0)];
        assert!((idle_while_waiting(&runs, 2) - 0.0).abs() < 1e-9);
        // Handed out at 2 instead: from 1 to 2 one slot was idle.
        let mut late = run("a", 2.0, 3.0);
        late.assigned = 2.0;
        let runs = [
            run("a", 0.0, 1.0),
            run("a", 0.0, 1.0),
            run("a", 1.0, 3.0),
            late,
        ];
        assert!((idle_while_waiting(&runs, 2) - 1.0).abs() < 1e-9);
    }
}
