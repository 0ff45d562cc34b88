//! Results are believed only from the executor that holds the attempt: a result planted
//! ahead of its attempt, for a task that does not exist, or from another executor is
//! dead-lettered with the reason, and the real result is the one recorded.

use std::time::Duration;

use anyhow::Result;
use fleet_shared::amqp::{keys, Names};
use fleet_shared::id::{ExecutorId, JobId, TaskId};
use fleet_shared::proto::{self, Outcome, TaskResult};
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

fn forged(task_id: TaskId, job_id: JobId, executor: &str, stdout: &str) -> Result<TaskResult> {
    let now = chrono::Utc::now();
    Ok(TaskResult {
        task_id,
        attempt: 1,
        job_id,
        executor_id: ExecutorId::parse(executor)?,
        outcome: Outcome::Succeeded,
        exit_code: Some(1),
        signal: None,
        error: None,
        stdout: stdout.into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        started_at: Some(now),
        finished_at: now,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_planted_for_a_future_attempt_is_dead_lettered_and_the_real_one_counts(
) -> Result<()> {
    let mut fleet = TestFleet::start("planted").await?;
    fleet
        .add_executor(ExecutorSpec::new("real-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["real-1"]).await?;
    // `second` waits for `first`, which waits on a file the test creates: the planted
    // result arrives while `second` has no attempt at all.
    let gate = std::env::temp_dir().join(format!("{}-gate", fleet.name));
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "first", "group": "cpu",
             "argv": ["sh", "-c", format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())]},
            {"name": "second", "group": "cpu", "depends_on": ["first"], "argv": ["echo", "real"]},
        ]}))
        .await?;
    let view = fleet.job(job).await?;
    let second = view.tasks[1].task_id;
    assert_eq!(view.tasks[1].state, "waiting");

    let n = Names::new(&fleet.name);
    let planted = forged(second, job, "real-1", "planted")?;
    fleet
        .publish_raw(
            &n.root_exchange(),
            &keys::result(&planted.executor_id),
            &proto::encode(&planted),
        )
        .await?;
    // And one for a task that does not exist at all.
    let nowhere = forged(TaskId::new(), job, "real-1", "nowhere")?;
    fleet
        .publish_raw(
            &n.root_exchange(),
            &keys::result(&nowhere.executor_id),
            &proto::encode(&nowhere),
        )
        .await?;
    let dead = fleet.dead_letters(2, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 2, "both refused: {dead:?}");
    for d in &dead {
        assert_eq!(d.reason, "unknown_attempt", "{d:?}");
        assert!(d.source.ends_with("collector.results"), "{d:?}");
    }
    assert_eq!(fleet.count("SELECT count(*) FROM results").await?, 0);

    std::fs::write(&gate, b"")?;
    let done = fleet.wait_job(job, Duration::from_secs(60)).await?;
    assert_eq!(done.state, "succeeded");
    let results = fleet.results(job).await?.results;
    let real = results
        .iter()
        .find(|r| r.task_id == second)
        .expect("second's result");
    assert_eq!(
        (
            real.stdout.as_str(),
            real.exit_code,
            real.executor_id.as_str()
        ),
        ("real\n", Some(0), "real-1")
    );
    let _ = std::fs::remove_file(&gate);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_an_executor_that_does_not_hold_the_attempt_is_dead_lettered() -> Result<()> {
    let mut fleet = TestFleet::start("notholder").await?;
    fleet
        .add_executor(ExecutorSpec::new("holder-1", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["holder-1"]).await?;
    let gate = std::env::temp_dir().join(format!("{}-gate", fleet.name));
    let job = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "argv": ["sh", "-c",
            format!("while [ ! -e {} ]; do sleep 0.05; done; echo mine", gate.display())]}]}))
        .await?;
    let task = wait_for("the task to run", Duration::from_secs(30), || async {
        let j = fleet.job(job).await?;
        Ok((j.tasks[0].state == "running").then_some(j.tasks[0].task_id))
    })
    .await?;
    // Another executor's name, with its own routing key (as the broker would allow it).
    let other = forged(task, job, "intruder", "not mine")?;
    fleet
        .publish_raw(
            &Names::new(&fleet.name).root_exchange(),
            &keys::result(&other.executor_id),
            &proto::encode(&other),
        )
        .await?;
    let dead = fleet.dead_letters(1, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "not_holder", "{:?}", dead[0]);
    std::fs::write(&gate, b"")?;
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    let results = fleet.results(job).await?.results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].stdout, "mine\n");
    assert_eq!(fleet.count("SELECT count(*) FROM results").await?, 1);
    let _ = std::fs::remove_file(&gate);
    fleet.shutdown().await
}

/// Results sent together (`results`) are judged one by one: a result in the list from
/// the attempt's holder is recorded, and only the planted one is dead-lettered, alone, as
/// a `result`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_result_in_a_list_is_refused_alone() -> Result<()> {
    let mut fleet = TestFleet::start("plantedlist").await?;
    fleet
        .add_executor(ExecutorSpec::new("list-1", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["list-1"]).await?;
    let gate = std::env::temp_dir().join(format!("{}-gate", fleet.name));
    let job = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "argv": ["sh", "-c",
            format!("while [ ! -e {} ]; do sleep 0.05; done; echo late", gate.display())]}]}))
        .await?;
    let task = wait_for("the task to run", Duration::from_secs(30), || async {
        let j = fleet.job(job).await?;
        Ok((j.tasks[0].state == "running").then_some(j.tasks[0].task_id))
    })
    .await?;
    // In the holder's name (as only the holder could send it), with a planted one.
    let held = forged(task, job, "list-1", "from the list")?;
    let planted = forged(TaskId::new(), job, "list-1", "planted")?;
    fleet
        .publish_raw(
            &Names::new(&fleet.name).root_exchange(),
            &keys::result(&held.executor_id),
            &proto::encode(&proto::Results {
                results: vec![planted.clone(), held],
            }),
        )
        .await?;
    let dead = fleet.dead_letters(1, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "unknown_attempt", "{:?}", dead[0]);
    assert_eq!(proto::decode::<TaskResult>(&dead[0].body)?, planted);
    let done = fleet.wait_job(job, Duration::from_secs(30)).await?;
    assert_eq!(done.state, "succeeded");
    let results = fleet.results(job).await?.results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].stdout, "from the list");
    // The command itself never ends (its gate is never made): the shutdown kills it.
    fleet.shutdown().await
}
