//! HTTP client for the Fleet API: every call has a deadline, answers come back as the JSON
//! text the server sent (so `-o json` can print it untouched) and failures as `CliError`s.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use fleet_core::api::ErrorResponse;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::RequestBuilder;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::CliError;

/// How much of a non-JSON error body is worth showing: enough to recognise a proxy's
/// error page, not a screenful of HTML.
const BODY_SNIPPET_CHARS: usize = 200;

pub struct Client {
    http: reqwest::Client,
    /// For answers that go on (Server-Sent Events): a deadline per read, not per call.
    streaming: reqwest::Client,
    base: String,
    timeout: Duration,
}

/// The longest silence a followed stream may keep (the server sends a keep-alive every
/// 15 s).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

impl Client {
    /// `base` is a validated `http://host[:port][/prefix]` without a trailing slash.
    /// `ca_file`: the only certificate authorities trusted over https (else the
    /// system's roots).
    pub fn new(
        base: &str,
        token: Option<&str>,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, CliError> {
        // reqwest speaks TLS through rustls, with ring as its provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = match ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the CA file {}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{}: not PEM certificates", path.display()))?;
                if certs.is_empty() {
                    return Err(anyhow!("{}: holds no PEM certificate", path.display()).into());
                }
                Some(certs)
            }
        };
        let with_roots = |b: reqwest::ClientBuilder| match &roots {
            Some(certs) => b.tls_certs_only(certs.clone()),
            None => b,
        };
        let mut headers = HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the token (--token / FLEET_TOKEN) holds characters that cannot go in an HTTP header"))?;
            // Keeps the token out of debug output and lets HTTP/2 avoid indexing it.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = with_roots(reqwest::Client::builder())
            .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers.clone())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("could not set up the HTTP client")?;
        let streaming = with_roots(reqwest::Client::builder())
            .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .read_timeout(STREAM_READ_TIMEOUT)
            .connect_timeout(timeout)
            .build()
            .context("could not set up the HTTP client")?;
        Ok(Client {
            http,
            streaming,
            base: base.to_string(),
            timeout,
        })
    }

    pub async fn submit(
        &self,
        job: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, CliError> {
        let mut request = self.http.post(self.url("/v1/jobs")).json(job);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    pub async fn job(&self, job_id: &Uuid) -> Result<Answer, CliError> {
        self.send(self.http.get(self.url(&format!("/v1/jobs/{job_id}"))))
            .await
    }

    pub async fn results(&self, job_id: &Uuid) -> Result<Answer, CliError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/jobs/{job_id}/results"))),
        )
        .await
    }

    /// A GET with a query string (its values encoded).
    pub async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        self.send(self.http.get(self.url(path)).query(query)).await
    }

    pub async fn executors(&self) -> Result<Answer, CliError> {
        self.send(self.http.get(self.url("/v1/executors"))).await
    }

    /// A GET whose answer goes on (Server-Sent Events), resuming after `last_event_id`;
    /// an error answer is read as any other.
    pub async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, CliError> {
        let mut request = self.streaming.get(self.url(path)).query(query);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        // Read the error as send() would.
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if let Ok(ErrorResponse { error }) = serde_json::from_slice::<ErrorResponse>(&body) {
            return Err(CliError::Api {
                message: error.message,
                field: error.field,
            });
        }
        Err(CliError::Http {
            status: status.as_u16(),
            body: snippet(&String::from_utf8_lossy(&body)),
        })
    }

    /// A call of the API with one of its request bodies (`fleet_core::api`).
    pub async fn send_body<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<Answer, CliError> {
        self.send(self.http.request(method, self.url(path)).json(body))
            .await
    }

    /// Any call of the API without a body (with one: [`Client::send_body`]). An empty
    /// success (204) reads as `{}`.
    pub async fn call(&self, method: reqwest::Method, path: &str) -> Result<Answer, CliError> {
        self.send(self.http.request(method, self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: RequestBuilder) -> Result<Answer, CliError> {
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        // The body is read under the same deadline as the request (reqwest's timeout
        // covers both), so a server that stalls mid-answer still ends in a Timeout.
        let body = response
            .bytes()
            .await
            .map_err(|err| self.transport_error(&err))?;

        if status.is_success() && body.is_empty() {
            return Ok(Answer("{}".into()));
        }
        if status.is_success() {
            // Checked once here so every later view can rely on well-formed JSON; a valid
            // JSON document is valid UTF-8, so the conversion cannot lose anything.
            return match serde_json::from_slice::<IgnoredAny>(&body) {
                Ok(_) => Ok(Answer(String::from_utf8_lossy(&body).into_owned())),
                Err(err) => Err(CliError::Other(anyhow!(
                    "the server at {} answered HTTP {status} with something that is not JSON ({err}); \
                     is FLEET_ADDR pointing at the Fleet submitter?",
                    self.base
                ))),
            };
        }
        if let Ok(ErrorResponse { error }) = serde_json::from_slice::<ErrorResponse>(&body) {
            let message = match status.as_u16() {
                401 => format!(
                    "{}\nhint: set FLEET_TOKEN (or --token) to a token from your Fleet administrator",
                    error.message
                ),
                _ => error.message,
            };
            return Err(CliError::Api {
                message,
                field: error.field,
            });
        }
        Err(CliError::Http {
            status: status.as_u16(),
            body: snippet(&String::from_utf8_lossy(&body)),
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> CliError {
        if err.is_timeout() {
            CliError::Timeout {
                addr: self.base.clone(),
                after: self.timeout,
            }
        } else if err.is_connect() {
            CliError::Unreachable {
                addr: self.base.clone(),
                reason: root_cause(err),
            }
        } else {
            CliError::Other(anyhow!(
                "request to the Fleet API at {} failed: {}",
                self.base,
                root_cause(err)
            ))
        }
    }
}

/// A successful answer: JSON text exactly as the server sent it.
#[derive(Debug, Clone)]
pub struct Answer(String);

impl Answer {
    pub fn text(&self) -> &str {
        &self.0
    }

    /// Reads the answer into the shape a text view needs; `what` names it in the error.
    pub fn decode<T: DeserializeOwned>(&self, what: &str) -> Result<T, CliError> {
        serde_json::from_str(&self.0).map_err(|err| {
            CliError::Other(anyhow!(
                "unexpected {what} from the server ({err}); try -o json to see it as sent"
            ))
        })
    }
}

/// reqwest's own message ("error sending request for url …") says nothing useful; the
/// innermost cause ("Connection refused", "failed to lookup address") does.
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    let mut out: String = body.chars().take(BODY_SNIPPET_CHARS).collect();
    if out.len() < body.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_are_cut() {
        assert_eq!(snippet("  short \n"), "short");
        let long = "x".repeat(BODY_SNIPPET_CHARS + 10);
        assert_eq!(snippet(&long).chars().count(), BODY_SNIPPET_CHARS + 1);
    }
}
