//! Webhook delivery: every `webhooks.poll_ms`, queue a delivery for each new event and
//! each webhook that wants it (the event log's fan-out), then claim the due deliveries
//! and POST each, signed, in a task of its own. At least once: a delivery is deleted only
//! after a 2xx answer; a failure waits its backoff and is tried again, up to
//! `webhooks.max_tries`. A receiver that does not answer holds up only its own
//! deliveries (at most `webhooks.per_url` in flight to one URL, each bounded by
//! `webhooks.timeout_secs`); nothing here is on the path of results or dispatch.

use std::sync::Arc;
use std::time::Duration;

use fleet_shared::amqp::Backoff;
use fleet_shared::config::WebhooksConfig;
use fleet_shared::db::webhooks::{self, Delivery, Outcome};
use fleet_shared::db::{events, DbError, Pool};
use fleet_shared::event::{self, Event};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::LoopError;

pub async fn run(pool: Pool, cfg: WebhooksConfig, schema: String, token: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .connect_timeout(Duration::from_secs(cfg.timeout_secs.min(5)))
        // A receiver answers for itself: a redirect is not followed (it would resend a
        // signed body to wherever it points).
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fleet-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: no HTTP client");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(cfg.concurrency as usize));
    // A delivery that ended frees a slot (and maybe its receiver's turn): look again.
    let ended = Arc::new(tokio::sync::Notify::new());
    let poll = Duration::from_millis(cfg.poll_ms);
    let deadline = Duration::from_secs(30);
    let mut backoff = Backoff::default();
    loop {
        let look = async {
            // Bounded, so that a backlog of events never keeps due retries waiting.
            events::fan_out(&pool, &schema, 20).await?;
            let free = slots.available_permits() as i64;
            if free == 0 {
                return Ok::<_, LoopError>(Vec::new());
            }
            let mut client = pool.get().await.map_err(DbError::from)?;
            // The lease outlasts the POST's own deadline, so a delivery in flight is
            // not claimed twice.
            let lease = (cfg.timeout_secs * 2 + 5) as f64;
            let claimed =
                webhooks::claim(&mut client, &schema, free, cfg.per_url.into(), lease).await?;
            let ids: Vec<i64> = claimed.iter().map(|d| d.event_id).collect();
            let evs = webhooks::events_of(&client, &ids).await?;
            Ok(claimed
                .into_iter()
                .map(|d| {
                    let ev = evs.get(&d.event_id).cloned();
                    (d, ev)
                })
                .collect())
        };
        let looked = tokio::select! {
            _ = token.cancelled() => return,
            r = tokio::time::timeout(deadline, look) => r.unwrap_or(Err(LoopError::Deadline(deadline))),
        };
        match looked {
            Ok(claimed) => {
                backoff = Backoff::default();
                for (d, ev) in claimed {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    let (http, pool, cfg) = (http.clone(), pool.clone(), cfg.clone());
                    let ended = ended.clone();
                    tokio::spawn(async move {
                        let outcome = deliver(&http, &cfg, &d, ev.as_ref()).await;
                        record(&pool, d, outcome).await;
                        drop(permit);
                        ended.notify_one();
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: looking for deliveries failed; retrying");
                if !backoff.wait(&token).await {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ended.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// POSTs one event; how it went.
async fn deliver(
    http: &reqwest::Client,
    cfg: &WebhooksConfig,
    d: &Delivery,
    ev: Option<&Event>,
) -> Outcome {
    let Some(ev) = ev else {
        return Outcome::Dead("the event is no longer kept".into());
    };
    let body = match serde_json::to_vec(ev) {
        Ok(b) => b,
        Err(e) => return Outcome::Dead(format!("encoding the event: {e}")),
    };
    let sent = http
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            event::SIGNATURE_HEADER,
            event::sign(d.secret.as_bytes(), &body),
        )
        .header(event::EVENT_ID_HEADER, ev.id.to_string())
        .header(event::EVENT_KIND_HEADER, ev.kind.as_str())
        .body(body)
        .send()
        .await;
    let error = match sent {
        Ok(r) if r.status().is_success() => {
            metrics::counter!("fleet_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            return Outcome::Delivered;
        }
        Ok(r) => format!("the receiver answered {}", r.status()),
        Err(e) if e.is_timeout() => format!("no answer within {} s", cfg.timeout_secs),
        Err(e) => format!("could not reach the receiver: {}", error_chain(&e)),
    };
    metrics::counter!("fleet_webhook_deliveries_total", "outcome" => "failed").increment(1);
    let tries = u32::try_from(d.tries).unwrap_or(u32::MAX);
    if tries >= cfg.max_tries {
        metrics::counter!("fleet_webhook_given_up_total").increment(1);
        tracing::warn!(webhook = %d.webhook_id, event_id = d.event_id, tries, error = %error,
            "webhook delivery given up");
        return Outcome::Dead(format!("{error} (given up after {tries} tries)"));
    }
    let wait = cfg.backoff(tries);
    tracing::info!(webhook = %d.webhook_id, event_id = d.event_id, tries, error = %error,
        "webhook delivery failed; tried again in {wait:?}");
    let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    Outcome::Retry(at, error)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Records the outcome, trying again a few times: a delivery whose outcome is lost is
/// sent again once its lease runs out (at least once, never lost).
async fn record(pool: &Pool, d: Delivery, outcome: Outcome) {
    let done = [(d, outcome)];
    for wait in [100, 500, 2_000] {
        let write = async {
            let client = pool.get().await.map_err(DbError::from)?;
            webhooks::record(&client, &done).await
        };
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "recording a webhook delivery failed"),
            Err(_) => tracing::warn!("recording a webhook delivery timed out"),
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
