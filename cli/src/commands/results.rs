//! `fleetctl results`: each task's outcome and captured output.

use fleet_core::api::jobs::ResultsView;
use uuid::Uuid;

use crate::cli::Output;
use crate::client::{Answer, Client};
use crate::error::CliError;
use crate::output;

pub async fn run(
    client: &Client,
    job_id: &Uuid,
    by_executor: bool,
    format: Output,
) -> Result<u8, CliError> {
    let answer = client.results(job_id).await?;
    if by_executor && format == Output::Text {
        let results: ResultsView = answer.decode("job results")?;
        output::emit(&output::render_results_by_executor(&results))?;
    } else {
        print(&answer, format)?;
    }
    Ok(0)
}

/// Shared with `submit --wait`, which ends by showing the results the same way.
pub fn print(answer: &Answer, format: Output) -> Result<(), CliError> {
    match format {
        Output::Json => output::emit_json(answer),
        Output::Text => {
            let results: ResultsView = answer.decode("job results")?;
            output::emit(&output::render_results(&results))
        }
    }
}
