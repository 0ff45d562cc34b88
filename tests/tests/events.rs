//! Events (issue 12, acceptance 3): one job with a task that fails once and is retried
//! and a task that fails for good announces exactly the documented sequence, each event
//! once, on the AMQP events exchange and on `GET /v1/events`; a follower that reconnects
//! with `Last-Event-ID` misses nothing and sees nothing twice; a submitter sees only its
//! own jobs' events.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::event::{Event, Kind};
use fleet_tests::sse::read_events;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use futures_util::StreamExt;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

/// The job: `flaky` fails its first attempt (exit 3) and succeeds on its second; `bad`
/// fails (exit 7) with no attempt left.
fn job(marker: &std::path::Path) -> Value {
    let flaky = format!(
        "test -f {m} && exit 0; touch {m}; exit 3",
        m = marker.display()
    );
    json!({"name": "ev-job", "tasks": [
        {"name": "flaky", "group": "ev", "argv": ["sh", "-c", flaky],
         "retry": {"on": ["failed"], "max_attempts": 3,
                   "backoff": {"initial_secs": 0.2, "factor": 1, "max_secs": 1}}},
        {"name": "bad", "group": "ev", "argv": ["sh", "-c", "exit 7"], "max_attempts": 1}
    ]})
}

/// One expected task event: kind, attempt, outcome, exit code.
type Step = (Kind, Option<i32>, Option<&'static str>, Option<i32>);

/// What docs/events.md says this job announces, per task; the job's own events come
/// first and last.
fn expected() -> BTreeMap<&'static str, Vec<Step>> {
    use Kind::*;
    BTreeMap::from([
        (
            "flaky",
            vec![
                (TaskAssigned, Some(1), None, None),
                (TaskStarted, Some(1), None, None),
                (TaskRetrying, Some(1), Some("failed"), Some(3)),
                (TaskAssigned, Some(2), None, None),
                (TaskStarted, Some(2), None, None),
                (TaskFinished, Some(2), Some("succeeded"), Some(0)),
            ],
        ),
        (
            "bad",
            vec![
                (TaskAssigned, Some(1), None, None),
                (TaskStarted, Some(1), None, None),
                (TaskFinished, Some(1), Some("failed"), Some(7)),
            ],
        ),
    ])
}

