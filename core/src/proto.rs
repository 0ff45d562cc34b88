//! The wire contract: every message is a JSON object with a `type` tag and a `v` version.
//! Decoding is defensive: an oversize body, malformed JSON, an unknown type or a newer
//! version is an error value that the consumer dead-letters, never a panic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::group::GroupName;
use crate::id::{ExecutorId, JobId, TaskId};
use crate::job::JobSpec;

/// The largest message a consumer will parse. Results carry capped output, so this
/// bounds memory per delivery without refusing legitimate traffic.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The deepest nesting of arrays and objects a consumer will parse (the message's own
/// object is the first level). Checked before parsing, so that no part of a message, an
/// ignored unknown field included, can be nested deeper.
pub const MAX_NESTING: usize = 128;

/// The AMQP header of a [`Submit`] that carries the API token it is submitted with, as
/// HTTP's `Authorization`: `Bearer <token>` (a long string). Dead letters never keep it.
pub const SUBMIT_TOKEN_HEADER: &str = "authorization";

/// A message type on the wire.
pub trait Wire: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    /// The newest version this build writes and understands.
    const V: u32;
    /// Refuse unknown fields (besides `type` and `v`): for messages from outside Fleet
    /// (`submit`), whose unknown fields are a sender's mistake. Fleet's own messages
    /// tolerate them, so that a newer sender's additions do not break an older reader.
    const STRICT: bool = false;
}

/// How deep arrays and objects nest in a JSON text (brackets inside strings are text).
/// Malformed text gets a number too; the parser refuses it afterwards.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unexpected message type {found:?}, expected {expected:?}")]
    UnknownType {
        found: String,
        expected: &'static str,
    },
    #[error("message version {found} of {kind:?} is newer than the supported {supported}")]
    NewerVersion {
        kind: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("invalid field {field}: {message}")]
    Invalid { field: String, message: String },
}

impl DecodeError {
    /// A short, stable reason for dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnknownType { .. } => "unknown_type",
            Self::NewerVersion { .. } => "newer_version",
            Self::Invalid { .. } => "invalid",
        }
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    v: u32,
}

pub fn encode<T: Wire>(msg: &T) -> Vec<u8> {
    let mut value = match serde_json::to_value(msg) {
        Ok(serde_json::Value::Object(map)) => map,
        // Every Wire type is a struct with string keys, so this arm is unreachable in
        // practice; an empty object still carries the head and will be dead-lettered.
        _ => serde_json::Map::new(),
    };
    value.insert("type".into(), T::TYPE.into());
    value.insert("v".into(), T::V.into());
    serde_json::to_vec(&value).unwrap_or_default()
}

pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    // serde_json's recursion limit does not reach the values it skips (unknown fields).
    let depth = nesting_depth(bytes);
    if depth > MAX_NESTING {
        return Err(DecodeError::Malformed(format!(
            "nested {depth} levels deep, more than {MAX_NESTING}"
        )));
    }
    let head: Head =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if head.kind != T::TYPE {
        return Err(DecodeError::UnknownType {
            found: head.kind,
            expected: T::TYPE,
        });
    }
    if head.v > T::V {
        return Err(DecodeError::NewerVersion {
            kind: T::TYPE,
            found: head.v,
            supported: T::V,
        });
    }
    let invalid = |e: serde_path_to_error::Error<serde_json::Error>| {
        let field = e.path().to_string();
        DecodeError::Invalid {
            field,
            message: e.into_inner().to_string(),
        }
    };
    if T::STRICT {
        // The head is not part of the body: take it out, so that a strict body (with
        // `deny_unknown_fields`) refuses everything else it does not know.
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        value.remove("type");
        value.remove("v");
        return serde_path_to_error::deserialize(serde_json::Value::Object(value)).map_err(invalid);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(invalid)
}

/// One attempt an executor holds: received, and maybe started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAttempt {
    pub task_id: TaskId,
    pub attempt: i32,
    pub running: bool,
    /// Its command has ended and its result is being published (not yet confirmed): it
    /// holds no slot any more, so the dispatcher can refill the slot now rather than
    /// after the broker's confirm. Absent (false) from executors before 2026-12.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

/// One attempt, by task and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task_id: TaskId,
    pub attempt: i32,
}

