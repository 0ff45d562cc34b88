//! The fleetctl binary against a real fleet (issue 12, acceptance 5): `fleetctl logs -f`
//! prints a task's output as it is written and exits with the task's status;
//! `fleetctl wait` and `submit --wait` follow a job through its events, print each
//! task's outcome as it happens, and exit with the job's status.

use anyhow::Result;
use fleet_tests::{ExecutorSpec, TestFleet};
use serde_json::json;

mod common;
use common::{fleetctl, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_and_wait_exit_with_the_status_of_what_they_followed() -> Result<()> {
    let mut fleet = TestFleet::start("cli-follow").await?;
    fleet
        .add_executor(ExecutorSpec::new("cli-1", &["cli"], 2))
        .await?;

    // logs -f: every line, in order, then the task's own exit status.
    let job = fleet
        .submit(&json!({"tasks": [{"group": "cli", "argv": ["sh", "-c",
            "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done; exit 3"]}]}))
        .await?;
    let out = fleetctl(&fleet, &["logs", "-f", &job.to_string()]).await?;
    let stdout = text(&out.stdout);
    let want: String = (1..=5).map(|i| format!("line {i}\n")).collect();
    anyhow::ensure!(stdout == want, "logs -f printed {stdout:?}");
    anyhow::ensure!(
        out.status.code() == Some(3),
        "logs -f exits with the task's status: {:?} {}",
        out.status,
        text(&out.stderr)
    );

    // wait: a job with a task retried once and one failing with 7 exits 7, and says
    // each outcome as it happened.
    let dir = std::env::temp_dir().join(&fleet.name);
    std::fs::create_dir_all(&dir)?;
    let marker = dir.join("tried");
    let flaky = format!(
        "test -f {m} && exit 0; touch {m}; exit 4",
        m = marker.display()
    );
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "flaky", "group": "cli", "argv": ["sh", "-c", flaky],
             "retry": {"on": ["failed"], "max_attempts": 2,
                       "backoff": {"initial_secs": 0.2, "factor": 1, "max_secs": 1}}},
            {"name": "bad", "group": "cli", "argv": ["sh", "-c", "sleep 0.3; exit 7"],
             "max_attempts": 1}]}))
        .await?;
    let out = fleetctl(&fleet, &["wait", &job.to_string()]).await?;
    let stderr = text(&out.stderr);
    anyhow::ensure!(
        out.status.code() == Some(7),
        "wait exits with the first failed task's code: {:?}\n{stderr}",
        out.status
    );
    for line in [
        "task flaky: attempt 1 failed, exit 4, on cli-1",
        "task flaky: succeeded (succeeded, exit 0, on cli-1",
        "task bad: failed (failed, exit 7, on cli-1",
        "job failed",
    ] {
        anyhow::ensure!(stderr.contains(line), "wait said {stderr:?}, not {line:?}");
    }
    anyhow::ensure!(
        text(&out.stdout).contains("bad"),
        "the results follow: {}",
        text(&out.stdout)
    );

    // wait on a job that already ended: its events are replayed, and it exits at once.
    let again = fleetctl(&fleet, &["wait", &job.to_string()]).await?;
    anyhow::ensure!(again.status.code() == Some(7), "{:?}", again.status);

    // submit --wait: a success is 0.
    let ok = fleetctl(
        &fleet,
        &[
            "submit",
            "--group",
            "cli",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo fine",
        ],
    )
    .await?;
    anyhow::ensure!(
        ok.status.code() == Some(0),
        "{:?} {}",
        ok.status,
        text(&ok.stderr)
    );

    // An unknown job is a clear error, not a hang.
    let missing = fleetctl(&fleet, &["wait", "0190c6c2-6f7e-7c3a-9a51-3f1f0c1e2d4b"]).await?;
    anyhow::ensure!(
        missing.status.code() != Some(0) && text(&missing.stderr).contains("no such job"),
        "{:?} {}",
        missing.status,
        text(&missing.stderr)
    );
    fleet.shutdown().await
}

