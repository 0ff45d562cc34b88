//! Metrics (issue: "A metrics test scrapes every service and checks the gauges against a
//! fleet built in the test"). Every service runs as a process of its own, so that each
//! `/metrics` is that service's alone (in-process services would share one recorder).
//! The fleet: two executors in two subgroups of `m`, work running and ready in them,
//! ready work and a held job in `lab` (nobody serves it), one quick task finished in
//! `m.b` (a recent run time there) and one failed there after a retry. The collector's
//! gauges must show every group's ready, held, running tasks, alive executors, slots and
//! desired executors; every service its process figures; the collector the histograms
//! and counters of the finished tasks and a dead letter.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_tests::{wait_for, ExecutorSpec, InProcess, ServiceProcess, TestFleet};
use reqwest::Method;
use serde_json::json;

const SUBMITTER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-submitter");
const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");
const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-collector");
const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");

const DEADLINE: Duration = Duration::from_secs(60);

/// One sample of a Prometheus text exposition: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// The samples of a scrape (comments skipped). Label values hold no `,` or `"` here.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.insert((name, labels), value);
    }
    out
}

async fn scrape(p: &ServiceProcess) -> Result<BTreeMap<Series, f64>> {
    let (status, body) = p.get("/metrics").await?;
    anyhow::ensure!(status == 200, "{} /metrics answered {status}", p.id);
    Ok(parse(&body))
}

fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

