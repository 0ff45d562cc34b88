//! Dispatcher failover: two dispatcher processes, one leads; the standby takes over when
//! the leader dies or freezes, and a leader that wakes up after losing its lease assigns
//! nothing (its writes are fenced by the epoch).

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_shared::id::JobId;
use fleet_tests::{job_of, wait_for, DispatcherPair, ExecutorSpec, ServiceProcess, TestFleet};
use nix::sys::signal::Signal;
use serde_json::json;

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");

struct Pair {
    fleet: TestFleet,
    leader: ServiceProcess,
    standby: ServiceProcess,
    epoch: i64,
}

/// A fleet whose dispatching is done by two dispatcher processes; returns which leads.
async fn two_dispatchers(hint: &str) -> Result<Pair> {
    let (
        mut fleet,
        DispatcherPair {
            leader,
            standby,
            epoch,
        },
    ) = TestFleet::with_dispatcher_pair(hint, DISPATCHER_BIN).await?;
    for id in ["x-1", "x-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["x-1", "x-2"]).await?;
    Ok(Pair {
        fleet,
        leader,
        standby,
        epoch,
    })
}

async fn submit_many(fleet: &TestFleet, n: usize) -> Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            fleet
                .submit(&job_of(1, &["true"], json!({"group": "cpu"})))
                .await?,
        );
    }
    Ok(ids)
}

async fn all_succeed_once(fleet: &TestFleet, ids: &[JobId]) -> Result<()> {
    for id in ids {
        let j = fleet.wait_job(*id, Duration::from_secs(60)).await?;
        assert_eq!(j.state, "succeeded", "job {id}");
        assert_eq!(fleet.results(*id).await?.results.len(), 1);
    }
    // Exactly one deciding result per task, whatever the attempts.
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM tasks WHERE state <> 'succeeded' OR final_attempt IS NULL")
            .await?,
        0
    );
    Ok(())
}

async fn wait_new_epoch(fleet: &TestFleet, old: i64) -> Result<(String, i64)> {
    wait_for(
        "the standby to take over",
        Duration::from_secs(30),
        || async { Ok(fleet.leader().await?.filter(|(_, e)| *e > old)) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_leader_is_killed() -> Result<()> {
    let Pair {
        fleet,
        leader,
        standby,
        epoch,
    } = two_dispatchers("killlead").await?;
    let mut jobs = submit_many(&fleet, 50).await?;
    let killed_at = Instant::now();
    leader.kill().await?;
    jobs.extend(submit_many(&fleet, 50).await?);
    let (holder, _) = wait_new_epoch(&fleet, epoch).await?;
    let takeover = killed_at.elapsed();
    assert!(holder.contains(&format!("-{}-", standby.pid())));
    all_succeed_once(&fleet, &jobs).await?;
    eprintln!(
        "takeover: leader killed -> standby leading in {:.1}s (leader ttl 2s)",
        takeover.as_secs_f64()
    );
    standby.kill().await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_assigns_nothing_after_it_wakes() -> Result<()> {
    let Pair {
        fleet,
        leader,
        standby,
        epoch,
    } = two_dispatchers("freezelead").await?;
    let mut jobs = submit_many(&fleet, 20).await?;
    let frozen_at = Instant::now();
    leader.signal(Signal::SIGSTOP)?;
    jobs.extend(submit_many(&fleet, 20).await?);
    wait_new_epoch(&fleet, epoch).await?;
    let takeover = frozen_at.elapsed();
    all_succeed_once(&fleet, &jobs).await?;
    let taken_over_at: chrono::DateTime<chrono::Utc> = fleet
        .pool
        .get()
        .await?
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0);

    leader.signal(Signal::SIGCONT)?;
    wait_for(
        "the woken leader to step down",
        Duration::from_secs(30),
        || async { Ok((leader.leads().await == Some(false)).then_some(())) },
    )
    .await?;
    jobs.extend(submit_many(&fleet, 20).await?);
    all_succeed_once(&fleet, &jobs).await?;
    let client = fleet.pool.get().await?;
    let stale: i64 = client
        .query_one(
            "SELECT count(*) FROM attempts WHERE epoch = $1 AND assigned_at > $2",
            &[&epoch, &taken_over_at],
        )
        .await?
        .get(0);
    assert_eq!(
        stale, 0,
        "the deposed leader assigned work after the takeover"
    );
    drop(client);
    eprintln!(
        "takeover: leader frozen -> standby leading in {:.1}s (leader ttl 2s)",
        takeover.as_secs_f64()
    );
    leader.kill().await?;
    standby.kill().await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_runs_once_when_every_dispatcher_is_down_for_twice_the_lease() -> Result<()> {
    let Pair {
        fleet,
        leader,
        standby,
        ..
    } = two_dispatchers("alldown").await?;
    let log = std::env::temp_dir().join(format!("{}-runs.log", fleet.name));
    let job = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "argv": ["sh", "-c",
            format!("echo $FLEET_EXECUTOR_ID $FLEET_ATTEMPT >> {}; sleep 12", log.display())]}]}))
        .await?;
    wait_for("the task to run", Duration::from_secs(30), || async {
        Ok((fleet.job(job).await?.tasks[0].state == "running").then_some(()))
    })
    .await?;
    // No dispatcher for twice the lease (3 s): nobody extends the lease meanwhile,
    // though the executor keeps reporting the task.
    leader.kill().await?;
    standby.kill().await?;
    let lease = Duration::from_secs(fleet.cfg.dispatcher.lease_timeout_secs);
    tokio::time::sleep(lease * 2 + Duration::from_secs(1)).await;
    let back = fleet.spawn_process(DISPATCHER_BIN, "dispatcher-c", &[])?;

    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded");
    let runs = std::fs::read_to_string(&log)?;
    assert_eq!(
        runs.lines().count(),
        1,
        "the task ran more than once: {runs}"
    );
    assert_eq!(
        fleet.attempts_of(done.tasks[0].task_id).await?.len(),
        1,
        "its one attempt was never declared lost"
    );
    let _ = std::fs::remove_file(&log);
    back.kill().await?;
    fleet.shutdown().await
}

