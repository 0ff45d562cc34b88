//! `fleetctl priority|hold|release` (a job) and `fleetctl scheduler` (dispatching).

use fleet_core::api::jobs::{Cancelled, JobChanged, JobPatch, Rerun};
use fleet_core::api::scheduler::{PauseChanged, PauseTarget, SchedulerStatus};
use reqwest::Method;
use uuid::Uuid;

use crate::cli::{Output, SchedulerCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output;

pub async fn patch_job(
    client: &Client,
    job_id: &Uuid,
    patch: JobPatch,
    format: Output,
) -> Result<u8, CliError> {
    let answer = client
        .send_body(Method::PATCH, &format!("/v1/jobs/{job_id}"), &patch)
        .await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let a: JobChanged = answer.decode("answer")?;
            let mut line = format!("job {job_id}:");
            if let Some(h) = a.held {
                line.push_str(if h { " held" } else { " released" });
            }
            if let Some(p) = a.priority {
                line.push_str(&format!(
                    " priority {p} ({} tasks not yet handed out changed)",
                    a.tasks_changed.unwrap_or(0)
                ));
            }
            output::emit(&format!("{line}\n"))?;
        }
    }
    Ok(0)
}

pub async fn cancel(
    client: &Client,
    job_id: &Uuid,
    task: Option<&str>,
    format: Output,
) -> Result<u8, CliError> {
    let path = match task {
        None => format!("/v1/jobs/{job_id}/cancel"),
        Some(t) => format!("/v1/jobs/{job_id}/tasks/{}/cancel", url_segment(t)),
    };
    let answer = client.call(Method::POST, &path).await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let a: Cancelled = answer.decode("answer")?;
            let (now, killing) = (a.cancelled_now, a.killing);
            let what = match task {
                None => format!("job {job_id}"),
                Some(t) => format!("task {t} of job {job_id}"),
            };
            let text = match (now, killing) {
                (0, 0) => format!("{what}: nothing left to cancel\n"),
                (n, 0) => format!("{what}: {n} tasks cancelled\n"),
                (n, k) => format!(
                    "{what}: {n} tasks cancelled, {k} running attempts being killed (see `fleetctl status {job_id}`)\n"
                ),
            };
            output::emit(&text)?;
        }
    }
    Ok(0)
}

pub async fn rerun(
    client: &Client,
    job_id: &Uuid,
    task: Option<&str>,
    format: Output,
) -> Result<u8, CliError> {
    let path = job_action(job_id, task, "retry");
    let answer = client.call(Method::POST, &path).await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let a: Rerun = answer.decode("answer")?;
            let n = a.rerun.len();
            output::emit(&format!(
                "job {job_id}: {n} tasks run again (follow with `fleetctl status {job_id}`)\n"
            ))?;
        }
    }
    Ok(0)
}

/// `/v1/jobs/{job}/{action}`, or `/v1/jobs/{job}/tasks/{task}/{action}` for one task.
fn job_action(job_id: &Uuid, task: Option<&str>, action: &str) -> String {
    match task {
        None => format!("/v1/jobs/{job_id}/{action}"),
        Some(t) => format!("/v1/jobs/{job_id}/tasks/{}/{action}", url_segment(t)),
    }
}

/// A path segment with `/`, `%`, `?` and `#` escaped.
pub fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn scheduler(
    client: &Client,
    cmd: SchedulerCommand,
    format: Output,
) -> Result<u8, CliError> {
    let (answer, what) = match cmd {
        SchedulerCommand::Pause { group } => (
            client
                .send_body(Method::POST, "/v1/scheduler/pause", &PauseTarget { group })
                .await?,
            "pause",
        ),
        SchedulerCommand::Resume { group } => (
            client
                .send_body(Method::POST, "/v1/scheduler/resume", &PauseTarget { group })
                .await?,
            "resume",
        ),
        SchedulerCommand::Status => (client.call(Method::GET, "/v1/scheduler").await?, "status"),
    };
    if format == Output::Json {
        output::emit_json(&answer)?;
        return Ok(0);
    }
    let text = match what {
        "status" => {
            let a: SchedulerStatus = answer.decode("scheduler answer")?;
            if a.pauses.is_empty() {
                "dispatching: running everywhere\n".to_owned()
            } else {
                let rows: Vec<Vec<String>> = a
                    .pauses
                    .iter()
                    .map(|p| {
                        vec![
                            p.group.clone(),
                            output::rfc3339(p.paused_at),
                            p.paused_by.clone(),
                        ]
                    })
                    .collect();
                format!(
                    "dispatching paused for (each with its subgroups; default = the whole fleet):\n{}",
                    output::table(&["GROUP", "SINCE", "BY"], &rows)
                )
            }
        }
        _ => {
            let a: PauseChanged = answer.decode("scheduler answer")?;
            let (g, was) = (a.group.as_str(), a.was_paused);
            match (what, was) {
                ("pause", false) => format!("dispatching paused for {g} and its subgroups\n"),
                ("pause", true) => format!("dispatching was already paused for {g}\n"),
                (_, true) => format!("dispatching resumed for {g}\n"),
                (_, false) => format!("{g} was not paused\n"),
            }
        }
    };
    output::emit(&text)?;
    Ok(0)
}
