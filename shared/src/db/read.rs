//! Read-only views for the HTTP API. The submitter serves them; it reads the other
//! services' tables but never writes them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub use fleet_core::api::executors::{
    DrainView, ExecutorDetail, ExecutorView, ExecutorsView, HeldAttemptView, RegistrationView,
};
pub use fleet_core::api::jobs::{
    AttemptView, CopyView, CountsView, JobSummary, JobView, JobsPage, ResultView, ResultsView,
    SubmittedBy, TaskSpecView, TaskView,
};

use super::{Client, DbError};
use crate::id::{JobId, TaskId, TokenId};

const LOST_ERROR: &str = "attempt lost: its executor stopped reporting before the lease ran out";

/// `silent_after_secs`: an executor not heard from for this long makes the tasks it
/// holds show as `unknown`.
///
/// `open_executors`: the dispatcher gives work to unregistered executors too
/// (`dispatcher.unsafe_open_executors`), which a waiting task's hint must know.
pub async fn job(
    client: &Client,
    id: JobId,
    silent_after_secs: f64,
    open_executors: bool,
) -> Result<Option<JobView>, DbError> {
    let Some(j) = client
        .query_opt(
            // The collector records a job's state as its results come in; before the
            // first one, a job some of whose tasks were handed out is running.
            "SELECT name,
                    CASE WHEN state = 'pending'
                              AND EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND attempts > 0)
                         THEN 'running' ELSE state END,
                    created_at, finished_at, owner_token, owner_name, held
             FROM jobs WHERE id = $1",
            &[&id.uuid()],
        )
        .await?
    else {
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT t.id, t.idx, t.name, t.state, t.attempts, a.executor_id,
                    r.exit_code, r.signal,
                    coalesce(r.error, CASE WHEN a.state = 'lost' AND t.state = 'failed' THEN $3 END),
                    NOT t.each AND t.state IN ('assigned', 'running')
                      AND a.state IS DISTINCT FROM 'reported'
                      AND (e.last_info_at IS NULL
                           OR e.last_info_at < clock_timestamp() - make_interval(secs => $2)),
                    t.each, t.quorum,
                    t.argv, t.env, t.cwd, t.target_group, t.labels, t.priority, t.timeout_secs,
                    t.depends_on, t.max_attempts, t.retry_at, t.retry, t.env_secret_names
             FROM tasks t
             LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempts
             LEFT JOIN results r ON r.task_id = t.id AND r.attempt = t.final_attempt
             LEFT JOIN executors e ON e.id = a.executor_id
             WHERE t.job_id = $1
             ORDER BY t.idx",
            &[&id.uuid(), &silent_after_secs, &LOST_ERROR],
        )
        .await?;
    let mut history: std::collections::HashMap<uuid::Uuid, Vec<AttemptView>> =
        std::collections::HashMap::new();
    for r in client
        .query(
            "SELECT a.task_id, a.attempt, a.executor_id, a.state, a.assigned_at, a.started_at,
                    a.finished_at, a.state = 'lost' AND r.task_id IS NOT NULL
             FROM attempts a
             JOIN tasks t ON t.id = a.task_id
             LEFT JOIN results r ON r.task_id = a.task_id AND r.attempt = a.attempt
             WHERE t.job_id = $1
             ORDER BY a.task_id, a.attempt",
            &[&id.uuid()],
        )
        .await?
    {
        history.entry(r.get(0)).or_default().push(AttemptView {
            attempt: r.get(1),
            executor_id: r.get(2),
            state: r.get(3),
            assigned_at: r.get(4),
            started_at: r.get(5),
            finished_at: r.get(6),
            late_result: r.get(7),
        });
    }
    let mut copies: std::collections::HashMap<uuid::Uuid, Vec<CopyView>> =
        std::collections::HashMap::new();
    for r in client
        .query(
            "SELECT c.task_id, c.executor_id, c.state, c.attempts, c.error
             FROM task_copies c JOIN tasks t ON t.id = c.task_id
             WHERE t.job_id = $1 ORDER BY c.task_id, c.executor_id",
            &[&id.uuid()],
        )
        .await?
    {
        copies.entry(r.get(0)).or_default().push(CopyView {
            executor_id: r.get(1),
            state: r.get(2),
            attempts: r.get(3),
            error: r.get(4),
        });
    }
    let held: bool = j.get(6);
    // What a ready task waits for is read only when one does.
    let waits = if rows.iter().any(|r| r.get::<_, &str>(3) == "ready") {
        Some(WaitContext::read(client, silent_after_secs, open_executors).await?)
    } else {
        None
    };
    let mut counts = CountsView::default();
    let names: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    let tasks = rows
        .iter()
        .map(|r| {
            let deps: Vec<usize> = json_col("depends_on", r.get(19))?;
            let env: BTreeMap<String, String> = json_col("env", r.get(13))?;
            let spec = TaskSpecView {
                argv: json_col("argv", r.get(12))?,
                env: env.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                env_secret: r
                    .get::<_, Option<serde_json::Value>>(23)
                    .map(|v| json_col("env_secret_names", v))
                    .transpose()?
                    .unwrap_or_default(),
                cwd: r.get(14),
                group: r.get(15),
                labels: json_col("labels", r.get(16))?,
                priority: r.get(17),
                timeout_secs: r.get(18),
                depends_on: deps.iter().filter_map(|&i| names.get(i).cloned()).collect(),
                max_attempts: r.get(20),
                retry: r
                    .get::<_, Option<serde_json::Value>>(22)
                    .map(|v| json_col("retry", v))
                    .transpose()?,
            };
            let state: String = r.get(3);
            counts.total += 1;
            match state.as_str() {
                "succeeded" => counts.succeeded += 1,
                "failed" => counts.failed += 1,
                "cancelled" => counts.cancelled += 1,
                _ => {}
            }
            let silent: bool = r.get(9);
            let task_id: uuid::Uuid = r.get(0);
            let each: bool = r.get(10);
            let quorum: Option<i32> = r.get(11);
            let copies = copies.remove(&task_id).unwrap_or_default();
            let hint = match &waits {
                Some(w) if state == "ready" => w.hint(id, &spec.group, &spec.labels, held),
                _ => None,
            };
            let mut t = TaskView {
                retry_at: r.get(21),
                history: history.remove(&task_id).unwrap_or_default(),
                each,
                quorum,
                task_id: TaskId::from_uuid(task_id),
                index: r.get(1),
                name: r.get(2),
                state: if silent { "unknown".into() } else { state },
                attempts: r.get(4),
                executor_id: r.get(5),
                exit_code: r.get(6),
                signal: r.get(7),
                error: r.get(8),
                hint,
                copies,
                spec,
            };
            if each {
                // No one attempt decided it: its members did, by the quorum. The latest
                // attempt's executor and exit code (one member's) would say otherwise.
                t.executor_id = None;
                t.exit_code = None;
                t.signal = None;
                t.error = each_outcome(&t.state, &t.copies, quorum);
            }
            Ok(t)
        })
        .collect::<Result<_, DbError>>()?;
    counts.done = counts.succeeded + counts.failed + counts.cancelled;
    Ok(Some(JobView {
        job_id: id,
        name: j.get(0),
        state: j.get(1),
        created_at: j.get(2),
        finished_at: j.get(3),
        submitted_by: SubmittedBy {
            token_id: j.get::<_, Option<uuid::Uuid>>(4).map(TokenId::from_uuid),
            name: j.get(5),
        },
        held: j.get(6),
        counts,
        tasks,
    }))
}

