//! The event log over HTTP: `GET /v1/events` (a JSON page, or with `follow=true` or
//! `Accept: text/event-stream`, Server-Sent Events resumable by `Last-Event-ID`), and
//! fleet-wide webhooks (admin): `GET|POST /v1/webhooks`, `DELETE /v1/webhooks/{id}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_core::api::events::EventsPage;
use fleet_core::api::webhooks::{NewWebhookBody, WebhooksView};
use fleet_core::api::ErrorResponse;
use fleet_shared::auth::{JobAccess, Permission};
use fleet_shared::db::events::{self, Cursor, Filter};
use fleet_shared::db::{webhooks, DbError, Pool};
use fleet_shared::event::Kind;
use fleet_shared::group::GroupName;

use crate::auth::Caller;
use crate::error::{invalid, parse_body, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_events))
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
}

const DEFAULT_LIMIT: i64 = 500;
const MAX_LIMIT: i64 = 5_000;
/// How often a follower with nothing new looks again.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

enum From {
    Start,
    Now,
    After(i64),
}

struct Want {
    filter: Filter,
    from: From,
    limit: i64,
    follow: bool,
}

async fn parse(
    s: &AppState,
    caller: &Caller,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Want, ApiError> {
    const KNOWN: &[&str] = &["job", "group", "kind", "after", "from", "limit", "follow"];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(
            k,
            format!("unknown parameter; known: {}", KNOWN.join(", ")),
        ));
    }
    caller.need(Permission::Read)?;
    let mut filter = Filter::default().for_caller(&caller.who);
    if let Some(job) = q.get("job") {
        // The same check as the job's own routes: a job the caller may not read is
        // not found.
        let (_, id) = crate::jobs::job_for(s, caller, job, JobAccess::Read).await?;
        filter.job = Some(id);
    }
    if let Some(g) = q.get("group") {
        let g = GroupName::parse(g).map_err(|e| invalid("group", e.to_string()))?;
        filter.group = Some(g.to_string());
    }
    if let Some(k) = q.get("kind") {
        filter.kinds = Kind::parse_list(k.split(',')).map_err(|e| invalid("kind", e))?;
    }
    let id = |field: &str, v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| invalid(field, "must be an event id (a whole number)"))
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| id("Last-Event-ID", v))
        .transpose()?;
    let after = q.get("after").map(|v| id("after", v)).transpose()?;
    let follow = match q.get("follow").map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        None => headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream")),
        Some(_) => return Err(invalid("follow", "must be true or false")),
    };
    let from = match (resumed.or(after), q.get("from").map(String::as_str)) {
        (Some(id), _) => From::After(id),
        (None, Some("start")) => From::Start,
        (None, Some("now")) => From::Now,
        (None, Some(_)) => return Err(invalid("from", "must be start or now")),
        // A job's events from its first; a page from the oldest kept; a stream of the
        // whole fleet from now.
        (None, None) if follow && filter.job.is_none() => From::Now,
        (None, None) => From::Start,
    };
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| invalid("limit", format!("must be 1 to {MAX_LIMIT}")))?,
    };
    Ok(Want {
        filter,
        from,
        limit,
        follow,
    })
}