/// Runs fleetctl and insists it succeeded; gives its stdout.
async fn ok(fleet: &TestFleet, args: &[&str]) -> Result<String> {
    let out = fleetctl(fleet, args).await?;
    anyhow::ensure!(
        out.status.success(),
        "fleetctl {args:?}: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Every text view reads the server's own answer types (fleet-core), and every body
/// fleetctl sends is one the server takes: one command of each kind, against a real fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_view_reads_what_the_server_answers() -> Result<()> {
    let mut fleet = TestFleet::start("cli-views").await?;
    fleet
        .add_executor(ExecutorSpec::new("views-1", &["views"], 2))
        .await?;

    let done = ok(
        &fleet,
        &[
            "submit",
            "--group",
            "views",
            "--name",
            "hello",
            "--priority",
            "-5",
            "--env",
            "A=1",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
    )
    .await?;
    anyhow::ensure!(done.contains("hi"), "submit --wait printed {done:?}");
    let held = fleet
        .submit(
            &json!({"tasks": [{"name": "later", "group": "nowhere", "argv": ["true"]},
                                  {"name": "after", "group": "nowhere", "argv": ["true"],
                                   "depends_on": ["later"]}]}),
        )
        .await?
        .to_string();

    let shown = ok(&fleet, &["job", "show", &held]).await?;
    for want in [
        "state:    pending",
        "as submitted:",
        "after: later",
        "group nowhere",
    ] {
        anyhow::ensure!(shown.contains(want), "job show: no {want:?} in\n{shown}");
    }
    ok(&fleet, &["status", &held]).await?;
    let patched = ok(&fleet, &["priority", &held, "100"]).await?;
    anyhow::ensure!(patched.contains("priority 100"), "{patched}");
    anyhow::ensure!(ok(&fleet, &["hold", &held]).await?.contains("held"));
    anyhow::ensure!(ok(&fleet, &["release", &held]).await?.contains("released"));
    let jobs = ok(&fleet, &["jobs"]).await?;
    anyhow::ensure!(jobs.contains("hello") && jobs.contains(&held), "{jobs}");
    let executors = ok(&fleet, &["executors"]).await?;
    anyhow::ensure!(executors.contains("views-1"), "{executors}");
    let executor = ok(&fleet, &["executor", "show", "views-1"]).await?;
    anyhow::ensure!(executor.contains("groups:     views"), "{executor}");
    let stats = ok(&fleet, &["stats"]).await?;
    anyhow::ensure!(stats.contains("views"), "{stats}");

    ok(&fleet, &["group", "create", "views"]).await?;
    ok(
        &fleet,
        &[
            "group",
            "create",
            "views.sub",
            "--description",
            "a subgroup",
        ],
    )
    .await?;
    let groups = ok(&fleet, &["group", "list"]).await?;
    anyhow::ensure!(
        groups.contains("  views.sub") && groups.contains("a subgroup"),
        "{groups}"
    );
    let token = ok(
        &fleet,
        &["token", "create", "cli-reader", "--role", "reader"],
    )
    .await?;
    anyhow::ensure!(token.contains("role reader"), "{token}");
    let tokens = ok(&fleet, &["token", "list"]).await?;
    anyhow::ensure!(tokens.contains("cli-reader"), "{tokens}");
    let join = ok(&fleet, &["executor", "join-token", "--group", "views"]).await?;
    anyhow::ensure!(join.contains("fjt_"), "{join}");
    let hook = ok(
        &fleet,
        &[
            "webhook",
            "add",
            "http://127.0.0.1:9/hook",
            "--events",
            "job.*",
        ],
    )
    .await?;
    anyhow::ensure!(hook.contains("-> http://127.0.0.1:9/hook"), "{hook}");
    let hooks = ok(&fleet, &["webhook", "list"]).await?;
    anyhow::ensure!(hooks.contains("job.*") || hooks.contains("job."), "{hooks}");

    let paused = ok(&fleet, &["scheduler", "pause", "views"]).await?;
    anyhow::ensure!(paused.contains("paused for views"), "{paused}");
    let status = ok(&fleet, &["scheduler", "status"]).await?;
    anyhow::ensure!(
        status.contains("views") && status.contains("GROUP"),
        "{status}"
    );
    let resumed = ok(&fleet, &["scheduler", "resume", "views"]).await?;
    anyhow::ensure!(resumed.contains("resumed for views"), "{resumed}");
    let cancelled = ok(&fleet, &["cancel", &held]).await?;
    anyhow::ensure!(cancelled.contains("2 tasks cancelled"), "{cancelled}");
    let rerun = ok(&fleet, &["retry", &held]).await?;
    anyhow::ensure!(rerun.contains("2 tasks run again"), "{rerun}");

    // The server's error body, read as the server writes it.
    let refused = fleetctl(&fleet, &["priority", &held, "5000"]).await?;
    anyhow::ensure!(
        !refused.status.success() && text(&refused.stderr).contains("priority"),
        "{:?} {}",
        refused.status,
        text(&refused.stderr)
    );
    fleet.shutdown().await
}
