//! The chaos soak: every service as a process (one submitter, two dispatchers, one
//! collector, three executors), jobs submitted over HTTP with idempotency keys while,
//! every few seconds, a random process is SIGKILLed (and restarted), SIGTERMed (and
//! restarted once it drained) or SIGSTOPped for longer than the lease (and continued).
//! At the end every task must have exactly one recorded outcome, none may be stuck, and
//! a task may have run more than once (by the commands' own log) only where a process
//! that ran it went silent (SIGKILL, SIGSTOP).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use nix::sys::signal::Signal;
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
    /// Faults to make at least, even if every job is done before.
    pub min_faults: usize,
    /// Paths of the service binaries: submitter, dispatcher, collector, executor.
    pub binaries: [String; 4],
}

/// What the soak does to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL, then a new process.
    Kill,
    /// SIGTERM, a new process once it has exited.
    Term,
    /// SIGSTOP for longer than the lease, then SIGCONT.
    Stop,
}

#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub submitted: i64,
    pub completed: i64,
    pub kills: HashMap<(&'static str, Fault), usize>,
    /// Executions of task commands, from the commands' own log.
    pub executions: usize,
    /// Tasks whose command ran more than once.
    pub rerun_tasks: usize,
    /// Runs beyond one that no silent process explains: a process that was SIGKILLed
    /// or SIGSTOPped ran one of the task's other runs. Must be 0.
    pub unexplained_reruns: usize,
    pub retried_tasks: i64,
    pub lost_attempts: i64,
    /// Tasks with more than one attempt closed with a real outcome (not lost), plus
    /// submissions that made more than one job: must be 0.
    pub duplicates: i64,
    pub last_kill_to_last_completion: Duration,
    pub elapsed: Duration,
    /// For each unexplained rerun: the task's runs (which process) and its attempts as
    /// PostgreSQL holds them, and the faults made, so that a failure says what happened.
    pub details: Vec<String>,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kills: Vec<_> = self.kills.iter().collect();
        kills.sort();
        writeln!(f, "jobs submitted:            {}", self.submitted)?;
        writeln!(f, "jobs completed:            {}", self.completed)?;
        writeln!(f, "faults (process, what):    {kills:?}")?;
        writeln!(f, "task executions:           {}", self.executions)?;
        writeln!(f, "tasks run more than once:  {}", self.rerun_tasks)?;
        writeln!(f, "unexplained reruns:        {}", self.unexplained_reruns)?;
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
        )?;
        for d in &self.details {
            write!(f, "\n{d}")?;
        }
        Ok(())
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

/// One run of a task's command, as it logged itself: which attempt, and which process
/// (the executor is the command's parent).
#[derive(Debug)]
struct Run {
    task: String,
    executor_pid: i32,
}

fn runs(log: &std::path::Path) -> Vec<Run> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let task = f.next()?.to_owned();
            let _attempt = f.next()?;
            let executor_pid = f.next()?.parse().ok()?;
            Some(Run { task, executor_pid })
        })
        .collect()
}

/// Runs beyond one per task, and how many of them no silent process explains: of a
/// task's k runs, k - 1 must have been made by processes that were SIGKILLed or
/// SIGSTOPped.
#[cfg(test)]
fn reruns(runs: &[Run], silent: &std::collections::HashSet<i32>) -> (usize, usize) {
    let (rerun, unexplained) = unexplained_reruns(runs, silent);
    (rerun, unexplained.iter().map(|(_, n)| n).sum())
}