/// How an `each` task was decided, from its members' copies: `None` while it is not
/// decided (its copies say where each member is) or was never fanned out.
pub fn each_outcome(state: &str, copies: &[CopyView], quorum: Option<i32>) -> Option<String> {
    let count = |s: &str| copies.iter().filter(|c| c.state == s).count();
    let members = copies.len();
    let needed = crate::state::quorum_needed(
        u32::try_from(members).unwrap_or(u32::MAX),
        quorum.and_then(|q| u32::try_from(q).ok()),
    );
    match state {
        _ if members == 0 => None,
        "succeeded" => Some(format!(
            "{} of {members} members succeeded; quorum {needed} met",
            count("succeeded")
        )),
        "failed" if needed as usize > members => Some(format!(
            "failed: quorum {needed} is more than its {members} members"
        )),
        "failed" => {
            let cancelled = match count("cancelled") {
                0 => String::new(),
                n => format!(" ({n} cancelled)"),
            };
            Some(format!(
                "failed: {} of {members} members failed{cancelled}; quorum {needed} can no \
                 longer be met",
                count("failed")
            ))
        }
        _ => None,
    }
}

/// An alive executor as a waiting task's hint sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub id: String,
    /// Declared (INFO) and put in by an administrator.
    pub groups: Vec<crate::group::GroupName>,
    pub labels: BTreeMap<String, String>,
    /// It says so, or an administrator drained it.
    pub draining: bool,
    /// It holds a live credential (registered, not revoked).
    pub registered: bool,
}

