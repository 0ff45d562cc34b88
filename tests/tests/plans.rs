//! The hot statements find their rows by key, whatever the history: on fresh tables, with
//! 50,000 finished jobs stored, and with 20,000 more ready, no plan of theirs scans jobs,
//! tasks, attempts or results sequentially, nor reads a whole index to find a few keys.
//! The statements are the real ones, run through the functions the services call, with
//! PostgreSQL's auto_explain reporting every plan as a notice, in the services' own
//! session settings (generic plans), and with custom plans for comparison.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::Utc;
use fleet_shared::db::dispatch::{self, Held, HeldBy};
use fleet_shared::db::{self, collect, retention, stats, submit};
use fleet_shared::id::{ExecutorId, JobId};
use fleet_shared::job::JobSpec;
use fleet_shared::proto::{Info, Outcome, TaskResult};
use fleet_tests::{bench, test_config, unique_name};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Connects as deadpool would, keeping the notices the server sends.
struct Noticing(Arc<Mutex<Vec<String>>>);

impl deadpool_postgres::Connect for Noticing {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let (pg, notices) = (pg.clone(), self.0.clone());
        Box::pin(async move {
            let (client, mut conn) = pg.connect(tokio_postgres::NoTls).await?;
            let task = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(m)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notice(n) = m {
                        if let Ok(mut all) = notices.lock() {
                            all.push(n.message().to_owned());
                        }
                    }
                }
            });
            Ok((client, task))
        })
    }
}

/// A pool connected as the services connect (their session settings), reporting every
/// plan; `generic` false overrides their generic plans with custom ones.
fn explaining_pool(
    cfg: &fleet_shared::config::Config,
    generic: bool,
    notices: Arc<Mutex<Vec<String>>>,
) -> Result<db::Pool> {
    let mut pg = db::pg_config(&cfg.database)?;
    let services = pg.get_options().unwrap_or_default().to_owned();
    pg.options(format!(
        "{services} -c session_preload_libraries=auto_explain \
         -c auto_explain.log_min_duration=0 -c auto_explain.log_level=notice \
         -c auto_explain.log_format=json{}",
        if generic {
            ""
        } else {
            " -c plan_cache_mode=force_custom_plan"
        }
    ));
    let mgr = deadpool_postgres::Manager::from_connect(
        pg,
        Noticing(notices),
        deadpool_postgres::ManagerConfig::default(),
    );
    Ok(deadpool_postgres::Pool::builder(mgr).max_size(1).build()?)
}

fn job(tasks: Value) -> Result<fleet_shared::job::ValidJob> {
    let spec: JobSpec = serde_json::from_value(json!({ "tasks": tasks }))?;
    spec.validate().map_err(|e| anyhow::anyhow!("{e}"))
}