/// Executor -> dispatcher: the heartbeat and the queue-depth report at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub executor_id: ExecutorId,
    pub groups: Vec<GroupName>,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub running: u32,
    pub queued: u32,
    pub in_flight: Vec<HeldAttempt>,
    pub draining: bool,
    pub sent_at: DateTime<Utc>,
    /// Attempts the executor gives back without a result (as it shuts down, or asked by
    /// a `give_back`): it acked their requests and will not run them. `running: false` (never started): the
    /// dispatcher takes the attempt back at once, as if never assigned; `running: true`
    /// (killed at the drain deadline): the attempt is lost at once, not at its lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returned: Vec<HeldAttempt>,
    /// Attempts whose result the executor published (and the broker confirmed) since
    /// its previous INFO: their results are durable on their way to the collector, so
    /// the dispatcher frees their slots and never declares them lost for silence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finished: Vec<AttemptRef>,
}
impl Info {
    /// The INFO of an executor that holds nothing and gives nothing back, sent now.
    pub fn idle(executor_id: ExecutorId, groups: Vec<GroupName>, capacity: u32) -> Self {
        Self {
            executor_id,
            groups,
            labels: BTreeMap::new(),
            capacity,
            running: 0,
            queued: 0,
            in_flight: Vec::new(),
            draining: false,
            sent_at: Utc::now(),
            returned: Vec::new(),
            finished: Vec::new(),
        }
    }
}

impl Wire for Info {
    const TYPE: &'static str = "info";
    const V: u32 = 1;
}

/// Dispatcher -> one executor: run this attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub task_id: TaskId,
    pub attempt: i32,
    pub job_id: JobId,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    pub timeout_secs: u64,
    pub lease_deadline: DateTime<Utc>,
    /// The leadership epoch of the dispatcher that sent it (0: not said). An executor
    /// that has heard of a later epoch (a [`ControlAction::Leader`] or a later request)
    /// gives it back unrun: it comes from a leader that was replaced, frozen between its
    /// commit and this publish, whose attempts the new leader may have handed out again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Wire for Request {
    const TYPE: &'static str = "request";
    const V: u32 = 1;
}

/// Dispatcher -> one executor: several attempts in one message, those one round gave it.
/// The executor takes each as if it had come as a `request`, and acks the message once
/// every attempt in it has let go of it (result confirmed, given back, or recognised as
/// a redelivery); a broker that redelivers it (a reconnect, a restart) hands back only
/// what was not acked, as with single requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    pub requests: Vec<Request>,
}
impl Wire for Requests {
    const TYPE: &'static str = "requests";
    const V: u32 = 1;
}

/// What arrives on an executor's queue: attempts to run (a `request` or `requests`), or
/// a `control` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForExecutor {
    Requests(Vec<Request>),
    Control(ControlAction),
}

pub fn decode_for_executor(bytes: &[u8]) -> Result<ForExecutor, DecodeError> {
    match decode::<Requests>(bytes) {
        Ok(r) if r.requests.is_empty() => Err(DecodeError::Invalid {
            field: "requests".into(),
            message: "no request in the list".into(),
        }),
        Ok(r) => Ok(ForExecutor::Requests(r.requests)),
        Err(DecodeError::UnknownType { found, .. }) if found == Request::TYPE => {
            decode::<Request>(bytes).map(|r| ForExecutor::Requests(vec![r]))
        }
        Err(DecodeError::UnknownType { found, .. }) if found == Control::TYPE => {
            decode::<Control>(bytes).map(|c| ForExecutor::Control(c.action))
        }
        Err(e) => Err(e),
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero or was killed by a signal it did not get from us.
    Failed,
    /// Ran past its timeout; its whole process group was killed.
    TimedOut,
    /// Could not be started (no such command, bad cwd, ...).
    SpawnFailed,
    Cancelled,
    /// Its executor stopped reporting it before its lease ran out (recorded by the dispatcher).
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::SpawnFailed => "spawn_failed",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "timed_out" => Self::TimedOut,
            "spawn_failed" => Self::SpawnFailed,
            "cancelled" => Self::Cancelled,
            "lost" => Self::Lost,
            _ => return None,
        })
    }
}

/// Executor -> collector: one attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: TaskId,
    pub attempt: i32,
    pub job_id: JobId,
    pub executor_id: ExecutorId,
    pub outcome: Outcome,
    /// The exit code when the process exited; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, kept apart from the exit code.
    pub signal: Option<i32>,
    /// Why the attempt did not run or was cut short (spawn error, timeout).
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}
impl Wire for TaskResult {
    const TYPE: &'static str = "result";
    const V: u32 = 1;
}

