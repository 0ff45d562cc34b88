//! What the services write to a log file: one JSON object per line (not a terminal),
//! no colour codes, the attempt's fields on every executor line about an attempt, and no
//! ERROR when they are stopped cleanly (SIGTERM).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleet_tests::{wait_for, ExecutorSpec, InProcess, ServiceProcess, TestFleet};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::{json, Value};

const SUBMITTER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-submitter");
const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-collector");
const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");

/// Every line of a process's log, each a JSON object with the fields every line has.
fn json_lines(p: &ServiceProcess) -> Result<Vec<serde_json::Map<String, Value>>> {
    let text = p.log_text();
    ensure!(
        !text.contains('\u{1b}'),
        "{}: colour codes in a file:\n{text}",
        p.id
    );
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
            anyhow::bail!("{}: not a JSON object: {line}", p.id);
        };
        for field in ["ts", "level", "service", "message"] {
            ensure!(o.contains_key(field), "{}: no {field} in {line}", p.id);
        }
        out.push(o);
    }
    ensure!(!out.is_empty(), "{}: empty log", p.id);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_are_json_lines_with_the_attempt_and_no_error_on_a_clean_stop() -> Result<()> {
    let none = InProcess {
        submitter: false,
        dispatcher: false,
        collector: false,
    };
    let mut fleet = TestFleet::start_opts("logs", none, |_| {}).await?;
    let debug = [(
        "RUST_LOG",
        "debug,tokio_postgres=info,hyper=info,reqwest=info".to_owned(),
    )];
    let mut procs = vec![
        fleet
            .spawn_submitter_process(SUBMITTER_BIN, "submitter")
            .await?,
        fleet.spawn_process(DISPATCHER_BIN, "dispatcher", &[])?,
        fleet.spawn_process(COLLECTOR_BIN, "collector", &[])?,
    ];
    let spec = ExecutorSpec::new("logs-1", &["cpu"], 2);
    procs.push(fleet.spawn_executor_process_with(EXECUTOR_BIN, spec, &debug)?);
    fleet.wait_executors(&["logs-1"]).await?;

    // One job that runs, one that is cancelled while it runs: lines about attempts.
    let ok = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "argv": ["echo", "hi"]}]}))
        .await?;
    let long = fleet
        .submit(&json!({"tasks": [{"group": "cpu", "argv": ["sleep", "60"]}]}))
        .await?;
    assert_eq!(
        fleet.wait_job(ok, Duration::from_secs(30)).await?.state,
        "succeeded"
    );
    wait_for("the long task to run", Duration::from_secs(30), || async {
        Ok((fleet.job(long).await?.tasks[0].state == "running").then_some(()))
    })
    .await?;
    let (status, body) = fleet
        .call(Method::POST, &format!("/v1/jobs/{long}/cancel"), None)
        .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        fleet.wait_job(long, Duration::from_secs(30)).await?.state,
        "cancelled"
    );

    // A clean stop of every process: SIGTERM, and each exits 0.
    for p in procs.iter_mut().rev() {
        p.signal(Signal::SIGTERM)?;
        let status = p.wait_exit(Duration::from_secs(30)).await?;
        assert!(status.success(), "{} exited with {status}", p.id);
    }
    let mut about_attempts = 0;
    for p in &procs {
        let lines = json_lines(p).with_context(|| format!("the log of {}", p.id))?;
        let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
        assert!(errors.is_empty(), "{}: ERROR lines: {errors:?}", p.id);
        if p.id == "logs-1" {
            for l in lines.iter().filter(|l| l.contains_key("task_id")) {
                for field in ["attempt", "executor_id"] {
                    assert!(l.contains_key(field), "no {field} in {l:?}");
                }
                // Its job, unless the line is about an attempt it does not hold (a
                // cancel that came before its request): the executor knows no job then.
                let not_held = l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not held"));
                assert!(l.contains_key("job_id") || not_held, "no job_id in {l:?}");
                assert_eq!(l["executor_id"], "logs-1");
                about_attempts += 1;
            }
        }
    }
    assert!(
        about_attempts >= 2,
        "the executor's log says nothing about its attempts"
    );
    fleet.shutdown().await
}
