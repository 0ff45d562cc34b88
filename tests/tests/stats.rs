//! Stats (issue 11): "Stats match the state of a fleet built in the test". Executors in
//! groups (one drained), a job running, a held job, ready tasks for a group nobody
//! serves, jobs finished every way (one of them ten minutes ago): every figure of every
//! group, subgroups rolled up into their parents.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::db::stats::{GroupStats, StatsView};
use fleet_shared::id::JobId;
use fleet_tests::{client_with_token, wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// Every figure but the oldest ready task's age: (ready, held, waiting, running), (alive,
/// draining), (slots, free), last minute and last hour (succeeded, failed, cancelled).
type Figures = ([u64; 4], [u64; 2], [u64; 2], [u64; 3], [u64; 3]);

fn figures(s: &GroupStats) -> Figures {
    let f = &s.finished;
    (
        [
            s.tasks.ready,
            s.tasks.held,
            s.tasks.waiting,
            s.tasks.running,
        ],
        [s.executors.alive, s.executors.draining],
        [s.slots.total, s.slots.free],
        [
            f.last_minute.succeeded,
            f.last_minute.failed,
            f.last_minute.cancelled,
        ],
        [
            f.last_hour.succeeded,
            f.last_hour.failed,
            f.last_hour.cancelled,
        ],
    )
}

async fn run_to_end(fleet: &TestFleet, argv: &[&str], group: &str) -> Result<(JobId, String)> {
    let id = fleet
        .submit(&json!({"tasks": [{"argv": argv, "group": group}]}))
        .await?;
    Ok((id, fleet.wait_job(id, DEADLINE).await?.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_the_state_of_a_fleet_built_in_the_test() -> Result<()> {
    let mut fleet = TestFleet::start("stats").await?;
    for g in ["site", "site.web", "idle"] {
        let (s, b) = fleet
            .call(Method::POST, "/v1/groups", Some(json!({"name": g})))
            .await?;
        assert_eq!(s, 201, "{b}");
    }
    for (id, group, capacity) in [
        ("web-1", "site.web", 2),
        ("web-2", "site.web", 1),
        ("cpu-1", "cpu", 3),
    ] {
        fleet
            .add_executor(ExecutorSpec::new(id, &[group], capacity))
            .await?;
    }
    fleet.wait_executors(&["web-1", "web-2", "cpu-1"]).await?;
    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/web-2/drain", None)
        .await?;
    assert_eq!(s, 202, "{b}");
    fleet.wait_draining("web-2", true).await?;

    // Finished: two succeeded in site.web (one of them ten minutes ago), one failed and
    // one cancelled in cpu.
    let (_, state) = run_to_end(&fleet, &["true"], "site.web").await?;
    assert_eq!(state, "succeeded");
    let (earlier, state) = run_to_end(&fleet, &["true"], "site.web").await?;
    assert_eq!(state, "succeeded");
    fleet
        .pool
        .get()
        .await?
        .execute(
            "UPDATE jobs SET finished_at = now() - interval '10 minutes' WHERE id = $1",
            &[&earlier.uuid()],
        )
        .await?;
    let (_, state) = run_to_end(&fleet, &["false"], "cpu").await?;
    assert_eq!(state, "failed");
    let doomed = fleet
        .submit(&json!({"tasks": [{"argv": ["sleep", "30"], "group": "cpu"}]}))
        .await?;
    let t = fleet
        .wait_job_state(doomed, "running", DEADLINE)
        .await?
        .tasks
        .remove(0);
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/executors/cpu-1/cancel",
            Some(json!({"task_id": t.task_id, "attempt": t.attempts})),
        )
        .await?;
    assert_eq!(s, 202, "{b}");
    assert_eq!(fleet.wait_job(doomed, DEADLINE).await?.state, "cancelled");

    // Running on web-1 (web-2 drains); ready and waiting for lab.gpu, which nobody
    // serves; held in lab.
    let running = fleet
        .submit(&json!({"tasks": [{"argv": ["sleep", "60"], "group": "site.web"}]}))
        .await?;
    fleet.wait_job_state(running, "running", DEADLINE).await?;
    let submitted = chrono::Utc::now();
    fleet
        .submit(&json!({"tasks": [
            {"name": "a", "argv": ["true"], "group": "lab.gpu"},
            {"name": "b", "argv": ["true"], "group": "lab.gpu"},
            {"name": "c", "argv": ["true"], "group": "lab.gpu", "depends_on": ["a"]}]}))
        .await?;
    let held = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "lab"},
                                  {"argv": ["true"], "group": "lab"}]}))
        .await?;
    let (s, b) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{held}"),
            Some(json!({"held": true})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");

    let none = [0, 0, 0];
    let expected: BTreeMap<&str, Figures> = BTreeMap::from([
        (
            "default",
            ([2, 2, 1, 1], [3, 1], [6, 4], [1, 1, 1], [2, 1, 1]),
        ),
        ("cpu", ([0, 0, 0, 0], [1, 0], [3, 3], [0, 1, 1], [0, 1, 1])),
        ("idle", ([0, 0, 0, 0], [0, 0], [0, 0], none, none)),
        ("lab", ([2, 2, 1, 0], [0, 0], [0, 0], none, none)),
        ("lab.gpu", ([2, 0, 1, 0], [0, 0], [0, 0], none, none)),
        ("site", ([0, 0, 0, 1], [2, 1], [3, 1], [1, 0, 0], [2, 0, 0])),
        (
            "site.web",
            ([0, 0, 0, 1], [2, 1], [3, 1], [1, 0, 0], [2, 0, 0]),
        ),
    ]);
    // The executors' running counts come with their INFO: wait for them to settle.
    let last = std::sync::Mutex::new(BTreeMap::new());
    let got = wait_for(
        "the stats to match the fleet",
        Duration::from_secs(30),
        || async {
            let stats: StatsView = fleet.get_json("/v1/stats").await?;
            let got: BTreeMap<String, Figures> = stats
                .groups
                .iter()
                .map(|g| (g.group.clone(), figures(g)))
                .collect();
            let same =
                got.len() == expected.len() && expected.iter().all(|(k, v)| got.get(*k) == Some(v));
            if let Ok(mut l) = last.lock() {
                *l = got;
            }
            Ok(same.then_some(stats))
        },
    )
    .await
    .with_context(|| format!("expected {expected:#?}\nlast seen {last:#?}"))?;
    let order: Vec<&str> = got.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(
        order,
        ["default", "cpu", "idle", "lab", "lab.gpu", "site", "site.web"]
    );

    // The oldest ready task is lab.gpu's (lab's are held), in lab and default too.
    let age = |name: &str| {
        got.groups
            .iter()
            .find(|g| g.group == name)
            .and_then(|g| g.tasks.oldest_ready_secs)
    };
    let gpu = age("lab.gpu").context("lab.gpu has ready tasks")?;
    let since = (got.at - submitted).num_milliseconds() as f64 / 1000.0;
    assert!(
        gpu >= 0.0 && gpu <= since + 1.0,
        "{gpu} s, submitted {since} s before"
    );
    assert_eq!((age("lab"), age("default")), (Some(gpu), Some(gpu)));
    for g in ["cpu", "idle", "site", "site.web"] {
        assert_eq!(age(g), None, "{g}");
    }

    // Any role may read them.
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "watcher", "role": "reader"})),
        )
        .await?;
    assert_eq!(s, 201, "{b}");
    let reader = client_with_token(b["token"].as_str())?;
    let (s, b) = fleet
        .call_as(&reader, Method::GET, "/v1/stats", None)
        .await?;
    assert_eq!(
        (s, b["groups"][0]["group"].as_str()),
        (200, Some("default"))
    );
    fleet.shutdown().await
}
