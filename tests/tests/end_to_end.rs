//! The fleet end to end, against the real RabbitMQ and PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use fleet_shared::id::JobId;
use fleet_tests::{job_of, wait_for, ExecutorSpec, TestFleet};
use serde_json::json;

const JOB_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_over_http_and_amqp_complete_with_readable_results() -> Result<()> {
    let mut fleet = TestFleet::start("paths").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;

    let http_job = fleet
        .submit(
            &json!({"tasks": [{"name": "greet", "argv": ["sh", "-c", "echo hello from http"]}]}),
        )
        .await?;
    let body = json!({"type": "submit", "v": 1,
                      "job": {"tasks": [{"argv": ["sh", "-c", "echo hello from amqp; echo warn >&2"]}]}});
    let reply = fleet
        .submit_amqp(body.to_string().as_bytes(), Some("amqp-1"))
        .await?;
    assert_eq!(reply["accepted"], true, "{reply}");
    let amqp_job: JobId = serde_json::from_value(reply["job_id"].clone())?;

    for (id, expected) in [
        (http_job, "hello from http\n"),
        (amqp_job, "hello from amqp\n"),
    ] {
        let job = fleet.wait_job(id, JOB_DEADLINE).await?;
        assert_eq!(job.state, "succeeded");
        let results = fleet.results(id).await?;
        assert_eq!(results.results.len(), 1);
        let r = &results.results[0];
        assert_eq!(r.executor_id, "cpu-1");
        assert_eq!(r.outcome, "succeeded");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout, expected);
        assert!(r.started_at.is_some() && r.finished_at.is_some());
    }
    assert_eq!(fleet.results(amqp_job).await?.results[0].stderr, "warn\n");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_evenly_over_executors_of_equal_capacity() -> Result<()> {
    let mut fleet = TestFleet::start("balance").await?;
    for id in ["b-1", "b-2", "b-3"] {
        fleet
            .add_executor(ExecutorSpec::new(id, &["cpu"], 4))
            .await?;
    }
    fleet.wait_executors(&["b-1", "b-2", "b-3"]).await?;
    let id = fleet
        .submit(&job_of(300, &["sleep", "0.05"], json!({"group": "cpu"})))
        .await?;
    let job = fleet.wait_job(id, Duration::from_secs(120)).await?;
    assert_eq!(job.state, "succeeded");
    let mut per_executor: HashMap<String, usize> = HashMap::new();
    for r in fleet.results(id).await?.results {
        *per_executor.entry(r.executor_id).or_default() += 1;
    }
    assert_eq!(per_executor.values().sum::<usize>(), 300);
    for id in ["b-1", "b-2", "b-3"] {
        let n = per_executor.get(id).copied().unwrap_or(0);
        assert!(
            (80..=120).contains(&n),
            "{id} ran {n} of 300: {per_executor:?}"
        );
    }
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_only_in_their_group_and_on_executors_with_their_labels() -> Result<()> {
    let mut fleet = TestFleet::start("groups").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 4))
        .await?;
    fleet
        .add_executor(ExecutorSpec::new("lab-1", &["lab"], 2))
        .await?;
    fleet
        .add_executor(ExecutorSpec::new("gpu-1", &["lab.gpu"], 2).label("gpu=yes"))
        .await?;
    fleet.wait_executors(&["cpu-1", "lab-1", "gpu-1"]).await?;

    let lab = fleet
        .submit(&job_of(30, &["true"], json!({"group": "lab"})))
        .await?;
    let gpu = fleet
        .submit(&job_of(10, &["true"], json!({"labels": {"gpu": "yes"}})))
        .await?;
    let gpu_group = fleet
        .submit(&job_of(10, &["true"], json!({"group": "lab.gpu"})))
        .await?;
    for id in [lab, gpu, gpu_group] {
        assert_eq!(fleet.wait_job(id, JOB_DEADLINE).await?.state, "succeeded");
    }
    let ran_on = |results: fleet_shared::db::read::ResultsView| -> Vec<String> {
        results.results.into_iter().map(|r| r.executor_id).collect()
    };
    let lab_ran = ran_on(fleet.results(lab).await?);
    assert_eq!(lab_ran.len(), 30);
    assert!(
        lab_ran.iter().all(|e| e == "lab-1" || e == "gpu-1"),
        "{lab_ran:?}"
    );
    assert!(
        lab_ran.iter().any(|e| e == "lab-1") && lab_ran.iter().any(|e| e == "gpu-1"),
        "{lab_ran:?}"
    );
    for id in [gpu, gpu_group] {
        let ran = ran_on(fleet.results(id).await?);
        assert_eq!(ran.len(), 10);
        assert!(ran.iter().all(|e| e == "gpu-1"), "{ran:?}");
    }
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_fails_to_spawn_and_a_timeout_kills_the_process_group() -> Result<()> {
    let mut fleet = TestFleet::start("failures").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;
    let id = fleet
        .submit(&json!({"tasks": [
            {"name": "missing", "argv": ["/nonexistent/fleet-missing-command"]},
            {"name": "slow", "argv": ["sh", "-c", "sleep 300 & echo $!; wait"], "timeout_secs": 1},
        ]}))
        .await?;
    let job = fleet.wait_job(id, JOB_DEADLINE).await?;
    assert_eq!(job.state, "failed");
    let results = fleet.results(id).await?.results;
    let missing = &results[0];
    assert_eq!(missing.outcome, "spawn_failed");
    assert!(
        missing
            .error
            .as_deref()
            .unwrap_or("")
            .contains("fleet-missing-command"),
        "{missing:?}"
    );
    let slow = &results[1];
    assert_eq!(slow.outcome, "timed_out");
    assert_eq!(slow.exit_code, None);
    assert_eq!(slow.signal, Some(9));
    // The background `sleep` the task started died with its process group.
    let pid: i32 = slow.stdout.trim().parse()?;
    wait_for(
        "the task's child process to be gone",
        Duration::from_secs(10),
        || async move {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            let gone = match stat {
                Err(_) => true,
                Ok(s) => s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z'),
            };
            Ok(gone.then_some(()))
        },
    )
    .await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submissions_are_refused_naming_the_field_and_the_fleet_keeps_running(
) -> Result<()> {
    let mut fleet = TestFleet::start("malformed").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;

    let (status, body) = fleet
        .post_job(&json!({"tasks": [{"argv": "echo not a list"}]}), None)
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "tasks[0].argv");
    let (status, body) = fleet
        .post_job(
            &json!({"tasks": [{"argv": ["true"], "timeout_secs": 0}]}),
            None,
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "tasks[0].timeout_secs");

    let reply = fleet
        .submit_amqp(
            br#"{"type":"submit","v":1,"job":{"tasks":[{"argv":[]}]}}"#,
            None,
        )
        .await?;
    assert_eq!(reply["accepted"], false, "{reply}");
    assert_eq!(reply["error"]["field"], "job.tasks[0].argv", "{reply}");
    let reply = fleet.submit_amqp(b"{this is not json", None).await?;
    assert_eq!(reply["accepted"], false, "{reply}");
    // Both ended in the dead-letter queue rather than being lost or retried.
    let dead = fleet_shared::amqp::Names::new(&fleet.name).dead_queue();
    wait_for("two dead letters", Duration::from_secs(10), || async {
        let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "probe").await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                dead.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        let _ = conn.close(200, "".into()).await;
        Ok((q.message_count() >= 2).then_some(()))
    })
    .await?;

    let id = fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    assert_eq!(fleet.wait_job(id, JOB_DEADLINE).await?.state, "succeeded");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_yields_one_job_over_either_path() -> Result<()> {
    let fleet = TestFleet::start("idempotent").await?;
    let job = job_of(2, &["true"], json!({}));
    let (s1, b1) = fleet.post_job(&job, Some("key-1")).await?;
    let (s2, b2) = fleet.post_job(&job, Some("key-1")).await?;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(b1["job_id"], b2["job_id"]);
    assert_eq!(b2["created"], false);

    let body = json!({"type": "submit", "v": 1, "job": job}).to_string();
    let r1 = fleet.submit_amqp(body.as_bytes(), Some("msg-1")).await?;
    let r2 = fleet.submit_amqp(body.as_bytes(), Some("msg-1")).await?;
    assert_eq!(r1["accepted"], true, "{r1}");
    assert_eq!(r1["job_id"], r2["job_id"]);
    assert_eq!(r2["created"], false);
    assert_ne!(r1["job_id"], b1["job_id"]);

    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 2);
    assert_eq!(fleet.count("SELECT count(*) FROM tasks").await?, 4);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_and_jobs_are_announced_on_the_events_exchange() -> Result<()> {
    use futures_util::StreamExt;
    let mut fleet = TestFleet::start("events").await?;
    fleet
        .add_executor(ExecutorSpec::new("cpu-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["cpu-1"]).await?;
    let (conn, mut events) = fleet.listen_events().await?;
    let id = fleet
        .submit(&job_of(2, &["true"], json!({"group": "cpu"})))
        .await?;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(e, _): &(String, Option<String>)| e == "job.succeeded")
    {
        let d = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("event consumer ended"))??;
        let ev: fleet_shared::event::Event = serde_json::from_slice(&d.data)?;
        // Executor events (an `executor.joined` may land after the executor is
        // seen in the table) carry no job; every other event is this job's.
        if ev.kind.as_str().starts_with("executor.") {
            assert_eq!(ev.job_id, None, "{ev:?}");
            continue;
        }
        assert_eq!(ev.job_id, Some(id), "{ev:?}");
        assert_eq!(d.routing_key.as_str(), ev.kind.as_str());
        let message_id = d.properties.message_id().as_ref().map(|m| m.to_string());
        seen.push((ev.kind.to_string(), message_id));
    }
    let finished = seen.iter().filter(|(e, _)| e == "task.finished").count();
    assert_eq!(finished, 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(_, m)| m.as_deref().is_some_and(|m| m.contains("-event-"))),
        "{seen:?}"
    );
    let _ = conn.close(200, "".into()).await;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_database_pool_fails_fast_with_503_instead_of_hanging() -> Result<()> {
    // One pooled connection, and callers wait at most 300 ms for it.
    let fleet = TestFleet::start_with("pool", |c| {
        c.database.pool_size = 1;
        c.database.pool_wait_ms = 300;
    })
    .await?;
    // Hold the jobs table so that a submission keeps the submitter's only connection busy.
    let mut client = fleet.pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .await?;
    let job = job_of(1, &["true"], json!({}));
    let early = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let first = {
        let (http, api, job) = (fleet.http.clone(), fleet.api.clone(), job.clone());
        let early = early.clone();
        tokio::spawn(async move {
            let resp = http
                .post(format!("{api}/v1/jobs"))
                .json(&job)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            if let Ok(mut e) = early.lock() {
                *e = Some(format!("{status}: {body}"));
            }
            Ok::<_, anyhow::Error>(status)
        })
    };
    // Wait until that submission is blocked on the lock, holding the connection.
    wait_for(
        "the first submission to hold the connection",
        Duration::from_secs(10),
        || async {
            if let Some(answer) = early.lock().ok().and_then(|e| e.clone()) {
                anyhow::bail!(
                    "the first submission was answered instead of waiting on the lock: {answer}"
                );
            }
            // A lock request on this test's jobs table that is not granted: the submission
            // waits on it. (pg_stat_activity's query text is no guide: while a statement is
            // being parsed it can still show the connection's previous one.)
            let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'jobs'::regclass",
                &[],
            )
            .await?
            .get(0);
            Ok((n > 0).then_some(()))
        },
    )
    .await?;
    let asked = std::time::Instant::now();
    let (status, body) = fleet.post_job(&job, None).await?;
    let took = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // Released, the first submission completes: it was delayed, not lost.
    tx.rollback().await?;
    assert_eq!(first.await??, 201);
    drop(client);
    fleet.shutdown().await
}
