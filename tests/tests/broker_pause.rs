//! RabbitMQ frozen (SIGSTOP) under a leading dispatcher: its broker session ends on a
//! publish that gets no confirm, and closing the connection to a frozen broker would
//! never finish. The dispatcher must give up its leadership within its deadlines, keep
//! trying to reconnect, and still stop within 10 s of SIGTERM. Alone in its own test
//! binary: it freezes the shared broker.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_tests::{job_of, shared_broker, wait_for, ExecutorSpec, InProcess, TestFleet};
use nix::sys::signal::Signal;
use serde_json::json;

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");

/// Thaws the broker whatever happens to the test.
struct ThawGuard;
impl Drop for ThawGuard {
    fn drop(&mut self) {
        let _ = shared_broker::signal(Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_whose_broker_freezes_steps_down_and_stops_on_sigterm() -> Result<()> {
    let mut fleet = TestFleet::start_opts("brokerpause", InProcess::no_dispatcher(), |c| {
        c.dispatcher.leader_ttl_secs = 30;
        c.dispatcher.executor_timeout_secs = 2;
    })
    .await?;
    let confirm = [("FLEET_AMQP__CONFIRM_TIMEOUT_MS", "2000".to_string())];
    let mut dispatcher = fleet.spawn_process(DISPATCHER_BIN, "dispatcher", &confirm)?;
    fleet
        .add_executor(ExecutorSpec::new("p-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["p-1"]).await?;
    let job = job_of(1, &["true"], json!({"group": "cpu"}));
    let first = fleet.submit(&job).await?;
    assert_eq!(
        fleet.wait_job(first, Duration::from_secs(30)).await?.state,
        "succeeded"
    );

    let _thaw = ThawGuard;
    shared_broker::signal(Signal::SIGSTOP)?;
    let frozen_at = Instant::now();
    // Work for the dispatcher: its request gets no confirm, and its session ends.
    let stuck = fleet.submit(&job).await?;
    // It gives leadership up (a 30 s lease, released long before it would expire).
    wait_for(
        "the dispatcher to give up leadership",
        Duration::from_secs(20),
        || async {
            let client = fleet.pool.get().await?;
            let released: bool = client
                .query_one(
                    "SELECT expires_at <= clock_timestamp() FROM dispatcher_leader",
                    &[],
                )
                .await?
                .get(0);
            Ok(released.then_some(()))
        },
    )
    .await?;
    let stepped_down = frozen_at.elapsed();
    assert!(
        stepped_down < Duration::from_secs(10),
        "within its deadlines (confirm 2 s, close 2 s): {stepped_down:?}"
    );
    assert_eq!(dispatcher.leads().await, Some(false));

    let term_at = Instant::now();
    dispatcher.signal(Signal::SIGTERM)?;
    let status = dispatcher.wait_exit(Duration::from_secs(10)).await?;
    let exited = term_at.elapsed();
    assert!(status.success(), "{status}");

    shared_broker::signal(Signal::SIGCONT)?;
    let again = fleet.spawn_process(DISPATCHER_BIN, "dispatcher-2", &[])?;
    assert_eq!(
        fleet.wait_job(stuck, Duration::from_secs(90)).await?.state,
        "succeeded"
    );
    assert_eq!(
        fleet
            .count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND final_attempt IS NOT NULL")
            .await?,
        2
    );
    eprintln!(
        "broker frozen: leadership given up after {:.1}s; SIGTERM -> exit in {:.1}s",
        stepped_down.as_secs_f64(),
        exited.as_secs_f64()
    );
    again.kill().await?;
    fleet.shutdown().await
}