/// The event log: a JSON page, or with `follow=true` (or `Accept: text/event-stream`)
/// Server-Sent Events for as long as the client stays: each has `id` (the event's id,
/// what `Last-Event-ID` resumes from), `event` (its kind) and `data` (an `Event`). A
/// caller that is not an admin sees the events of the jobs it may read.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("job" = Option<uuid::Uuid>, Query, description = "One job's events (from its first, unless `after` or `from` say otherwise)"),
        ("group" = Option<String>, Query, description = "Events of a group and its subgroups"),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds or patterns: `job.accepted`, `task.*`, ..."),
        ("after" = Option<i64>, Query, description = "Events after this id (`next` of the previous page)"),
        ("from" = Option<String>, Query, description = "`start` (the oldest kept) or `now`; default: `start` for a page or a job's stream, `now` for the fleet's stream"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 5000, description = "Events per page or per read (default 500)"),
        ("follow" = Option<bool>, Query, description = "Answer with Server-Sent Events"),
        ("Last-Event-ID" = Option<i64>, Header, description = "A reconnecting stream resumes after this event"),
    ),
    responses(
        (status = 200, description = "A page of events, or (`follow`) an event stream", content(
            (EventsPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "A bad or unknown parameter (named in `field`)", body = ErrorResponse),
        (status = 404, description = "`job` names no job the caller may read", body = ErrorResponse),
        (status = 410, description = "The event `after` names is no longer kept", body = ErrorResponse),
    ),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn get_events(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let want = parse(&s, &caller, &q, &headers).await?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let start = match want.from {
        From::Start => Cursor::default(),
        From::Now => events::tail(&client).await?,
        From::After(id) => events::cursor_after(&client, id).await?.ok_or_else(|| {
            ApiError::Gone(format!(
                "event {id} is no longer kept (retention); read from=start or from=now"
            ))
        })?,
    };
    if !want.follow {
        let (page, read_to) = events::read(&client, start, &want.filter, want.limit).await?;
        // Past the last row read, even one the filter left out: the next page goes on
        // from there (an id, as `after` takes). Nothing read: where this page started.
        let next = (read_to != start)
            .then_some(read_to.id)
            .or(match want.from {
                From::After(id) => Some(id),
                _ => None,
            });
        return Ok(Json(EventsPage { events: page, next }).into_response());
    }
    drop(client);
    let stream = follow(s.pool().clone(), start, want);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Follower {
    pool: Pool,
    at: Cursor,
    filter: Filter,
    limit: i64,
    pending: std::collections::VecDeque<SseEvent>,
}

/// Each event as an SSE event (`id`: the event's id, `event`: its kind, `data`: the
/// event), for as long as the client stays. A database that does not answer is waited
/// out.
fn follow(
    pool: Pool,
    at: Cursor,
    want: Want,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    let start = Follower {
        pool,
        at,
        filter: want.filter,
        limit: want.limit,
        pending: Default::default(),
    };
    futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                return Some((Ok(e), f));
            }
            let read = async {
                let client = f.pool.get().await?;
                events::read(&client, f.at, &f.filter, f.limit).await
            };
            match tokio::time::timeout(Duration::from_secs(30), read).await {
                Ok(Ok((page, next))) => {
                    let moved = next != f.at;
                    f.at = next;
                    for e in page {
                        let data = serde_json::to_string(&e).unwrap_or_default();
                        f.pending.push_back(
                            SseEvent::default()
                                .id(e.id.to_string())
                                .event(e.kind.as_str())
                                .data(data),
                        );
                    }
                    if !moved {
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "following events: database unavailable");
                    tokio::time::sleep(FOLLOW_POLL * 8).await;
                }
                Err(_) => {
                    tracing::warn!("following events: the database did not answer in 30 s");
                }
            }
        }
    })
}

/// Adds a fleet-wide webhook: the events it asks for are POSTed to `url`, signed with
/// its secret (docs/events.md, "Webhooks").
#[utoipa::path(post, path = "/v1/webhooks", tag = "events",
    request_body = NewWebhookBody,
    responses(
        (status = 201, description = "The webhook, with its secret (shown this once)", body = fleet_core::api::webhooks::WebhookView),
        (status = 400, description = "A bad url, event kind, group or secret", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn create_webhook(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let b: NewWebhookBody = parse_body(&body)?;
    fleet_shared::job::check_webhook_url("url", &b.url).map_err(ApiError::Invalid)?;
    let kinds =
        Kind::parse_list(b.events.iter().map(String::as_str)).map_err(|e| invalid("events", e))?;
    let group = b
        .group
        .as_deref()
        .map(|g| GroupName::parse(g).map_err(|e| invalid("group", e.to_string())))
        .transpose()?;
    let secret = match b.secret {
        Some(secret) => {
            fleet_shared::job::check_webhook_secret("secret", &secret)
                .map_err(ApiError::Invalid)?;
            secret
        }
        None => fleet_shared::auth::new_token(),
    };
    let client = s.pool().get().await.map_err(DbError::from)?;
    let made = webhooks::create(
        &client,
        &webhooks::NewWebhook {
            url: b.url,
            kinds,
            group: group.map(|g| g.to_string()),
            secret,
            created_by: caller.who.name.clone(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Every webhook, fleet-wide and jobs' own, with how its deliveries stand.
#[utoipa::path(get, path = "/v1/webhooks", tag = "events",
    responses((status = 200, description = "The webhooks", body = WebhooksView)),
    security(("bearer" = ["admin"]), ("session" = ["admin"])),
)]
async fn list_webhooks(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    let list = webhooks::list(&client).await?;
    Ok(Json(WebhooksView { webhooks: list }).into_response())
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "events",
    params(("id" = uuid::Uuid, Path, description = "The webhook's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a webhook id", body = ErrorResponse),
        (status = 404, description = "No such webhook", body = ErrorResponse),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = [])),
)]
async fn delete_webhook(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.need(Permission::Admin)?;
    let id: uuid::Uuid = id.parse().map_err(|_| invalid("id", "not a webhook id"))?;
    let client = s.pool().get().await.map_err(DbError::from)?;
    if webhooks::delete(&client, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}
