//! `fleetctl jobs` (find jobs) and `fleetctl job show` (one job, as submitted).

use chrono::Utc;
use fleet_core::api::jobs::{JobView, JobsPage};
use uuid::Uuid;

use crate::cli::{JobsArgs, Output};
use crate::client::Client;
use crate::error::CliError;
use crate::output;

/// The query string of `GET /v1/jobs` for these flags.
pub fn query(args: &JobsArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if !args.states.is_empty() {
        let states: Vec<&str> = args.states.iter().map(|s| s.as_str()).collect();
        q.push(("state", states.join(",")));
    }
    let mut opt = |k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    };
    opt("group", &args.group);
    opt("name_prefix", &args.name_prefix);
    opt("submitted_by", &args.submitted_by);
    opt("created_after", &args.created_after);
    opt("created_before", &args.created_before);
    opt("cursor", &args.cursor);
    if let Some((k, v)) = &args.label {
        q.push(("label", format!("{k}={v}")));
    }
    if args.mine {
        q.push(("mine", "true".into()));
    }
    q.push(("limit", args.limit.to_string()));
    q
}

pub async fn list(client: &Client, args: &JobsArgs, format: Output) -> Result<u8, CliError> {
    let answer = client.get_query("/v1/jobs", &query(args)).await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let page: JobsPage = answer.decode("job list")?;
            output::emit(&output::render_jobs(&page, Utc::now()))?;
            if let Some(c) = &page.next_cursor {
                eprintln!("more jobs match: add --cursor {c} for the next page");
            }
        }
    }
    Ok(0)
}

pub async fn show(client: &Client, job_id: &Uuid, format: Output) -> Result<u8, CliError> {
    let answer = client.job(job_id).await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let job: JobView = answer.decode("job")?;
            output::emit(&output::render_job_spec(&job, Utc::now()))?;
        }
    }
    Ok(0)
}

pub async fn delete(client: &Client, job_id: &Uuid, format: Output) -> Result<u8, CliError> {
    let answer = client
        .call(reqwest::Method::DELETE, &format!("/v1/jobs/{job_id}"))
        .await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => output::emit(&format!(
            "deleted job {job_id} with its tasks, attempts and results\n"
        ))?,
    }
    Ok(0)
}
