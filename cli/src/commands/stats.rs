//! `fleetctl stats`: per group, the work waiting and running, executors, slots and the
//! jobs finished lately.

use fleet_core::api::stats::StatsView;

use crate::cli::Output;
use crate::client::Client;
use crate::error::CliError;
use crate::output;

pub async fn run(client: &Client, format: Output) -> Result<u8, CliError> {
    let answer = client.call(reqwest::Method::GET, "/v1/stats").await?;
    match format {
        Output::Json => output::emit_json(&answer)?,
        Output::Text => {
            let stats: StatsView = answer.decode("stats")?;
            output::emit(&output::render_stats(&stats))?;
        }
    }
    Ok(0)
}