/// What decides whether a ready task can be handed out, besides the dispatcher's own
/// state: the alive executors and the scheduler's pauses.
#[derive(Debug, Clone, Default)]
pub struct WaitContext {
    pub alive: Vec<Candidate>,
    /// Paused groups (`default`: the whole fleet).
    pub pauses: Vec<crate::group::GroupName>,
    /// Unregistered executors get work too (`dispatcher.unsafe_open_executors`).
    pub open: bool,
}

impl WaitContext {
    /// Alive: heard within `silent_after_secs`.
    pub async fn read(
        client: &Client,
        silent_after_secs: f64,
        open: bool,
    ) -> Result<Self, DbError> {
        use crate::group::GroupName;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&silent_after_secs];
        let (executors, pauses) = tokio::try_join!(
            client.query(
                "SELECT e.id, e.groups, e.labels,
                        e.draining OR EXISTS (SELECT 1 FROM executor_drains d
                                              WHERE d.executor_id = e.id),
                        ARRAY(SELECT m.group_name FROM group_members m
                              WHERE m.executor_id = e.id),
                        EXISTS (SELECT 1 FROM executor_credentials c
                                WHERE c.executor_id = e.id AND c.revoked_at IS NULL)
                 FROM executors e
                 WHERE e.last_info_at >= clock_timestamp() - make_interval(secs => $1)
                 ORDER BY e.id",
                &params,
            ),
            client.query("SELECT group_name FROM scheduler_pauses", &[]),
        )?;
        let alive = executors
            .iter()
            .map(|r| {
                let mut names: Vec<String> = json_col("groups", r.get(1))?;
                names.extend(r.get::<_, Vec<String>>(4));
                Ok(Candidate {
                    id: r.get(0),
                    groups: names
                        .iter()
                        .filter_map(|g| GroupName::parse(g).ok())
                        .collect(),
                    labels: json_col("labels", r.get(2))?,
                    draining: r.get(3),
                    registered: r.get(5),
                })
            })
            .collect::<Result<_, DbError>>()?;
        let pauses = pauses
            .iter()
            .filter_map(|r| GroupName::parse(r.get(0)).ok())
            .collect();
        Ok(Self {
            alive,
            pauses,
            open,
        })
    }

    /// Why a ready task of `job` for `group` with `labels` is not handed out, if there
    /// is anything to say: its job is held, its group (or one enclosing it) is paused,
    /// no alive executor is eligible (by group, subgroups included, and labels), or every
    /// eligible one is draining. Every reason that holds, in that order.
    pub fn hint(
        &self,
        job: JobId,
        group: &str,
        labels: &BTreeMap<String, String>,
        held: bool,
    ) -> Option<String> {
        let target = crate::group::GroupName::parse(group).ok()?;
        let mut why = Vec::new();
        if held {
            why.push(format!(
                "the job is held: its tasks wait until it is released (fleetctl release {job})"
            ));
        }
        for p in self.pauses.iter().filter(|p| target.is_within(p)) {
            why.push(if p.is_default() {
                "dispatching is paused for the whole fleet (fleetctl scheduler resume)".into()
            } else {
                format!("dispatching is paused for group {p} (fleetctl scheduler resume {p})")
            });
        }
        let eligible: Vec<&Candidate> = self
            .alive
            .iter()
            .filter(|e| e.groups.iter().any(|g| g.is_within(&target)))
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .collect();
        if eligible.is_empty() {
            let mut none = if target.is_default() {
                "no executor is eligible: none alive".to_owned()
            } else {
                format!("no executor is eligible: none alive in group {target} (or its subgroups)")
            };
            if !labels.is_empty() {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                none.push_str(&format!(" with labels {}", l.join(", ")));
            }
            why.push(none);
        } else if !self.open && eligible.iter().all(|e| !e.registered) {
            let ids: Vec<&str> = eligible.iter().map(|e| e.id.as_str()).collect();
            why.push(format!(
                "no eligible executor is registered ({}): work goes only to executors that \
                 registered with a join token or the bootstrap secret",
                ids.join(", ")
            ));
        } else if eligible
            .iter()
            .filter(|e| self.open || e.registered)
            .all(|e| e.draining)
        {
            let ids: Vec<&str> = eligible
                .iter()
                .filter(|e| self.open || e.registered)
                .map(|e| e.id.as_str())
                .collect();
            why.push(format!(
                "every eligible executor is draining ({})",
                ids.join(", ")
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

fn json_col<T: serde::de::DeserializeOwned>(col: &str, v: serde_json::Value) -> Result<T, DbError> {
    serde_json::from_value(v).map_err(|e| DbError::Row(format!("{col}: {e}")))
}

/// The token that submitted a job (`None` inside: the configured admin token or the AMQP
/// intake), or `None` if there is no such job.
pub async fn job_owner(client: &Client, id: JobId) -> Result<Option<Option<TokenId>>, DbError> {
    Ok(client
        .query_opt("SELECT owner_token FROM jobs WHERE id = $1", &[&id.uuid()])
        .await?
        .map(|r| r.get::<_, Option<uuid::Uuid>>(0).map(TokenId::from_uuid)))
}

/// The deciding result of each finished task of a job, and for an `each` task the result
/// of every member that finished (ordered by task, then executor); `None` if the job
/// does not exist.
pub async fn results(client: &Client, id: JobId) -> Result<Option<ResultsView>, DbError> {
    if client
        .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id.uuid()])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT t.id, t.idx, t.name, t.final_attempt, a.executor_id, a.state,
                    r.exit_code, r.signal,
                    coalesce(r.error, CASE WHEN a.state = 'lost' THEN $2 END),
                    coalesce(r.stdout, ''), coalesce(r.stderr, ''),
                    coalesce(r.stdout_truncated, false), coalesce(r.stderr_truncated, false),
                    coalesce(r.started_at, a.started_at), coalesce(r.finished_at, a.finished_at),
                    coalesce(r.recorded_at, a.finished_at)
             FROM tasks t
             JOIN attempts a ON a.task_id = t.id AND a.attempt = t.final_attempt
             LEFT JOIN results r ON r.task_id = t.id AND r.attempt = t.final_attempt
             WHERE t.job_id = $1 AND NOT t.each
             UNION ALL
             SELECT t.id, t.idx, t.name, coalesce(c.current_attempt, 0), c.executor_id,
                    coalesce(a.state, c.state),
                    r.exit_code, r.signal,
                    coalesce(r.error, c.error, CASE WHEN a.state = 'lost' THEN $2 END),
                    coalesce(r.stdout, ''), coalesce(r.stderr, ''),
                    coalesce(r.stdout_truncated, false), coalesce(r.stderr_truncated, false),
                    coalesce(r.started_at, a.started_at), coalesce(r.finished_at, a.finished_at),
                    coalesce(r.recorded_at, a.finished_at)
             FROM tasks t
             JOIN task_copies c ON c.task_id = t.id
             LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = c.current_attempt
             LEFT JOIN results r ON r.task_id = t.id AND r.attempt = c.current_attempt
             WHERE t.job_id = $1 AND t.each AND c.state IN ('succeeded', 'failed')
             ORDER BY 2, 5",
            &[&id.uuid(), &LOST_ERROR],
        )
        .await?;
    let results = rows
        .iter()
        .map(|r| ResultView {
            task_id: TaskId::from_uuid(r.get(0)),
            index: r.get(1),
            name: r.get(2),
            attempt: r.get(3),
            executor_id: r.get(4),
            outcome: r.get(5),
            exit_code: r.get(6),
            signal: r.get(7),
            error: r.get(8),
            stdout: r.get(9),
            stderr: r.get(10),
            stdout_truncated: r.get(11),
            stderr_truncated: r.get(12),
            started_at: r.get(13),
            finished_at: r.get(14),
            recorded_at: r.get(15),
        })
        .collect();
    Ok(Some(ResultsView {
        job_id: id,
        results,
    }))
}

/// The columns [`executor_row`] reads, from `executors e`.
const EXECUTOR_COLUMNS: &str = "e.id, e.groups, e.labels, e.capacity, e.running, e.queued,
    e.draining OR EXISTS (SELECT 1 FROM executor_drains d WHERE d.executor_id = e.id),
    e.last_info_at, e.last_info_at >= clock_timestamp() - make_interval(secs => $1)";

fn executor_row(r: &tokio_postgres::Row) -> Result<ExecutorView, DbError> {
    Ok(ExecutorView {
        executor_id: r.get(0),
        groups: serde_json::from_value(r.get(1)).map_err(|e| DbError::Row(e.to_string()))?,
        labels: serde_json::from_value(r.get(2)).map_err(|e| DbError::Row(e.to_string()))?,
        capacity: r.get(3),
        running: r.get(4),
        queued: r.get(5),
        draining: r.get(6),
        last_info_at: r.get(7),
        alive: r.get(8),
    })
}

pub async fn executors(client: &Client, silent_after_secs: f64) -> Result<ExecutorsView, DbError> {
    let rows = client
        .query(
            &format!("SELECT {EXECUTOR_COLUMNS} FROM executors e ORDER BY e.id"),
            &[&silent_after_secs],
        )
        .await?;
    let executors = rows
        .iter()
        .map(executor_row)
        .collect::<Result<_, DbError>>()?;
    Ok(ExecutorsView { executors })
}

/// One executor, or `None` if the dispatcher never heard of it (or it was forgotten).
pub async fn executor(
    client: &Client,
    id: &str,
    silent_after_secs: f64,
) -> Result<Option<ExecutorDetail>, DbError> {
    let sql = format!(
        "SELECT {EXECUTOR_COLUMNS}, e.first_seen_at,
                ARRAY(SELECT m.group_name FROM group_members m
                      WHERE m.executor_id = e.id ORDER BY 1)
         FROM executors e WHERE e.id = $2"
    );
    let Some(r) = client
        .query_opt(sql.as_str(), &[&silent_after_secs, &id])
        .await?
    else {
        return Ok(None);
    };
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let by_id: [Param; 1] = [&id];
    let (registration, drain, attempts) = tokio::try_join!(
        client.query_opt(
            "SELECT registered_at, groups, revoked_at FROM executor_credentials
             WHERE executor_id = $1",
            &by_id,
        ),
        client.query_opt(
            "SELECT drained_at, drained_by FROM executor_drains WHERE executor_id = $1",
            &by_id,
        ),
        // The states as a literal: they are the predicate of `attempts_lease`, so only
        // the open attempts are read, never the history.
        client.query(
            "SELECT a.task_id, t.job_id, a.attempt, a.state, a.assigned_at, a.started_at
             FROM attempts a JOIN tasks t ON t.id = a.task_id
             WHERE a.executor_id = $1 AND a.state IN ('assigned', 'running', 'reported')
             ORDER BY a.assigned_at, a.task_id, a.attempt",
            &by_id,
        ),
    )?;
    let registration = registration
        .map(|c| {
            Ok::<_, DbError>(RegistrationView {
                registered_at: c.get(0),
                groups: json_col("registered groups", c.get(1))?,
                revoked_at: c.get(2),
            })
        })
        .transpose()?;
    Ok(Some(ExecutorDetail {
        executor: executor_row(&r)?,
        first_seen_at: r.get(9),
        assigned_groups: r.get(10),
        registration,
        drain: drain.map(|d| DrainView {
            drained_at: d.get(0),
            drained_by: d.get(1),
        }),
        attempts: attempts
            .iter()
            .map(|a| HeldAttemptView {
                task_id: TaskId::from_uuid(a.get(0)),
                job_id: JobId::from_uuid(a.get(1)),
                attempt: a.get(2),
                state: a.get(3),
                assigned_at: a.get(4),
                started_at: a.get(5),
            })
            .collect(),
    }))
}

/// Whose jobs a listing is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerFilter {
    /// Submitted with this token.
    Token(TokenId),
    /// Submitted by a token (or the intake) of this name.
    Named(String),
    /// Submitted without a token row (the configured admin token, the AMQP intake) under
    /// this name.
    Untokened(String),
    /// Nothing (a caller that owns no job).
    Nobody,
}

