//! Secure by default (issue 14): what the default configuration refuses.
//!
//! AMQP submissions carry an API token in their `authorization` header, checked with the
//! same roles as HTTP: without one, with an unknown or revoked one, or with a reader's,
//! a submission gets a rejected reply naming the reason and is dead-lettered without
//! the token; with a submitter's, the job is that token's, as over HTTP.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{client_with_token, job_of, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

fn refused_for(reply: &Value, code: &str, words: &str) {
    assert_eq!(reply["accepted"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_submission_needs_a_token_that_may_submit_and_is_owned_by_it() -> Result<()> {
    let fleet = TestFleet::start("amqptoken").await?;
    let body = serde_json::to_vec(&json!({"type": "submit", "v": 1,
        "job": job_of(1, &["true"], json!({"name": "over-amqp"}))}))?;

    let none = fleet.submit_amqp_as(None, &body, Some("m-none")).await?;
    refused_for(&none, "unauthenticated", "authorization");
    let unknown = fleet
        .submit_amqp_as(Some("flt_not-a-token"), &body, Some("m-unknown"))
        .await?;
    refused_for(&unknown, "unauthenticated", "unknown or revoked");
    let (_, reader) = fleet.token("watcher", "reader").await?;
    let read_only = fleet
        .submit_amqp_as(Some(&reader), &body, Some("m-reader"))
        .await?;
    refused_for(&read_only, "forbidden", "reader");
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 0);

    // Each refusal is dead-lettered with its reason, and the token is not kept there.
    let dead = fleet.dead_letters(3, Duration::from_secs(30)).await?;
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["forbidden", "unauthenticated", "unauthenticated"]);
    for d in &dead {
        assert!(
            !d.headers
                .iter()
                .any(|h| h == fleet_shared::proto::SUBMIT_TOKEN_HEADER),
            "{:?}",
            d.headers
        );
    }

    // A submitter's token: accepted, and the job is that token's.
    let (ci_id, ci) = fleet.token("ci", "submitter").await?;
    let ok = fleet.submit_amqp_as(Some(&ci), &body, Some("m-ci")).await?;
    assert_eq!(ok["accepted"], true, "{ok}");
    let job = ok["job_id"].as_str().unwrap_or_default().to_owned();
    let as_ci = client_with_token(Some(&ci))?;
    let (status, view) = fleet
        .call_as(&as_ci, Method::GET, &format!("/v1/jobs/{job}"), None)
        .await?;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["submitted_by"]["name"], "ci", "{view}");
    assert_eq!(view["submitted_by"]["token_id"], ci_id.as_str(), "{view}");
    let (_, other) = fleet.token("other", "submitter").await?;
    let (status, _) = fleet
        .call_as(
            &client_with_token(Some(&other))?,
            Method::GET,
            &format!("/v1/jobs/{job}"),
            None,
        )
        .await?;
    assert_eq!(status, 404, "another submitter does not see it");

    // A revoked token stops submitting at once on this submitter.
    let (status, _) = fleet
        .call(Method::DELETE, &format!("/v1/tokens/{ci_id}"), None)
        .await?;
    assert_eq!(status, 204);
    let revoked = fleet
        .submit_amqp_as(Some(&ci), &body, Some("m-revoked"))
        .await?;
    refused_for(&revoked, "unauthenticated", "unknown or revoked");
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 1);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_broker_auth_a_publisher_submits_without_a_token_as_the_intake() -> Result<()> {
    let fleet = TestFleet::start_with("amqpbroker", |c| {
        c.submitter.amqp_auth = fleet_shared::config::AmqpAuth::Broker;
    })
    .await?;
    let body = serde_json::to_vec(&json!({"type": "submit", "v": 1,
        "job": job_of(1, &["true"], json!({}))}))?;
    let ok = fleet.submit_amqp_as(None, &body, Some("b-1")).await?;
    assert_eq!(ok["accepted"], true, "{ok}");
    let job = ok["job_id"].as_str().unwrap_or_default().to_owned();
    let (status, view) = fleet
        .call(Method::GET, &format!("/v1/jobs/{job}"), None)
        .await?;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["submitted_by"]["name"], "amqp-intake", "{view}");
    fleet.shutdown().await
}

/// `POST /v1/jobs` with an `Idempotency-Key`, as the holder of `http`'s token.
async fn post_keyed(
    fleet: &TestFleet,
    http: &reqwest::Client,
    job: &Value,
    key: &str,
) -> Result<(u16, String, Value)> {
    let resp = http
        .post(format!("{}/v1/jobs", fleet.api))
        .header("Idempotency-Key", key)
        .json(job)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    let id = body["job_id"].as_str().unwrap_or_default().to_owned();
    Ok((status, id, body))
}

