//! Reading live output: `GET /v1/jobs/{id}/tasks/{task}/logs`, as a JSON range or, with
//! `follow=true`, as Server-Sent Events until the attempt ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::logs::LogsPage;
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::JobAccess;
use fleet_shared::db::{control, logs, Client, DbError, Pool};
use fleet_shared::id::TaskId;

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(task_logs))
}

/// Chunks per answer (and per SSE read) unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: i64 = 1_000;
const MAX_LIMIT: i64 = 10_000;
/// How long a follower waits for news of new output before it looks anyway (a
/// notification lost while the listener reconnects costs at most this).
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// How long a follower of an attempt that ended waits for its last output.
const FOLLOW_LAST: Duration = Duration::from_millis(200);

struct Want {
    attempt: Option<i32>,
    stream: Option<&'static str>,
    after: Option<i64>,
    limit: i64,
    follow: bool,
}

fn parse(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<Want, ApiError> {
    const KNOWN: &[&str] = &["attempt", "stream", "after", "limit", "follow"];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(
            k,
            format!("unknown parameter; known: {}", KNOWN.join(", ")),
        ));
    }
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| invalid(k, "must be a whole number"))
            })
            .transpose()
    };
    let attempt = num("attempt")?
        .map(|a| i32::try_from(a).ok().filter(|a| *a >= 1))
        .map(|a| a.ok_or_else(|| invalid("attempt", "must be 1 or more")))
        .transpose()?;
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("both") => None,
        Some("stdout") => Some("stdout"),
        Some("stderr") => Some("stderr"),
        Some(_) => return Err(invalid("stream", "must be stdout, stderr or both")),
    };
    // A reconnecting EventSource says where it was.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| invalid("Last-Event-ID", "not an event id of this stream"))
        })
        .transpose()?;
    let after = resumed.or(num("after")?);
    let limit = num("limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid("limit", format!("must be 1 to {MAX_LIMIT}")));
    }
    let follow = match q.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("follow", "must be true or false")),
    };
    Ok(Want {
        attempt,
        stream,
        after,
        limit,
        follow,
    })
}

/// The attempt asked for (default: the latest), and whether it has ended.
async fn attempt_of(
    client: &Client,
    task: TaskId,
    attempt: Option<i32>,
) -> Result<Option<(i32, bool)>, DbError> {
    Ok(client
        .query_opt(
            "SELECT a.attempt, a.state NOT IN ('assigned', 'running')
             FROM tasks t JOIN attempts a ON a.task_id = t.id
             WHERE t.id = $1 AND a.attempt = coalesce($2, t.attempts)",
            &[&task.uuid(), &attempt],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// A task's live output: a range of one attempt's chunks as JSON, or with `follow=true`
/// Server-Sent Events until the attempt ends: `chunk` events (`id`: the chunk's `n`,
/// `data`: a `Chunk`), then one `end` event (`data`: `{"task_id", "attempt"}`).
#[utoipa::path(get, operation_id = "get_task_logs", path = "/v1/jobs/{id}/tasks/{task}/logs", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("task" = String, Path, description = "The task's id, name or index in the job"),
        ("attempt" = Option<i32>, Query, minimum = 1, description = "The attempt (default: the latest)"),
        ("stream" = Option<String>, Query, description = "`stdout`, `stderr` or `both` (the default)"),
        ("after" = Option<i64>, Query, description = "Chunks after this one (`next` of the previous page)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Chunks per answer (default 1000)"),
        ("follow" = Option<bool>, Query, description = "Answer with Server-Sent Events until the attempt ends"),
        ("Last-Event-ID" = Option<i64>, Header, description = "A reconnecting stream resumes after this chunk"),
    ),
    responses(
        (status = 200, description = "A page of output, or (`follow`) an event stream", content(
            (LogsPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "A bad or unknown parameter (named in `field`)", body = ErrorResponse),
        (status = 404, description = "No such job, task or attempt (not started yet?)", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn task_logs(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let want = parse(&q, &headers)?;
    let (client, job) = crate::jobs::job_for(&s, &caller, &id, JobAccess::Read).await?;
    let task = control::find_task(&client, job, &task)
        .await?
        .ok_or(ApiError::NotFound("task in that job"))?;
    let found = attempt_of(&client, task, want.attempt).await?;
    // A follower of a task not handed out yet waits for its first attempt (as `tail -f`
    // waits for a file); a read, or a follower of an attempt named, is answered now.
    if found.is_none() && (!want.follow || want.attempt.is_some()) {
        return Err(ApiError::NotFound(
            "attempt of that task (it has not started yet?)",
        ));
    }
    if let (false, Some((attempt, ended))) = (want.follow, found) {
        let chunks =
            logs::read(&client, task, attempt, want.stream, want.after, want.limit).await?;
        let next = chunks.last().map(|c| c.n).or(want.after);
        return Ok(Json(LogsPage {
            attempt,
            chunks,
            ended,
            job_id: job,
            next,
            task_id: task,
        })
        .into_response());
    }
    drop(client);
    let pool = s.pool().clone();
    let attempt = found.map(|(a, _)| a);
    let stream = follow(pool, s.logs_changed(), task, attempt, want);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Where a follower is.
struct Follower {
    pool: Pool,
    changed: tokio::sync::watch::Receiver<u64>,
    task: TaskId,
    /// None until the task's first attempt exists.
    attempt: Option<i32>,
    stream: Option<&'static str>,
    after: Option<i64>,
    limit: i64,
    pending: std::collections::VecDeque<Event>,
    /// The attempt had ended at the last read: one more read, then the end.
    ended: bool,
    done: bool,
}

/// The chunks as events (`id` = the chunk's `n`, so a reconnect resumes after it), then
/// an `end` event once the attempt has ended and everything it wrote was sent. A
/// database that does not answer is waited out.
fn follow(
    pool: Pool,
    changed: tokio::sync::watch::Receiver<u64>,
    task: TaskId,
    attempt: Option<i32>,
    want: Want,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let start = Follower {
        pool,
        changed,
        task,
        attempt,
        stream: want.stream,
        after: want.after,
        limit: want.limit,
        pending: Default::default(),
        ended: false,
        done: false,
    };
    futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                return Some((Ok(e), f));
            }
            if f.done {
                return None;
            }
            match next_events(&mut f).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "following live output: database unavailable");
                    tokio::time::sleep(FOLLOW_POLL * 5).await;
                }
            }
        }
    })
}

