//! Executor identity (issue 5): a join token buys a broker user of the executor's own;
//! the broker refuses what that user may not do (another executor's routing keys or
//! queue), a wrong password, and a revoked executor, whose attempts are lost at once.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_shared::amqp::keys;
use fleet_tests::{job_of, wait_for, ExecutorSpec, TestFleet};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use reqwest::Method;
use serde_json::{json, Value};

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");

fn url_as(base: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("amqp", base));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

async fn connect_as(fleet: &TestFleet, user: &str, password: &str) -> Result<lapin::Connection> {
    let mut cfg = fleet.cfg.amqp.clone();
    cfg.url = url_as(&cfg.url, user, password);
    Ok(fleet_shared::amqp::connect(&cfg, "fleet-test-impostor").await?)
}

/// Publishes (confirmed) and says how the broker took it.
async fn try_publish(
    conn: &lapin::Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            fleet_shared::amqp::json_properties(),
        )
        .await?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), confirm)
        .await
        .context("no confirm within 10s")??;
    if outcome.is_nack() {
        bail!("nacked");
    }
    Ok(())
}

/// Registers `id` with a fresh join token over the API; the status and the answer.
async fn register_with_new_token(
    fleet: &TestFleet,
    id: &str,
    groups: &[&str],
) -> Result<(u16, Value)> {
    let (_, token) = fleet
        .call(Method::POST, "/v1/join-tokens", Some(json!({})))
        .await?;
    fleet
        .call(
            Method::POST,
            "/v1/executors/register",
            Some(json!({"join_token": token["token"], "executor_id": id, "groups": groups})),
        )
        .await
}