/// An idempotency key is the submitting token's own: a submitter who uses another's key
/// first (guessed: "nightly-<date>") neither stops the other's job nor learns its id;
/// each token's repeats name its own job, over HTTP, in a batch and over AMQP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_the_submitting_tokens_own() -> Result<()> {
    let fleet = TestFleet::start("idemowner").await?;
    let (_, a) = fleet.token("team-a", "submitter").await?;
    let (_, b) = fleet.token("team-b", "submitter").await?;
    let (as_a, as_b) = (client_with_token(Some(&a))?, client_with_token(Some(&b))?);
    let job = job_of(1, &["true"], json!({}));
    let key = "nightly-2026-12-01";

    // B takes the key first; A's submission with it is still a new job, A's own.
    let (s, jb, body) = post_keyed(&fleet, &as_b, &job, key).await?;
    assert_eq!((s, &body["created"]), (201, &json!(true)), "{body}");
    let (s, ja, body) = post_keyed(&fleet, &as_a, &job, key).await?;
    assert_eq!((s, &body["created"]), (201, &json!(true)), "{body}");
    assert_ne!(ja, jb, "A is not answered with B's job");
    // Each one's repeat names its own job.
    let (s, again_a, body) = post_keyed(&fleet, &as_a, &job, key).await?;
    assert_eq!((s, &body["created"]), (200, &json!(false)), "{body}");
    assert_eq!(again_a, ja);
    let (s, again_b, body) = post_keyed(&fleet, &as_b, &job, key).await?;
    assert_eq!((s, &body["created"]), (200, &json!(false)), "{body}");
    assert_eq!(again_b, jb);
    // The bootstrap admin (no token row) has a scope of its own too.
    let (s, jn, body) = post_keyed(&fleet, &fleet.http, &job, key).await?;
    assert_eq!((s, &body["created"]), (201, &json!(true)), "{body}");
    assert!(jn != ja && jn != jb, "{body}");
    // A's job is A's: B does not see it.
    let (status, _) = fleet
        .call_as(&as_b, Method::GET, &format!("/v1/jobs/{ja}"), None)
        .await?;
    assert_eq!(status, 404);

    // A batch: A's key names A's job; a key new to A, twice, makes one job.
    let (s, batch) = fleet
        .call_as(
            &as_a,
            Method::POST,
            "/v1/jobs/batch",
            Some(json!({"jobs": [
                {"job": job, "idempotency_key": key},
                {"job": job, "idempotency_key": "weekly-1"},
                {"job": job, "idempotency_key": "weekly-1"}]})),
        )
        .await?;
    assert_eq!(s, 200, "{batch}");
    let tickets = &batch["jobs"];
    assert_eq!(
        tickets[0],
        json!({"job_id": ja, "created": false}),
        "{batch}"
    );
    assert_eq!(tickets[1]["created"], true, "{batch}");
    assert_eq!(tickets[2]["job_id"], tickets[1]["job_id"], "{batch}");
    assert_eq!(tickets[2]["created"], false, "{batch}");

    // Over AMQP: the message_id is a key per token as well.
    let body = serde_json::to_vec(&json!({"type": "submit", "v": 1, "job": job}))?;
    let b1 = fleet.submit_amqp_as(Some(&b), &body, Some("m-1")).await?;
    let a1 = fleet.submit_amqp_as(Some(&a), &body, Some("m-1")).await?;
    let a2 = fleet.submit_amqp_as(Some(&a), &body, Some("m-1")).await?;
    let b2 = fleet.submit_amqp_as(Some(&b), &body, Some("m-1")).await?;
    for (r, created) in [(&b1, true), (&a1, true), (&a2, false), (&b2, false)] {
        assert_eq!(r["accepted"], true, "{r}");
        assert_eq!(r["created"], created, "{r}");
    }
    assert_ne!(a1["job_id"], b1["job_id"]);
    assert_eq!(a2["job_id"], a1["job_id"]);
    assert_eq!(b2["job_id"], b1["job_id"]);

    let stored = |k: &str| format!("SELECT count(*) FROM jobs WHERE idempotency_key = '{k}'");
    assert_eq!(fleet.count(&stored(key)).await?, 3, "B's, A's, the admin's");
    assert_eq!(fleet.count(&stored("weekly-1")).await?, 1);
    assert_eq!(fleet.count(&stored("amqp:m-1")).await?, 2);
    fleet.shutdown().await
}