/// The gauges checked, in this order, per group.
const GAUGES: [&str; 8] = [
    "fleet_tasks_ready",
    "fleet_tasks_held",
    "fleet_tasks_running",
    "fleet_executors_alive",
    "fleet_slots_total",
    "fleet_slots_free",
    "fleet_desired_executors",
    "fleet_tasks_waiting",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_metrics_and_the_gauges_match_the_fleet() -> Result<()> {
    let mut fleet = TestFleet::start_opts("metrics", InProcess::none(), |_| {}).await?;
    let submitter = fleet
        .spawn_submitter_process(SUBMITTER_BIN, "submitter")
        .await?;
    // No window: an executor holds only what its slots run, so the rest stays ready.
    let dispatcher = fleet.spawn_process(
        DISPATCHER_BIN,
        "dispatcher",
        &[
            ("FLEET_DISPATCHER__WINDOW", "0".into()),
            ("FLEET_DISPATCHER__WINDOW_FLOOR", "0".into()),
        ],
    )?;
    let collector = fleet.spawn_process(
        COLLECTOR_BIN,
        "collector",
        &[
            ("FLEET_METRICS__INTERVAL_SECS", "1".into()),
            ("FLEET_METRICS__DRAIN_TARGET_SECS", "300".into()),
        ],
    )?;
    let a = fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new("exec-a", &["m.a"], 2))?;
    let b = fleet.spawn_executor_process(EXECUTOR_BIN, ExecutorSpec::new("exec-b", &["m.b"], 3))?;
    fleet.wait_executors(&["exec-a", "exec-b"]).await?;

    // A quick task in m.b: a run time recorded there, and one of each histogram.
    let quick = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "m.b"}]}))
        .await?;
    assert_eq!(fleet.wait_job(quick, DEADLINE).await?.state, "succeeded");
    // A task failing twice in m.b, retried once; and a result no one could read.
    let failing = fleet
        .submit(
            &json!({"tasks": [{"argv": ["false"], "group": "m.b", "retry": {
            "on": ["failed"], "max_attempts": 2, "backoff": {"initial_secs": 3}}}]}),
        )
        .await?;
    assert_eq!(fleet.wait_job(failing, DEADLINE).await?.state, "failed");
    let names = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix);
    fleet
        .publish_raw(&names.root_exchange(), "result.exec-b", b"not json")
        .await?;

    // m.a: 4 tasks for 2 slots (2 run, 2 ready); m.b: 1 runs, 2 slots free.
    let tasks = |n: usize, group: &str| {
        json!({"tasks": (0..n)
            .map(|_| json!({"argv": ["sleep", "120"], "group": group}))
            .collect::<Vec<_>>()})
    };
    fleet.submit(&tasks(4, "m.a")).await?;
    fleet.submit(&tasks(1, "m.b")).await?;
    // lab.gpu: 3 ready that nobody serves; lab: a held job of 2.
    fleet.submit(&tasks(3, "lab.gpu")).await?;
    let held = fleet
        .submit(&json!({"tasks": [{"argv": ["true"], "group": "lab"},
                                  {"argv": ["true"], "group": "lab"}]}))
        .await?;
    let (s, body) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{held}"),
            Some(json!({"held": true})),
        )
        .await?;
    assert_eq!(s, 200, "{body}");

    // Desired executors (drain target 300 s, default capacity 1):
    // - m.a: 4 tasks, no run time known there: a slot each; 2 slots an executor: 2.
    // - m.b: 1 task, 3 slots an executor: 1.
    // - m: m.b's quick run is the mean (milliseconds): the 3 running keep their slots,
    //   3 / 2.5 slots an executor: 2.
    // - lab, lab.gpu: 3 ready, no executor: the default capacity, 1 slot each: 3.
    // - default: as m, with lab's 3 ready: still 3 slots needed: 2.
    // Figures: ready, held, running, alive, slots, free, desired, waiting.
    let expected: BTreeMap<&str, [f64; 8]> = BTreeMap::from([
        ("default", [5.0, 2.0, 3.0, 2.0, 5.0, 2.0, 2.0, 0.0]),
        ("m", [2.0, 0.0, 3.0, 2.0, 5.0, 2.0, 2.0, 0.0]),
        ("m.a", [2.0, 0.0, 2.0, 1.0, 2.0, 0.0, 2.0, 0.0]),
        ("m.b", [0.0, 0.0, 1.0, 1.0, 3.0, 2.0, 1.0, 0.0]),
        ("lab", [3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]),
        ("lab.gpu", [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]),
    ]);
    let last = std::sync::Mutex::new(BTreeMap::new());
    let samples = wait_for(
        "the collector's gauges to match the fleet",
        DEADLINE,
        || async {
            let samples = scrape(&collector).await?;
            let got: BTreeMap<&str, [Option<f64>; 8]> = expected
                .keys()
                .map(|g| (*g, GAUGES.map(|n| value(&samples, n, &[("group", g)]))))
                .collect();
            let same = expected.iter().all(|(g, want)| got[g] == want.map(Some));
            if let Ok(mut l) = last.lock() {
                *l = got;
            }
            Ok(same.then_some(samples))
        },
    )
    .await
    .with_context(|| format!("expected {expected:#?}\nlast seen {last:#?}"))?;

    // The oldest ready task is lab.gpu's; m.b has its quick task's run time.
    let age = value(
        &samples,
        "fleet_oldest_ready_seconds",
        &[("group", "lab.gpu")],
    );
    assert!(
        age.is_some_and(|a| (0.0..DEADLINE.as_secs_f64() * 2.0).contains(&a)),
        "{age:?}"
    );
    let mean = value(&samples, "fleet_run_seconds_mean", &[("group", "m.b")]);
    assert!(mean.is_some_and(|m| (0.0..5.0).contains(&m)), "{mean:?}");
    assert_eq!(
        value(&samples, "fleet_run_seconds_mean", &[("group", "m.a")]),
        Some(0.0)
    );
    // Three attempts ended in m.b (the quick one, the failing one's two): in each
    // histogram and in the outcomes; the settled counters.
    for h in [
        "fleet_task_queue_wait_seconds_count",
        "fleet_task_run_seconds_count",
        "fleet_task_submit_to_recorded_seconds_count",
    ] {
        assert_eq!(value(&samples, h, &[("group", "m.b")]), Some(3.0), "{h}");
    }
    let le_inf = value(
        &samples,
        "fleet_task_run_seconds_bucket",
        &[("group", "m.b"), ("le", "+Inf")],
    );
    assert_eq!(le_inf, Some(3.0), "histograms have buckets");
    // The retry waited its backoff (3 s) in `retrying`, not in the queue: every wait
    // is well under it.
    let quick_waits = value(
        &samples,
        "fleet_task_queue_wait_seconds_bucket",
        &[("group", "m.b"), ("le", "2.5")],
    );
    assert_eq!(quick_waits, Some(3.0), "queue waits under 2.5 s");
    assert_eq!(
        value(
            &samples,
            "fleet_attempt_outcomes_total",
            &[("group", "m.b"), ("outcome", "failed")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "fleet_task_retries_total",
            &[("outcome", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fleet_tasks_finished_total",
            &[("state", "failed")]
        ),
        Some(1.0)
    );
    // The unreadable result, dead-lettered by the collector (on its own time).
    wait_for("the dead letter to be counted", DEADLINE, || async {
        let malformed: f64 = scrape(&collector)
            .await?
            .iter()
            .filter(|((n, l), _)| {
                n == "fleet_dead_letters_total"
                    && l.get("reason").map(String::as_str) == Some("malformed")
            })
            .map(|(_, v)| v)
            .sum();
        Ok((malformed == 1.0).then_some(()))
    })
    .await?;
    assert_eq!(
        value(
            &samples,
            "fleet_attempt_outcomes_total",
            &[("group", "m.b"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fleet_tasks_finished_total",
            &[("state", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fleet_jobs_finished_total",
            &[("state", "succeeded")]
        ),
        Some(1.0)
    );

    // Every service: its process figures; the fleet gauges come from the collector only.
    for p in [&submitter, &dispatcher, &collector, &a, &b] {
        let s = scrape(p).await?;
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let v = value(&s, name, &[]);
            assert!(v.is_some_and(|v| v >= 0.0), "{}: {name} = {v:?}", p.id);
        }
        let rss = value(&s, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
        assert!(rss > 1e6, "{}: resident memory {rss}", p.id);
        let gauges = s.keys().any(|(n, _)| n == "fleet_tasks_ready");
        assert_eq!(gauges, p.id == "collector", "{}: fleet gauges", p.id);
        // The text format's content type (Prometheus 3 refuses a scrape without one).
        let resp = reqwest::get(format!("http://{}/metrics", p.addr)).await?;
        let kind = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        assert_eq!(
            kind.as_ref().and_then(|k| k.to_str().ok()),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            p.id
        );
    }
    // And its own counters.
    assert_eq!(dispatcher.leads().await, Some(true));
    let b_metrics = scrape(&b).await?;
    for (outcome, n) in [("succeeded", 1.0), ("failed", 2.0)] {
        assert_eq!(
            value(
                &b_metrics,
                "fleet_executor_attempts_total",
                &[("outcome", outcome)]
            ),
            Some(n),
            "{outcome}"
        );
    }
    let submitted = scrape(&submitter).await?;
    assert_eq!(
        value(
            &submitted,
            "fleet_submitter_jobs_total",
            &[("via", "http"), ("created", "true")]
        ),
        Some(6.0)
    );

    for p in [a, b, collector, dispatcher, submitter] {
        p.kill().await?;
    }
    fleet.shutdown().await
}

/// Queue wait starts when a task last became ready: `tasks.ready_at`, set on insert, by
/// the statements that move a task to `ready` and on the release of a hold; other
/// updates leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_at_follows_every_move_to_ready() -> Result<()> {
    let mut fleet = TestFleet::start("readyat").await?;
    let job = fleet
        .submit(&json!({"tasks": [
            {"name": "a", "argv": ["true"], "group": "nobody"},
            {"name": "b", "argv": ["true"], "group": "nobody", "depends_on": ["a"]}]}))
        .await?;
    let client = fleet.pool.get().await?;
    let ready_at = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT ready_at, created_at FROM tasks WHERE job_id = $1 AND name = $2",
                    &[&job.uuid(), &name],
                )
                .await?;
            let (r, c): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
                (row.get(0), row.get(1));
            Ok::<_, anyhow::Error>((r, c))
        }
    };
    let (a0, created) = ready_at("a").await?;
    assert!(a0 >= created, "set on insert");
    // A priority change is no move: unchanged.
    let (s, body) = fleet
        .call(
            Method::PATCH,
            &format!("/v1/jobs/{job}"),
            Some(json!({"priority": 5})),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(ready_at("a").await?.0, a0);
    // Held, then released: queueing starts again at the release.
    for held in [true, false] {
        let (s, body) = fleet
            .call(
                Method::PATCH,
                &format!("/v1/jobs/{job}"),
                Some(json!({"held": held})),
            )
            .await?;
        assert_eq!(s, 200, "{body}");
    }
    let a1 = ready_at("a").await?.0;
    assert!(a1 > a0, "released at {a1}, first ready at {a0}");
    // The waiting task, in a retry's backoff (no move to ready: unchanged), then made
    // ready when the backoff is over (the dispatcher's statement, run here too): then.
    let (b0, _) = ready_at("b").await?;
    client
        .execute(
            "UPDATE tasks SET state = 'retrying', retry_at = clock_timestamp()
             WHERE job_id = $1 AND name = 'b'",
            &[&job.uuid()],
        )
        .await?;
    assert_eq!(ready_at("b").await?.0, b0);
    fleet_shared::db::dispatch::retries_due(&client).await?;
    let b1 = ready_at("b").await?.0;
    assert!(b1 > b0 && b1 > a1, "b ready at {b1}");
    // A dependency met (the collector's settle): ready then, not when submitted. The
    // executor that runs `c` comes only once `d`'s first value is read.
    let job2 = fleet
        .submit(&json!({"tasks": [
            {"name": "c", "argv": ["true"], "group": "readyat"},
            {"name": "d", "argv": ["true"], "group": "nobody", "depends_on": ["c"]}]}))
        .await?;
    let d_of = || {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT state, ready_at FROM tasks WHERE job_id = $1 AND name = 'd'",
                    &[&job2.uuid()],
                )
                .await?;
            Ok::<_, anyhow::Error>((
                row.get::<_, String>(0),
                row.get::<_, chrono::DateTime<chrono::Utc>>(1),
            ))
        }
    };
    let (state, d0) = d_of().await?;
    assert_eq!(state, "waiting");
    fleet
        .add_executor(ExecutorSpec::new("readyat-1", &["readyat"], 1))
        .await?;
    let d1 = wait_for("d to become ready", DEADLINE, || async {
        let (state, at) = d_of().await?;
        Ok((state == "ready").then_some(at))
    })
    .await?;
    assert!(d1 > d0, "d ready at {d1}, submitted at {d0}");
    drop(client);
    fleet.shutdown().await
}

/// The console's charts read the fleet's history from the server: the collector samples
/// each group's figures every `metrics.history_secs`, so a backlog and its draining are
/// there for whoever opens the page later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_keeps_each_groups_queue_depth_and_throughput_over_time() -> Result<()> {
    use fleet_shared::db::stats::{HistoryPoint, StatsHistory};
    let mut fleet = TestFleet::start_with("history", |c| {
        c.metrics.interval_secs = 1;
        c.metrics.history_secs = 1;
    })
    .await?;
    // Four jobs nobody serves yet: a backlog of four in `hist`.
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(
            fleet
                .submit(&json!({"name": format!("h{i}"), "tasks": [{"group": "hist", "argv": ["true"]}]}))
                .await?,
        );
    }
    let points = |h: &StatsHistory, group: &str| -> Vec<HistoryPoint> {
        h.groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| g.points.clone())
            .unwrap_or_default()
    };
    wait_for("a sample with the backlog of four", DEADLINE, || async {
        let h: StatsHistory = fleet.get_json("/v1/stats/history?minutes=5").await?;
        Ok(points(&h, "hist")
            .iter()
            .any(|p| p.ready == 4)
            .then_some(()))
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("hist-1", &["hist"], 2))
        .await?;
    for job in jobs {
        assert_eq!(fleet.wait_job(job, DEADLINE).await?.state, "succeeded");
    }
    let h = wait_for("a sample with the backlog drained", DEADLINE, || async {
        let h: StatsHistory = fleet.get_json("/v1/stats/history?minutes=5").await?;
        let drained = points(&h, "hist")
            .iter()
            .any(|p| p.ready == 0 && p.jobs_finished_last_minute == 4 && p.executors_alive == 1);
        Ok(drained.then_some(h))
    })
    .await?;
    assert_eq!(h.step_secs, 1);
    assert_eq!(h.groups[0].group, "default", "default first: {h:?}");
    // The enclosing group counts its subgroups' jobs.
    assert!(
        points(&h, "default")
            .iter()
            .any(|p| p.jobs_finished_last_minute >= 4),
        "{h:?}"
    );
    // One point per step, in order: no sample taken twice.
    for g in &h.groups {
        assert!(
            g.points.windows(2).all(|w| w[0].at < w[1].at),
            "{}: {:?}",
            g.group,
            g.points
        );
        assert!(g.points.iter().all(|p| p.at >= h.since), "{h:?}");
    }
    // Bad spans are refused, naming the parameter.
    for bad in ["minutes=0", "minutes=1441", "minutes=soon", "hours=1"] {
        let (status, body) = fleet
            .call(Method::GET, &format!("/v1/stats/history?{bad}"), None)
            .await?;
        assert_eq!(status, 400, "{bad}: {body}");
        let field = body["error"]["field"].as_str().unwrap_or_default();
        assert!(field == "minutes" || field == "hours", "{bad}: {body}");
    }
    fleet.shutdown().await
}
