//! The subcommands: each takes its parsed flags, talks to the API and returns an exit code.

mod admin;
mod control;
mod executors;
mod jobs;
mod logs;
mod results;
mod stats;
mod status;
mod submit;

use fleet_core::api::jobs::JobPatch;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::error::CliError;

pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let client = Client::new(
        &cli.addr,
        cli.token.as_deref(),
        cli.timeout,
        cli.ca_file.as_deref(),
    )?;
    match cli.command {
        Command::Submit(args) => submit::run(&client, *args, cli.output).await,
        Command::Jobs(args) => jobs::list(&client, &args, cli.output).await,
        Command::Job(crate::cli::JobCommand::Show(arg)) => {
            jobs::show(&client, &arg.job_id, cli.output).await
        }
        Command::Cancel { job_id, task } => {
            control::cancel(&client, &job_id, task.as_deref(), cli.output).await
        }
        Command::Logs(args) => logs::run(&client, &args, cli.output).await,
        Command::Retry { job_id, task } => {
            control::rerun(&client, &job_id, task.as_deref(), cli.output).await
        }
        Command::Job(crate::cli::JobCommand::Delete(arg)) => {
            jobs::delete(&client, &arg.job_id, cli.output).await
        }
        Command::Priority { job_id, priority } => {
            control::patch_job(
                &client,
                &job_id,
                JobPatch {
                    priority: Some(priority),
                    held: None,
                },
                cli.output,
            )
            .await
        }
        Command::Hold(arg) => {
            control::patch_job(
                &client,
                &arg.job_id,
                JobPatch {
                    priority: None,
                    held: Some(true),
                },
                cli.output,
            )
            .await
        }
        Command::Release(arg) => {
            control::patch_job(
                &client,
                &arg.job_id,
                JobPatch {
                    priority: None,
                    held: Some(false),
                },
                cli.output,
            )
            .await
        }
        Command::Scheduler(cmd) => control::scheduler(&client, cmd, cli.output).await,
        Command::Status(arg) => status::run(&client, &arg.job_id, cli.output).await,
        Command::Results(arg) => {
            results::run(&client, &arg.job_id, arg.by_executor, cli.output).await
        }
        Command::Executors => executors::run(&client, cli.output).await,
        Command::Stats => stats::run(&client, cli.output).await,
        Command::Group(cmd) => admin::group(&client, cmd, cli.output).await,
        Command::Token(cmd) => admin::token(&client, cmd, cli.output).await,
        Command::Webhook(cmd) => admin::webhook(&client, cmd, cli.output).await,
        Command::Wait { job_id, timeout } => {
            submit::wait(&client, &job_id, timeout, cli.output).await
        }
        Command::Executor(cmd) => admin::executor(&client, cmd, cli.output).await,
    }
}
