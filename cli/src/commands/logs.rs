//! `fleetctl logs`: a task's live output, as `cat` would print it, or with `-f` as
//! `tail -f` would, until the attempt ends (then the exit status is the task's).

use std::io::Write;
use std::time::Duration;

use fleet_core::api::jobs::JobView;
use serde_json::Value;

use crate::cli::{LogsArgs, Output};
use crate::client::Client;
use crate::error::CliError;
use crate::sse::parse_events;

fn path(args: &LogsArgs) -> String {
    let task = args.task.as_deref().unwrap_or("0");
    format!(
        "/v1/jobs/{}/tasks/{}/logs",
        args.job_id,
        super::control::url_segment(task)
    )
}

fn query(args: &LogsArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(a) = args.attempt {
        q.push(("attempt", a.to_string()));
    }
    if args.stdout {
        q.push(("stream", "stdout".into()));
    } else if args.stderr {
        q.push(("stream", "stderr".into()));
    }
    q
}

/// Prints a chunk where its command wrote it: stdout to stdout, stderr to stderr; with
/// `-o json`, one chunk's JSON per line.
fn print_chunk(c: &Value, format: Output) -> Result<(), CliError> {
    let text = match format {
        Output::Json => format!("{c}\n"),
        Output::Text => c["data"].as_str().unwrap_or_default().to_owned(),
    };
    let wrote = if format == Output::Text && c["stream"] == "stderr" {
        let mut e = std::io::stderr().lock();
        e.write_all(text.as_bytes()).and_then(|_| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes()).and_then(|_| o.flush())
    };
    wrote.map_err(|e| CliError::Other(anyhow::anyhow!("writing the output: {e}")))
}

pub async fn run(client: &Client, args: &LogsArgs, format: Output) -> Result<u8, CliError> {
    if args.follow {
        return follow(client, args, format).await;
    }
    let mut after: Option<i64> = None;
    loop {
        let mut q = query(args);
        q.push(("limit", "10000".into()));
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        let answer: Value = client
            .get_query(&path(args), &q)
            .await?
            .decode("live output")?;
        let chunks = answer["chunks"].as_array().cloned().unwrap_or_default();
        if chunks.is_empty() {
            return Ok(0);
        }
        for c in &chunks {
            print_chunk(c, format)?;
            after = c["n"].as_i64();
        }
    }
}

/// Follows until the attempt ends, reconnecting (from the last event) when the
/// connection drops; then exits with the task's status.
async fn follow(client: &Client, args: &LogsArgs, format: Output) -> Result<u8, CliError> {
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let response = match client
            .open_stream(
                &path(args),
                &{
                    let mut q = query(args);
                    q.push(("follow", "true".into()));
                    q
                },
                last_id.as_deref(),
            )
            .await
        {
            Ok(r) => r,
            Err(e @ (CliError::Unreachable { .. } | CliError::Timeout { .. })) if failures < 10 => {
                failures += 1;
                eprintln!("fleetctl: {e}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut response = response;
        let mut buf = String::new();
        loop {
            let bytes = match response.chunk().await {
                Ok(Some(b)) => b,
                // Ended or dropped before the `end` event: resume where we were.
                Ok(None) | Err(_) => break,
            };
            failures = 0;
            buf.push_str(&String::from_utf8_lossy(&bytes));
            for ev in parse_events(&mut buf) {
                match ev.event.as_str() {
                    "chunk" => {
                        let c: Value = serde_json::from_str(&ev.data).unwrap_or_default();
                        print_chunk(&c, format)?;
                        last_id = ev.id.or(last_id);
                    }
                    "end" => return task_status(client, args).await,
                    _ => {}
                }
            }
        }
        failures += 1;
        if failures > 10 {
            return Err(CliError::Other(anyhow::anyhow!(
                "the live output stream kept dropping; giving up"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The task's status once its attempt ended: 0 if it succeeded, else its exit code
/// (1..=255), else 1. A task tried again is followed no further: its status is read
/// as it stands.
async fn task_status(client: &Client, args: &LogsArgs) -> Result<u8, CliError> {
    let job: JobView = client.job(&args.job_id).await?.decode("job")?;
    let want = args.task.as_deref().unwrap_or("0");
    let task = job
        .tasks
        .iter()
        .find(|t| t.name == want || t.index.to_string() == want)
        .or_else(|| job.tasks.first());
    Ok(match task {
        Some(t) if t.state == "succeeded" => 0,
        Some(t) => t
            .exit_code
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c > 0)
            .unwrap_or(1),
        None => 1,
    })
}