/// Executor -> collector: the outcomes of several attempts, from one executor, in one
/// message. An executor sends the results that ended while its previous publish awaited
/// its confirm together, so under load a busy executor costs the broker (and the
/// collector) a fraction of a message per attempt. Each result is recorded, or refused
/// and dead-lettered, on its own, exactly as if it had come as a `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    pub results: Vec<TaskResult>,
}
impl Wire for Results {
    const TYPE: &'static str = "results";
    const V: u32 = 1;
}

/// What a message on the results queue holds: one result (`result`, as older executors
/// send) or several (`results`).
pub fn decode_results(bytes: &[u8]) -> Result<Vec<TaskResult>, DecodeError> {
    match decode::<Results>(bytes) {
        Ok(r) if r.results.is_empty() => Err(DecodeError::Invalid {
            field: "results".into(),
            message: "no result in the list".into(),
        }),
        Ok(r) => Ok(r.results),
        Err(DecodeError::UnknownType { found, .. }) if found == TaskResult::TYPE => {
            decode::<TaskResult>(bytes).map(|r| vec![r])
        }
        Err(e) => Err(e),
    }
}

/// Executor -> collector: a chunk of live output of one attempt's stdout or stderr.
/// `seq` counts the chunks of that attempt and stream from 0 (the collector stores each
/// once, on (task, attempt, stream, seq)); `offset` is where `data` starts in the stream,
/// in bytes; `n` orders the chunks of both streams of the attempt as they were written.
/// `truncated`: the attempt reached its live output cap; this chunk is the marker, and
/// nothing more of the attempt follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub task_id: TaskId,
    pub attempt: i32,
    pub executor_id: ExecutorId,
    pub seq: u64,
    pub stream: String,
    pub data: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub n: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Executor -> collector: the chunks of live output one flush gathered (every 100 ms,
/// or when a stream has 16 KiB waiting), of any of its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub chunks: Vec<LogChunk>,
}
impl Wire for Logs {
    const TYPE: &'static str = "logs";
    const V: u32 = 1;
}

/// What a message on the logs queue holds: one chunk (`log`) or several (`logs`).
pub fn decode_logs(bytes: &[u8]) -> Result<Vec<LogChunk>, DecodeError> {
    match decode::<Logs>(bytes) {
        Ok(l) => Ok(l.chunks),
        Err(DecodeError::UnknownType { found, .. }) if found == LogChunk::TYPE => {
            decode::<LogChunk>(bytes).map(|c| vec![c])
        }
        Err(e) => Err(e),
    }
}

impl Wire for LogChunk {
    const TYPE: &'static str = "log";
    const V: u32 = 1;
}

/// Operators -> executors of a group, or one executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ControlAction {
    Cancel {
        task_id: TaskId,
        attempt: i32,
    },
    Drain,
    Resume,
    /// Dispatcher -> executor: if this attempt has not started, give it back (ack it, list
    /// it in INFO `returned`), so that an idle slot elsewhere runs it; if it has, ignore.
    GiveBack {
        task_id: TaskId,
        attempt: i32,
    },
    /// Dispatcher -> every executor (`control.all`), when it starts leading and before
    /// it may sweep: requests of earlier epochs that come after this are stale (their
    /// sender was replaced, and its attempts may be lost and running elsewhere).
    Leader {
        epoch: i64,
    },
}

impl ControlAction {
    /// Its `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cancel { .. } => "cancel",
            Self::Drain => "drain",
            Self::Resume => "resume",
            Self::GiveBack { .. } => "give_back",
            Self::Leader { .. } => "leader",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    #[serde(flatten)]
    pub action: ControlAction,
}
impl Wire for Control {
    const TYPE: &'static str = "control";
    const V: u32 = 1;
}

/// Other systems -> submitter: a job, answered on `reply_to` with a [`SubmitReply`].
/// The AMQP `message_id` is the idempotency key (per API token), and the header
/// [`SUBMIT_TOKEN_HEADER`] carries the submitter's API token. Unknown fields are
/// refused, as by `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    pub job: JobSpec,
}
impl Wire for Submit {
    const TYPE: &'static str = "submit";
    const V: u32 = 1;
    const STRICT: bool = true;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub accepted: bool,
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// False when the idempotency key named a job that the same API token submitted
    /// before (keys are per token).
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub error: Option<crate::error::ErrorBody>,
}
impl Wire for SubmitReply {
    const TYPE: &'static str = "submit_reply";
    const V: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_action_is_named_by_its_tag() -> Result<(), serde_json::Error> {
        let id = TaskId::new();
        for action in [
            ControlAction::Cancel {
                task_id: id,
                attempt: 1,
            },
            ControlAction::Drain,
            ControlAction::Resume,
            ControlAction::GiveBack {
                task_id: id,
                attempt: 1,
            },
            ControlAction::Leader { epoch: 3 },
        ] {
            assert_eq!(serde_json::to_value(&action)?["action"], action.name());
        }
        Ok(())
    }