/// The hex of a string's bytes, as `od -An -tx1` prints them (spaces and newlines taken
/// out): what the task prints to show it got a value, without printing the value.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_env_value_is_never_shown_logged_or_stored_in_clear() -> Result<()> {
    use fleet_tests::{ExecutorSpec, InProcess};
    // Every service a process of its own, logging at debug, to read what each wrote.
    let none = InProcess {
        submitter: false,
        dispatcher: false,
        collector: false,
    };
    let mut fleet = TestFleet::start_opts("secrets", none, |_| {}).await?;
    let debug = "debug,tokio_postgres=info,hyper=info,reqwest=info".to_owned();
    let addr = fleet_tests::free_addr()?;
    let mut procs = vec![fleet.spawn_process(
        env!("CARGO_BIN_EXE_fleet-test-submitter"),
        "submitter",
        &[
            ("FLEET_HTTP__ADDR", addr.clone()),
            ("RUST_LOG", debug.clone()),
        ],
    )?];
    fleet.api = format!("http://{addr}");
    fleet.wait_api_ready().await?;
    for (bin, id) in [
        (env!("CARGO_BIN_EXE_fleet-test-dispatcher"), "dispatcher"),
        (env!("CARGO_BIN_EXE_fleet-test-collector"), "collector"),
    ] {
        procs.push(fleet.spawn_process(bin, id, &[("RUST_LOG", debug.clone())])?);
    }
    procs.push(fleet.spawn_executor_process_with(
        env!("CARGO_BIN_EXE_fleet-test-executor"),
        ExecutorSpec::new("sec-1", &["cpu"], 1),
        &[("RUST_LOG", debug.clone())],
    )?);
    fleet.wait_executors(&["sec-1"]).await?;

    // One value given as secret, one secret by its name (DB_PASSWORD), one plain.
    let given = format!("given-{}", uuid::Uuid::new_v4().simple());
    let named = format!("named-{}", uuid::Uuid::new_v4().simple());
    let script = r#"printf %s "$API_CRED" | od -An -tx1 | tr -d ' \n'; printf :
                    printf %s "$DB_PASSWORD" | od -An -tx1 | tr -d ' \n'; printf ":%s" "$PLAIN""#;
    let job = fleet
        .submit(&json!({"name": "with-secrets", "tasks": [{
            "name": "uses", "group": "cpu", "argv": ["sh", "-c", script],
            "env": {"DB_PASSWORD": named, "PLAIN": "visible"},
            "env_secret": {"API_CRED": given}}]}))
        .await?;
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    let results = fleet.results(job).await?;
    let stdout = results.results[0].stdout.clone();
    assert_eq!(
        stdout,
        format!("{}:{}:visible", hex(&given), hex(&named)),
        "the command got both secret values"
    );

    // No API answer holds them, even to an admin; the names are listed.
    let mut answers = Vec::new();
    for path in [
        format!("/v1/jobs/{job}"),
        "/v1/jobs".to_owned(),
        format!("/v1/jobs/{job}/results"),
        format!("/v1/events?job={job}"),
        format!("/v1/jobs/{job}/tasks/uses/logs"),
    ] {
        let (status, body) = fleet.call(Method::GET, &path, None).await?;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push((path, body));
    }
    let view = &answers[0].1;
    let spec = &view["tasks"][0]["spec"];
    assert_eq!(spec["env"], json!({"PLAIN": "visible"}), "{view}");
    assert_eq!(
        spec["env_secret"],
        json!(["API_CRED", "DB_PASSWORD"]),
        "{view}"
    );
    for (path, body) in &answers {
        let text = body.to_string();
        assert!(
            !text.contains(&given) && !text.contains(&named),
            "{path}: {text}"
        );
    }

    // No column of any table holds them in clear.
    let client = fleet.pool.get().await?;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
            &[&fleet.cfg.database.schema],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "tasks"), "{tables:?}");
    for t in &tables {
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{t}\" x WHERE x::text LIKE '%' || $1 || '%'
                     OR x::text LIKE '%' || $2 || '%'"
                ),
                &[&given, &named],
            )
            .await?
            .get(0);
        assert_eq!(n, 0, "table {t} holds a secret in clear");
    }
    let sealed: i64 = client
        .query_one(
            "SELECT count(*) FROM tasks WHERE env_secret IS NOT NULL AND NOT env ? 'DB_PASSWORD'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(sealed, 1, "stored sealed, apart from env");

    // No log line of any service holds them.
    for p in &procs {
        let log = p.log_text();
        assert!(!log.is_empty(), "{}: no log", p.id);
        assert!(
            !log.contains(&given) && !log.contains(&named),
            "{} logged a secret:\n{log}",
            p.id
        );
    }
    for p in procs {
        p.kill().await?;
    }
    drop(client);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_a_secret_value_is_refused_naming_the_field() -> Result<()> {
    let fleet = TestFleet::start_with("nokey", |c| c.secrets.key = None).await?;
    for (task, field) in [
        (
            json!({"argv": ["true"], "env_secret": {"API": "x"}}),
            "tasks[0].env_secret",
        ),
        (
            json!({"argv": ["true"], "env": {"GITHUB_TOKEN": "x"}}),
            "tasks[0].env_secret",
        ),
    ] {
        let (status, body) = fleet.post_job(&json!({"tasks": [task]}), None).await?;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("secrets.key"), "{body}");
    }
    // Plain values need no key.
    let (status, body) = fleet
        .post_job(
            &json!({"tasks": [{"argv": ["true"], "env": {"HOME": "/"}}]}),
            None,
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 1);
    fleet.shutdown().await
}

