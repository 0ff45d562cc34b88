//! Live output (issue 12, acceptance 1 and 2): a follower sees a running task's lines as
//! they are written, each once and in order, and resumes after a disconnect; a task
//! writing far too much is cut at the cap with a marker and slows nothing else.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_tests::sse::read_events;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

fn follow_url(fleet: &TestFleet, job: &str) -> String {
    format!("{}/v1/jobs/{job}/tasks/0/logs?follow=true", fleet.api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_each_line_once_in_order_as_it_is_written() -> Result<()> {
    // The collector runs as a process, to be killed in the middle.
    let mut fleet = TestFleet::start_opts(
        "liveout",
        fleet_tests::InProcess {
            collector: false,
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    let collector_bin = env!("CARGO_BIN_EXE_fleet-test-collector");
    let collector = fleet.spawn_process(collector_bin, "collector-1", &[])?;
    fleet
        .add_executor(ExecutorSpec::new("live-1", &["live"], 2))
        .await?;
    fleet.wait_executors(&["live-1"]).await?;
    let script = "for i in $(seq 1 100); do echo \"$i $(date +%s%N)\"; sleep 0.05; done";
    let job = fleet
        .submit(&json!({"tasks": [{"group": "live", "argv": ["sh", "-c", script]}]}))
        .await?
        .to_string();
    fleet
        .wait_job_state(job.parse()?, "running", DEADLINE)
        .await?;

    // Follow until line 40, then drop the connection; meanwhile, once line 15 is stored,
    // the collector is killed and another started.
    let mut text = String::new();
    let mut first_delay = None;
    let mut last_id = None;
    let killer = async {
        wait_for("line 15 to be stored", DEADLINE, || async {
            let (_, b) = fleet
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/jobs/{job}/tasks/0/logs"),
                    None,
                )
                .await?;
            let all: String = b["chunks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["data"].as_str())
                .collect();
            Ok(all.contains("\n15 ").then_some(()))
        })
        .await?;
        collector.kill().await?;
        fleet.spawn_process(collector_bin, "collector-2", &[])
    };
    let follower = async {
        let resp = fleet.http.get(follow_url(&fleet, &job)).send().await?;
        assert_eq!(resp.status(), 200);
        read_events(resp, |ev, _| {
            if ev.event != "chunk" {
                return true;
            }
            let c: Value = serde_json::from_str(&ev.data).unwrap_or_default();
            text.push_str(c["data"].as_str().unwrap_or(""));
            if first_delay.is_none() {
                if let Some(line) = text.lines().next() {
                    let printed: u128 = line
                        .split(' ')
                        .nth(1)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    first_delay = Some(Duration::from_nanos(now.saturating_sub(printed) as u64));
                }
            }
            last_id = ev.id;
            !text.contains("\n40 ")
        })
        .await
    };
    let (second_collector, followed) = tokio::join!(killer, follower);
    let _second_collector = second_collector?;
    followed?;
    let delay = first_delay.context("a first line")?;
    assert!(
        delay < Duration::from_secs(1),
        "first line seen {delay:?} after it was printed"
    );

    // Resume with Last-Event-ID: the rest, no gap, no repeat, then the end.
    let resp = fleet
        .http
        .get(follow_url(&fleet, &job))
        .header("Last-Event-ID", last_id.clone().context("an event id")?)
        .send()
        .await?;
    let mut ended = false;
    read_events(resp, |ev, _| {
        match ev.event.as_str() {
            "chunk" => {
                let c: Value = serde_json::from_str(&ev.data).unwrap_or_default();
                text.push_str(c["data"].as_str().unwrap_or(""));
            }
            "end" => ended = true,
            _ => {}
        }
        !ended
    })
    .await?;
    assert!(ended, "the stream ends with the attempt");
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| {
            l.split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=100).collect::<Vec<u32>>(),
        "every line once, in order"
    );

    // The same as a range, and the result still carries the output.
    let (s, b) = fleet
        .call(
            reqwest::Method::GET,
            &format!("/v1/jobs/{job}/tasks/0/logs?stream=stdout"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ended"], true);
    let all: String = b["chunks"]
        .as_array()
        .context("chunks")?
        .iter()
        .filter_map(|c| c["data"].as_str())
        .collect();
    assert_eq!(all, text);
    let done = fleet.wait_job(job.parse()?, DEADLINE).await?;
    assert_eq!(done.state, "succeeded");
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_at_the_cap_and_holds_nothing_else_back() -> Result<()> {
    let fleet = TestFleet::start("flood").await?;
    // Its own process, to see its memory; the default cap (8 MiB).
    let executor = fleet.spawn_executor_process(
        env!("CARGO_BIN_EXE_fleet-test-executor"),
        ExecutorSpec::new("flood-1", &["fl"], 2),
    )?;
    fleet.wait_executors(&["flood-1"]).await?;
    // 50 MiB to stdout.
    let flood = fleet
        .submit(&json!({"tasks": [{"group": "fl",
            "argv": ["sh", "-c", "head -c 52428800 /dev/zero | tr '\\0' 'x'"]}]}))
        .await?;
    fleet.wait_job_state(flood, "running", DEADLINE).await?;
    // A short task on the same executor meanwhile finishes within a second.
    let asked = Instant::now();
    let short = fleet
        .submit(&json!({"tasks": [{"group": "fl", "argv": ["true"]}]}))
        .await?;
    fleet.wait_job(short, Duration::from_secs(10)).await?;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "a short task took {took:?}");
    assert_eq!(fleet.wait_job(flood, DEADLINE).await?.state, "succeeded");
    // Stored output stops at the cap, with the marker last.
    let chunks = wait_for("the marker to be stored", DEADLINE, || async {
        let (_, b) = fleet
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{flood}/tasks/0/logs?limit=10000"),
                None,
            )
            .await?;
        let chunks = b["chunks"].as_array().cloned().unwrap_or_default();
        Ok(chunks
            .last()
            .is_some_and(|c| c["truncated"] == true)
            .then_some(chunks))
    })
    .await?;
    let stored: usize = chunks
        .iter()
        .filter(|c| c["truncated"] != true)
        .filter_map(|c| c["data"].as_str())
        .map(str::len)
        .sum();
    if stored != 8 * 1024 * 1024 {
        bail!("stored {stored} bytes of live output, want exactly the 8 MiB cap");
    }
    // The executor's peak memory through all of it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", executor.pid()))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")?;
    eprintln!("executor peak memory: {} KiB", peak_kib);
    assert!(
        peak_kib < 64 * 1024,
        "the executor peaked at {peak_kib} KiB"
    );
    executor.kill().await?;
    fleet.shutdown().await
}
