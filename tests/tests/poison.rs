//! A poison message: one result the database refuses every time. It must end in the
//! dead-letter queue with its reason after a bounded number of tries, without taking the
//! good results of its batch with it and without looping.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{ExecutorSpec, TestFleet};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_refused_every_time_is_dead_lettered_and_its_batch_is_recorded() -> Result<()> {
    let mut fleet = TestFleet::start_with("poison", |c| {
        c.dispatcher.lease_timeout_secs = 3;
        c.dispatcher.executor_timeout_secs = 2;
    })
    .await?;
    // Stands in for any refusal that does not pass (a constraint, a bad value): the
    // database rejects results whose output starts with "poison".
    fleet
        .pool
        .get()
        .await?
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'poison result refused'; END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON results FOR EACH ROW
                 WHEN (NEW.stdout LIKE 'poison%') EXECUTE FUNCTION refuse_poison();",
        )
        .await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 4))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;

    let mut tasks: Vec<_> = (0..19)
        .map(|_| json!({"argv": ["echo", "ok"], "group": "cpu"}))
        .collect();
    tasks.push(
        json!({"name": "poison", "argv": ["echo", "poison"], "group": "cpu", "max_attempts": 2}),
    );
    let id = fleet.submit(&json!({ "tasks": tasks })).await?;
    let job = fleet.wait_job(id, Duration::from_secs(60)).await?;

    // The good results of every batch were recorded; the poison task, whose result never
    // could be, ran out of attempts as lost.
    assert_eq!(job.state, "failed");
    assert_eq!((job.counts.succeeded, job.counts.failed), (19, 1));
    let poison = job
        .tasks
        .iter()
        .find(|t| t.name == "poison")
        .expect("the poison task");
    assert_eq!(poison.state, "failed");
    assert_eq!(poison.history.len(), 2);
    assert_eq!(fleet.count("SELECT count(*) FROM results").await?, 19);

    // Each attempt's result was dead-lettered once, with the reason.
    let dead = fleet.dead_letters(2, Duration::from_secs(10)).await?;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert!(d.reason.contains("rejected_by_database"), "{d:?}");
        assert!(d.source.contains("collector.results"), "{d:?}");
    }
    // The dead-letter queue is bounded, in number and in age.
    let args = fleet
        .queue_arguments(&fleet_shared::amqp::Names::new(&fleet.name).dead_queue())
        .await?;
    assert_eq!(
        args["x-max-length"],
        fleet_shared::amqp::DEAD_LETTER_MAX,
        "{args}"
    );
    assert_eq!(args["x-overflow"], "drop-head", "{args}");
    assert_eq!(
        args["x-message-ttl"],
        fleet_shared::amqp::DEAD_LETTER_TTL_MS,
        "{args}"
    );
    fleet.shutdown().await
}
