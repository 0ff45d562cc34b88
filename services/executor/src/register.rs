//! Registration: with a one-time join token, or the fleet's executor bootstrap secret,
//! the executor asks the submitter for a broker user of its own, keeps it in
//! `executor.credentials_file`, and connects as that user from then on (an id registers
//! once; the saved credential serves restarts).

use std::path::Path;
use std::time::Duration;

use fleet_shared::config::Config;
use fleet_shared::group::GroupName;
use fleet_shared::id::ExecutorId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What registration hands out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub executor_id: ExecutorId,
    pub broker_user: String,
    pub broker_password: String,
    pub groups: Vec<GroupName>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("registration refused ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("credentials file {path}: {message}")]
    File { path: String, message: String },
    #[error("the saved credential is for executor {found}, not {expected}")]
    OtherExecutor { found: String, expected: String },
    #[error("shut down before registering")]
    Cancelled,
}

/// The credential to connect with: the saved one, else one obtained with the join
/// token, else `None` (connect with `amqp.url` as given).
pub async fn credential(
    cfg: &Config,
    id: &ExecutorId,
    groups: &[GroupName],
    token: &CancellationToken,
) -> Result<Option<Credential>, RegisterError> {
    let file = cfg.executor.credentials_file.as_deref();
    if let Some(path) = file.filter(|p| Path::new(p).exists()) {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let c: Credential = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
        if &c.executor_id != id {
            return Err(RegisterError::OtherExecutor {
                found: c.executor_id.to_string(),
                expected: id.to_string(),
            });
        }
        tracing::info!(path, "using the saved broker credential");
        return Ok(Some(c));
    }
    let proof = match (&cfg.executor.join_token, &cfg.executor.bootstrap_secret) {
        (Some(join), _) => serde_json::json!({"join_token": join}),
        (None, Some(secret)) => serde_json::json!({"bootstrap_secret": secret}),
        (None, None) => return Ok(None),
    };
    let c = register(cfg, id, groups, proof, token).await?;
    if let Some(path) = file {
        save(path, &c)?;
    }
    Ok(Some(c))
}

fn file_error(path: &str, e: impl std::fmt::Display) -> RegisterError {
    RegisterError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Written readable by its owner only: it holds a password.
fn save(path: &str, c: &Credential) -> Result<(), RegisterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_string_pretty(c).map_err(|e| file_error(path, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| file_error(path, e))
}

/// Registers with `proof` (`{"join_token"}` or `{"bootstrap_secret"}`), retrying with
/// backoff while the submitter is unreachable or unavailable; a refusal (bad or used
/// token, a group the token does not allow) is final.
async fn register(
    cfg: &Config,
    id: &ExecutorId,
    groups: &[GroupName],
    mut proof: serde_json::Value,
    token: &CancellationToken,
) -> Result<Credential, RegisterError> {
    let url = format!(
        "{}/v1/executors/register",
        cfg.executor.register_url.trim_end_matches('/')
    );
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = &cfg.executor.ca_file {
        let tls =
            fleet_shared::tls::client_config(Some(ca)).map_err(|e| RegisterError::Refused {
                status: 0,
                body: e.to_string(),
            })?;
        http = http.tls_backend_preconfigured(tls);
    }
    let http = http.build().map_err(|e| RegisterError::Refused {
        status: 0,
        body: e.to_string(),
    })?;
    proof["executor_id"] = serde_json::json!(id);
    proof["groups"] = serde_json::json!(groups);
    let body = proof;
    let mut backoff = fleet_shared::amqp::Backoff::default();
    loop {
        match http.post(&url).json(&body).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<Credential>().await {
                Ok(c) => {
                    tracing::info!(broker_user = %c.broker_user, "registered");
                    return Ok(c);
                }
                Err(e) => tracing::warn!(error = %e, "registration answer unreadable; retrying"),
            },
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                return Err(RegisterError::Refused { status, body });
            }
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), "registration unavailable; retrying")
            }
            Err(e) => {
                tracing::warn!(error = %e, %url, "cannot reach the submitter to register; retrying")
            }
        }
        if !backoff.wait(token).await {
            return Err(RegisterError::Cancelled);
        }
    }
}

/// `amqp.url` with the executor's own user and password in it.
pub fn url_with(amqp_url: &str, c: &Credential) -> String {
    let Some((scheme, rest)) = amqp_url.split_once("://") else {
        return amqp_url.to_owned();
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{}:{}@{host}", c.broker_user, c.broker_password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_replaces_the_user_in_the_broker_url() {
        let c = Credential {
            executor_id: ExecutorId::parse("e-1").expect("id"),
            broker_user: "fleet-exec-e-1".into(),
            broker_password: "s3cret".into(),
            groups: vec![],
        };
        assert_eq!(
            url_with("amqp://guest:guest@127.0.0.1:5672/%2f", &c),
            "amqp://fleet-exec-e-1:s3cret@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            url_with("amqp://rabbit:5672/%2f", &c),
            "amqp://fleet-exec-e-1:s3cret@rabbit:5672/%2f"
        );
    }
}