fn result(h: &HeldBy, job_id: JobId) -> TaskResult {
    let now = Utc::now();
    TaskResult {
        task_id: h.task_id,
        attempt: h.attempt,
        job_id,
        executor_id: h.executor_id.clone(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        started_at: Some(now),
        finished_at: now,
    }
}

/// Every statement of a dispatch cycle, through the services' own functions.
async fn cycle(pool: &db::Pool, schema: &str, round: usize) -> Result<()> {
    let x1 = ExecutorId::parse("x-1")?;
    let mut client = pool.get().await?;
    // Submissions: single tasks, one with a dependency, and a key seen before.
    let mut jobs: Vec<submit::NewJob> = (0..64)
        .map(|i| {
            Ok(submit::NewJob {
                id: JobId::new(),
                idempotency_key: Some(format!("plans-{round}-{i}")),
                job: job(json!([{"argv": ["true"]}]))?,
                owner: fleet_shared::auth::Principal::bootstrap_admin(),
            })
        })
        .collect::<Result<_>>()?;
    jobs.push(submit::NewJob {
        id: JobId::new(),
        idempotency_key: None,
        job: job(json!([{"name": "a", "argv": ["true"]},
                        {"name": "b", "argv": ["true"], "depends_on": ["a"]}]))?,
        owner: fleet_shared::auth::Principal::bootstrap_admin(),
    });
    submit::insert_jobs(&client, schema, &jobs, None).await?;
    submit::insert_jobs(
        &client,
        schema,
        &jobs[..2]
            .iter()
            .map(|j| submit::NewJob {
                id: JobId::new(),
                idempotency_key: j.idempotency_key.clone(),
                job: j.job.clone(),
                owner: fleet_shared::auth::Principal::bootstrap_admin(),
            })
            .collect::<Vec<_>>(),
        None,
    )
    .await?;

    // The dispatcher: leadership, ready pages, one assignment statement.
    let lead = dispatch::try_lead(&client, "plans", 30.0)
        .await?
        .context("leadership")?;
    let page = dispatch::ready_page(&client, &["default"], None, 40).await?;
    let last = page.last().context("ready tasks")?;
    let more =
        dispatch::ready_page(&client, &["default"], Some((last.priority, last.seq)), 40).await?;
    let planned: Vec<_> = page
        .iter()
        .chain(&more)
        .map(|r| (r.id, x1.clone(), r.attempts + 1))
        .collect();
    let assigned = dispatch::assign_planned(&client, &lead, &planned, 15.0).await?;
    anyhow::ensure!(
        assigned.led && !assigned.tasks.is_empty(),
        "nothing assigned"
    );
    let held: Vec<HeldBy> = planned
        .iter()
        .filter(|p| assigned.tasks.contains(&p.0))
        .map(|p| HeldBy {
            task_id: p.0,
            attempt: p.2,
            executor_id: x1.clone(),
        })
        .collect();
    dispatch::open_attempts(&client).await?;
    let info = Info::idle(
        x1.clone(),
        vec![fleet_shared::group::GroupName::default_group()],
        8,
    );
    let tx = client.transaction().await?;
    anyhow::ensure!(dispatch::fence(&tx, &lead).await?, "fence");
    dispatch::upsert_executors(&tx, &[(&info, Utc::now())]).await?;
    let leases: Vec<Held> = held
        .iter()
        .map(|h| Held {
            attempt: h.clone(),
            running: true,
        })
        .collect();
    dispatch::extend_leases(&tx, &leases, 15.0).await?;
    dispatch::mark_reported(&tx, &held[..8], 600.0).await?;
    dispatch::unassign(&tx, &held[8..12]).await?;
    dispatch::end_cancelled(&tx, &held[8..12]).await?;
    dispatch::lose(&tx, &held[12..16]).await?;
    dispatch::sweep_leases(&tx).await?;
    tx.commit().await?;
    dispatch::pending_copies(&client).await?;
    dispatch::ready_each(&client, 1000).await?;
    dispatch::grace_candidates(&client, 15.0, 5.0).await?;
    dispatch::attempts_to_kill(&client).await?;
    dispatch::paused_unstarted(&client).await?;

    // The collector: the rest of the results, in one batch.
    let job_of: std::collections::HashMap<_, _> =
        page.iter().chain(&more).map(|r| (r.id, r.job_id)).collect();
    let results: Vec<TaskResult> = held[16..]
        .iter()
        .map(|h| result(h, job_of[&h.task_id]))
        .collect();
    let tx = client.transaction().await?;
    collect::record_results(&tx, schema, &results).await?;
    tx.commit().await?;

    // Live output: the collector stores a flush of chunks; a follower reads them back.
    let chunks: Vec<fleet_shared::proto::LogChunk> = held[16..]
        .iter()
        .enumerate()
        .map(|(i, h)| fleet_shared::proto::LogChunk {
            task_id: h.task_id,
            attempt: h.attempt,
            executor_id: h.executor_id.clone(),
            seq: 0,
            stream: "stdout".into(),
            data: format!("line {i}\n"),
            offset: 0,
            n: 0,
            truncated: false,
        })
        .collect();
    db::logs::store(&client, schema, &chunks).await?;
    if let Some(h) = held.get(16) {
        db::logs::read(&client, h.task_id, h.attempt, None, None, 1000).await?;
        db::logs::read(&client, h.task_id, h.attempt, Some("stderr"), Some(0), 1000).await?;
    }

    // The event log: readers (a page, a job's, a group's, a submitter's, from now, after
    // an id), the webhook fan-out with a fleet-wide and a job's own webhook, claims, the
    // sweep of silent executors, the purge by age. (webhook_deliveries is not among the
    // tables checked: it holds only what is not delivered yet; the claim reads its small
    // partial index of leased rows whole, on purpose.)
    use fleet_shared::db::events::{self, Cursor, Filter};
    let any_job = job_of.values().next().copied();
    for filter in [
        Filter::default(),
        Filter {
            job: any_job,
            ..Filter::default()
        },
        Filter {
            group: Some("default".into()),
            kinds: vec![fleet_shared::event::Kind::TaskFinished],
            ..Filter::default()
        },
        Filter {
            owner: Some(None),
            ..Filter::default()
        },
    ] {
        let (page, next) = events::read(&client, Cursor::default(), &filter, 500).await?;
        events::read(&client, next, &filter, 500).await?;
        if let Some(e) = page.first() {
            events::cursor_after(&client, e.id).await?;
        }
    }
    events::tail(&client).await?;
    if round == 0 {
        db::webhooks::create(
            &client,
            &db::webhooks::NewWebhook {
                url: "http://127.0.0.1:9/hook".into(),
                kinds: Vec::new(),
                group: Some("default".into()),
                secret: "0123456789abcdef".into(),
                created_by: "plans".into(),
            },
        )
        .await?;
    }
    // The fan-out takes its own connection from the pool.
    drop(client);
    events::fan_out(pool, schema, 20).await?;
    let mut client = pool.get().await?;
    let claimed = db::webhooks::claim(&mut client, schema, 16, 8, 30.0).await?;
    let ids: Vec<i64> = claimed.iter().map(|d| d.event_id).collect();
    db::webhooks::events_of(&client, &ids[..ids.len().min(2)]).await?;
    let tx = client.transaction().await?;
    dispatch::lose_executors(&tx, 5.0).await?;
    tx.commit().await?;
    events::purge_older(&client, Utc::now() - chrono::Duration::days(14), 5000).await?;

    // Retention: the collector's pick of jobs to purge (none is old enough), and a job
    // just finished deleted at once with all its rows (DELETE /v1/jobs/{id}).
    retention::purge_finished(&mut client, 14, 500).await?;
    let mut deleted = false;
    for h in &held[16..] {
        if retention::delete_job(&mut client, job_of[&h.task_id]).await?
            == retention::Deleted::Deleted
        {
            deleted = true;
            break;
        }
    }
    anyhow::ensure!(deleted, "no finished job to delete");
    Ok(())
}

/// Sequential scans of the tables that grow with history, by statement.
fn seq_scans(notices: &[String]) -> (usize, Vec<String>) {
    fn walk(node: &Value, query: &str, joined: bool, limited: bool, out: &mut Vec<String>) {
        let relation = node["Relation Name"].as_str().unwrap_or("");
        let kind = node["Node Type"].as_str().unwrap_or("");
        let joined = joined || kind.ends_with("Join") || kind == "Nested Loop";
        let limited = limited || kind == "Limit";
        // A scan of a whole index is as bad as one of the table (with the sessions'
        // enable_seqscan=off, it is what a planner picks instead): an index scan must
        // have a condition, unless a LIMIT stops it (the head of the ready index), or it
        // lists what a partial index holds, alone (the open attempts). One that feeds a
        // join reads every entry to match a few keys.
        let index = node["Index Name"].as_str().unwrap_or("");
        let whole_index = ["Index Scan", "Index Only Scan"].contains(&kind)
            && node.get("Index Cond").is_none()
            && !limited
            && (joined || index.ends_with("_pkey") || index.ends_with("_key"));
        let whole = kind == "Seq Scan" || whole_index;
        if whole
            && [
                "jobs",
                "tasks",
                "attempts",
                "results",
                "log_chunks",
                "events",
            ]
            .contains(&relation)
        {
            let index = node["Index Name"]
                .as_str()
                .map(|i| format!(" (whole index {i})"))
                .unwrap_or_default();
            out.push(format!("{kind} on {relation}{index} in: {query}"));
            if std::env::var_os("FLEET_PLANS_DUMP").is_some() {
                eprintln!("{node:#}");
            }
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, query, joined, limited, out);
        }
    }
    let mut plans = 0;
    let mut found = Vec::new();
    for n in notices {
        let Some(start) = n.find('{') else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&n[start..]) else {
            continue;
        };
        plans += 1;
        let query = v["Query Text"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        walk(&v["Plan"], &query, false, false, &mut found);
    }
    (plans, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_never_scan_a_table_that_grows_with_history() -> Result<()> {
    fleet_tests::init_logging();
    let name = unique_name("plans");
    let cfg = test_config(&name);
    let pool = db::pool(&cfg.database)?;
    db::migrate(&pool, &cfg.database.schema).await?;
    let mut report = Vec::new();
    let mut round = 0;
    // Fresh tables first (no statistics, a few rows: what tempts a planner to scan),
    // then with 50,000 finished jobs stored and analysed, then with 20,000 more waiting
    // to run (a backlog: what tempts it to read every ready task for a few).
    for history in ["fresh tables", "50,000 jobs stored", "and 20,000 ready"] {
        if round > 0 {
            let mut pg: tokio_postgres::Config = cfg.database.url.parse()?;
            pg.options(format!("-c search_path={}", cfg.database.schema));
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            if round == 2 {
                bench::preload(&client, 50_000).await?;
            } else {
                let jobs: Vec<submit::NewJob> = (0..20_000)
                    .map(|_| {
                        Ok(submit::NewJob {
                            id: JobId::new(),
                            idempotency_key: None,
                            job: job(json!([{"argv": ["true"]}]))?,
                            owner: fleet_shared::auth::Principal::bootstrap_admin(),
                        })
                    })
                    .collect::<Result<_>>()?;
                let pooled = pool.get().await?;
                for chunk in jobs.chunks(1000) {
                    submit::insert_jobs(&pooled, &cfg.database.schema, chunk, None).await?;
                }
                client.batch_execute("ANALYZE").await?;
            }
        }
        for generic in [true, false] {
            let notices = Arc::new(Mutex::new(Vec::new()));
            let explaining = explaining_pool(&cfg, generic, notices.clone())?;
            // The detector detects: a statement that can only scan is reported as one.
            explaining
                .get()
                .await?
                .query("SELECT count(*) FROM jobs WHERE name = 'nobody'", &[])
                .await?;
            let control = seq_scans(&notices.lock().map(|n| n.clone()).unwrap_or_default()).1;
            anyhow::ensure!(
                control.len() == 1,
                "the control scan was not seen: {control:?}"
            );
            notices.lock().map(|mut n| n.clear()).ok();
            cycle(&explaining, &cfg.database.schema, round).await?;
            round += 1;
            let taken = |n: &Mutex<Vec<String>>| {
                n.lock()
                    .map(|mut n| std::mem::take(&mut *n))
                    .unwrap_or_default()
            };
            let hot = taken(&notices);
            // GET /v1/stats is no hot statement (an operator's, now and then): it may
            // read a whole partial index (the ready tasks, the open attempts), never a
            // table that grows with history.
            stats::stats(&mut explaining.get().await?, 5.0).await?;
            let (stats_plans, stats_scans) = seq_scans(&taken(&notices));
            anyhow::ensure!(
                stats_plans >= 5,
                "only {stats_plans} stats plans were reported"
            );
            drop(explaining);
            let (plans, mut scans) = seq_scans(&hot);
            anyhow::ensure!(plans >= 20, "only {plans} plans were reported");
            scans.extend(
                stats_scans
                    .into_iter()
                    .filter(|s| s.starts_with("Seq Scan")),
            );
            report.push((history, generic, plans, scans));
        }
    }
    for (history, generic, plans, scans) in &report {
        eprintln!(
            "{history}, {} plans: {plans} statements, {} whole scans of history",
            if *generic { "generic" } else { "custom" },
            scans.len()
        );
    }
    // The services' sessions always force generic plans (db::pg_config): those must use
    // their keys. Custom plans, planned for the values at hand and from statistics that
    // may be stale, are shown for comparison only.
    let scans: Vec<&String> = report.iter().filter(|r| r.1).flat_map(|r| &r.3).collect();
    assert!(scans.is_empty(), "{scans:#?}");
    pool.get()
        .await?
        .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
        .await?;
    Ok(())
}