async fn next_events(f: &mut Follower) -> Result<(), DbError> {
    // What is stored from here on wakes the wait below.
    f.changed.borrow_and_update();
    let client = f.pool.get().await?;
    let Some(attempt) = f.attempt else {
        // Not handed out yet. Whether the task has ended is read first: an attempt made
        // and finished between the two reads is then found by the second.
        let ended: bool = client
            .query_opt(
                "SELECT state IN ('succeeded', 'failed', 'cancelled') FROM tasks WHERE id = $1",
                &[&f.task.uuid()],
            )
            .await?
            .is_none_or(|r| r.get(0));
        f.attempt = attempt_of(&client, f.task, None).await?.map(|(a, _)| a);
        drop(client);
        if f.attempt.is_none() {
            if ended {
                // It ended without ever running (cancelled, or its dependency failed):
                // there is no output to wait for.
                f.done = true;
                f.pending.push_back(
                    Event::default()
                        .event("end")
                        .data(serde_json::json!({"task_id": f.task}).to_string()),
                );
                return Ok(());
            }
            // Look again shortly, or when output arrives.
            let _ = tokio::time::timeout(FOLLOW_LAST, f.changed.changed()).await;
        }
        return Ok(());
    };
    // Whether it ended is read before the chunks: what it wrote before ending is in
    // the read that follows.
    let ended = attempt_of(&client, f.task, Some(attempt))
        .await?
        .is_none_or(|(_, e)| e);
    let chunks = logs::read(&client, f.task, attempt, f.stream, f.after, f.limit).await?;
    drop(client);
    for c in &chunks {
        f.after = Some(c.n);
        let data = serde_json::to_string(c).unwrap_or_default();
        f.pending.push_back(
            Event::default()
                .id(c.n.to_string())
                .event("chunk")
                .data(data),
        );
    }
    if chunks.is_empty() {
        if f.ended && ended {
            f.done = true;
            f.pending.push_back(
                Event::default()
                    .event("end")
                    .data(serde_json::json!({"task_id": f.task, "attempt": attempt}).to_string()),
            );
            return Ok(());
        }
        f.ended = ended;
        // An attempt that ended is read once more shortly (its last output goes out
        // before its result, but the two are stored by different consumers); otherwise,
        // wait for news of new output.
        let wait = if ended { FOLLOW_LAST } else { FOLLOW_POLL };
        let _ = tokio::time::timeout(wait, f.changed.changed()).await;
    }
    Ok(())
}
