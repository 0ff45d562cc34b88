//! The chaos soak: every service as a process (one submitter, two dispatchers, one
//! collector, three executors), jobs submitted over HTTP with idempotency keys while a
//! random process is SIGKILLed and restarted every few seconds. At the end every task
//! must have exactly one recorded outcome and none may be stuck.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::json;

use crate::{job_of, wait_for, ExecutorSpec, InProcess, ServiceProcess, TestFleet};

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub jobs: usize,
    pub kill_every: Duration,
    pub executors: u32,
    pub capacity: u32,
    pub clients: usize,
    pub seed: u64,
    /// How long each task runs (`sleep`), so that kills land on work in flight.
    pub task_secs: f64,
    /// Paths of the service binaries: submitter, dispatcher, collector, executor.
    pub binaries: [String; 4],
}

#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub submitted: i64,
    pub completed: i64,
    pub kills: HashMap<&'static str, usize>,
    pub retried_tasks: i64,
    pub lost_attempts: i64,
    /// Tasks with more than one attempt closed with a real outcome (not lost), plus
    /// submissions that made more than one job: must be 0.
    pub duplicates: i64,
    pub last_kill_to_last_completion: Duration,
    pub elapsed: Duration,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kills: Vec<_> = self.kills.iter().collect();
        kills.sort();
        writeln!(f, "jobs submitted:            {}", self.submitted)?;
        writeln!(f, "jobs completed:            {}", self.completed)?;
        writeln!(f, "processes killed:          {kills:?}")?;
        writeln!(f, "tasks retried:             {}", self.retried_tasks)?;
        writeln!(f, "lost attempts:             {}", self.lost_attempts)?;
        writeln!(f, "duplicates:                {}", self.duplicates)?;
        writeln!(
            f,
            "last kill -> last result:  {:.1}s",
            self.last_kill_to_last_completion.as_secs_f64()
        )?;
        write!(
            f,
            "total time:                {:.1}s",
            self.elapsed.as_secs_f64()
        )
    }
}

/// A small, seeded generator: which process dies is reproducible from the seed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Member {
    role: &'static str,
    id: String,
    process: ServiceProcess,
}

pub async fn run(opts: ChaosOptions) -> Result<ChaosReport> {
    let started = Instant::now();
    let none = InProcess {
        submitter: false,
        dispatcher: false,
        collector: false,
    };
    let mut fleet = TestFleet::start_opts("chaos", none, |c| {
        c.dispatcher.lease_timeout_secs = 3;
        c.dispatcher.executor_timeout_secs = 2;
        c.dispatcher.leader_ttl_secs = 2;
        c.database.idle_in_transaction_timeout_ms = 2_000;
    })
    .await?;
    let [sub_bin, disp_bin, coll_bin, exec_bin] = opts.binaries.clone();
    let mut members = vec![Member {
        role: "submitter",
        id: "submitter".into(),
        process: fleet.spawn_submitter_process(&sub_bin, "submitter").await?,
    }];
    for id in ["dispatcher-a", "dispatcher-b"] {
        members.push(Member {
            role: "dispatcher",
            id: id.into(),
            process: fleet.spawn_process(&disp_bin, id, &[])?,
        });
    }
    members.push(Member {
        role: "collector",
        id: "collector".into(),
        process: fleet.spawn_process(&coll_bin, "collector", &[])?,
    });
    let mut exec_ids = Vec::new();
    for i in 0..opts.executors {
        let id = format!("chaos-{i}");
        members.push(Member {
            role: "executor",
            id: id.clone(),
            process: fleet.spawn_executor_process(
                &exec_bin,
                ExecutorSpec::new(&id, &["cpu"], opts.capacity),
            )?,
        });
        exec_ids.push(id);
    }
    let refs: Vec<&str> = exec_ids.iter().map(String::as_str).collect();
    fleet.wait_executors(&refs).await?;

    // Clients: each submission retried with its key until accepted.
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let per_client = opts.jobs.div_ceil(opts.clients);
    for c in 0..opts.clients {
        let (http, api, accepted) = (fleet.http.clone(), fleet.api.clone(), accepted.clone());
        let task_secs = format!("{}", opts.task_secs);
        let n = per_client.min(opts.jobs.saturating_sub(c * per_client));
        handles.push(tokio::spawn(async move {
            let job = job_of(1, &["sleep", &task_secs], json!({"group": "cpu"}));
            for i in 0..n {
                let key = format!("chaos-{c}-{i}");
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let sent = http
                        .post(format!("{api}/v1/jobs"))
                        .header("Idempotency-Key", &key)
                        .json(&job)
                        .send()
                        .await;
                    if matches!(&sent, Ok(r) if r.status().is_success()) {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    ensure!(Instant::now() < deadline, "{key} was never accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            anyhow::Ok(())
        }));
    }

    // The killer: until every job is done (at least three times), so that kills land on
    // submissions, assignments, runs and recordings alike.
    let total = opts.jobs as i64;
    let mut rng = XorShift(opts.seed.max(1));
    let mut report = ChaosReport::default();
    let mut last_kill = Instant::now();
    let mut kills = 0;
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(opts.kill_every).await;
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await
            .unwrap_or(0);
        let all_in = accepted.load(Ordering::Relaxed) >= opts.jobs;
        if (all_in && done == total && kills >= 3) || Instant::now() > give_up {
            break;
        }
        let victim = (rng.next() % members.len() as u64) as usize;
        let m = &mut members[victim];
        m.process.kill_in_place().await?;
        m.process = match m.role {
            "submitter" => {
                fleet
                    .spawn_submitter_process(&sub_bin, &format!("submitter-{kills}"))
                    .await?
            }
            "executor" => {
                // On odd-numbered kills the machine "never comes back": its
                // replacement has a new id, and the work left in the old one's queue is
                // recovered only through its leases (lost attempts, retried elsewhere).
                if kills % 2 == 1 {
                    m.id = format!("{}-r{kills}", m.id);
                }
                fleet.spawn_executor_process(
                    &exec_bin,
                    ExecutorSpec::new(&m.id, &["cpu"], opts.capacity),
                )?
            }
            "dispatcher" => fleet.spawn_process(&disp_bin, &format!("{}-{kills}", m.id), &[])?,
            _ => fleet.spawn_process(&coll_bin, &format!("collector-{kills}"), &[])?,
        };
        *report.kills.entry(m.role).or_default() += 1;
        kills += 1;
        last_kill = Instant::now();
    }
    for h in handles {
        h.await??;
    }

    wait_for("every job to finish", Duration::from_secs(600), || async {
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await
            .unwrap_or(0);
        Ok((done == total).then_some(()))
    })
    .await?;
    report.last_kill_to_last_completion = last_kill.elapsed();
    report.submitted = fleet.count("SELECT count(*) FROM jobs").await?;
    report.completed = fleet
        .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        .await?;
    report.retried_tasks = fleet
        .count("SELECT count(*) FROM tasks WHERE attempts > 1")
        .await?;
    report.lost_attempts = fleet
        .count("SELECT count(*) FROM attempts WHERE state = 'lost'")
        .await?;
    report.duplicates = fleet
        .count(
            "SELECT (SELECT count(*) FROM (SELECT task_id FROM attempts
                                           WHERE state NOT IN ('lost', 'assigned', 'running')
                                           GROUP BY task_id HAVING count(*) > 1) d)
                  + (SELECT count(*) - count(DISTINCT idempotency_key) FROM jobs)",
        )
        .await?;
    report.elapsed = started.elapsed();
    for m in members {
        let _ = m.process.kill().await;
    }
    fleet.shutdown().await?;
    Ok(report)
}
