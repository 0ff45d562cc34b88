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

async fn token(fleet: &TestFleet, name: &str, role: &str) -> Result<(String, String)> {
    let (status, body) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name, "role": role})),
        )
        .await?;
    anyhow::ensure!(status == 201, "{body}");
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    Ok((field("token"), field("token_id")))
}

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
    let (reader, _) = token(&fleet, "watcher", "reader").await?;
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
    let (ci, ci_id) = token(&fleet, "ci", "submitter").await?;
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
    let (other, _) = token(&fleet, "other", "submitter").await?;
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
