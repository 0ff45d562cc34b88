//! `fleetctl submit`: send a job, and with `--wait` follow it to its end.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use fleet_core::api::jobs::Submitted;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::{Output, SubmitArgs};
use crate::client::Client;
use crate::duration;
use crate::error::CliError;
use crate::jobspec::build_job;
use crate::output;
use crate::wait::{exit_status, wait_for_job, WaitEnd, EXIT_WAIT_TIMEOUT};

use super::results;

pub async fn run(client: &Client, args: SubmitArgs, format: Output) -> Result<u8, CliError> {
    let body = match &args.file {
        Some(path) => read_job_file(path)?,
        None => {
            let stdin = match &args.task.stdin_file {
                Some(path) => Some(read_stdin_file(path)?),
                None => None,
            };
            let secrets =
                crate::jobspec::resolve_secrets(&args.task.secret_env, |k| std::env::var(k).ok())
                    .map_err(|e| CliError::Other(anyhow::anyhow!(e)))?;
            let job = build_job(&args.task, &args.command, stdin, secrets);
            serde_json::to_value(&job).context("could not encode the job as JSON")?
        }
    };

    let key = args.idempotency_key.as_deref();
    let answer = match client.submit(&body, key).await {
        Ok(answer) => answer,
        Err(err) => {
            if matches!(err, CliError::Timeout { .. }) && key.is_none() {
                // The server may have stored the job before the answer was lost.
                note("the job may have been created anyway; --idempotency-key makes resubmitting safe");
            }
            return Err(err);
        }
    };
    let submitted: Submitted = answer.decode("answer to the submission")?;
    if !submitted.created {
        note(&format!(
            "idempotency key seen before: job {} was created earlier, nothing new submitted",
            submitted.job_id
        ));
    }

    match (args.wait, format) {
        (false, Output::Json) => return output::emit_json(&answer).map(|()| 0),
        // With --wait and JSON, stdout carries the results document alone so it stays
        // one parseable JSON value; it names the job itself.
        (true, Output::Json) => {}
        (_, Output::Text) => output::emit(&format!("{}\n", submitted.job_id))?,
    }
    if !args.wait {
        return Ok(0);
    }

    wait(client, &submitted.job_id.uuid(), args.wait_timeout, format).await
}

/// Follows a job to its end (see `wait::wait_for_job`), prints its results and returns
/// its exit status: `submit --wait` and `fleetctl wait`.
pub async fn wait(
    client: &Client,
    job_id: &Uuid,
    wait_timeout: Option<std::time::Duration>,
    format: Output,
) -> Result<u8, CliError> {
    match wait_for_job(client, job_id, wait_timeout).await? {
        WaitEnd::Finished(job) => {
            results::print(&client.results(job_id).await?, format)?;
            Ok(exit_status(&job))
        }
        WaitEnd::GaveUp(last_seen) => {
            let waited = wait_timeout.map(duration::human).unwrap_or_default();
            let state = last_seen.map_or_else(
                || "in an unknown state".to_string(),
                |j| format!("still {}", j.state),
            );
            note(&format!(
                "gave up waiting after {waited}: job {job_id} is {state}; \
                 follow it with `fleetctl status {job_id}`"
            ));
            Ok(EXIT_WAIT_TIMEOUT)
        }
    }
}

/// Reads a whole job as JSON. It is only checked to be JSON here; the server owns the
/// rules for what a valid job is and names the offending field when one is broken.
fn read_job_file(path: &Path) -> Result<Value, CliError> {
    let (text, source) = read_text(path, "job file")?;
    let job = serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
    Ok(job)
}

fn read_stdin_file(path: &Path) -> Result<String, CliError> {
    Ok(read_text(path, "stdin file")?.0)
}

/// Reads a file, or fleetctl's own stdin for `-`; returns the text and how to name its
/// source in messages.
fn read_text(path: &Path, what: &str) -> Result<(String, String), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).with_context(|| {
            format!("could not read the {what} from stdin (it must be UTF-8 text)")
        })?;
        return Ok((text, format!("the {what} read from stdin")));
    }
    let source = format!("{what} {}", path.display());
    // The API carries text, so binary input is refused here with a clear reason.
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {source} (it must exist and be UTF-8 text)"))?;
    Ok((text, source))
}

fn note(message: &str) {
    let _ = writeln!(io::stderr(), "note: {message}");
}