/// A leader frozen after committing a round but before its requests reached the broker
/// publishes them when it wakes, long after its successor may have lost those attempts
/// and handed them out again. Its requests carry its epoch, and the successor told every
/// executor of its own before sweeping: the late requests are given back unrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_replaced_leader_publishes_late_are_given_back_unrun() -> Result<()> {
    let Pair {
        fleet,
        leader,
        standby,
        epoch,
    } = two_dispatchers("latepub").await?;
    leader.signal(Signal::SIGSTOP)?;
    let (_, current) = wait_new_epoch(&fleet, epoch).await?;
    // The successor runs rounds (so it has told the executors of its epoch).
    let first = submit_many(&fleet, 1).await?;
    all_succeed_once(&fleet, &first).await?;

    // What the frozen leader would publish on waking (its request for x-1), then one of
    // the current leader's; the executor takes them in that order.
    let dir = std::env::temp_dir().join(format!("{}-late", fleet.name));
    std::fs::create_dir_all(&dir)?;
    let request = |epoch: i64, marker: &str| fleet_shared::proto::Request {
        task_id: fleet_shared::id::TaskId::new(),
        attempt: 1,
        job_id: JobId::new(),
        argv: vec!["touch".into(), dir.join(marker).display().to_string()],
        env: Default::default(),
        cwd: None,
        stdin: None,
        timeout_secs: 60,
        lease_deadline: chrono::Utc::now(),
        epoch,
    };
    let root = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix).root_exchange();
    for (epoch, marker) in [(epoch, "stale"), (current, "current")] {
        fleet
            .publish_raw(
                &root,
                "request.x-1",
                &fleet_shared::proto::encode(&request(epoch, marker)),
            )
            .await?;
    }
    wait_for(
        "the current leader's request to run",
        Duration::from_secs(30),
        || async { Ok(dir.join("current").exists().then_some(())) },
    )
    .await?;
    assert!(
        !dir.join("stale").exists(),
        "the replaced leader's request ran"
    );
    let _ = std::fs::remove_dir_all(&dir);
    leader.kill().await?;
    standby.kill().await?;
    fleet.shutdown().await
}
