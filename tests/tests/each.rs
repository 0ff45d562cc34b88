//! Run on every member (`each`) with a quorum (issue 5), against the real RabbitMQ and
//! PostgreSQL; executors killed mid-task are real processes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use fleet_shared::db::read::JobView;
use fleet_shared::id::JobId;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use serde_json::{json, Value};

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");
const MEMBERS: [&str; 4] = ["e-1", "e-2", "e-3", "e-4"];

async fn four_members(hint: &str) -> Result<TestFleet> {
    let mut fleet = TestFleet::start(hint).await?;
    for id in MEMBERS {
        fleet
            .add_executor(ExecutorSpec::new(id, &["site"], 2))
            .await?;
    }
    // Not a member: it must never get a copy.
    fleet
        .add_executor(ExecutorSpec::new("outsider", &["other"], 2))
        .await?;
    let mut all = MEMBERS.to_vec();
    all.push("outsider");
    fleet.wait_executors(&all).await?;
    Ok(fleet)
}

fn each_task(script: &str, extra: Value) -> Value {
    let mut t = json!({"argv": ["sh", "-c", script], "group": "site", "each": true});
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    json!({"tasks": [t]})
}

/// Executor -> (outcome, stdout) of every counted result of the job.
async fn by_executor(fleet: &TestFleet, job: JobId) -> Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for r in fleet.results(job).await?.results {
        let prev = out.insert(r.executor_id.clone(), (r.outcome, r.stdout));
        assert!(prev.is_none(), "two results listed for {}", r.executor_id);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_each_task_runs_exactly_once_on_every_member_with_results_per_executor() -> Result<()> {
    let fleet = four_members("each").await?;
    let job = fleet
        .submit(&each_task("echo ran on $FLEET_EXECUTOR_ID", json!({})))
        .await?;
    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded");
    let results = by_executor(&fleet, job).await?;
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        MEMBERS.iter().collect::<Vec<_>>()
    );
    for (executor, (outcome, stdout)) in &results {
        assert_eq!(outcome, "succeeded");
        assert_eq!(stdout, &format!("ran on {executor}\n"));
    }
    // Exactly once each: one attempt per member, nothing anywhere else.
    let task = done.tasks[0].task_id;
    let attempts = fleet.attempts_of(task).await?;
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    let copies: Vec<(&str, &str)> = done.tasks[0]
        .copies
        .iter()
        .map(|c| (c.executor_id.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        copies,
        MEMBERS
            .iter()
            .map(|m| (*m, "succeeded"))
            .collect::<Vec<_>>()
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_three_survives_one_failure_and_fails_at_the_second() -> Result<()> {
    let fleet = four_members("quorum").await?;
    let one_fails = fleet
        .submit(&each_task(
            r#"[ "$FLEET_EXECUTOR_ID" = e-4 ] && exit 7; echo ok"#,
            json!({"quorum": 3}),
        ))
        .await?;
    let done = fleet.wait_job(one_fails, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded", "3 of 4 succeeded: {done:?}");
    let results = by_executor(&fleet, one_fails).await?;
    // The failure may still be running when the quorum is met; it is kept once it ends.
    wait_for(
        "the failing member's result",
        Duration::from_secs(30),
        || async { Ok((by_executor(&fleet, one_fails).await?.len() == 4).then_some(())) },
    )
    .await?;
    assert!(results.len() >= 3);
    let results = by_executor(&fleet, one_fails).await?;
    assert_eq!(results["e-4"].0, "failed");
    assert!(MEMBERS[..3].iter().all(|m| results[*m].0 == "succeeded"));

    // Two members fail fast, two sleep: the task fails as soon as the second failure is
    // recorded, while the sleepers still run.
    let two_fail = fleet
        .submit(&each_task(
            r#"case "$FLEET_EXECUTOR_ID" in e-3|e-4) exit 1;; esac; sleep 30"#,
            json!({"quorum": 3}),
        ))
        .await?;
    let failed = fleet.wait_job(two_fail, Duration::from_secs(20)).await?;
    assert_eq!(failed.state, "failed");
    let t = &failed.tasks[0];
    assert_eq!(t.state, "failed");
    let state_of = |id: &str| {
        t.copies
            .iter()
            .find(|c| c.executor_id == id)
            .map(|c| c.state.clone())
            .unwrap_or_default()
    };
    assert_eq!(state_of("e-3"), "failed");
    assert_eq!(state_of("e-4"), "failed");
    assert_eq!(
        state_of("e-1"),
        "assigned",
        "decided before the sleepers finished"
    );
    assert_eq!(state_of("e-2"), "assigned");
    fleet.shutdown().await
}

/// Short leases so the tests see recovery and grace within their patience.
async fn process_members(hint: &str) -> Result<(TestFleet, Vec<fleet_tests::ServiceProcess>)> {
    let fleet = TestFleet::start_with(hint, |c| {
        c.dispatcher.lease_timeout_secs = 2;
        c.dispatcher.executor_timeout_secs = 1;
    })
    .await?;
    let mut procs = Vec::new();
    for id in MEMBERS {
        procs
            .push(fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new(id, &["site"], 1))?);
    }
    fleet.wait_executors(&MEMBERS).await?;
    Ok((fleet, procs))
}

async fn wait_copy_running(fleet: &TestFleet, job: JobId, member: &str) -> Result<()> {
    wait_for(
        &format!("{member} to run its copy"),
        Duration::from_secs(30),
        || async {
            let j = fleet.job(job).await?;
            Ok(j.tasks[0]
                .history
                .iter()
                .any(|a| a.executor_id == member && a.state == "running")
                .then_some(()))
        },
    )
    .await
}

async fn copy_state(fleet: &TestFleet, job: JobId, member: &str) -> Result<(String, JobView)> {
    let j = fleet.job(job).await?;
    let state = j.tasks[0]
        .copies
        .iter()
        .find(|c| c.executor_id == member)
        .map(|c| c.state.clone())
        .unwrap_or_default();
    Ok((state, j))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_gets_its_copy_again_when_it_comes_back_and_it_never_moves() -> Result<()> {
    let (fleet, mut procs) = process_members("eachkill").await?;
    let job = fleet
        .submit(&each_task(
            "sleep 2; echo done on $FLEET_EXECUTOR_ID",
            json!({"max_attempts": 3}),
        ))
        .await?;
    wait_copy_running(&fleet, job, "e-4").await?;
    let victim = procs.pop().expect("four processes");
    victim.kill().await?;
    // Its lease runs out: the attempt is lost and the copy waits for e-4, not for anyone else.
    wait_for(
        "e-4's copy to wait for it",
        Duration::from_secs(30),
        || async {
            let (state, _) = copy_state(&fleet, job, "e-4").await?;
            Ok((state == "pending").then_some(()))
        },
    )
    .await?;
    procs.push(fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new("e-4", &["site"], 1))?);
    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded", "{done:?}");
    let results = by_executor(&fleet, job).await?;
    assert_eq!(results.len(), 4);
    assert_eq!(results["e-4"], ("succeeded".into(), "done on e-4\n".into()));
    // The copy never moved: every attempt of this task ran on the member it belongs to,
    // the other members once each, e-4 twice (the lost one and the one that counted).
    let attempts = fleet.attempts_of(done.tasks[0].task_id).await?;
    let on = |m: &str| {
        attempts
            .iter()
            .filter(|(e, _)| e == m)
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
    };
    for m in &MEMBERS[..3] {
        assert_eq!(on(m), ["succeeded"], "{attempts:?}");
    }
    assert_eq!(on("e-4"), ["lost", "succeeded"], "{attempts:?}");
    assert_eq!(attempts.len(), 5);
    drop(procs);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_not_back_within_the_grace_period_counts_as_failed() -> Result<()> {
    let (fleet, mut procs) = process_members("eachgrace").await?;
    let job = fleet
        .submit(&each_task("sleep 2", json!({"max_attempts": 2})))
        .await?;
    wait_copy_running(&fleet, job, "e-4").await?;
    procs.pop().expect("four processes").kill().await?;
    // Quorum = all: once e-4 is gone past the grace period (lease 2 s x 2 attempts), the
    // task fails, and nobody else ran e-4's copy.
    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "failed", "{done:?}");
    let copy = done.tasks[0]
        .copies
        .iter()
        .find(|c| c.executor_id == "e-4")
        .cloned()
        .expect("e-4 has a copy");
    assert_eq!(copy.state, "failed");
    assert!(
        copy.error.as_deref().unwrap_or("").contains("grace"),
        "{copy:?}"
    );
    let attempts = fleet.attempts_of(done.tasks[0].task_id).await?;
    assert_eq!(
        attempts.iter().filter(|(e, _)| e == "e-4").count(),
        1,
        "{attempts:?}"
    );
    assert_eq!(attempts.len(), 4, "one attempt per member: {attempts:?}");
    let results = by_executor(&fleet, job).await?;
    assert_eq!(results.len(), 4);
    assert!(MEMBERS[..3].iter().all(|m| results[*m].0 == "succeeded"));
    drop(procs);
    fleet.shutdown().await
}
