//! Services killed with SIGKILL while work flows: nothing accepted is lost, nothing is
//! recorded twice.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_tests::{job_of, wait_for, ExecutorSpec, InProcess, TestFleet};
use serde_json::json;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-collector");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_collector_while_results_flow_loses_nothing_and_records_nothing_twice(
) -> Result<()> {
    let mut fleet = TestFleet::start_opts(
        "killcoll",
        InProcess {
            submitter: true,
            dispatcher: true,
            collector: false,
        },
        |_| {},
    )
    .await?;
    for id in ["k-1", "k-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["k-1", "k-2"]).await?;
    let mut collector = fleet.spawn_process(COLLECTOR_BIN, "collector-1", &[])?;

    let total = 300usize;
    let mut jobs = Vec::with_capacity(total);
    let mut kills = 0;
    for i in 0..total {
        jobs.push(
            fleet
                .submit(&job_of(
                    1,
                    &["sh", "-c", "echo $PPID"],
                    json!({"group": "cpu"}),
                ))
                .await?,
        );
        // Kill the collector three times in the stream, each time once it has recorded
        // something since its start, so that it dies with results in flight.
        if i % 100 == 50 {
            let before = fleet.count("SELECT count(*) FROM results").await?;
            wait_for(
                "the collector to record results",
                Duration::from_secs(30),
                || async {
                    Ok((fleet.count("SELECT count(*) FROM results").await? > before).then_some(()))
                },
            )
            .await?;
            collector.kill_in_place().await?;
            kills += 1;
            collector =
                fleet.spawn_process(COLLECTOR_BIN, &format!("collector-{}", kills + 1), &[])?;
        }
    }
    let started = Instant::now();
    for id in &jobs {
        let j = fleet.wait_job(*id, Duration::from_secs(120)).await?;
        assert_eq!(j.state, "succeeded", "job {id}");
    }
    assert_eq!(kills, 3);
    assert_eq!(
        fleet.count("SELECT count(*) FROM results").await?,
        total as i64
    );
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND final_attempt = 1")
            .await?,
        total as i64,
        "every task decided once, by its first attempt"
    );
    eprintln!("all {total} jobs recorded {:.1}s after the last submission, across {kills} collector kills",
        started.elapsed().as_secs_f64());
    collector.kill().await?;
    fleet.shutdown().await
}

const SUBMITTER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-submitter");

/// Publishes `n` submit messages with message ids `<tag>-<i>`, confirmed by the broker.
async fn publish_submits(fleet: &TestFleet, tag: &str, n: usize) -> Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let names = fleet_shared::amqp::Names::new(&fleet.name);
    let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "submit-client").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = json!({"type": "submit", "v": 1,
                      "job": {"tasks": [{"argv": ["true"], "group": "cpu"}]}})
    .to_string();
    for i in 0..n {
        let props = fleet_shared::amqp::json_properties()
            .with_message_id(format!("{tag}-{i}").into())
            .with_headers(TestFleet::submit_headers(
                fleet.cfg.auth.admin_token.as_deref(),
            ));
        ch.basic_publish(
            names.submit_exchange().as_str().into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await?;
    }
    ch.wait_for_confirms().await?;
    let _ = conn.close(200, "".into()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_submitter_while_jobs_arrive_loses_nothing_and_creates_nothing_twice(
) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut fleet = TestFleet::start_opts(
        "killsub",
        InProcess {
            submitter: false,
            dispatcher: true,
            collector: true,
        },
        |_| {},
    )
    .await?;
    for id in ["s-1", "s-2"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    let mut submitter = fleet
        .spawn_submitter_process(SUBMITTER_BIN, "submitter-1")
        .await?;
    fleet.wait_executors(&["s-1", "s-2"]).await?;
    // Messages waiting in the intake queue while the submitter dies and comes back.
    publish_submits(&fleet, "amqp", 300).await?;

    // HTTP clients that retry a failed submission with the same idempotency key, as a
    // careful client does; the submitter is killed under them.
    let per_client = 100;
    let clients = 3;
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (http, api, accepted) = (fleet.http.clone(), fleet.api.clone(), accepted.clone());
        handles.push(tokio::spawn(async move {
            let job = job_of(1, &["true"], json!({"group": "cpu"}));
            let mut tickets = HashMap::new();
            for i in 0..per_client {
                let key = format!("http-{c}-{i}");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let sent = http
                        .post(format!("{api}/v1/jobs"))
                        .header("Idempotency-Key", &key)
                        .json(&job)
                        .send()
                        .await;
                    if let Ok(resp) = sent {
                        if resp.status().is_success() {
                            let body: serde_json::Value = resp.json().await?;
                            tickets.insert(
                                key.clone(),
                                body["job_id"].as_str().unwrap_or("").to_owned(),
                            );
                            accepted.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    anyhow::ensure!(Instant::now() < deadline, "{key} never accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            anyhow::Ok(tickets)
        }));
    }
    let total = per_client * clients;
    for (kill, at) in [(1, total / 6), (2, total / 2), (3, 5 * total / 6)] {
        wait_for(
            "submissions to be accepted",
            Duration::from_secs(60),
            || async { Ok((accepted.load(Ordering::Relaxed) >= at).then_some(())) },
        )
        .await?;
        submitter.kill_in_place().await?;
        submitter = fleet
            .spawn_submitter_process(SUBMITTER_BIN, &format!("submitter-{}", kill + 1))
            .await?;
    }
    let mut tickets = HashMap::new();
    for h in handles {
        tickets.extend(h.await??);
    }
    assert_eq!(tickets.len(), total);

    let expected = (total + 300) as i64;
    wait_for("every job to finish", Duration::from_secs(120), || async {
        let done = fleet
            .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await?;
        Ok((done == expected).then_some(()))
    })
    .await?;
    // Exactly one job per key, over either path, and it is the one the client was told.
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, expected);
    assert_eq!(
        fleet
            .count("SELECT count(DISTINCT idempotency_key) FROM jobs")
            .await?,
        expected
    );
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'amqp:amqp-%'")
            .await?,
        300
    );
    let client = fleet.pool.get().await?;
    for (key, job_id) in &tickets {
        let row = client
            .query_one(
                "SELECT id::text FROM jobs WHERE idempotency_key = $1",
                &[key],
            )
            .await?;
        assert_eq!(&row.get::<_, String>(0), job_id, "{key}");
    }
    drop(client);
    submitter.kill().await?;
    fleet.shutdown().await
}
