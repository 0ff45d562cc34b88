//! `submit --wait` and `fleetctl wait`: following a job through its events (`GET
//! /v1/events?job=..`, Server-Sent Events, from the job's first) until it ends, printing
//! each task's outcome as it happens, and the exit status it ends with.

use std::io::{self, Write};
use std::time::Duration;

use fleet_core::api::events::Event;
use fleet_core::api::jobs::JobView;
use fleet_core::event::Kind;
use tokio::time::{timeout, Instant};
use uuid::Uuid;

use crate::client::Client;
use crate::error::{CliError, EXIT_FAILURE};
use crate::sse::parse_events;

/// How long the API may stay unreachable mid-wait before we stop trying: long enough to
/// ride out a submitter restart, short enough that a dead server is reported.
const OUTAGE_GRACE: Duration = Duration::from_secs(60);

/// Exit code of `--wait` when `--wait-timeout` runs out, as timeout(1) uses.
pub const EXIT_WAIT_TIMEOUT: u8 = 124;

pub enum WaitEnd {
    Finished(JobView),
    /// `--wait-timeout` ran out; the last state seen, if any, for the message.
    GaveUp(Option<JobView>),
}

/// Follows the job until an event says it ended and its state agrees (a job run again
/// after it ended goes on), within `wait_timeout` if given.
pub async fn wait_for_job(
    client: &Client,
    job_id: &Uuid,
    wait_timeout: Option<Duration>,
) -> Result<WaitEnd, CliError> {
    let follow = follow(client, job_id);
    match wait_timeout {
        None => follow.await.map(WaitEnd::Finished),
        Some(limit) => match timeout(limit, follow).await {
            Ok(done) => done.map(WaitEnd::Finished),
            Err(_) => {
                let last = match client.job(job_id).await {
                    Ok(answer) => answer.decode::<JobView>("job status").ok(),
                    Err(_) => None,
                };
                Ok(WaitEnd::GaveUp(last))
            }
        },
    }
}

