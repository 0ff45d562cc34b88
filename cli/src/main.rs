//! `fleetctl`: the command-line client of the Fleet job system (entry point only).

mod cli;
mod client;
mod commands;
mod duration;
mod error;
mod jobspec;
mod output;
mod sse;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();

    // One request at a time: a single-threaded runtime is all the CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&error::CliError::Other(err.into())),
    };

    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => fail(&err),
    }
}

fn fail(err: &error::CliError) -> ExitCode {
    // A closed stderr must not turn an error exit into a panic.
    let _ = writeln!(std::io::stderr(), "error: {err}");
    ExitCode::from(err.exit_code())
}