    fn info() -> Info {
        Info {
            executor_id: ExecutorId::parse("cpu-1").expect("valid"),
            groups: vec![GroupName::parse("cpu").expect("valid")],
            labels: BTreeMap::from([("gpu".into(), "yes".into())]),
            capacity: 4,
            running: 1,
            queued: 2,
            in_flight: vec![HeldAttempt {
                task_id: TaskId::new(),
                attempt: 1,
                running: true,
                exited: false,
            }],
            draining: false,
            sent_at: Utc::now(),
            returned: Vec::new(),
            finished: Vec::new(),
        }
    }

    #[test]
    fn messages_round_trip_with_type_and_version() {
        let msg = info();
        let bytes = encode(&msg);
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["type"], "info");
        assert_eq!(value["v"], 1);
        assert_eq!(decode::<Info>(&bytes), Ok(msg));
    }

    #[test]
    fn an_exited_attempt_says_so_and_an_info_without_the_field_still_reads() {
        let mut msg = info();
        let bytes = encode(&msg);
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert!(
            value["in_flight"][0].get("exited").is_none(),
            "written only when true"
        );
        msg.in_flight[0].exited = true;
        let bytes = encode(&msg);
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["in_flight"][0]["exited"], true);
        assert_eq!(decode::<Info>(&bytes), Ok(msg));
    }

    fn result(stdout: &str) -> TaskResult {
        TaskResult {
            task_id: TaskId::new(),
            attempt: 1,
            job_id: JobId::new(),
            executor_id: ExecutorId::parse("cpu-1").expect("valid"),
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            error: None,
            stdout: stdout.into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            started_at: Some(Utc::now()),
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn the_results_queue_takes_one_result_or_a_list() {
        let one = result("one");
        assert_eq!(decode_results(&encode(&one)), Ok(vec![one]));
        let many = vec![result("a"), result("b"), result("c")];
        let bytes = encode(&Results {
            results: many.clone(),
        });
        assert_eq!(decode_results(&bytes), Ok(many));
        // An empty list is no result at all: refused, to be dead-lettered.
        let empty = encode(&Results {
            results: Vec::new(),
        });
        assert_eq!(
            decode_results(&empty).map_err(|e| e.reason()),
            Err("invalid")
        );
        // Anything else is refused by its type.
        assert_eq!(
            decode_results(&encode(&info())).map_err(|e| e.reason()),
            Err("unknown_type")
        );
    }

    fn request(argv: &str) -> Request {
        Request {
            task_id: TaskId::new(),
            attempt: 1,
            job_id: JobId::new(),
            argv: vec![argv.into()],
            env: BTreeMap::new(),
            cwd: None,
            stdin: None,
            timeout_secs: 60,
            lease_deadline: Utc::now(),
            epoch: 0,
        }
    }

    #[test]
    fn an_executor_takes_one_request_a_list_or_a_control_message() {
        let one = request("/bin/true");
        assert_eq!(
            decode_for_executor(&encode(&one)),
            Ok(ForExecutor::Requests(vec![one]))
        );
        let many = vec![request("a"), request("b")];
        assert_eq!(
            decode_for_executor(&encode(&Requests {
                requests: many.clone()
            })),
            Ok(ForExecutor::Requests(many))
        );
        let drain = Control {
            action: ControlAction::Drain,
        };
        assert_eq!(
            decode_for_executor(&encode(&drain)),
            Ok(ForExecutor::Control(ControlAction::Drain))
        );
        // An empty list is nothing to run: refused, to be dead-lettered.
        let empty = encode(&Requests {
            requests: Vec::new(),
        });
        assert_eq!(
            decode_for_executor(&empty).map_err(|e| e.reason()),
            Err("invalid")
        );
        assert_eq!(
            decode_for_executor(&encode(&info())).map_err(|e| e.reason()),
            Err("unknown_type")
        );
        // A bad field in one request of a list is named with its place.
        let mut bad = serde_json::to_value(Requests {
            requests: vec![request("a")],
        })
        .expect("value");
        bad["type"] = "requests".into();
        bad["v"] = 1.into();
        bad["requests"][0]["attempt"] = "first".into();
        match decode_for_executor(&serde_json::to_vec(&bad).expect("bytes")) {
            Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "requests[0].attempt"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_message_of_another_type_is_refused_by_name() {
        let bytes = encode(&info());
        match decode::<TaskResult>(&bytes) {
            Err(DecodeError::UnknownType { found, expected }) => {
                assert_eq!(found, "info");
                assert_eq!(expected, "result");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_newer_version_is_refused() {
        let mut value = serde_json::to_value(info()).expect("value");
        value["type"] = "info".into();
        value["v"] = 2.into();
        let bytes = serde_json::to_vec(&value).expect("bytes");
        assert!(matches!(
            decode::<Info>(&bytes),
            Err(DecodeError::NewerVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));
    }

    #[test]
    fn malformed_and_oversize_bodies_are_errors_not_panics() {
        assert_eq!(
            decode::<Info>(b"{not json").map_err(|e| e.reason()),
            Err("malformed")
        );
        assert_eq!(
            decode::<Info>(b"[]").map_err(|e| e.reason()),
            Err("malformed")
        );
        let deep = "[".repeat(10_000);
        assert_eq!(
            decode::<Info>(deep.as_bytes()).map_err(|e| e.reason()),
            Err("malformed")
        );
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<Info>(&huge),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn the_submit_envelope_refuses_unknown_fields() {
        let ok = br#"{"type":"submit","v":1,"job":{"tasks":[{"argv":["true"]}]}}"#;
        let s = decode::<Submit>(ok).expect("a plain submission");
        assert_eq!(s.job.tasks[0].argv, vec!["true".to_string()]);
        let extra = br#"{"type":"submit","v":1,"job":{"tasks":[{"argv":["true"]}]},"priority":5}"#;
        match decode::<Submit>(extra) {
            Err(DecodeError::Invalid { message, .. }) => {
                assert!(message.contains("priority"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
        // Inside the job, as `POST /v1/jobs`.
        let inner = br#"{"type":"submit","v":1,"job":{"tasks":[{"argv":["true"],"argvv":1}]}}"#;
        match decode::<Submit>(inner) {
            Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "job.tasks[0].argvv"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_malformed_wherever_it_is() {
        let deep = |depth: usize| {
            format!(
                r#"{{"type":"submit","v":1,"job":{{"tasks":[{{"argv":["true"]}}]}},"x":{}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        // An ignored field of a message that tolerates unknown fields, as deep as it gets.
        let mut value = serde_json::to_value(info()).expect("value");
        value["type"] = "info".into();
        value["v"] = 1.into();
        let text = serde_json::to_string(&value).expect("text");
        let nested = format!(
            r#"{{"extra":{}1{},{}"#,
            "[".repeat(100_000),
            "]".repeat(100_000),
            &text[1..]
        );
        assert_eq!(
            decode::<Info>(nested.as_bytes()).map_err(|e| e.reason()),
            Err("malformed")
        );
        assert_eq!(
            decode::<Submit>(deep(100_000).as_bytes()).map_err(|e| e.reason()),
            Err("malformed")
        );
        assert_eq!(
            decode::<Submit>(deep(MAX_NESTING).as_bytes()).map_err(|e| e.reason()),
            Err("malformed")
        );
        // Brackets inside strings are text, not nesting.
        let texty = format!(
            r#"{{"type":"submit","v":1,"job":{{"tasks":[{{"argv":["echo","{}\"{}"]}}]}}}}"#,
            "[".repeat(1000),
            "{".repeat(1000)
        );
        decode::<Submit>(texty.as_bytes()).expect("brackets in a string");
    }

    #[test]
    fn nesting_depth_is_counted_outside_strings() {
        assert_eq!(nesting_depth(b"{}"), 1);
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{\"[["}"#), 1);
        assert_eq!(nesting_depth(br#"["\\",[]]"#), 2);
        assert_eq!(nesting_depth(b"[[[[[["), 6);
    }

    #[test]
    fn a_bad_field_is_named_in_the_error() {
        let bytes = br#"{"type":"info","v":1,"executor_id":"cpu-1","groups":["cpu"],"labels":{},
            "capacity":"four","running":0,"queued":0,"in_flight":[],"draining":false,
            "sent_at":"2026-01-01T00:00:00Z"}"#;
        match decode::<Info>(bytes) {
            Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "capacity"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn control_actions_are_tagged() {
        let c = Control {
            action: ControlAction::Drain,
        };
        let value: serde_json::Value = serde_json::from_slice(&encode(&c)).expect("json");
        assert_eq!(value["action"], "drain");
        assert_eq!(decode::<Control>(&encode(&c)), Ok(c));
    }
}
