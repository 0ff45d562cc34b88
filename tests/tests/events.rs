//! Events (issue 12, acceptance 3): one job with a task that fails once and is retried
//! and a task that fails for good announces exactly the documented sequence, each event
//! once, on the AMQP events exchange and on `GET /v1/events`; a follower that reconnects
//! with `Last-Event-ID` misses nothing and sees nothing twice; a submitter sees only its
//! own jobs' events.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::event::{Event, Kind};
use fleet_shared::id::JobId;
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
    let mut fleet = TestFleet::start("events-seq").await?;
    fleet
        .add_executor(ExecutorSpec::new("ev-1", &["ev"], 2))
        .await?;

    // A listener on the broker, bound before the job.
    let (conn, mut deliveries) = fleet.listen_events().await?;

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

    // Paging through a filter one row at a time: pages the filter empties still move
    // on (`next`), and the walk finds both jobs' acceptance.
    let mut accepted = Vec::new();
    let mut after: Option<i64> = None;
    for _ in 0..500 {
        let path = match after {
            Some(a) => format!("/v1/events?kind=job.accepted&limit=1&after={a}"),
            None => "/v1/events?kind=job.accepted&limit=1".to_owned(),
        };
        let (status, page) = fleet.call(reqwest::Method::GET, &path, None).await?;
        anyhow::ensure!(status == 200, "{status} {page}");
        let evs: Vec<Event> = serde_json::from_value(page["events"].clone())?;
        accepted.extend(evs.iter().filter_map(|e| e.job_id.map(|j| j.to_string())));
        let next = page["next"].as_i64();
        if next == after {
            break;
        }
        after = next;
    }
    anyhow::ensure!(
        accepted.contains(&mine) && accepted.contains(&theirs.to_string()),
        "paged: {accepted:?}"
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

/// What a test receiver got: each request's headers and body.
#[derive(Default)]
struct Received {
    posts: std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>,
    /// Requests to answer 500 before answering 200.
    fail_first: usize,
}

/// A webhook receiver on a free port: fails its first `fail_first` requests (500),
/// then answers 204; or, `hang`, never answers at all.
async fn receiver(fail_first: usize, hang: bool) -> Result<(String, std::sync::Arc<Received>)> {
    receiver_on(fail_first, hang, None).await
}

/// A server's certificate chain and key files (PEM).
type ServerFiles = (String, String);

/// [`receiver`], serving HTTPS with `tls` (a certificate for localhost) when given.
async fn receiver_on(
    fail_first: usize,
    hang: bool,
    tls: Option<&ServerFiles>,
) -> Result<(String, std::sync::Arc<Received>)> {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    let got = std::sync::Arc::new(Received {
        fail_first,
        ..Default::default()
    });
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(r): State<std::sync::Arc<Received>>,
                      headers: HeaderMap,
                      body: axum::body::Bytes| async move {
                    let n = {
                        let mut posts = r.posts.lock().expect("posts");
                        posts.push((headers, body.to_vec()));
                        posts.len()
                    };
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    if n <= r.fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = match tls {
        None => {
            let url = format!("http://{}/hook", listener.local_addr()?);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            url
        }
        Some((cert, key)) => {
            // The certificate names localhost.
            let url = format!("https://localhost:{}/hook", listener.local_addr()?.port());
            let tls = fleet_shared::tls::server_config(cert, key)?;
            let listener = fleet_shared::tls::TlsListener::new(listener, tls)?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            url
        }
    };
    Ok((url, got))
}

/// A job's events, once its last readable one is `job.failed`. Readers see an event once
/// no older transaction is still open (docs/design.md, "Events"): a busy database can
/// show the job's end a moment after its state.
async fn events_until_failed(fleet: &TestFleet, id: JobId) -> Result<Vec<Event>> {
    wait_for("the job's events up to job.failed", DEADLINE, || async {
        let (_, page) = fleet
            .call(reqwest::Method::GET, &format!("/v1/events?job={id}"), None)
            .await?;
        let evs: Vec<Event> = serde_json::from_value(page["events"].clone())?;
        Ok((evs.last().map(|e| e.kind) == Some(Kind::JobFailed)).then_some(evs))
    })
    .await
}

/// The signature check a receiver makes (docs/events.md), written here from the
/// HMAC crate rather than Fleet's own `sign`.
fn verifies(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    let Some(sig) = headers
        .get("fleet-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == sig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_event_signed_after_failures_and_a_dead_receiver_delays_nothing(
) -> Result<()> {
    let mut fleet = TestFleet::start_with("hooks", |c| {
        c.webhooks.backoff_initial_ms = 200;
        c.webhooks.timeout_secs = 2;
        c.webhooks.poll_ms = 50;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("wh-1", &["wh"], 2))
        .await?;
    let (flaky_url, flaky) = receiver(3, false).await?;
    let (dead_url, dead) = receiver(0, true).await?;

    // A fleet-wide webhook to a receiver that never answers, for every event.
    let (status, made) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": dead_url})),
        )
        .await?;
    anyhow::ensure!(status == 201, "webhook: {status} {made}");
    anyhow::ensure!(
        made["secret"].as_str().is_some_and(|s| s.len() >= 16),
        "a secret is made up and shown once: {made}"
    );

    // Two jobs, each with its own webhook to the receiver that fails its first three.
    let secret = "a-job-secret-of-some-length";
    let mut jobs = Vec::new();
    for n in 0..2 {
        let id = fleet
            .submit(&json!({"name": format!("hooked-{n}"), "notify": {"url": flaky_url, "secret": secret},
                "tasks": [{"group": "wh", "argv": ["sh", "-c", "echo hi"]},
                          {"group": "wh", "argv": ["false"], "max_attempts": 1}]}))
            .await?;
        jobs.push(id);
    }
    let started = std::time::Instant::now();
    for id in &jobs {
        fleet.wait_job(*id, DEADLINE).await?;
    }
    let finished_in = started.elapsed();

    // Every event of both jobs reaches the receiver, after its three failures.
    let mut want: HashSet<i64> = HashSet::new();
    for id in &jobs {
        let evs = events_until_failed(&fleet, *id).await?;
        want.extend(evs.iter().map(|e| e.id));
    }
    let delivered = wait_for("every event delivered", DEADLINE, || async {
        let posts = flaky.posts.lock().expect("posts");
        let ok: HashSet<i64> = posts
            .iter()
            .skip(flaky.fail_first)
            .filter_map(|(h, _)| h.get("fleet-event-id")?.to_str().ok()?.parse().ok())
            .collect();
        Ok((ok == want).then_some(posts.len()))
    })
    .await?;
    let posts = flaky.posts.lock().expect("posts").clone();
    anyhow::ensure!(delivered >= want.len() + 3, "three failures, then each");
    let mut ids = Vec::new();
    for (headers, body) in &posts {
        anyhow::ensure!(verifies(secret, headers, body), "signature of {body:?}");
        let e: Event = serde_json::from_slice(body)?;
        anyhow::ensure!(
            headers.get("fleet-event-id").and_then(|v| v.to_str().ok())
                == Some(e.id.to_string().as_str()),
            "the id header is the event's"
        );
        anyhow::ensure!(
            e.job_id.is_some_and(|j| jobs.contains(&j)),
            "only the jobs' own: {e:?}"
        );
        ids.push(e.id);
    }
    // Repeats are what the failures caused; deduplicated by id, each event once.
    let unique: HashSet<i64> = ids.iter().copied().collect();
    anyhow::ensure!(unique == want, "each event after deduplication");

    // The dead receiver held up nothing: the jobs ran as usual and the other receiver
    // got everything while it hangs; its failures are visible.
    anyhow::ensure!(
        finished_in < Duration::from_secs(20),
        "jobs took {finished_in:?}"
    );
    anyhow::ensure!(
        !dead.posts.lock().expect("posts").is_empty(),
        "it was tried"
    );
    let listed = wait_for("the dead receiver's error to show", DEADLINE, || async {
        let (_, list) = fleet
            .call(reqwest::Method::GET, "/v1/webhooks", None)
            .await?;
        let hooks = list["webhooks"].as_array().cloned().unwrap_or_default();
        let fleet_wide = hooks.iter().find(|h| h["url"] == dead_url).cloned();
        Ok(fleet_wide
            .filter(|h| {
                h["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no answer"))
            })
            .map(|h| (h, hooks)))
    })
    .await?;
    let (dead_hook, hooks) = listed;
    anyhow::ensure!(dead_hook.get("secret").is_none(), "secrets are not listed");
    anyhow::ensure!(
        dead_hook["pending"].as_i64().is_some_and(|p| p > 0),
        "its deliveries wait: {dead_hook}"
    );
    let job_hooks: Vec<&Value> = hooks.iter().filter(|h| h["url"] == flaky_url).collect();
    anyhow::ensure!(job_hooks.len() == 2, "one per job: {hooks:?}");
    anyhow::ensure!(
        job_hooks
            .iter()
            .all(|h| h["pending"] == 0 && !h["last_delivered_at"].is_null()),
        "{job_hooks:?}"
    );
    fleet.shutdown().await
}

/// A CA of the test's own, and a certificate for localhost signed by it, in `dir`:
/// (the CA's PEM file, the server's certificate and key files).
fn ca_and_server(dir: &std::path::Path, name: &str) -> Result<(String, ServerFiles)> {
    let (ca_file, cert_file, key_file) = fleet_tests::TestCa::new(name)?.write(dir, name)?;
    Ok((ca_file, (cert_file, key_file)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_reach_a_receiver_of_the_configured_ca_and_a_stranger_gets_nothing(
) -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("fleet-hooks-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    // The collector trusts the receiver's CA (webhooks.ca_file), and not the stranger's,
    // which no system's roots hold either.
    let (ca, trusted_tls) = ca_and_server(&dir, "hooks")?;
    let (_, stranger_tls) = ca_and_server(&dir, "stranger")?;
    let mut fleet = TestFleet::start_with("hookstls", |c| {
        c.webhooks.ca_file = Some(ca);
        c.webhooks.backoff_initial_ms = 200;
        c.webhooks.timeout_secs = 2;
        c.webhooks.poll_ms = 50;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("wht-1", &["wht"], 2))
        .await?;
    let (url, got) = receiver_on(0, false, Some(&trusted_tls)).await?;
    let (stranger_url, stranger) = receiver_on(0, false, Some(&stranger_tls)).await?;
    anyhow::ensure!(url.starts_with("https://"), "{url}");

    // A fleet-wide webhook to the stranger, for every event: registered (https is
    // accepted), but its certificate is not trusted.
    let (status, made) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": stranger_url})),
        )
        .await?;
    anyhow::ensure!(status == 201, "webhook: {status} {made}");

    // A job whose own webhook is the trusted receiver.
    let secret = "a-job-secret-over-tls";
    let id = fleet
        .submit(
            &json!({"name": "hooked-tls", "notify": {"url": url, "secret": secret},
            "tasks": [{"group": "wht", "argv": ["sh", "-c", "echo hi"]},
                      {"group": "wht", "argv": ["false"], "max_attempts": 1}]}),
        )
        .await?;
    fleet.wait_job(id, DEADLINE).await?;
    let evs = events_until_failed(&fleet, id).await?;
    let want: HashSet<i64> = evs.iter().map(|e| e.id).collect();

    // Every event of the job arrives over TLS, signed.
    wait_for("every event delivered over https", DEADLINE, || async {
        let posts = got.posts.lock().expect("posts");
        let ids: HashSet<i64> = posts
            .iter()
            .filter_map(|(h, _)| h.get("fleet-event-id")?.to_str().ok()?.parse().ok())
            .collect();
        Ok((ids == want).then_some(()))
    })
    .await?;
    let posts = got.posts.lock().expect("posts").clone();
    for (headers, body) in &posts {
        anyhow::ensure!(verifies(secret, headers, body), "signature of {body:?}");
        let e: Event = serde_json::from_slice(body)?;
        anyhow::ensure!(e.job_id == Some(id), "only the job's own: {e:?}");
    }

    // The stranger's webhook: nothing delivered, and its last error says why; the job's
    // own has nothing left to deliver (once the answers are recorded).
    let (hook, own) = wait_for(
        "the stranger's certificate error to show",
        DEADLINE,
        || async {
            let (_, list) = fleet
                .call(reqwest::Method::GET, "/v1/webhooks", None)
                .await?;
            let hooks = list["webhooks"].as_array().cloned().unwrap_or_default();
            let of = |u: &str| hooks.iter().find(|h| h["url"] == u).cloned();
            let hook = of(&stranger_url).filter(|h| {
                h["last_error"]
                    .as_str()
                    .is_some_and(|e| e.to_lowercase().contains("certificate"))
            });
            let own = of(&url).filter(|h| h["pending"] == 0 && !h["last_delivered_at"].is_null());
            Ok(hook.zip(own))
        },
    )
    .await?;
    tracing::info!(last_error = %hook["last_error"], "the stranger's webhook");
    anyhow::ensure!(
        stranger.posts.lock().expect("posts").is_empty(),
        "a receiver the collector does not trust was sent events"
    );
    anyhow::ensure!(
        hook["last_delivered_at"].is_null() && hook["pending"].as_i64().is_some_and(|p| p > 0),
        "its deliveries wait: {hook}"
    );
    anyhow::ensure!(own["last_error"].is_null(), "{own}");
    let _ = std::fs::remove_dir_all(&dir);
    fleet.shutdown().await
}

#[tokio::test]
async fn a_collector_whose_webhook_ca_file_is_unusable_does_not_start() -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("fleet-hooks-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "")?;
    let missing = dir.join("missing.pem");
    for (file, says) in [
        (&empty, "holds no PEM certificate"),
        (&missing, "No such file"),
    ] {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-test-collector"))
            .env("FLEET_WEBHOOKS__CA_FILE", file)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .context("the collector neither started nor stopped within 30 s")??;
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.code() == Some(fleet_shared::svc::EXIT_BAD_CONFIG),
            "{}: {:?} {err}",
            file.display(),
            out.status
        );
        anyhow::ensure!(
            err.contains("webhooks.ca_file")
                && err.contains(&*file.display().to_string())
                && err.contains(says),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
