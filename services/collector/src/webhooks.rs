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
use fleet_shared::config::{ConfigError, WebhooksConfig};
use fleet_shared::db::webhooks::{self, Delivery, Outcome};
use fleet_shared::db::{events, DbError, Pool};
use fleet_shared::event::{self, Event};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::LoopError;

/// The client deliveries are POSTed with. An `https://` receiver's certificate must
/// chain to the system's roots or to a CA of `webhooks.ca_file`; that file is read
/// here, and one that cannot be read or holds no certificate is a configuration error
/// (the collector does not start), not a silent outage of every https webhook.
pub fn client(cfg: &WebhooksConfig) -> Result<reqwest::Client, ConfigError> {
    // reqwest speaks TLS through rustls, with ring (installed once per process).
    fleet_shared::tls::install_provider();
    let builder = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.min(5)))
            // A receiver answers for itself: a redirect is not followed (it would resend
            // a signed body to wherever it points).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleet-webhooks/", env!("CARGO_PKG_VERSION")))
    };
    let ca_error = |path: &str, message: &dyn std::fmt::Display| ConfigError::Invalid {
        key: "webhooks.ca_file",
        message: format!("{path}: {message}"),
    };
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| ca_error(path, &e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(path, &fleet_shared::error::with_causes(&e)))?;
        if certs.is_empty() {
            return Err(ca_error(path, &"holds no PEM certificate"));
        }
        return builder()
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| ca_error(path, &fleet_shared::error::with_causes(&e)));
    }
    match builder().build() {
        Ok(c) => Ok(c),
        // The system has no roots (no ca-certificates package): http:// receivers are
        // still served, and https:// ones fail with a certificate error of their own,
        // shown by `fleetctl webhook list`.
        Err(e) => {
            tracing::warn!(error = %fleet_shared::error::with_causes(&e),
                "no system CA certificates: https:// webhooks fail unless webhooks.ca_file is set");
            builder()
                .tls_certs_only([])
                .build()
                .map_err(|e| ConfigError::Invalid {
                    key: "webhooks",
                    message: format!("no HTTP client: {}", fleet_shared::error::with_causes(&e)),
                })
        }
    }
}

pub async fn run(
    pool: Pool,
    http: reqwest::Client,
    cfg: WebhooksConfig,
    schema: String,
    token: CancellationToken,
) {
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
        Err(e) => format!(
            "could not reach the receiver: {}",
            fleet_shared::error::with_causes(&e)
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ca_file(text: Option<&str>) -> (Result<reqwest::Client, ConfigError>, String) {
        let path = std::env::temp_dir().join(format!(
            "fleet-webhooks-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        if let Some(text) = text {
            std::fs::write(&path, text).expect("writing the CA file");
        }
        let cfg = WebhooksConfig {
            ca_file: Some(path.display().to_string()),
            ..WebhooksConfig::default()
        };
        let made = client(&cfg);
        let _ = std::fs::remove_file(&path);
        (made, path.display().to_string())
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_a_bad_setting() {
        for (text, says) in [
            (None, "No such file"),
            (Some(""), "holds no PEM certificate"),
            (Some("not a certificate\n"), "holds no PEM certificate"),
        ] {
            let (made, path) = with_ca_file(text);
            match made {
                Err(ConfigError::Invalid { key, message }) => {
                    assert_eq!(key, "webhooks.ca_file", "{text:?}");
                    assert!(message.contains(&path), "{text:?}: {message}");
                    assert!(message.contains(says), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn without_a_ca_file_the_client_is_made() {
        client(&WebhooksConfig::default()).expect("a client on the system's roots");
    }
}
