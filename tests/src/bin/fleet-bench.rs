//! `make bench`: N no-op jobs (`/bin/true`) through the whole fleet, against the real
//! broker and database, compared with a baseline measured in the same run on the same
//! machine: how many `/bin/true` one process spawns and reaps per second.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use fleet_tests::{ExecutorSpec, TestFleet};
use futures_util::StreamExt;
use serde_json::json;

#[derive(Parser)]
#[command(
    about = "Throughput and latency of no-op jobs through the whole fleet, against a spawn baseline."
)]
struct Args {
    /// Jobs to submit (one `/bin/true` task each).
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Executors to run.
    #[arg(long, default_value_t = 2)]
    executors: u32,
    /// Slots per executor.
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Concurrent HTTP submissions.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to measure the spawn baseline.
    #[arg(long, default_value_t = 3)]
    baseline_secs: u64,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cores} cores ({cpu}), {:.1} GiB memory",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// Sequential spawn-and-reap of /bin/true for `secs`: the most a single process could
/// run no-op commands, with no queueing, no broker and no database.
fn baseline(secs: u64) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let status = std::process::Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("machine: {}", machine());
    println!(
        "baseline: spawning /bin/true for {}s ...",
        args.baseline_secs
    );
    let spawns_per_sec =
        tokio::task::spawn_blocking(move || baseline(args.baseline_secs)).await??;
    println!("baseline: {spawns_per_sec:.0} spawn+reap/s in one process");

    let mut fleet = TestFleet::start_with("bench", |c| {
        c.database.pool_size = 8;
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..args.executors {
        let id = format!("bench-{i}");
        fleet
            .add_executor(ExecutorSpec::new(&id, &["default"], args.capacity))
            .await?;
        ids.push(id);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    fleet.wait_executors(&id_refs).await?;
    println!(
        "fleet: {} jobs, {} executors x {} slots, {} concurrent submitters",
        args.jobs, args.executors, args.capacity, args.concurrency
    );

    let job = json!({"tasks": [{"argv": ["/bin/true"]}]});
    let started = Instant::now();
    let submitted = futures_util::stream::iter(0..args.jobs)
        .map(|_| fleet.submit(&job))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;
    let failed_submits = submitted.iter().filter(|r| r.is_err()).count();
    if failed_submits > 0 {
        bail!(
            "{failed_submits} submissions failed; first: {:?}",
            submitted.iter().find(|r| r.is_err())
        );
    }
    eprintln!(
        "submitted {} jobs in {:.1}s",
        args.jobs,
        started.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(600);
    let total = args.jobs as i64;
    let mut last_print = Instant::now();
    loop {
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await?;
        if last_print.elapsed() >= Duration::from_secs(1) || done == total {
            eprintln!(
                "recorded {done}/{total} jobs ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if done == total {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} jobs finished within 600s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = fleet
        .count("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
        .await?;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }

    let client = fleet.pool.get().await?;
    let row = client
        .query_one(
            "SELECT extract(epoch FROM max(r.recorded_at) - min(j.created_at))::float8,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at - j.created_at)),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at - j.created_at)),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.recorded_at - j.created_at)),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.recorded_at - j.created_at))
             FROM jobs j JOIN results r ON r.job_id = j.id",
            &[],
        )
        .await?;
    drop(client);
    let span: f64 = row.get(0);
    let ms = |i: usize| row.get::<_, f64>(i) * 1000.0;
    let jobs_per_sec = args.jobs as f64 / span;
    println!();
    println!("machine:                 {}", machine());
    println!("fleet throughput:        {jobs_per_sec:.0} jobs/s ({} jobs, first submit to last recorded result: {span:.2}s)", args.jobs);
    println!(
        "submit-to-start:         p50 {:.1} ms, p99 {:.1} ms",
        ms(1),
        ms(2)
    );
    println!(
        "submit-to-recorded:      p50 {:.1} ms, p99 {:.1} ms",
        ms(3),
        ms(4)
    );
    println!("baseline (same run):     {spawns_per_sec:.0} /bin/true spawn+reap/s, one process");
    println!(
        "ratio fleet/baseline:    {:.2}",
        jobs_per_sec / spawns_per_sec
    );
    fleet.shutdown().await
}
