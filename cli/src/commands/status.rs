//! `fleetctl status`: a job's state, counts and task table.

use chrono::Utc;
use fleet_core::api::jobs::JobView;
use uuid::Uuid;

use crate::cli::Output;
use crate::client::Client;
use crate::error::CliError;
use crate::output;

pub async fn run(client: &Client, job_id: &Uuid, format: Output) -> Result<u8, CliError> {
    let answer = client.job(job_id).await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let job: JobView = answer.decode("job status")?;
            output::emit(&output::render_job(&job, Utc::now()))?;
        }
    }
    Ok(0)
}
