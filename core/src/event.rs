//! Events: what Fleet announces, in one shape for the AMQP events exchange, `GET
//! /v1/events` and webhooks (docs/events.md documents each kind with an example). Pure:
//! the kinds, the shape, the order of what a settled batch announces, and the webhook
//! signature.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{JobId, TaskId};

/// Every kind of event, as its name (also the AMQP routing key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Kind {
    #[serde(rename = "job.accepted")]
    JobAccepted,
    #[serde(rename = "task.assigned")]
    TaskAssigned,
    #[serde(rename = "task.started")]
    TaskStarted,
    #[serde(rename = "task.retrying")]
    TaskRetrying,
    #[serde(rename = "task.finished")]
    TaskFinished,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    #[serde(rename = "executor.joined")]
    ExecutorJoined,
    #[serde(rename = "executor.lost")]
    ExecutorLost,
    #[serde(rename = "executor.drained")]
    ExecutorDrained,
    #[serde(rename = "executor.revoked")]
    ExecutorRevoked,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::JobAccepted,
        Kind::TaskAssigned,
        Kind::TaskStarted,
        Kind::TaskRetrying,
        Kind::TaskFinished,
        Kind::JobSucceeded,
        Kind::JobFailed,
        Kind::JobCancelled,
        Kind::ExecutorJoined,
        Kind::ExecutorLost,
        Kind::ExecutorDrained,
        Kind::ExecutorRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::JobAccepted => "job.accepted",
            Kind::TaskAssigned => "task.assigned",
            Kind::TaskStarted => "task.started",
            Kind::TaskRetrying => "task.retrying",
            Kind::TaskFinished => "task.finished",
            Kind::JobSucceeded => "job.succeeded",
            Kind::JobFailed => "job.failed",
            Kind::JobCancelled => "job.cancelled",
            Kind::ExecutorJoined => "executor.joined",
            Kind::ExecutorLost => "executor.lost",
            Kind::ExecutorDrained => "executor.drained",
            Kind::ExecutorRevoked => "executor.revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Events of a job (and its tasks): what a job's owner may see and a job's `notify`
    /// may ask for. Executor events are the fleet's.
    pub fn of_job(self) -> bool {
        !self.as_str().starts_with("executor.")
    }

    /// The kinds a pattern names: a kind, or `job.*`, `task.*`, `executor.*`, `*`.
    pub fn matching(pattern: &str) -> Vec<Kind> {
        match pattern.strip_suffix('*') {
            Some(prefix) => Kind::ALL
                .into_iter()
                .filter(|k| k.as_str().starts_with(prefix))
                .collect(),
            None => Kind::parse(pattern).into_iter().collect(),
        }
    }

    /// The kinds of a comma list of names or patterns; the first unknown one is the error.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Kind>, String> {
        let mut out = Vec::new();
        for item in items {
            let item = item.trim();
            let kinds = Kind::matching(item);
            if kinds.is_empty() {
                return Err(format!(
                    "unknown event kind {item:?}; known: {}, or job.*, task.*, executor.*",
                    Kind::ALL.map(Kind::as_str).join(", ")
                ));
            }
            for k in kinds {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event as announced: the AMQP body, the SSE `data` and the webhook body. Fields a
/// kind does not have are left out (docs/events.md lists which each kind carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Unique and increasing in the order events are read: the key to deduplicate by.
    pub id: i64,
    pub kind: Kind,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The task's group (task events), or the executor's groups joined by commas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The task's or the job's new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// How the attempt ended (task.finished, task.retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The attempt's run time, start to end, as the executor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// When a retrying task is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

/// An event to write: what the writer knows; the reader joins in the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: Kind,
    pub job_id: Option<JobId>,
    pub task_id: Option<TaskId>,
    pub attempt: Option<i32>,
    pub executor_id: Option<String>,
    /// The new state, or the attempt's outcome for task.retrying.
    pub state: Option<String>,
    /// For task.retrying: how long until it is tried again.
    pub retry_in: Option<std::time::Duration>,
}

impl NewEvent {
    pub fn job(kind: Kind, job_id: JobId, state: Option<&str>) -> Self {
        Self {
            kind,
            job_id: Some(job_id),
            task_id: None,
            attempt: None,
            executor_id: None,
            state: state.map(str::to_owned),
            retry_in: None,
        }
    }

    pub fn task(kind: Kind, job_id: JobId, task_id: TaskId, attempt: Option<i32>) -> Self {
        Self {
            kind,
            job_id: Some(job_id),
            task_id: Some(task_id),
            attempt,
            executor_id: None,
            state: None,
            retry_in: None,
        }
    }

    pub fn executor(kind: Kind, executor_id: &str) -> Self {
        Self {
            kind,
            job_id: None,
            task_id: None,
            attempt: None,
            executor_id: Some(executor_id.to_owned()),
            state: None,
            retry_in: None,
        }
    }

    pub fn with_state(mut self, state: &str) -> Self {
        self.state = Some(state.to_owned());
        self
    }
}

/// The header carrying a webhook body's signature: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the exact body under the webhook's secret.
pub const SIGNATURE_HEADER: &str = "Fleet-Signature";
/// The header carrying the event's id (also in the body), to deduplicate by.
pub const EVENT_ID_HEADER: &str = "Fleet-Event-Id";
/// The header carrying the event's kind.
pub const EVENT_KIND_HEADER: &str = "Fleet-Event";

/// The value of [`SIGNATURE_HEADER`] for this body.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names_and_serde() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).expect("kind");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(Kind::parse("job.started"), None);
    }

    #[test]
    fn patterns_name_families_of_kinds() {
        assert_eq!(
            Kind::matching("job.*"),
            vec![
                Kind::JobAccepted,
                Kind::JobSucceeded,
                Kind::JobFailed,
                Kind::JobCancelled
            ]
        );
        assert_eq!(Kind::matching("*").len(), 12);
        assert_eq!(
            Kind::parse_list(["task.finished", " job.failed", "task.finished"]),
            Ok(vec![Kind::TaskFinished, Kind::JobFailed])
        );
        let err = Kind::parse_list(["task.done"]).expect_err("unknown");
        assert!(err.contains("\"task.done\""), "{err}");
        assert!(Kind::TaskRetrying.of_job() && !Kind::ExecutorLost.of_job());
    }

    #[test]
    fn events_leave_out_what_their_kind_does_not_have() {
        let ev = Event {
            id: 7,
            kind: Kind::JobAccepted,
            at: DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            job_id: None,
            job_name: Some("nightly".into()),
            task_id: None,
            task: None,
            group: None,
            attempt: None,
            executor: None,
            state: None,
            outcome: None,
            exit_code: None,
            signal: None,
            duration_ms: None,
            retry_at: None,
        };
        let json = serde_json::to_value(&ev).expect("event");
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "kind": "job.accepted",
                               "at": "2026-12-01T12:00:00Z", "job_name": "nightly"})
        );
        let back: Event = serde_json::from_value(json).expect("parse");
        assert_eq!(back, ev);
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
