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
    let names = fleet_shared::amqp::Names::new(&fleet.name);
    let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "dead-reader").await?;
    let ch = conn.create_channel().await?;
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reasons.len() < 2 && tokio::time::Instant::now() < deadline {
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
        reasons.push((header("x-fleet-reason"), header("x-fleet-source")));
    }
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for (reason, source) in &reasons {
        assert!(reason.contains("rejected_by_database"), "{reason}");
        assert!(source.contains("collector.results"), "{source}");
    }
    let _ = conn.close(200, "".into()).await;
    fleet.shutdown().await
}
