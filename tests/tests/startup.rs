//! Services starting while PostgreSQL is unreachable (a port nobody listens on, or a
//! host that accepts connections and never answers) must still say so at once:
//! `/healthz` 200 and `/readyz` 503 within a second, and the API a 503 rather than a
//! hang. And a submitter that has just started must not refuse work for a broker that
//! is fine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_tests::{free_addr, job_of, InProcess, ServiceProcess, TestFleet};
use serde_json::json;

const SUBMITTER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-submitter");
const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-collector");

/// A "database" that accepts connections and never says a word.
async fn silent_server() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}

/// Waits until the process accepts connections on its HTTP address.
async fn listening(p: &ServiceProcess) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&p.addr).await.is_err() {
        if Instant::now() > until {
            bail!("{} never listened on {}", p.id, p.addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Asks, and says how long the answer took.
async fn timed(p: &ServiceProcess, path: &str) -> Result<(u16, Duration)> {
    let asked = Instant::now();
    let (status, _) = p.get(path).await?;
    Ok((status, asked.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_without_a_database_answer_health_checks_at_once() -> Result<()> {
    let none = InProcess::none();
    let fleet = TestFleet::start_opts("nodb", none, |_| {}).await?;
    let closed = free_addr()?;
    let silent = silent_server().await?;
    let second = Duration::from_secs(1);
    for (what, db) in [("refused", closed), ("silent", silent)] {
        let url = [(
            "FLEET_DATABASE__URL",
            format!("postgres://postgres@{db}/fleet"),
        )];
        let services = [
            fleet.spawn_process(SUBMITTER_BIN, &format!("submitter-{what}"), &url)?,
            fleet.spawn_process(DISPATCHER_BIN, &format!("dispatcher-{what}"), &url)?,
            fleet.spawn_process(COLLECTOR_BIN, &format!("collector-{what}"), &url)?,
        ];
        for p in &services {
            listening(p).await?;
            let (status, took) = timed(p, "/healthz").await?;
            assert_eq!(status, 200, "{what}: {} /healthz", p.id);
            assert!(took < second, "{what}: {} /healthz took {took:?}", p.id);
            let (status, took) = timed(p, "/readyz").await?;
            assert_eq!(status, 503, "{what}: {} /readyz", p.id);
            assert!(took < second, "{what}: {} /readyz took {took:?}", p.id);
        }
        // The API says the database is unavailable, at once.
        let asked = Instant::now();
        let resp = fleet
            .http
            .post(format!("http://{}/v1/jobs", services[0].addr))
            .json(&job_of(1, &["true"], json!({})))
            .send()
            .await?;
        let took = asked.elapsed();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < second, "{what}: POST /v1/jobs took {took:?}");
        for p in services {
            p.kill().await?;
        }
    }
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_just_started_takes_jobs_when_the_broker_is_fine() -> Result<()> {
    let none = InProcess::none();
    let fleet = TestFleet::start_opts("freshstart", none, |_| {}).await?;
    let submitter = fleet.spawn_process(SUBMITTER_BIN, "submitter", &[])?;
    listening(&submitter).await?;
    // As soon as it answers at all, a submission is taken.
    let url = format!("http://{}/v1/jobs", submitter.addr);
    let until = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let resp = fleet
            .http
            .post(&url)
            .json(&job_of(1, &["true"], json!({})))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await?;
        // Before its tables exist it says the database is not ready; that is the truth.
        let database_not_ready = status == 503
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("database"));
        if !database_not_ready || Instant::now() > until {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 201, "the first submission after start: {body}");
    submitter.kill().await?;
    fleet.shutdown().await
}

/// The log says why the database cannot be reached (the operating system's words), at
/// WARN, retried with backoff rather than in a loop; `/healthz` answers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_why_the_database_cannot_be_reached() -> Result<()> {
    let none = InProcess::none();
    let fleet = TestFleet::start_opts("nodbwhy", none, |_| {}).await?;
    let closed = free_addr()?;
    let url = [(
        "FLEET_DATABASE__URL",
        format!("postgres://postgres@{closed}/fleet"),
    )];
    let p = fleet.spawn_process(COLLECTOR_BIN, "collector", &url)?;
    listening(&p).await?;
    let (status, took) = timed(&p, "/healthz").await?;
    assert_eq!(status, 200, "/healthz");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let line = fleet_tests::wait_for(
        "a log line naming the cause",
        Duration::from_secs(10),
        || async {
            Ok(p.log_text()
                .lines()
                .find(|l| l.contains("WARN") && l.to_lowercase().contains("connection refused"))
                .map(str::to_owned))
        },
    )
    .await
    .with_context(|| format!("the log:\n{}", p.log_text()))?;
    assert!(line.contains("database"), "{line}");
    // /readyz says it too.
    fleet_tests::wait_for(
        "/readyz to name the cause",
        Duration::from_secs(10),
        || async {
            let (status, body) = p.get("/readyz").await?;
            assert_eq!(status, 503, "{body}");
            Ok(body
                .to_lowercase()
                .contains("connection refused")
                .then_some(()))
        },
    )
    .await?;
    // Backoff, not a hot loop: a few tries in the first seconds, not hundreds.
    let started = Instant::now();
    fleet_tests::wait_for("three seconds", Duration::from_secs(5), || async {
        Ok((started.elapsed() >= Duration::from_secs(3)).then_some(()))
    })
    .await?;
    let tries = p.log_text().matches("connection refused").count()
        + p.log_text().matches("Connection refused").count();
    assert!(
        tries < 20,
        "{tries} warnings in about 3 s:\n{}",
        p.log_text()
    );
    p.kill().await?;
    fleet.shutdown().await
}
