//! Executors: `GET /v1/executors`, `GET /v1/executors/{id}`, cancelling an attempt one
//! holds, join tokens (`POST /v1/join-tokens`) and registration (`POST
//! /v1/executors/register`, `POST /v1/executors/{id}/revoke`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::group::GroupName;
use crate::id::{ExecutorId, JobId, TaskId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecutorView {
    pub executor_id: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capacity: i32,
    pub running: i32,
    pub queued: i32,
    pub draining: bool,
    pub last_info_at: DateTime<Utc>,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecutorsView {
    pub executors: Vec<ExecutorView>,
}

/// One executor: what `GET /v1/executors` lists, and what it holds and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecutorDetail {
    #[serde(flatten)]
    pub executor: ExecutorView,
    /// When the dispatcher first heard of it (since it was last forgotten).
    pub first_seen_at: DateTime<Utc>,
    /// Groups an administrator put it in, besides those it declares (`groups`).
    pub assigned_groups: Vec<String>,
    /// Its registration with a join token; `None` if it never registered.
    #[schema(required = true)]
    pub registration: Option<RegistrationView>,
    /// An administrator's drain, kept until resumed; `None` if not drained so.
    #[schema(required = true)]
    pub drain: Option<DrainView>,
    /// The attempts it holds now (assigned, running, or reported finished and not yet
    /// recorded), oldest first.
    pub attempts: Vec<HeldAttemptView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RegistrationView {
    pub registered_at: DateTime<Utc>,
    /// The groups it registered with: what it may claim.
    pub groups: Vec<String>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DrainView {
    pub drained_at: DateTime<Utc>,
    pub drained_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct HeldAttemptView {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub attempt: i32,
    /// `assigned`, `running` or `reported`.
    pub state: String,
    pub assigned_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
}

/// `POST /v1/executors/{id}/cancel`: one attempt it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelAttemptBody {
    pub task_id: TaskId,
    pub attempt: i32,
}

/// `POST /v1/join-tokens` (admin): a one-time token an executor registers with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinTokenBody {
    /// Groups the executor may declare (empty: any).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A join token just made: shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewJoinToken {
    pub token_id: uuid::Uuid,
    pub token: String,
    pub groups: Vec<GroupName>,
    pub expires_at: DateTime<Utc>,
}

/// `POST /v1/executors/register`: authenticated by the join token in the body, or by
/// the fleet's executor bootstrap secret (one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_secret: Option<String>,
    pub executor_id: String,
    /// Groups it declares (default: `default`).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The answer to a registration: the executor's own broker user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub amqp_prefix: String,
    pub broker_password: String,
    pub broker_user: String,
    pub executor_id: ExecutorId,
    pub groups: Vec<GroupName>,
}

/// The answer to a control message sent (`POST /v1/executors/{id}/drain|resume|cancel`,
/// `POST /v1/groups/{name}/drain|resume`): to one executor or to a group's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlSent {
    /// `drain`, `resume` or `cancel`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    pub sent: bool,
}

/// The answer to `POST /v1/executors/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub executor_id: ExecutorId,
    pub revoked: bool,
}
