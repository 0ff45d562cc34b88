//! `submit --wait` and `fleetctl wait`: following a job through its events (`GET
//! /v1/events?job=..`, Server-Sent Events, from the job's first) until it ends, printing
//! each task's outcome as it happens, and the exit status it ends with.

use std::io::{self, Write};
use std::time::Duration;

use tokio::time::{timeout, Instant};
use uuid::Uuid;

use crate::api::{EventLine, Job};
use crate::client::Client;
use crate::error::{CliError, EXIT_FAILURE};
use crate::sse::parse_events;

/// How long the API may stay unreachable mid-wait before we stop trying: long enough to
/// ride out a submitter restart, short enough that a dead server is reported.
const OUTAGE_GRACE: Duration = Duration::from_secs(60);

/// Exit code of `--wait` when `--wait-timeout` runs out, as timeout(1) uses.
pub const EXIT_WAIT_TIMEOUT: u8 = 124;

pub enum WaitEnd {
    Finished(Job),
    /// `--wait-timeout` ran out; the last state seen, if any, for the message.
    GaveUp(Option<Job>),
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
                    Ok(answer) => answer.decode::<Job>("job status").ok(),
                    Err(_) => None,
                };
                Ok(WaitEnd::GaveUp(last))
            }
        },
    }
}

async fn follow(client: &Client, job_id: &Uuid) -> Result<Job, CliError> {
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
        let ended_before: Job = client.job(job_id).await?.decode("job status")?;
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
                let Ok(e) = serde_json::from_str::<EventLine>(&ev.data) else {
                    continue;
                };
                if let Some(line) = e.describe() {
                    note(&line);
                }
                if e.ends_job() {
                    let job: Job = client.job(job_id).await?.decode("job status")?;
                    if job.is_finished() {
                        return Ok(job);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A line on stderr (the results, or the job id, go to stdout).
fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// The job's exit status for the shell: 0 if it succeeded; otherwise the exit code of the
/// first failed task by index when that fits an exit status (1..=255), else 1. Using the
/// task's own code lets `fleetctl submit --wait -- cmd` stand in for running `cmd`.
pub fn exit_status(job: &Job) -> u8 {
    if job.state == "succeeded" {
        return 0;
    }
    job.tasks
        .iter()
        .filter(|t| t.state == "failed")
        .min_by_key(|t| t.index)
        .and_then(|t| t.end.exit_code)
        .and_then(|code| u8::try_from(code).ok())
        .filter(|&code| code != 0)
        .unwrap_or(EXIT_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Counts, Ending, TaskStatus};

    fn task(index: u64, state: &str, exit_code: Option<i64>) -> TaskStatus {
        TaskStatus {
            index,
            name: format!("task-{index}"),
            state: state.into(),
            attempts: 1,
            executor_id: None,
            history: Vec::new(),
            each: false,
            quorum: None,
            copies: Vec::new(),
            spec: None,
            hint: None,
            end: Ending {
                exit_code,
                ..Ending::default()
            },
        }
    }

    fn job(state: &str, tasks: Vec<TaskStatus>) -> Job {
        Job {
            job_id: "j".into(),
            name: None,
            state: state.into(),
            created_at: None,
            finished_at: None,
            counts: Counts::default(),
            tasks,
        }
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
