//! Command-line syntax: global flags, subcommands and their help texts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::{duration, jobspec};

/// Global flags are listed apart so a subcommand's own flags stand out in its help.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Command-line client of the Fleet job system",
    long_about = "Command-line client of the Fleet job system: submit jobs to the submitter's \
                  HTTP API, follow them, read their results, look at the executors, and \
                  administer groups, executors and tokens.",
    after_help = "Examples:\n  \
        fleetctl submit --wait -- sha256sum README.md\n  \
        fleetctl status 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
        fleetctl submit --group site --each --quorum 3 --wait -- uname -a\n  \
        FLEET_ADDR=http://fleet.internal:7070 FLEET_TOKEN=flt_... fleetctl executors -o json\n\n\
        Every call needs a token (FLEET_TOKEN or --token): the submitter's admin token, or one \
        made with `fleetctl token create`."
)]
pub struct Cli {
    /// Base URL of the Fleet API (the submitter)
    #[arg(
        long,
        env = "FLEET_ADDR",
        default_value = "http://127.0.0.1:7070",
        value_parser = parse_addr,
        global = true,
        help_heading = GLOBAL
    )]
    pub addr: String,

    /// Bearer token sent with every request
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true, global = true, help_heading = GLOBAL)]
    pub token: Option<String>,

    /// Output format; json prints the API's answer as is
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true, help_heading = GLOBAL)]
    pub output: Output,

    /// Deadline for each HTTP request (e.g. 10s, 500ms, 1m)
    #[arg(long, default_value = "10s", value_parser = duration::parse, global = true, help_heading = GLOBAL)]
    pub timeout: Duration,

    /// With an https:// address: trust only the certificate authorities in this PEM
    /// file (a fleet's own CA); without it, the system's roots
    #[arg(long, env = "FLEET_CA_FILE", value_name = "PEM", global = true, help_heading = GLOBAL)]
    pub ca_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job: one command after `--`, or a JSON job file
    #[command(
        override_usage = "fleetctl submit [OPTIONS] -- <COMMAND> [ARGS]...\n       \
                          fleetctl submit [OPTIONS] -f <PATH>",
        long_about = "Submit a job. Either give one command after `--` (a job of one task, \
                      shaped by the task flags), or a whole job as JSON with -f (the body \
                      POST /v1/jobs takes; `-f -` reads it from stdin).\n\n\
                      Prints the job id, or the API's answer with -o json. With --wait, \
                      follows the job on stderr, prints its results when it ends and exits \
                      with its status: 0 if it succeeded, else the exit code of the first \
                      failed task (1 when that has none in 1..=255). With -o json and --wait, \
                      stdout gets the results JSON only (it names the job).",
        after_help = "Examples:\n  \
            fleetctl submit -- sha256sum README.md\n  \
            fleetctl submit --name build --group cpu --label arch=x86_64 --env RUST_LOG=debug \\\n      \
                --timeout-secs 600 --wait -- make -j4\n  \
            fleetctl submit -f job.json --idempotency-key nightly-2024-05-01\n  \
            generate-job | fleetctl submit -f - --wait --wait-timeout 300"
    )]
    Submit(Box<SubmitArgs>),

    /// Show a job's state, counts and tasks
    #[command(after_help = "Examples:\n  \
        fleetctl status 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
        fleetctl status -o json 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b | jq .counts")]
    Status(JobArg),

    /// Find jobs: newest first, filtered, a page at a time
    #[command(
        long_about = "List jobs, newest first, with their state and how many of their tasks \
                      are in each state. A submitter token sees only the jobs it submitted; \
                      reader and admin tokens see every job. Filters combine (all must hold). \
                      When more jobs match than --limit, the command to get the next page is \
                      printed on stderr (with -o json: `next_cursor` in the answer).",
        after_help = "Examples:\n  \
            fleetctl jobs\n  \
            fleetctl jobs --state running --state pending --group site\n  \
            fleetctl jobs --mine --name-prefix nightly- --limit 200\n  \
            fleetctl jobs --state failed --created-after 2026-11-30T00:00:00Z -o json | jq -r '.jobs[].job_id'"
    )]
    Jobs(JobsArgs),

    /// One job: `fleetctl job show ID`, `fleetctl job delete ID`
    #[command(subcommand)]
    Job(JobCommand),

    /// Cancel a job, or one task of it and the tasks that depend on it
    #[command(
        long_about = "Cancel a job (or one TASK of it, by name, index or id, with the tasks that \
                      depend on it). Tasks not started end `cancelled` at once; running ones are \
                      killed on their executor (their whole process group) and end `cancelled` \
                      with their output so far, unless they finished first. Nothing cancelled \
                      is tried again. Cancelling twice is harmless.",
        after_help = "Examples:\n  \
            fleetctl cancel 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl cancel 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b build"
    )]
    Cancel {
        #[arg(value_name = "JOB_ID")]
        job_id: Uuid,
        /// One task only: its name, index or id
        task: Option<String>,
    },

    /// Print a task's live output; with -f, follow it as it is written
    #[command(
        long_about = "Print what a task wrote to stdout and stderr (each to its own), as stored \
                      while it ran: the latest attempt unless --attempt says which. With -f, \
                      follow it as `tail -f` does until the attempt ends, reconnecting where it \
                      left off if the connection drops, and exit with the task's status (0 if it \
                      succeeded, else its exit code, else 1). TASK is a name, index or id \
                      (default: the first task).",
        after_help = "Examples:\n  \
            fleetctl logs 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl logs -f 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b build\n  \
            fleetctl logs --attempt 1 --stderr 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b 2"
    )]
    Logs(LogsArgs),

    /// Wait for a job to end, printing each task's outcome as it happens
    #[command(
        long_about = "Follow a job through its events until it ends, printing each task's \
                      outcome on stderr as it happens (retries included), then its results as \
                      `fleetctl results` would. Exits 0 if the job succeeded, else with the exit \
                      code of its first failed task (1 when that has none in 1..=255), or 124 \
                      when --timeout runs out. A dropped connection is resumed where it left off.",
        after_help = "Examples:\n  \
            fleetctl wait 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl wait --timeout 10m 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b && deploy"
    )]
    Wait {
        #[arg(value_name = "JOB_ID")]
        job_id: Uuid,
        /// Give up after this long and exit 124 (e.g. 300, 5m)
        #[arg(long, value_name = "SECS", value_parser = duration::parse)]
        timeout: Option<Duration>,
    },

    /// Run a finished job's failed and cancelled tasks again, with what depends on them
    #[command(
        long_about = "Run again the failed and cancelled tasks of a finished job (or only TASK, \
                      by name, index or id), with every task that depends on them and did not \
                      succeed. They run as new attempts; `fleetctl job show` keeps the earlier \
                      ones in each task's history.",
        after_help = "Examples:\n  \
            fleetctl retry 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl retry 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b build"
    )]
    Retry {
        #[arg(value_name = "JOB_ID")]
        job_id: Uuid,
        /// One task only: its name, index or id
        task: Option<String>,
    },

    /// Set the priority of a job's tasks not yet handed out (-1000..=1000, higher first)
    #[command(after_help = "Examples:\n  \
        fleetctl priority 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b 100\n  \
        fleetctl priority 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b -5")]
    Priority {
        #[arg(value_name = "JOB_ID")]
        job_id: Uuid,
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },

    /// Hold a job: its tasks not yet handed out wait until it is released (running ones go on)
    Hold(JobArg),

    /// Release a held job: its waiting tasks are dispatched again
    Release(JobArg),

    /// Pause or resume dispatching for a group (and its subgroups) or the whole fleet (admin)
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        fleetctl scheduler pause site.web\n  \
        fleetctl scheduler pause            # the whole fleet\n  \
        fleetctl scheduler status\n  \
        fleetctl scheduler resume site.web"
    )]
    Scheduler(SchedulerCommand),

    /// Show each task's result: outcome, times, stdout and stderr
    #[command(
        long_about = "Show the result that counted for each task of a job: executor, outcome, \
                      exit code or signal or error, times, then stdout and stderr. Tasks that \
                      have no result yet are left out.",
        after_help = "Examples:\n  \
            fleetctl results 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl results --by-executor 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
            fleetctl results -o json 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b | jq -r '.results[0].stdout'"
    )]
    Results(ResultsArgs),

    /// List the executors the dispatcher knows about
    #[command(after_help = "Examples:\n  \
        fleetctl executors\n  \
        fleetctl executors -o json | jq '.executors[] | select(.alive | not)'")]
    Executors,

    /// Per group: tasks ready, held, waiting and running, executors, slots, jobs finished
    #[command(
        long_about = "Show, for every group, what waits and what runs: tasks ready (waiting \
                      for an executor), held, waiting for dependencies and running; how long \
                      the oldest ready task has waited since it was submitted; the executors \
                      alive (and how many of them drain); their slots (free of the executors \
                      taking work, out of all alive); and the jobs finished in the last \
                      minute and hour, as succeeded/failed/cancelled. A group's figures \
                      include its subgroups' (`default` holds everything). Listed: `default`, \
                      the groups created, and those with executors or unfinished tasks, with \
                      the groups that enclose them.",
        after_help = "Examples:\n  \
            fleetctl stats\n  \
            fleetctl stats -o json | jq '.groups[] | select(.tasks.ready > 0 and .executors.alive == 0)'\n  \
            watch -n 5 fleetctl stats"
    )]
    Stats,

    /// Manage groups: list, create, delete, and put executors in them
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        fleetctl group list\n  \
        fleetctl group create site && fleetctl group create site.web\n  \
        fleetctl group add site.web web-1\n  \
        fleetctl group remove site.web web-1 && fleetctl group delete site.web"
    )]
    Group(GroupCommand),

    /// Manage API tokens (admin): create one for a person or system, list, revoke
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        fleetctl token create ci-pipeline --role submitter\n  \
        fleetctl token list\n  \
        fleetctl token revoke 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b"
    )]
    Token(TokenCommand),

    /// Manage fleet-wide webhooks (admin): add one, list them with their last error, delete
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        fleetctl webhook add https://ci.example.com/fleet --events 'job.*'\n  \
        fleetctl webhook add http://10.0.0.5:8080/hook --group site --secret \"$HOOK_SECRET\"\n  \
        fleetctl webhook list\n  \
        fleetctl webhook delete 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b"
    )]
    Webhook(WebhookCommand),

    /// Executors: show one; and (admin) join tokens, revoke, drain, resume, forget one
    /// that is gone
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        fleetctl executor show cpu-1\n  \
        fleetctl executor forget old-builder-7\n  \
        fleetctl executor join-token --group site.web\n  \
        fleetctl executor revoke web-1\n  \
        fleetctl executor drain cpu-1\n  \
        fleetctl executor resume cpu-1"
    )]
    Executor(ExecutorCommand),
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(value_name = "JOB_ID")]
    pub job_id: Uuid,
    /// The task: its name, index or id (default: the first)
    pub task: Option<String>,
    /// Follow the output as it is written, until the attempt ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Which attempt (default: the latest)
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Only what it wrote to stdout
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only what it wrote to stderr
    #[arg(long)]
    pub stderr: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (repeatable: any of them)
    #[arg(long = "state", value_enum, value_name = "STATE")]
    pub states: Vec<JobStateArg>,
    /// Only jobs with a task for this group or one of its subgroups
    #[arg(long)]
    pub group: Option<String>,
    /// Only jobs whose name starts with this
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// Only jobs with a task requiring this executor label
    #[arg(long, value_name = "K=V", value_parser = jobspec::parse_key_value)]
    pub label: Option<(String, String)>,
    /// Only jobs submitted by this token (its id or its name)
    #[arg(long, value_name = "TOKEN")]
    pub submitted_by: Option<String>,
    /// Only the jobs submitted with the token this command uses
    #[arg(long)]
    pub mine: bool,
    /// Only jobs created at or after this time (RFC 3339, e.g. 2026-11-30T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,
    /// Jobs per page, 1..=1000
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this point (the cursor a previous page printed)
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStateArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SchedulerCommand {
    /// Stop handing out work of GROUP and its subgroups (no GROUP: of the whole fleet).
    /// Submissions are still accepted; running tasks go on. Survives restarts and
    /// dispatcher failover.
    Pause { group: Option<String> },
    /// Hand out work of GROUP again (no GROUP: lift the fleet-wide pause). A pause of an
    /// enclosing group still holds.
    Resume { group: Option<String> },
    /// List the pauses in force
    Status,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// A job's state, counts, tasks and what each task was submitted as (argv, group,
    /// labels, priority, timeout; env values only for its owner and admins)
    #[command(after_help = "Examples:\n  \
        fleetctl job show 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
        fleetctl job show -o json 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b | jq '.tasks[].spec.argv'")]
    Show(JobArg),
    /// Delete a finished job now, with its tasks, attempts and results (its owner or an
    /// admin); refused while it runs. Finished jobs are purged anyway after the
    /// retention period (14 days by default).
    #[command(after_help = "Examples:\n  \
        fleetctl job delete 0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b\n  \
        fleetctl jobs --mine --state failed -o json | jq -r '.jobs[].job_id' | xargs -n1 fleetctl job delete")]
    Delete(JobArg),
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The job's id, as printed by `fleetctl submit`
    #[arg(value_name = "JOB_ID")]
    pub job_id: Uuid,

    /// List the results grouped by executor (for tasks run on every member)
    #[arg(long)]
    pub by_executor: bool,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List every group with its subgroups and members
    List,
    /// Create a group; a nested one (`site.web`) needs its parent (`site`) first
    Create {
        /// Dot-separated name, e.g. site.web
        name: String,
        /// What the group is for
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a group (refused while it has subgroups, members or unfinished tasks)
    Delete { name: String },
    /// Put an executor in a group
    Add { group: String, executor: String },
    /// Take an executor out of a group it was put in
    Remove { group: String, executor: String },
    /// Drain every executor of a group and its subgroups (they finish what they run)
    Drain { name: String },
    /// Resume every executor of a group and its subgroups
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ExecutorCommand {
    /// Show one executor and the attempts it holds now
    ///
    /// Its groups (declared, and put in by an administrator), labels, capacity and load,
    /// whether it is alive and draining (and who drained it), its registration, and the
    /// attempts it holds now: job, task, attempt and state. Any role.
    #[command(after_help = "Examples:\n  \
        fleetctl executor show cpu-1\n  \
        fleetctl executor show cpu-1 -o json | jq -r '.attempts[].job_id'")]
    Show {
        #[arg(value_name = "EXECUTOR_ID")]
        id: String,
    },
    /// Forget an executor that is gone (admin)
    ///
    /// Removes it from the executor listing and the stats, with the groups it was put in
    /// and its drain. Refused while it is alive (heard within the dispatcher's executor
    /// timeout) or still holds attempts (they end with their results or their leases).
    /// An executor that comes back is listed again. Its registration, if any, is kept:
    /// `fleetctl executor revoke` stops it from coming back.
    #[command(after_help = "Examples:\n  \
        fleetctl executor forget old-builder-7\n  \
        fleetctl executors -o json | jq -r '.executors[] | select(.alive | not) | .executor_id' \\\n      \
            | xargs -n1 fleetctl executor forget")]
    Forget {
        #[arg(value_name = "EXECUTOR_ID")]
        id: String,
    },
    /// Finish what it runs, start nothing new, receive no new work
    Drain {
        #[arg(value_name = "EXECUTOR_ID")]
        id: String,
    },
    /// Take work again after a drain
    Resume {
        #[arg(value_name = "EXECUTOR_ID")]
        id: String,
    },
    /// Make a one-time join token for a new executor (FLEET_EXECUTOR__JOIN_TOKEN)
    JoinToken {
        /// A group the executor may declare (repeatable; none: any)
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// How long the token stays usable, in seconds
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Revoke an executor's credential: it is disconnected, its attempts are lost and
    /// rerun elsewhere, and it cannot reconnect
    Revoke {
        #[arg(value_name = "EXECUTOR_ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once and cannot be shown again
    Create {
        /// Who or what the token is for
        name: String,
        /// What it may do
        #[arg(long, value_enum, default_value_t = RoleArg::Reader)]
        role: RoleArg,
    },
    /// List the tokens (never their secrets)
    List,
    /// Revoke a token by its id (takes effect within 5 seconds)
    Revoke {
        #[arg(value_name = "TOKEN_ID")]
        token_id: Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register a webhook: every event (or those named) is POSTed to URL, signed
    #[command(
        long_about = "Register a fleet-wide webhook: each event (of the kinds named with \
                      --events, default all; of the group named with --group and its subgroups, \
                      default all) is POSTed to URL as JSON, with a Fleet-Signature header \
                      (sha256= and the HMAC-SHA256 of the body under the secret) and the event's \
                      id in Fleet-Event-Id. Delivery is at least once, retried with backoff. The \
                      secret is made up when not given and shown once. See docs/events.md."
    )]
    Add {
        url: String,
        /// Kinds or patterns, comma separated (job.failed,task.*); default: every kind
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Only events of this group (and its subgroups)
        #[arg(long)]
        group: Option<String>,
        /// The signing secret (16 to 256 bytes); default: one made up and shown once
        #[arg(long, env = "FLEET_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// List webhooks, jobs' own included: deliveries pending and given up, the last error
    List,
    /// Delete a webhook and the deliveries it still has queued
    Delete {
        #[arg(value_name = "WEBHOOK_ID")]
        webhook_id: Uuid,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read jobs, results, executors and groups
    Reader,
    /// Also submit jobs
    Submitter,
    /// Also manage groups, executors and tokens
    Admin,
}

impl RoleArg {
    pub fn role(self) -> fleet_core::auth::Role {
        use fleet_core::auth::Role;
        match self {
            Self::Reader => Role::Reader,
            Self::Submitter => Role::Submitter,
            Self::Admin => Role::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Submitter => "submitter",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Args)]
pub struct JobArg {
    /// The job's id, as printed by `fleetctl submit`
    #[arg(value_name = "JOB_ID")]
    pub job_id: Uuid,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["command", "file"])))]
pub struct SubmitArgs {
    /// Read the whole job as JSON from PATH (`-` for stdin) instead of a command line
    #[arg(short = 'f', long, value_name = "PATH", conflicts_with = "TaskOptions")]
    pub file: Option<PathBuf>,

    #[command(flatten)]
    pub task: TaskOptions,

    /// Send as Idempotency-Key: submitting again with the same key yields the same job
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Follow the job until it ends, print its results and exit with its status
    #[arg(long)]
    pub wait: bool,

    /// With --wait, give up after this long and exit 124 (e.g. 300, 5m)
    #[arg(long, value_name = "SECS", requires = "wait", value_parser = duration::parse)]
    pub wait_timeout: Option<Duration>,

    /// The command to run and its arguments, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Flags that shape the single task built from a command line.
#[derive(Debug, Default, Args)]
pub struct TaskOptions {
    /// Name of the job (and of its task)
    #[arg(long)]
    pub name: Option<String>,

    /// Executor group to run on (server default: "default")
    #[arg(long)]
    pub group: Option<String>,

    /// Executor label the task requires (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = jobspec::parse_key_value)]
    pub labels: Vec<(String, String)>,

    /// Environment variable for the command (repeatable). Names that look secret
    /// (*PASSWORD*, *TOKEN*, *_KEY, ... per the server's secrets.env_patterns) are kept
    /// as secrets
    #[arg(long = "env", value_name = "K=V", value_parser = jobspec::parse_key_value)]
    pub env: Vec<(String, String)>,

    /// Secret environment variable (repeatable): stored encrypted, never shown or
    /// logged. `K` alone takes the value of K in this shell's environment, so that it
    /// appears in no command line
    #[arg(long = "secret-env", value_name = "K[=V]", value_parser = jobspec::parse_secret)]
    pub secret_env: Vec<(String, Option<String>)>,

    /// Working directory on the executor
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Kill the command after this many seconds (server default: 3600)
    #[arg(long, value_name = "SECS")]
    pub timeout_secs: Option<u64>,

    /// Higher runs first, -1000..=1000 (server default: 0)
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,

    /// How many times the task may be tried, 1..=20 (server default: 3)
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Feed this file's contents to the command's stdin (`-` for fleetctl's own stdin)
    #[arg(long, value_name = "PATH")]
    pub stdin_file: Option<PathBuf>,

    /// Run once on every member of the group instead of once on any
    #[arg(long)]
    pub each: bool,

    /// With --each: how many members must succeed (server default: all)
    #[arg(long, value_name = "N", requires = "each")]
    pub quorum: Option<u32>,
}

/// Accepts `host:port` as well as a URL, since that is what people type (http:// then).
fn parse_addr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|err| format!("not a URL: {err}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported scheme `{other}` (use http:// or https://)"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the address has no host".into());
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addr_accepts_host_port_and_drops_trailing_slash() {
        assert_eq!(parse_addr("fleet:7070").as_deref(), Ok("http://fleet:7070"));
        assert_eq!(
            parse_addr("http://10.0.0.1:7070/").as_deref(),
            Ok("http://10.0.0.1:7070")
        );
        assert!(parse_addr("https://fleet").is_ok());
        assert!(parse_addr("ftp://fleet").is_err());
    }

    #[test]
    fn submit_needs_a_command_or_a_file_but_not_both() {
        assert!(Cli::try_parse_from(["fleetctl", "submit"]).is_err());
        assert!(Cli::try_parse_from(["fleetctl", "submit", "-f", "j.json", "--", "true"]).is_err());
        assert!(
            Cli::try_parse_from(["fleetctl", "submit", "-f", "j.json", "--env", "A=1"]).is_err()
        );
        assert!(Cli::try_parse_from(["fleetctl", "submit", "-f", "j.json", "--wait"]).is_ok());
    }

    #[test]
    fn submit_takes_everything_after_the_double_dash_as_the_command() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from([
            "fleetctl",
            "submit",
            "--priority",
            "-5",
            "--env",
            "A=1",
            "--",
            "ls",
            "-o",
            "--wait",
        ])?;
        let Command::Submit(args) = cli.command else {
            panic!("expected submit");
        };
        assert_eq!(args.command, ["ls", "-o", "--wait"]);
        assert_eq!(args.task.priority, Some(-5));
        assert!(!args.wait);
        assert_eq!(cli.output, Output::Text);
        Ok(())
    }

    #[test]
    fn wait_timeout_needs_wait() {
        assert!(
            Cli::try_parse_from(["fleetctl", "submit", "--wait-timeout", "5", "--", "true"])
                .is_err()
        );
    }

    #[test]
    fn job_id_must_be_a_uuid() {
        assert!(Cli::try_parse_from(["fleetctl", "status", "nope"]).is_err());
    }
}
