//! `fleetctl executors`: the executors the dispatcher knows about, as a table.

use chrono::Utc;
use fleet_core::api::executors::ExecutorsView;

use crate::cli::Output;
use crate::client::Client;
use crate::error::CliError;
use crate::output;

pub async fn run(client: &Client, format: Output) -> Result<u8, CliError> {
    let answer = client.executors().await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let list: ExecutorsView = answer.decode("executor list")?;
            output::emit(&output::render_executors(&list, Utc::now()))?;
        }
    }
    Ok(0)
}