/// As [`reruns`], with the tasks whose reruns are unexplained (and how many each).
fn unexplained_reruns<'a>(
    runs: &'a [Run],
    silent: &std::collections::HashSet<i32>,
) -> (usize, Vec<(&'a str, usize)>) {
    let mut by_task: HashMap<&str, Vec<i32>> = HashMap::new();
    for r in runs {
        by_task.entry(&r.task).or_default().push(r.executor_pid);
    }
    let mut rerun = 0;
    let mut unexplained = Vec::new();
    for (task, pids) in by_task.iter().filter(|(_, p)| p.len() > 1) {
        rerun += 1;
        let silenced = pids.iter().filter(|p| silent.contains(p)).count();
        let n = (pids.len() - 1).saturating_sub(silenced);
        if n > 0 {
            unexplained.push((*task, n));
        }
    }
    (rerun, unexplained)
}

/// What a failed soak prints of a task run more than once with no silent process
/// to explain it: its runs, its attempts, its events.
async fn explain(
    fleet: &TestFleet,
    task: &str,
    runs: &[Run],
    pids: &HashMap<i32, String>,
) -> Result<String> {
    use std::fmt::Write;
    let mut out = format!("task {task} ran on:");
    for r in runs.iter().filter(|r| r.task == task) {
        let who = pids.get(&r.executor_pid).map_or("?", String::as_str);
        write!(out, " {who} (pid {})", r.executor_pid)?;
    }
    let client = fleet.pool.get().await?;
    let id: uuid::Uuid = task.parse()?;
    for row in client
        .query(
            "SELECT attempt, executor_id, state,
                    to_char(assigned_at, 'HH24:MI:SS.MS'),
                    to_char(started_at, 'HH24:MI:SS.MS'),
                    to_char(finished_at, 'HH24:MI:SS.MS'),
                    to_char(lease_deadline, 'HH24:MI:SS.MS')
             FROM attempts WHERE task_id = $1 ORDER BY attempt",
            &[&id],
        )
        .await?
    {
        let f = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_default();
        write!(
            out,
            "\n  attempt {} on {}: {}, assigned {}, started {}, finished {}, lease {}",
            row.get::<_, i32>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            f(3),
            f(4),
            f(5),
            f(6)
        )?;
    }
    for row in client
        .query(
            "SELECT to_char(at, 'HH24:MI:SS.MS'), kind, attempt, executor_id, state
             FROM events WHERE task_id = $1 ORDER BY xid, id",
            &[&id],
        )
        .await?
    {
        write!(
            out,
            "\n  event {} {} attempt {:?} executor {:?} {:?}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, Option<i32>>(2),
            row.get::<_, Option<String>>(3),
            row.get::<_, Option<String>>(4),
        )?;
    }
    Ok(out)
}

pub async fn run(opts: ChaosOptions) -> Result<ChaosReport> {
    let started = Instant::now();
    let none = InProcess {
        submitter: false,
        dispatcher: false,
        collector: false,
    };
    let mut fleet = TestFleet::start_opts("chaos", none, crate::short_leases).await?;
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
    // Each run of a command says which task, which attempt and which executor process
    // (the command's parent) ran it.
    let log = std::env::temp_dir().join(format!("{}-runs.log", fleet.name));
    let command = format!(
        "echo $FLEET_TASK_ID $FLEET_ATTEMPT $PPID >> {}; sleep {}",
        log.display(),
        opts.task_secs
    );
    for c in 0..opts.clients {
        let (http, api, accepted) = (fleet.http.clone(), fleet.api.clone(), accepted.clone());
        let command = command.clone();
        let n = per_client.min(opts.jobs.saturating_sub(c * per_client));
        handles.push(tokio::spawn(async move {
            let job = job_of(1, &["sh", "-c", &command], json!({"group": "cpu"}));
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

    // The faults: until every job is done (and at least `min_faults` of them), so that
    // they land on submissions, assignments, runs and recordings alike.
    let total = opts.jobs as i64;
    let mut rng = XorShift(opts.seed.max(1));
    let mut report = ChaosReport::default();
    let mut last_kill = Instant::now();
    let mut kills = 0;
    // Processes that went silent (SIGKILL, SIGSTOP past the lease): what they ran may
    // run again elsewhere.
    let mut silent = std::collections::HashSet::new();
    let frozen_for = Duration::from_secs(fleet.cfg.dispatcher.lease_timeout_secs + 1);
    let give_up = Instant::now() + Duration::from_secs(600);
    // Which process each pid was, and the faults as they were made (UTC wall clock, to
    // read beside the attempts' times).
    let mut pids: HashMap<i32, String> = members
        .iter()
        .map(|m| (m.process.pid(), m.id.clone()))
        .collect();
    let mut timeline = Vec::new();
    loop {
        tokio::time::sleep(opts.kill_every).await;
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
            .await
            .unwrap_or(0);
        let all_in = accepted.load(Ordering::Relaxed) >= opts.jobs;
        if (all_in && done == total && kills >= opts.min_faults) || Instant::now() > give_up {
            break;
        }
        let victim = (rng.next() % members.len() as u64) as usize;
        let fault = match rng.next() % 3 {
            0 => Fault::Kill,
            1 => Fault::Term,
            _ => Fault::Stop,
        };
        let m = &mut members[victim];
        timeline.push(format!(
            "{} {fault:?} {} (pid {})",
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            m.id,
            m.process.pid()
        ));
        match fault {
            Fault::Stop => {
                silent.insert(m.process.pid());
                m.process.signal(Signal::SIGSTOP)?;
                tokio::time::sleep(frozen_for).await;
                m.process.signal(Signal::SIGCONT)?;
            }
            Fault::Kill | Fault::Term => {
                if fault == Fault::Kill {
                    silent.insert(m.process.pid());
                    m.process.kill_in_place().await?;
                } else {
                    m.process.signal(Signal::SIGTERM)?;
                    // Executors drain (5 s at most here); the others stop at once.
                    if m.process.wait_exit(Duration::from_secs(30)).await.is_err() {
                        anyhow::bail!("{} did not stop within 30 s of SIGTERM", m.id);
                    }
                }
                m.process = match m.role {
                    "submitter" => {
                        fleet
                            .spawn_submitter_process(&sub_bin, &format!("submitter-{kills}"))
                            .await?
                    }
                    "executor" => {
                        // On odd-numbered kills the machine "never comes back": its
                        // replacement has a new id, and the work left in the old one's
                        // queue is recovered only through its leases (lost attempts,
                        // retried elsewhere). A stopped one comes back as itself.
                        if fault == Fault::Kill && kills % 2 == 1 {
                            m.id = format!("{}-r{kills}", m.id);
                        }
                        fleet.spawn_executor_process(
                            &exec_bin,
                            ExecutorSpec::new(&m.id, &["cpu"], opts.capacity),
                        )?
                    }
                    "dispatcher" => {
                        fleet.spawn_process(&disp_bin, &format!("{}-{kills}", m.id), &[])?
                    }
                    _ => fleet.spawn_process(&coll_bin, &format!("collector-{kills}"), &[])?,
                };
                pids.insert(m.process.pid(), m.id.clone());
            }
        }
        *report.kills.entry((m.role, fault)).or_default() += 1;
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
                                           WHERE state NOT IN ('lost', 'assigned', 'running', 'reported')
                                           GROUP BY task_id HAVING count(*) > 1) d)
                  + (SELECT count(*) - count(DISTINCT idempotency_key) FROM jobs)",
        )
        .await?;
    let runs = runs(&log);
    report.executions = runs.len();
    let (rerun, unexplained) = unexplained_reruns(&runs, &silent);
    report.rerun_tasks = rerun;
    report.unexplained_reruns = unexplained.iter().map(|(_, n)| n).sum();
    if !unexplained.is_empty() {
        report
            .details
            .push(format!("faults:\n  {}", timeline.join("\n  ")));
        for (task, _) in &unexplained {
            report
                .details
                .push(explain(&fleet, task, &runs, &pids).await?);
        }
    }
    let _ = std::fs::remove_file(&log);
    report.elapsed = started.elapsed();
    for m in members {
        let _ = m.process.kill().await;
    }
    fleet.shutdown().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, pid: i32) -> Run {
        Run {
            task: task.into(),
            executor_pid: pid,
        }
    }

    #[test]
    fn a_rerun_is_explained_only_by_a_silent_process_among_the_runners() {
        let silent = std::collections::HashSet::from([7]);
        // Once each: nothing to explain.
        assert_eq!(reruns(&[run("a", 1), run("b", 2)], &silent), (0, 0));
        // Twice, once by a process that went silent: explained.
        assert_eq!(reruns(&[run("a", 7), run("a", 2)], &silent), (1, 0));
        // Twice by healthy processes: unexplained.
        assert_eq!(reruns(&[run("a", 1), run("a", 2)], &silent), (1, 1));
        // Three times, one silent runner: one of the two extra runs is unexplained.
        assert_eq!(
            reruns(&[run("a", 7), run("a", 1), run("a", 2)], &silent),
            (1, 1)
        );
    }
}