fn refused(what: &str, r: Result<impl std::fmt::Debug>) {
    match r {
        Ok(v) => panic!("{what}: the broker accepted it ({v:?})"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains("ACCESS_REFUSED")
                    || text.contains("ACCESS-REFUSED")
                    || text.contains("403"),
                "{what}: refused, but not by permissions: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_registered_executor_takes_work_and_the_broker_enforces_its_identity() -> Result<()>
{
    let mut fleet = TestFleet::start("identity").await?;
    let (s, made) = fleet
        .call(
            Method::POST,
            "/v1/join-tokens",
            Some(json!({"groups": ["secure"]})),
        )
        .await?;
    assert_eq!(s, 201, "{made}");
    let join = made["token"].as_str().unwrap_or_default().to_owned();
    let creds = std::env::temp_dir().join(format!("{}-reg-1.json", fleet.name));
    let _reg = fleet.spawn_executor_process_with(
        EXECUTOR_BIN,
        ExecutorSpec::new("reg-1", &["secure"], 1),
        &[
            ("FLEET_EXECUTOR__JOIN_TOKEN", join.clone()),
            ("FLEET_EXECUTOR__REGISTER_URL", fleet.api.clone()),
            (
                "FLEET_EXECUTOR__CREDENTIALS_FILE",
                creds.display().to_string(),
            ),
        ],
    )?;
    fleet.wait_executors(&["reg-1"]).await?;
    // It works as its own broker user.
    let job = fleet
        .submit(&job_of(
            1,
            &["sh", "-c", "echo hi from $FLEET_EXECUTOR_ID"],
            json!({"group": "secure"}),
        ))
        .await?;
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    assert_eq!(
        fleet.results(job).await?.results[0].stdout,
        "hi from reg-1\n"
    );
    let cred: Value = serde_json::from_str(&std::fs::read_to_string(&creds)?)?;
    let (user, password) = (
        cred["broker_user"].as_str().unwrap_or_default().to_owned(),
        cred["broker_password"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    assert_eq!(user, format!("{}-exec-reg-1", fleet.name));

    // The join token worked once.
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/executors/register",
            Some(json!({"join_token": join, "executor_id": "reg-2"})),
        )
        .await?;
    assert_eq!(s, 401, "a used join token: {b}");
    // Another valid join token cannot take over a registered executor's id.
    let (s, b) = register_with_new_token(&fleet, "reg-1", &["secure"]).await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );

    // A plain executor beside it, whose queue reg-1 must not read.
    fleet
        .add_executor(ExecutorSpec::new("plain-1", &["secure"], 1))
        .await?;
    fleet.wait_executors(&["plain-1"]).await?;
    let n = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix);
    let secure = n.group_exchange(&fleet_shared::group::GroupName::parse("secure")?);
    let forged =
        serde_json::to_vec(&json!({"type": "result", "v": 1, "note": "in plain-1's name"}))?;

    let conn = connect_as(&fleet, &user, &password).await?;
    // Its own keys pass the broker...
    try_publish(&conn, &secure, "info.reg-1", b"{}").await?;
    // ...another executor's id in the routing key does not.
    refused(
        "a result published as plain-1",
        try_publish(&conn, &secure, "result.plain-1", &forged).await,
    );
    refused(
        "an INFO published as plain-1",
        try_publish(&conn, &secure, "info.plain-1", &forged).await,
    );
    // Nor may it publish on a group it is not in, or read another executor's queue.
    refused(
        "a publish on the default exchange",
        try_publish(&conn, &n.root_exchange(), "result.reg-1", &forged).await,
    );
    let ch = conn.create_channel().await?;
    refused(
        "consuming plain-1's queue",
        ch.basic_consume(
            n.executor_queue(&fleet_shared::id::ExecutorId::parse("plain-1")?)
                .as_str()
                .into(),
            "impostor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(anyhow::Error::from),
    );
    let _ = conn.close(200, "done".into()).await;
    // A wrong password does not even connect.
    refused(
        "a wrong password",
        connect_as(&fleet, &user, "not-the-password").await,
    );

    // An INFO in its own name may claim other groups; the dispatcher holds a registered
    // executor to the groups it registered with. (The forged INFO is dated 2 s ahead, so
    // the real ones, older, are ignored meanwhile.)
    fleet
        .add_executor(ExecutorSpec::new("else-1", &["elsewhere"], 2))
        .await?;
    fleet.wait_executors(&["else-1"]).await?;
    let claim = fleet_shared::proto::Info {
        sent_at: chrono::Utc::now() + chrono::Duration::seconds(2),
        ..fleet_shared::proto::Info::idle(
            fleet_shared::id::ExecutorId::parse("reg-1")?,
            vec![fleet_shared::group::GroupName::parse("elsewhere")?],
            8,
        )
    };
    let conn = connect_as(&fleet, &user, &password).await?;
    try_publish(
        &conn,
        &secure,
        "info.reg-1",
        &fleet_shared::proto::encode(&claim),
    )
    .await?;
    let _ = conn.close(200, "done".into()).await;
    let groups_of = |id: &'static str| {
        let fleet = &fleet;
        async move {
            let view: fleet_shared::db::read::ExecutorsView =
                fleet.get_json("/v1/executors").await?;
            Ok::<_, anyhow::Error>(
                view.executors
                    .into_iter()
                    .find(|e| e.executor_id == id)
                    .map(|e| e.groups)
                    .unwrap_or_default(),
            )
        }
    };
    wait_for("the claim to be heard", Duration::from_secs(5), || async {
        Ok((groups_of("reg-1").await? == ["elsewhere"]).then_some(()))
    })
    .await?;
    let elsewhere = fleet
        .submit(&job_of(10, &["true"], json!({"group": "elsewhere"})))
        .await?;
    assert_eq!(
        fleet
            .wait_job(elsewhere, Duration::from_secs(60))
            .await?
            .state,
        "succeeded"
    );
    let ran: Vec<String> = fleet
        .results(elsewhere)
        .await?
        .results
        .into_iter()
        .map(|r| r.executor_id)
        .collect();
    assert!(
        ran.iter().all(|e| e == "else-1"),
        "a claimed group was believed: {ran:?}"
    );
    wait_for(
        "reg-1's own INFO again",
        Duration::from_secs(30),
        || async { Ok((groups_of("reg-1").await? == ["secure"]).then_some(())) },
    )
    .await?;
    fleet.wait_executors(&["reg-1"]).await?;

    // Revoked while it runs a task: the attempt is lost at once (not at the lease, 15 s)
    // and the task runs again on plain-1; reg-1 can no longer connect.
    fleet
        .call(Method::POST, "/v1/executors/plain-1/drain", None)
        .await?;
    fleet.wait_draining("plain-1", true).await?;
    let long = fleet
        .submit(&job_of(
            1,
            &["sh", "-c", "sleep 2; echo done on $FLEET_EXECUTOR_ID"],
            json!({"group": "secure"}),
        ))
        .await?;
    wait_for(
        "the task to run on reg-1",
        Duration::from_secs(30),
        || async {
            let j = fleet.job(long).await?;
            Ok((j.tasks[0].state == "running"
                && j.tasks[0].executor_id.as_deref() == Some("reg-1"))
            .then_some(()))
        },
    )
    .await?;
    fleet
        .call(Method::POST, "/v1/executors/plain-1/resume", None)
        .await?;
    let revoked_at = Instant::now();
    let (s, b) = fleet
        .call(Method::POST, "/v1/executors/reg-1/revoke", None)
        .await?;
    assert_eq!(s, 200, "{b}");
    let done = fleet.wait_job(long, Duration::from_secs(60)).await?;
    let took = revoked_at.elapsed();
    assert_eq!(done.state, "succeeded");
    assert_eq!(
        fleet.results(long).await?.results[0].stdout,
        "done on plain-1\n"
    );
    assert_eq!(
        fleet.attempts_of(done.tasks[0].task_id).await?,
        vec![
            ("reg-1".into(), "lost".into()),
            ("plain-1".into(), "succeeded".into())
        ]
    );
    assert!(
        took < Duration::from_secs(12),
        "rerun {took:?} after the revocation"
    );
    refused(
        "the revoked credential",
        connect_as(&fleet, &user, &password).await,
    );
    eprintln!(
        "revocation: task rerun elsewhere and recorded {:.1}s after the revoke (lease 15s)",
        took.as_secs_f64()
    );
    // Registered again (a new join token) with other groups: the queue leaves the old ones.
    let (s, b) = register_with_new_token(&fleet, "reg-1", &["moved"]).await?;
    assert_eq!(s, 201, "{b}");
    let queue = n.executor_queue(&fleet_shared::id::ExecutorId::parse("reg-1")?);
    let bindings: Value = reqwest::Client::new()
        .get(format!(
            "{}/api/queues/%2F/{queue}/bindings",
            fleet.cfg.amqp.management_url
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await?
        .json()
        .await?;
    let sources: Vec<&str> = bindings
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["source"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !sources.contains(&secure.as_str()),
        "still bound to {secure}: {sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.ends_with(".group.moved")),
        "{sources:?}"
    );
    let (s, _) = fleet
        .call(Method::POST, "/v1/executors/reg-1/revoke", None)
        .await?;
    assert_eq!(s, 200);
    let _ = std::fs::remove_file(&creds);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_registered_executors_take_work() -> Result<()> {
    // The default: registration required (the tests' open mode turned off).
    let bootstrap = "bootstrap-secret-of-the-regonly-test";
    let mut fleet = TestFleet::start_with("regonly", |c| {
        c.dispatcher.unsafe_open_executors = false;
        c.auth.executor_bootstrap_secret = Some(bootstrap.into());
    })
    .await?;
    let (s, made) = fleet
        .call(Method::POST, "/v1/join-tokens", Some(json!({})))
        .await?;
    assert_eq!(s, 201, "{made}");
    let (name, api) = (fleet.name.clone(), fleet.api.clone());
    let creds = |who: &str| std::env::temp_dir().join(format!("{name}-{who}.json"));
    let registering = |proof: (&'static str, String), who: &str| {
        vec![
            proof,
            ("FLEET_EXECUTOR__REGISTER_URL", api.clone()),
            (
                "FLEET_EXECUTOR__CREDENTIALS_FILE",
                creds(who).display().to_string(),
            ),
        ]
    };
    // One with a join token, one with the bootstrap secret (as compose starts them).
    let _member = fleet.spawn_executor_process_with(
        EXECUTOR_BIN,
        ExecutorSpec::new("member", &["pool"], 2),
        &registering(
            (
                "FLEET_EXECUTOR__JOIN_TOKEN",
                made["token"].as_str().unwrap_or_default().to_owned(),
            ),
            "member",
        ),
    )?;
    let _booted = fleet.spawn_executor_process_with(
        EXECUTOR_BIN,
        ExecutorSpec::new("booted", &["pool"], 2),
        &registering(
            ("FLEET_EXECUTOR__BOOTSTRAP_SECRET", bootstrap.to_owned()),
            "booted",
        ),
    )?;
    // On the shared broker user, unregistered: alive, but not let in.
    fleet
        .add_executor(ExecutorSpec::new("stranger", &["pool", "lonely"], 2))
        .await?;
    fleet
        .wait_executors(&["member", "booted", "stranger"])
        .await?;
    let job = fleet
        .submit(&job_of(20, &["true"], json!({"group": "pool"})))
        .await?;
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    let ran: Vec<String> = fleet
        .results(job)
        .await?
        .results
        .into_iter()
        .map(|r| r.executor_id)
        .collect();
    assert_eq!(ran.len(), 20);
    assert!(
        ran.iter().all(|e| e == "member" || e == "booted"),
        "{ran:?}"
    );
    // Work only the stranger could take waits, and says why.
    let lonely = fleet
        .submit(&job_of(1, &["true"], json!({"group": "lonely"})))
        .await?;
    let hint = wait_for(
        "the hint of the waiting task",
        Duration::from_secs(30),
        || async {
            let t = fleet.job(lonely).await?.tasks.remove(0);
            anyhow::ensure!(t.executor_id.is_none(), "the stranger got work: {t:?}");
            Ok(t.hint)
        },
    )
    .await?;
    assert!(hint.contains("registered (stranger)"), "{hint}");
    // A wrong bootstrap secret registers nothing.
    let (s, body) = fleet
        .call(
            Method::POST,
            "/v1/executors/register",
            Some(json!({"bootstrap_secret": "not-the-secret-at-all", "executor_id": "x-1"})),
        )
        .await?;
    assert_eq!(s, 401, "{body}");
    for who in ["member", "booted"] {
        let (s, _) = fleet
            .call(Method::POST, &format!("/v1/executors/{who}/revoke"), None)
            .await?;
        assert_eq!(s, 200);
        let _ = std::fs::remove_file(creds(who));
    }
    // A revoked executor does not come back with the bootstrap secret: that takes a join
    // token, from an administrator.
    let (s, body) = fleet
        .call(
            Method::POST,
            "/v1/executors/register",
            Some(json!({"bootstrap_secret": bootstrap, "executor_id": "booted"})),
        )
        .await?;
    assert_eq!(s, 409, "{body}");
    fleet.shutdown().await
}

/// Each service may do what it does and nothing else (issue 14, acceptance 1): a fleet
/// whose submitter, dispatcher and collector connect as broker users of their own runs
/// jobs over HTTP and AMQP, group control and events; and with one service's
/// credentials the broker refuses another's work: a result or an INFO published, a
/// request or results queue read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_is_its_own_broker_user_and_may_do_only_its_own_work() -> Result<()> {
    let fleet = TestFleet::start_with_service_users("leastpriv", |c| {
        c.dispatcher.unsafe_open_executors = false;
    })
    .await?;
    let n = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix);
    let (s, made) = fleet
        .call(Method::POST, "/v1/join-tokens", Some(json!({})))
        .await?;
    assert_eq!(s, 201, "{made}");
    let creds = std::env::temp_dir().join(format!("{}-lp-1.json", fleet.name));
    let _executor = fleet.spawn_executor_process_with(
        EXECUTOR_BIN,
        ExecutorSpec::new("lp-1", &["cpu"], 2),
        &[
            (
                "FLEET_EXECUTOR__JOIN_TOKEN",
                made["token"].as_str().unwrap_or_default().to_owned(),
            ),
            ("FLEET_EXECUTOR__REGISTER_URL", fleet.api.clone()),
            (
                "FLEET_EXECUTOR__CREDENTIALS_FILE",
                creds.display().to_string(),
            ),
        ],
    )?;
    fleet.wait_executors(&["lp-1"]).await?;

    // The work of each: jobs over HTTP and over AMQP (a reply on the default exchange),
    // results recorded, events relayed, a control message to a group.
    let job = fleet
        .submit(&job_of(3, &["true"], json!({"group": "cpu"})))
        .await?;
    let body = json!({"type": "submit", "v": 1,
        "job": job_of(1, &["true"], json!({"group": "cpu"}))})
    .to_string();
    let reply = fleet.submit_amqp(body.as_bytes(), Some("lp-amqp")).await?;
    assert_eq!(reply["accepted"], true, "{reply}");
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    let events: Value = fleet.get_json(&format!("/v1/events?job={job}")).await?;
    assert!(events.to_string().contains("job.succeeded"), "{events}");
    let (s, body) = fleet
        .call(Method::POST, "/v1/groups/cpu/drain", None)
        .await?;
    assert!(s == 200 || s == 202, "{s} {body}");
    fleet.wait_draining("lp-1", true).await?;

    // Another's work, refused by the broker.
    let user = |s: &str| fleet.service_users.get(s).cloned().unwrap_or_default();
    let (dispatcher, collector, submitter) =
        (user("dispatcher"), user("collector"), user("submitter"));
    let lp = fleet_shared::id::ExecutorId::parse("lp-1")?;
    let conn = connect_as(&fleet, &dispatcher.0, &dispatcher.1).await?;
    refused(
        "the dispatcher publishing a result",
        try_publish(&conn, &n.root_exchange(), &keys::result(&lp), b"{}").await,
    );
    let _ = conn.close(200, "".into()).await;
    let conn = connect_as(&fleet, &collector.0, &collector.1).await?;
    refused(
        "the collector publishing an INFO",
        try_publish(&conn, &n.root_exchange(), &keys::info(&lp), b"{}").await,
    );
    // Nor may it catch expired requests (their env holds secrets) on the dead-letter
    // exchange.
    let ch = conn.create_channel().await?;
    refused(
        "the collector binding requests on the dead-letter exchange",
        ch.queue_bind(
            n.results_queue().as_str().into(),
            n.dlx().as_str().into(),
            "request.#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(anyhow::Error::from),
    );
    let _ = conn.close(200, "".into()).await;
    for ((who, (name, password)), queue) in [
        (("collector", collector.clone()), n.executor_queue(&lp)),
        (("dispatcher", dispatcher.clone()), n.executor_queue(&lp)),
        (("dispatcher", dispatcher.clone()), n.results_queue()),
        (("submitter", submitter.clone()), n.results_queue()),
    ] {
        let conn = connect_as(&fleet, &name, &password).await?;
        let ch = conn.create_channel().await?;
        refused(
            &format!("the {who} reading {queue}"),
            ch.basic_consume(
                queue.as_str().into(),
                "impostor".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(anyhow::Error::from),
        );
        let _ = conn.close(200, "".into()).await;
    }
    let (s, _) = fleet
        .call(Method::POST, "/v1/executors/lp-1/revoke", None)
        .await?;
    assert_eq!(s, 200);
    let _ = std::fs::remove_file(&creds);
    fleet.shutdown().await
}