/// Dead letters are read by whoever inspects the broker, and kept 14 days: a refused
/// submission is kept without its secret values, and a request that expired in an
/// executor's queue (its env holds secret values, opened for the executor) is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_keeps_no_secret_value() -> Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let fleet = TestFleet::start("deadsecret").await?;
    let given = format!("given-{}", uuid::Uuid::new_v4().simple());
    let named = format!("named-{}", uuid::Uuid::new_v4().simple());
    // Refused (no token), with a secret given and one by name.
    let body = serde_json::to_vec(&json!({"type": "submit", "v": 1, "job": {"tasks": [{
        "argv": ["true"], "env": {"DB_PASSWORD": named, "HOME": "/"},
        "env_secret": {"API": given}}]}}))?;
    let refused = fleet.submit_amqp_as(None, &body, Some("d-1")).await?;
    assert_eq!(refused["accepted"], false, "{refused}");
    // Refused as invalid (not a map), with a parser's message that could quote it.
    let quoted = format!("quoted-{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::to_vec(&json!({"type": "submit", "v": 1, "job": {"tasks": [{
        "argv": ["true"], "env_secret": quoted}]}}))?;
    let invalid = fleet.submit_amqp(&body, Some("d-2")).await?;
    assert_eq!(invalid["accepted"], false, "{invalid}");
    // The reply (to the sender, who knows it) quotes it: the dead letter must not.
    assert!(invalid.to_string().contains(&quoted), "{invalid}");

    // A request for an executor that never takes it, expiring at once in its queue.
    let n = fleet_shared::amqp::Names::new(&fleet.cfg.amqp.prefix);
    let ghost = fleet_shared::id::ExecutorId::parse("ghost-1")?;
    let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "fleet-test-ghost").await?;
    let ch = conn.create_channel().await?;
    fleet_shared::amqp::declare_executor_queue(
        &ch,
        &n,
        &ghost,
        &[fleet_shared::group::GroupName::default_group()],
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let request = json!({"type": "request", "v": 1, "env": {"API": given}});
    ch.basic_publish(
        n.root_exchange().as_str().into(),
        fleet_shared::amqp::keys::request(&ghost).as_str().into(),
        BasicPublishOptions::default(),
        request.to_string().as_bytes(),
        fleet_shared::amqp::json_properties().with_expiration("1".into()),
    )
    .await?
    .await?;
    let queue = n.executor_queue(&ghost);
    fleet_tests::wait_for("the request to expire", Duration::from_secs(30), || async {
        let left = fleet.queue_info(&queue).await?["messages"].as_u64();
        Ok((left == Some(0)).then_some(()))
    })
    .await?;

    let dead = fleet.dead_letters(2, Duration::from_secs(30)).await?;
    let mut all = dead;
    // Whatever else arrives within a moment (an expired request would).
    all.extend(fleet.dead_letters(5, Duration::from_secs(2)).await?);
    assert!(
        all.iter().any(|d| d.reason == "unauthenticated"),
        "the refused submission is kept: {:?}",
        all.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    for d in &all {
        let text = format!("{} {}", String::from_utf8_lossy(&d.body), d.detail);
        assert!(
            !text.contains(&given) && !text.contains(&named) && !text.contains(&quoted),
            "a dead letter ({}) holds a secret: {text}",
            d.reason
        );
        assert!(
            !text.contains("\"request\""),
            "an expired request is kept: {text}"
        );
    }
    let refused_body = all
        .iter()
        .find(|d| d.reason == "unauthenticated")
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .unwrap_or_default();
    assert!(
        refused_body.contains(fleet_shared::secrets::REDACTED) && refused_body.contains("HOME"),
        "kept, redacted: {refused_body}"
    );
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    fleet.shutdown().await
}
