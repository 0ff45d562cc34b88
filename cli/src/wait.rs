//! `submit --wait`: following a job until it ends, and the exit status it ends with.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};
use uuid::Uuid;

use crate::api::Job;
use crate::client::Client;
use crate::error::{CliError, EXIT_FAILURE};
use crate::output::progress_line;

const FIRST_POLL_DELAY: Duration = Duration::from_millis(200);
const MAX_POLL_DELAY: Duration = Duration::from_secs(1);
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

pub async fn wait_for_job(
    client: &Client,
    job_id: &Uuid,
    wait_timeout: Option<Duration>,
) -> Result<WaitEnd, CliError> {
    let deadline = wait_timeout.map(|d| Instant::now() + d);
    let mut progress = Progress::new(io::stderr().is_terminal());
    let mut delay = FIRST_POLL_DELAY;
    let mut last_seen: Option<Job> = None;
    let mut outage_since: Option<Instant> = None;

    loop {
        // The request itself must not outlive --wait-timeout either.
        let poll = client.job(job_id);
        let answer = match deadline {
            Some(deadline) => {
                match timeout(deadline.saturating_duration_since(Instant::now()), poll).await {
                    Ok(answer) => answer,
                    Err(_) => break,
                }
            }
            None => poll.await,
        };

        match answer.and_then(|answer| answer.decode::<Job>("job status")) {
            Ok(job) => {
                outage_since = None;
                let line = progress_line(&job.job_id, &job.state, &job.counts);
                if progress.show(&line) {
                    // Something moved: the next change is likely soon, so look again soon.
                    delay = FIRST_POLL_DELAY;
                }
                if job.is_finished() {
                    progress.finish();
                    return Ok(WaitEnd::Finished(job));
                }
                last_seen = Some(job);
            }
            Err(err) if err.is_transient() => match outage_since {
                None => {
                    outage_since = Some(Instant::now());
                    // Only the first line: the hint that follows is for when we give up.
                    let text = err.to_string();
                    let first_line = text.lines().next().unwrap_or_default();
                    progress.note(&format!("warning: {first_line}; still trying"));
                }
                Some(since) if since.elapsed() > OUTAGE_GRACE => {
                    progress.finish();
                    return Err(err);
                }
                Some(_) => {}
            },
            Err(err) => {
                progress.finish();
                return Err(err);
            }
        }

        let pause = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                delay.min(left)
            }
            None => delay,
        };
        sleep(pause).await;
        delay = (delay * 2).min(MAX_POLL_DELAY);
    }

    progress.finish();
    Ok(WaitEnd::GaveUp(last_seen))
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

/// The progress display on stderr: one line rewritten in place on a terminal, one line
/// per change otherwise (logs and CI output have no carriage returns to speak of).
struct Progress {
    in_place: bool,
    last: Option<String>,
    /// A line is on screen without its newline yet.
    open_line: bool,
}

impl Progress {
    fn new(in_place: bool) -> Self {
        Progress {
            in_place,
            last: None,
            open_line: false,
        }
    }

    /// Shows `line` if it differs from the last one; tells whether it did.
    fn show(&mut self, line: &str) -> bool {
        if self.last.as_deref() == Some(line) {
            return false;
        }
        let mut err = io::stderr().lock();
        // Progress is a courtesy: failing to draw it must not fail the wait.
        let _ = if self.in_place {
            self.open_line = true;
            write!(err, "\r\x1b[2K{line}").and_then(|()| err.flush())
        } else {
            writeln!(err, "{line}")
        };
        self.last = Some(line.to_string());
        true
    }

    fn note(&mut self, message: &str) {
        self.finish();
        let _ = writeln!(io::stderr(), "{message}");
        // Draw the progress line again after the note rather than leaving it above.
        self.last = None;
    }

    fn finish(&mut self) {
        if self.open_line {
            let _ = writeln!(io::stderr());
            self.open_line = false;
        }
    }
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
