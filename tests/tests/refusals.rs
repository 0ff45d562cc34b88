//! What a new user ran into: submissions and administration calls that PostgreSQL or an
//! executor would refuse are refused at the door, with the field named (400, or a
//! rejected AMQP reply), never a 500 or an attempt that fails later; an AMQP submission
//! with an empty `message_id` is not merged with others; an unknown route answers the
//! API's JSON error, on the submitter and on every health server.

use anyhow::Result;
use fleet_tests::{free_addr, job_of, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-dispatcher");

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_is_a_400_naming_the_field_not_a_500() -> Result<()> {
    let fleet = TestFleet::start("nul").await?;
    let (status, body) = fleet
        .post_job(&job_of(1, &["cat"], json!({"stdin": "a\u{0}b"})), None)
        .await?;
    assert_eq!((status, field(&body)), (400, "tasks[0].stdin"), "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let (status, body) = fleet
        .post_job(
            &job_of(1, &["true"], json!({"labels": {"gpu": "a\u{0}"}})),
            None,
        )
        .await?;
    assert_eq!(
        (status, field(&body)),
        (400, "tasks[0].labels.gpu"),
        "{body}"
    );
    let (status, body) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci\u{0}", "role": "reader"})),
        )
        .await?;
    assert_eq!((status, field(&body)), (400, "name"), "{body}");
    let (status, body) = fleet
        .call(
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "lab", "description": "x\u{0}y"})),
        )
        .await?;
    assert_eq!((status, field(&body)), (400, "description"), "{body}");
    // Over AMQP: a rejected reply naming it.
    let submit = json!({"type": "submit", "v": 1,
        "job": job_of(1, &["cat"], json!({"stdin": "\u{0}"}))});
    let reply = fleet
        .submit_amqp(&serde_json::to_vec(&submit)?, Some("nul-1"))
        .await?;
    assert_eq!(reply["accepted"], false, "{reply}");
    assert_eq!(reply["error"]["field"], "job.tasks[0].stdin", "{reply}");
    // Nothing was half-stored, and the service still works.
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 0);
    fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_message_id_is_no_idempotency_key() -> Result<()> {
    let fleet = TestFleet::start("emptymid").await?;
    let submit = serde_json::to_vec(&json!({"type": "submit", "v": 1,
        "job": job_of(1, &["true"], json!({}))}))?;
    let first = fleet.submit_amqp(&submit, Some("")).await?;
    let second = fleet.submit_amqp(&submit, Some("")).await?;
    for reply in [&first, &second] {
        assert_eq!(reply["accepted"], true, "{reply}");
        assert_eq!(reply["created"], true, "{reply}");
    }
    assert_ne!(
        first["job_id"], second["job_id"],
        "two submissions, two jobs"
    );
    // A real message_id still is a key.
    let keyed = fleet.submit_amqp(&submit, Some("k-1")).await?;
    let again = fleet.submit_amqp(&submit, Some("k-1")).await?;
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(keyed["job_id"], again["job_id"]);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submit_envelope_takes_only_type_v_and_job() -> Result<()> {
    let fleet = TestFleet::start("envelope").await?;
    let extra = serde_json::to_vec(&json!({"type": "submit", "v": 1,
        "job": job_of(1, &["true"], json!({})), "priority": 5}))?;
    let refused = fleet.submit_amqp(&extra, None).await?;
    assert_eq!(refused["accepted"], false, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("priority")),
        "{refused}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_too_large_for_a_message_is_refused_at_submission() -> Result<()> {
    let fleet = TestFleet::start("toolarge").await?;
    let limit = fleet_shared::proto::MAX_MESSAGE_BYTES;
    let big = "x".repeat(limit);
    let (status, body) = fleet
        .post_job(&job_of(1, &["echo", &big], json!({})), None)
        .await?;
    assert_eq!((status, field(&body)), (400, "tasks[0].argv"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&limit.to_string())),
        "the limit is named: {body}"
    );
    assert_eq!(fleet.count("SELECT count(*) FROM jobs").await?, 0);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_the_json_error() -> Result<()> {
    let fleet = TestFleet::start("routes").await?;
    let (status, body) = fleet.call(Method::GET, "/x", None).await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body,
        json!({"error": {"code": "not_found", "message": "no such route: GET /x", "field": null}})
    );
    let (status, body) = fleet.call(Method::DELETE, "/v1/jobs", None).await?;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // A health server (nothing behind it need work).
    let db = free_addr()?;
    let dispatcher = fleet.spawn_process(
        DISPATCHER_BIN,
        "dispatcher",
        &[(
            "FLEET_DATABASE__URL",
            format!("postgres://postgres@{db}/fleet"),
        )],
    )?;
    let (status, text) = fleet_tests::wait_for(
        "the dispatcher's health server",
        std::time::Duration::from_secs(30),
        || async { Ok(dispatcher.get("/nope").await.ok()) },
    )
    .await?;
    assert_eq!(status, 404, "{text}");
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(
        body["error"]["message"], "no such route: GET /nope",
        "{body}"
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}/healthz", dispatcher.addr))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 405);
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().map(str::to_owned));
    assert!(
        matches!(&allow, Some(Ok(a)) if a.contains("GET")),
        "the methods it takes: {allow:?}"
    );
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    dispatcher.kill().await?;
    fleet.shutdown().await
}