/// What `GET /v1/jobs` narrows to; every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Any of these states (empty: any state).
    pub states: Vec<crate::state::JobState>,
    pub name_prefix: Option<String>,
    /// Jobs with a task for this group or one of its subgroups.
    pub group: Option<crate::group::GroupName>,
    /// Jobs with a task requiring this executor label.
    pub label: Option<(String, String)>,
    pub owners: Vec<OwnerFilter>,
    pub created_before: Option<DateTime<Utc>>,
    pub created_after: Option<DateTime<Utc>>,
    /// The page after this job (the previous page's `next_cursor`).
    pub after: Option<JobId>,
    pub limit: i64,
}

/// Escapes `%`, `_` and `\` for a LIKE pattern.
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A job's state as the API shows it: the collector writes `running` only with a job's
/// first result, so before that a job some of whose tasks were handed out is running.
const STARTED: &str = "EXISTS (SELECT 1 FROM tasks s WHERE s.job_id = j.id AND s.attempts > 0)";

/// A page of jobs, newest first (ids are v7 UUIDs, so id order is creation order): a
/// keyset page after `filter.after`, so that jobs inserted meanwhile never shift a later
/// page and every job present throughout is listed exactly once.
pub async fn jobs(client: &Client, filter: &JobFilter) -> Result<JobsPage, DbError> {
    use crate::state::JobState;
    use tokio_postgres::types::ToSql;
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let mut p = |v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        format!("${}", params.len())
    };
    if !filter.states.is_empty() {
        let mut any = Vec::new();
        for s in &filter.states {
            any.push(match s {
                JobState::Pending => format!("(j.state = 'pending' AND NOT {STARTED})"),
                JobState::Running => {
                    format!("(j.state = 'running' OR (j.state = 'pending' AND {STARTED}))")
                }
                done => format!("j.state = '{}'", done.as_str()),
            });
        }
        conds.push(format!("({})", any.join(" OR ")));
    }
    if let Some(prefix) = &filter.name_prefix {
        let x = p(Box::new(format!("{}%", like_literal(prefix))));
        conds.push(format!("j.name LIKE {x}"));
    }
    if let Some(g) = filter.group.as_ref().filter(|g| !g.is_default()) {
        let exact = p(Box::new(g.as_str().to_owned()));
        let under = p(Box::new(format!("{}.%", like_literal(g.as_str()))));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id
                     AND (t.target_group = {exact} OR t.target_group LIKE {under}))"
        ));
    }
    if let Some((k, v)) = &filter.label {
        let want = p(Box::new(serde_json::json!({ k: v })));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.labels @> {want})"
        ));
    }
    for o in &filter.owners {
        conds.push(match o {
            OwnerFilter::Token(t) => format!("j.owner_token = {}", p(Box::new(t.uuid()))),
            OwnerFilter::Named(n) => format!("j.owner_name = {}", p(Box::new(n.clone()))),
            OwnerFilter::Untokened(n) => format!(
                "(j.owner_token IS NULL AND j.owner_name = {})",
                p(Box::new(n.clone()))
            ),
            OwnerFilter::Nobody => "false".into(),
        });
    }
    if let Some(t) = filter.created_before {
        conds.push(format!("j.created_at < {}", p(Box::new(t))));
    }
    if let Some(t) = filter.created_after {
        conds.push(format!("j.created_at >= {}", p(Box::new(t))));
    }
    if let Some(after) = filter.after {
        conds.push(format!("j.id < {}", p(Box::new(after.uuid()))));
    }
    let limit = p(Box::new(filter.limit + 1));
    let sql = format!(
        "SELECT j.id, j.name,
                CASE WHEN j.state = 'pending' AND {STARTED} THEN 'running' ELSE j.state END,
                j.created_at, j.finished_at, j.owner_token, j.owner_name, j.task_count, j.held,
                (SELECT coalesce(jsonb_object_agg(c.state, c.n), '{{}}')
                 FROM (SELECT state, count(*) AS n FROM tasks WHERE job_id = j.id
                       GROUP BY state) c)
         FROM jobs j
         WHERE {}
         ORDER BY j.id DESC
         LIMIT {limit}",
        if conds.is_empty() {
            "true".to_owned()
        } else {
            conds.join(" AND ")
        }
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(sql.as_str(), &refs).await?;
    let more = rows.len() as i64 > filter.limit;
    let jobs = rows
        .iter()
        .take(filter.limit.max(0) as usize)
        .map(|r| {
            Ok(JobSummary {
                job_id: JobId::from_uuid(r.get(0)),
                name: r.get(1),
                state: r.get(2),
                created_at: r.get(3),
                finished_at: r.get(4),
                submitted_by: SubmittedBy {
                    token_id: r.get::<_, Option<uuid::Uuid>>(5).map(TokenId::from_uuid),
                    name: r.get(6),
                },
                task_count: r.get(7),
                held: r.get(8),
                tasks: json_col("task counts", r.get(9))?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let next_cursor = more
        .then(|| jobs.last().map(|j| j.job_id.to_string()))
        .flatten();
    Ok(JobsPage { jobs, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::GroupName;

    fn copies(states: &[&str]) -> Vec<CopyView> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| CopyView {
                executor_id: format!("e-{i}"),
                state: (*s).into(),
                attempts: 1,
                error: None,
            })
            .collect()
    }

    #[test]
    fn an_each_task_says_how_its_quorum_decided_it() {
        let met = copies(&["succeeded", "failed", "succeeded"]);
        assert_eq!(
            each_outcome("succeeded", &met, Some(2)).as_deref(),
            Some("2 of 3 members succeeded; quorum 2 met")
        );
        let all = copies(&["succeeded", "succeeded"]);
        assert_eq!(
            each_outcome("succeeded", &all, None).as_deref(),
            Some("2 of 2 members succeeded; quorum 2 met")
        );
        let lost = copies(&["failed", "failed", "assigned"]);
        assert_eq!(
            each_outcome("failed", &lost, Some(2)).as_deref(),
            Some("failed: 2 of 3 members failed; quorum 2 can no longer be met")
        );
        let early = copies(&["failed", "cancelled", "cancelled"]);
        assert_eq!(
            each_outcome("failed", &early, None).as_deref(),
            Some("failed: 1 of 3 members failed (2 cancelled); quorum 3 can no longer be met")
        );
        let too_few = copies(&["cancelled", "cancelled"]);
        assert_eq!(
            each_outcome("failed", &too_few, Some(5)).as_deref(),
            Some("failed: quorum 5 is more than its 2 members")
        );
        // Undecided, or never fanned out: its copies (or its state) say it all.
        assert_eq!(each_outcome("assigned", &lost, Some(3)), None);
        assert_eq!(each_outcome("cancelled", &[], None), None);
    }

    fn g(s: &str) -> GroupName {
        GroupName::parse(s).expect("valid group")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_waiting_task_is_told_every_reason_that_holds() {
        let job = JobId::new();
        let ctx = WaitContext {
            alive: vec![
                Candidate {
                    id: "web-1".into(),
                    groups: vec![g("site.web")],
                    labels: labels(&[("os", "linux")]),
                    draining: false,
                    registered: true,
                },
                Candidate {
                    id: "gpu-1".into(),
                    groups: vec![g("lab.gpu")],
                    labels: labels(&[("gpu", "a100")]),
                    draining: true,
                    registered: true,
                },
                Candidate {
                    id: "rogue-1".into(),
                    groups: vec![g("lab.cpu")],
                    labels: labels(&[]),
                    draining: false,
                    registered: false,
                },
            ],
            pauses: vec![g("site")],
            open: false,
        };
        let none = labels(&[]);
        // Served: by a member of a subgroup, or of the group itself.
        assert_eq!(ctx.hint(job, "default", &none, false), None);
        assert_eq!(
            ctx.hint(job, "other", &none, false).as_deref(),
            Some("no executor is eligible: none alive in group other (or its subgroups)")
        );
        assert_eq!(
            ctx.hint(job, "default", &labels(&[("os", "bsd"), ("x", "y")]), false)
                .as_deref(),
            Some("no executor is eligible: none alive with labels os=bsd, x=y")
        );
        // A member of `site.web` does not serve `site.web.eu`; and `site` is paused.
        assert_eq!(
            ctx.hint(job, "site.web.eu", &none, false).as_deref(),
            Some(
                "dispatching is paused for group site (fleetctl scheduler resume site); \
                 no executor is eligible: none alive in group site.web.eu (or its subgroups)"
            )
        );
        assert_eq!(
            ctx.hint(job, "site.web", &labels(&[("os", "linux")]), true)
                .as_deref(),
            Some(&*format!(
                "the job is held: its tasks wait until it is released (fleetctl release \
                 {job}); dispatching is paused for group site (fleetctl scheduler resume site)"
            ))
        );
        assert_eq!(
            ctx.hint(job, "lab", &none, false).as_deref(),
            Some("every eligible executor is draining (gpu-1)")
        );
        assert_eq!(
            ctx.hint(job, "lab.cpu", &none, false).as_deref(),
            Some(
                "no eligible executor is registered (rogue-1): work goes only to executors \
                 that registered with a join token or the bootstrap secret"
            )
        );
        let open = WaitContext {
            open: true,
            ..ctx.clone()
        };
        assert_eq!(open.hint(job, "lab.cpu", &none, false), None);
        let fleet = WaitContext {
            pauses: vec![g("default")],
            ..ctx
        };
        assert_eq!(
            fleet.hint(job, "site.web", &none, false).as_deref(),
            Some("dispatching is paused for the whole fleet (fleetctl scheduler resume)")
        );
    }

    #[test]
    fn a_name_prefix_matches_literally() {
        assert_eq!(like_literal("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(like_literal("nightly-"), "nightly-");
    }
}