async fn follow(client: &Client, job_id: &Uuid) -> Result<JobView, CliError> {
    let query = [("job", job_id.to_string()), ("follow", "true".to_owned())];
    let mut last_id: Option<String> = None;
    let mut outage_since: Option<Instant> = None;
    loop {
        let response = match client
            .open_stream("/v1/events", &query, last_id.as_deref())
            .await
        {
            Ok(r) => r,
            Err(err) if err.is_transient() => {
                let since = *outage_since.get_or_insert_with(|| {
                    let text = err.to_string();
                    let first_line = text.lines().next().unwrap_or_default().to_owned();
                    note(&format!("warning: {first_line}; still trying"));
                    Instant::now()
                });
                if since.elapsed() > OUTAGE_GRACE {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        outage_since = None;
        // A job that has ended already may have no end event to come (it ended before
        // the event log existed, or its events were purged): its events are replayed,
        // and once the stream falls quiet, it is taken as it stands.
        let ended_before: JobView = client.job(job_id).await?.decode("job status")?;
        let quiet = ended_before.is_finished().then_some(Duration::from_secs(2));
        let mut response = response;
        let mut buf = String::new();
        // Until the connection drops: then resume after the last event seen.
        loop {
            let next = response.chunk();
            let bytes = match quiet {
                Some(q) => match timeout(q, next).await {
                    Ok(r) => r,
                    Err(_) => return Ok(ended_before),
                },
                None => next.await,
            };
            let Ok(Some(bytes)) = bytes else { break };
            buf.push_str(&String::from_utf8_lossy(&bytes));
            for ev in parse_events(&mut buf) {
                last_id = ev.id.or(last_id);
                // A kind this fleetctl does not know (a newer server) is not for it.
                let Ok(e) = serde_json::from_str::<Event>(&ev.data) else {
                    continue;
                };
                if let Some(line) = describe(&e) {
                    note(&line);
                }
                if ends_job(e.kind) {
                    let job: JobView = client.job(job_id).await?.decode("job status")?;
                    if job.is_finished() {
                        return Ok(job);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The job ended (a job run again afterwards goes on: the caller checks its state).
fn ends_job(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::JobSucceeded | Kind::JobFailed | Kind::JobCancelled
    )
}

/// A line for a task's outcome or the job's end, as it happens; None for the rest.
fn describe(e: &Event) -> Option<String> {
    let task = e.task.as_deref().unwrap_or("?");
    let how = || {
        let mut parts = Vec::new();
        if let Some(o) = &e.outcome {
            parts.push(o.replace('_', " "));
        }
        if let Some(c) = e.exit_code {
            parts.push(format!("exit {c}"));
        }
        if let Some(s) = e.signal {
            parts.push(format!("signal {s}"));
        }
        if let Some(x) = &e.executor {
            parts.push(format!("on {x}"));
        }
        if let Some(ms) = e.duration_ms {
            parts.push(format!("{:.1} s", ms as f64 / 1000.0));
        }
        parts.join(", ")
    };
    match e.kind {
        Kind::TaskFinished => Some(format!(
            "task {task}: {} ({})",
            e.state.as_deref().unwrap_or("finished"),
            how()
        )),
        Kind::TaskRetrying => Some(format!(
            "task {task}: attempt {} {}; retrying{}",
            e.attempt.unwrap_or(0),
            how(),
            e.retry_at
                .map(|t| format!(" at {}", t.format("%H:%M:%S")))
                .unwrap_or_default()
        )),
        Kind::JobSucceeded | Kind::JobFailed | Kind::JobCancelled => Some(format!(
            "job {}",
            e.state
                .as_deref()
                .unwrap_or_else(|| e.kind.as_str().trim_start_matches("job."))
        )),
        _ => None,
    }
}

/// A line on stderr (the results, or the job id, go to stdout).
fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// The job's exit status for the shell: 0 if it succeeded; otherwise the exit code of the
/// first failed task by index when that fits an exit status (1..=255), else 1. Using the
/// task's own code lets `fleetctl submit --wait -- cmd` stand in for running `cmd`.
pub fn exit_status(job: &JobView) -> u8 {
    if job.state == "succeeded" {
        return 0;
    }
    job.tasks
        .iter()
        .filter(|t| t.state == "failed")
        .min_by_key(|t| t.index)
        .and_then(|t| t.exit_code)
        .and_then(|code| u8::try_from(code).ok())
        .filter(|&code| code != 0)
        .unwrap_or(EXIT_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use fleet_core::api::jobs::{CountsView, TaskSpecView, TaskView};
    use fleet_core::id::{JobId, TaskId};

    fn task(index: i32, state: &str, exit_code: Option<i32>) -> TaskView {
        TaskView {
            task_id: TaskId::new(),
            index,
            name: format!("task-{index}"),
            state: state.into(),
            attempts: 1,
            executor_id: None,
            exit_code,
            signal: None,
            error: None,
            history: Vec::new(),
            each: false,
            quorum: None,
            copies: Vec::new(),
            spec: TaskSpecView::default(),
            retry_at: None,
            hint: None,
        }
    }

    fn job(state: &str, tasks: Vec<TaskView>) -> JobView {
        JobView {
            job_id: JobId::new(),
            name: None,
            state: state.into(),
            created_at: Utc::now(),
            finished_at: None,
            submitted_by: Default::default(),
            held: false,
            counts: CountsView::default(),
            tasks,
        }
    }

    #[test]
    fn a_finished_task_and_the_end_of_the_job_are_described() -> Result<(), serde_json::Error> {
        let finished: Event = serde_json::from_str(
            r#"{"id":3,"kind":"task.finished","at":"2026-01-01T00:00:00Z","task":"build",
                "state":"failed","outcome":"timed_out","executor":"cpu-1","duration_ms":1500}"#,
        )?;
        assert_eq!(
            describe(&finished).as_deref(),
            Some("task build: failed (timed out, on cpu-1, 1.5 s)")
        );
        assert!(!ends_job(finished.kind));
        let ended: Event =
            serde_json::from_str(r#"{"id":4,"kind":"job.cancelled","at":"2026-01-01T00:00:01Z"}"#)?;
        assert_eq!(describe(&ended).as_deref(), Some("job cancelled"));
        assert!(ends_job(ended.kind));
        Ok(())
    }

    #[test]
    fn succeeded_job_exits_zero() {
        assert_eq!(
            exit_status(&job("succeeded", vec![task(0, "succeeded", Some(0))])),
            0
        );
    }

    #[test]
    fn failed_job_takes_the_first_failed_task_by_index() {
        // Listed out of order on purpose: the rule is by index, not by position.
        let tasks = vec![
            task(2, "failed", Some(7)),
            task(0, "succeeded", Some(0)),
            task(1, "failed", Some(3)),
        ];
        assert_eq!(exit_status(&job("failed", tasks)), 3);
    }

    #[test]
    fn failed_job_falls_back_to_one() {
        // First failed task has no exit code (timed out, spawn failed, lost): 1, even
        // though a later one has a usable code.
        let no_code = vec![task(0, "failed", None), task(1, "failed", Some(5))];
        assert_eq!(exit_status(&job("failed", no_code)), 1);
        assert_eq!(
            exit_status(&job("failed", vec![task(0, "failed", Some(300))])),
            1
        );
        assert_eq!(
            exit_status(&job("failed", vec![task(0, "failed", Some(-1))])),
            1
        );
        assert_eq!(
            exit_status(&job("failed", vec![task(0, "failed", Some(0))])),
            1
        );
        assert_eq!(
            exit_status(&job("failed", vec![task(0, "failed", Some(255))])),
            255
        );
        assert_eq!(exit_status(&job("failed", vec![])), 1);
    }

    #[test]
    fn cancelled_job_is_not_success() {
        assert_eq!(
            exit_status(&job("cancelled", vec![task(0, "cancelled", None)])),
            1
        );
    }
}