/// Checks a job's events against the documented sequence, after deduplication by id.
fn check_sequence(what: &str, events: &[Event]) -> Result<()> {
    let mut seen = HashSet::new();
    let events: Vec<&Event> = events.iter().filter(|e| seen.insert(e.id)).collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("{}:{}", e.kind, e.task.as_deref().unwrap_or("-")))
        .collect();
    anyhow::ensure!(
        events.first().map(|e| e.kind) == Some(Kind::JobAccepted),
        "{what}: job.accepted first: {kinds:?}"
    );
    let last = events.last().context("no events")?;
    anyhow::ensure!(
        last.kind == Kind::JobFailed && last.state.as_deref() == Some("failed"),
        "{what}: job.failed last: {kinds:?}"
    );
    anyhow::ensure!(
        last.job_name.as_deref() == Some("ev-job"),
        "{what}: the job's name is in its events: {last:?}"
    );
    for (task, want) in expected() {
        let got: Vec<_> = events
            .iter()
            .filter(|e| e.task.as_deref() == Some(task))
            .map(|e| (e.kind, e.attempt, e.outcome.as_deref(), e.exit_code))
            .collect();
        let want: Vec<_> = want.into_iter().collect();
        anyhow::ensure!(got == want, "{what}: {task}: got {got:?}, want {want:?}");
        for e in events.iter().filter(|e| e.task.as_deref() == Some(task)) {
            anyhow::ensure!(e.group.as_deref() == Some("ev"), "{what}: group: {e:?}");
            if e.kind != Kind::JobAccepted {
                anyhow::ensure!(
                    e.executor.as_deref() == Some("ev-1"),
                    "{what}: the executor is named: {e:?}"
                );
            }
            if e.kind == Kind::TaskFinished {
                anyhow::ensure!(e.duration_ms.is_some(), "{what}: duration: {e:?}");
            }
            if e.kind == Kind::TaskRetrying {
                anyhow::ensure!(e.retry_at.is_some(), "{what}: retry_at: {e:?}");
            }
        }
    }
    anyhow::ensure!(events.len() == 2 + 6 + 3, "{what}: nothing else: {kinds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_announces_the_documented_sequence_once_on_amqp_and_over_http() -> Result<()> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;

    let mut fleet = TestFleet::start("events-seq").await?;
    fleet
        .add_executor(ExecutorSpec::new("ev-1", &["ev"], 2))
        .await?;

    // A listener on the broker, bound before the job.
    let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "event-listener").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let names = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix);
    ch.queue_bind(
        q.name().clone(),
        names.events_exchange().as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut deliveries = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let dir = std::env::temp_dir().join(&fleet.name);
    std::fs::create_dir_all(&dir)?;
    let id = fleet.submit(&job(&dir.join("tried"))).await?;

    // Over HTTP, followed from the job's first event.
    let resp = fleet
        .http
        .get(format!("{}/v1/events?job={id}&follow=true", fleet.api))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "follow: {}", resp.status());
    let mut followed: Vec<Event> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    read_events(resp, |ev, _| {
        if let Ok(e) = serde_json::from_str::<Event>(&ev.data) {
            ids.push(ev.id.clone().unwrap_or_default());
            assert_eq!(ev.event, e.kind.as_str(), "the SSE event names the kind");
            let end = e.kind == Kind::JobFailed;
            followed.push(e);
            return !end;
        }
        true
    })
    .await?;
    check_sequence("GET /v1/events (follow)", &followed)?;
    anyhow::ensure!(
        ids.iter()
            .zip(&followed)
            .all(|(i, e)| *i == e.id.to_string()),
        "SSE ids are the events' ids"
    );

    // The same, as a page.
    let (status, page) = fleet
        .call(reqwest::Method::GET, &format!("/v1/events?job={id}"), None)
        .await?;
    anyhow::ensure!(status == 200, "page: {status} {page}");
    let paged: Vec<Event> = serde_json::from_value(page["events"].clone())?;
    anyhow::ensure!(paged == followed, "the page is what was followed");

    // On the broker: every event of the job, each once after deduplication by id (the
    // relay is at least once), with the message id naming the event.
    let mut relayed: Vec<Event> = Vec::new();
    while !relayed.iter().any(|e| e.kind == Kind::JobFailed) {
        let d = tokio::time::timeout(DEADLINE, deliveries.next())
            .await
            .context("no event on the broker within the deadline")?
            .context("event consumer ended")??;
        let e: Event = serde_json::from_slice(&d.data)?;
        assert_eq!(d.routing_key.as_str(), e.kind.as_str());
        let mid = d.properties.message_id().as_ref().map(|m| m.to_string());
        assert_eq!(
            mid,
            Some(format!("{}-event-{}", fleet.cfg.amqp.prefix, e.id))
        );
        if e.job_id == Some(id) {
            relayed.push(e);
        }
    }
    check_sequence("AMQP", &relayed)?;
    let mut unique = relayed.clone();
    unique.dedup_by_key(|e| e.id);
    anyhow::ensure!(unique == followed, "the broker carried the same events");

    // A reconnect with Last-Event-ID after the third event gets the rest, no gap, no
    // repeat.
    let resumed = fleet
        .http
        .get(format!("{}/v1/events?job={id}&follow=true", fleet.api))
        .header("Last-Event-ID", followed[2].id.to_string())
        .send()
        .await?;
    let mut rest: Vec<Event> = Vec::new();
    read_events(resumed, |ev, _| {
        if let Ok(e) = serde_json::from_str::<Event>(&ev.data) {
            let end = e.kind == Kind::JobFailed;
            rest.push(e);
            return !end;
        }
        true
    })
    .await?;
    anyhow::ensure!(rest[..] == followed[3..], "resumed: {rest:?}");

    // An event id no longer kept is a 410; an unknown kind a 400 naming the field.
    let (status, _) = fleet
        .call(reqwest::Method::GET, "/v1/events?after=999999999", None)
        .await?;
    anyhow::ensure!(status == 410, "an unknown event id: {status}");
    let (status, body) = fleet
        .call(reqwest::Method::GET, "/v1/events?kind=task.done", None)
        .await?;
    anyhow::ensure!(
        status == 400 && body["error"]["field"] == "kind",
        "an unknown kind: {status} {body}"
    );
    let _ = conn.close(200, "".into()).await;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_joining_and_leaving_are_announced_and_a_submitter_sees_only_its_jobs(
) -> Result<()> {
    let mut fleet = TestFleet::start_with("events-fleet", fleet_tests::short_leases).await?;
    // A submitter token, and a job of its own beside the admin's.
    let (status, tok) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "role": "submitter"})),
        )
        .await?;
    anyhow::ensure!(status == 201, "token: {status} {tok}");
    let secret = tok["token"].as_str().context("token")?.to_owned();
    let submitter = fleet_tests::client_with_token(Some(&secret))?;
    let (status, mine) = fleet
        .call_as(
            &submitter,
            reqwest::Method::POST,
            "/v1/jobs",
            Some(json!({"tasks": [{"group": "evf", "argv": ["true"]}]})),
        )
        .await?;
    anyhow::ensure!(status == 201 || status == 202, "submit: {status} {mine}");
    let mine = mine["job_id"].as_str().context("job_id")?.to_owned();
    let theirs = fleet
        .submit(&json!({"tasks": [{"group": "evf", "argv": ["true"]}]}))
        .await?;

    fleet
        .add_executor(ExecutorSpec::new("evf-1", &["evf"], 1))
        .await?;
    fleet.wait_job(theirs, DEADLINE).await?;
    fleet.stop_executor("evf-1").await;

    // The executor's life, for an admin, filtered by group and kind.
    let seen = wait_for("executor.joined and executor.lost", DEADLINE, || async {
        let (_, page) = fleet
            .call(
                reqwest::Method::GET,
                "/v1/events?group=evf&kind=executor.*",
                None,
            )
            .await?;
        let evs: Vec<Event> = serde_json::from_value(page["events"].clone())?;
        let kinds: Vec<Kind> = evs.iter().map(|e| e.kind).collect();
        Ok(kinds.contains(&Kind::ExecutorLost).then_some(evs))
    })
    .await?;
    let kinds: Vec<Kind> = seen.iter().map(|e| e.kind).collect();
    anyhow::ensure!(
        kinds.first() == Some(&Kind::ExecutorJoined) && kinds.last() == Some(&Kind::ExecutorLost),
        "{kinds:?}"
    );
    anyhow::ensure!(
        seen.iter().all(|e| e.executor.as_deref() == Some("evf-1")),
        "{seen:?}"
    );

    // The submitter: its own job's events only, no executor's, and no other job's.
    let (status, page) = fleet
        .call_as(&submitter, reqwest::Method::GET, "/v1/events", None)
        .await?;
    anyhow::ensure!(status == 200, "{status} {page}");
    let evs: Vec<Event> = serde_json::from_value(page["events"].clone())?;
    anyhow::ensure!(!evs.is_empty(), "its own job's events");
    anyhow::ensure!(
        evs.iter()
            .all(|e| e.job_id.map(|j| j.to_string()) == Some(mine.clone())),
        "only its own: {evs:?}"
    );
    let (status, _) = fleet
        .call_as(
            &submitter,
            reqwest::Method::GET,
            &format!("/v1/events?job={theirs}"),
            None,
        )
        .await?;
    anyhow::ensure!(status == 404, "another's job is not found: {status}");
    fleet.shutdown().await
}
