//! Statements the collector owns: results, and the task and job states that follow
//! from them. `settle` is also what the dispatcher's lease sweep runs for lost attempts,
//! so that one code path decides every task outcome.

use std::collections::{BTreeSet, HashMap};

use super::{DbError, Transaction};
use crate::event::{Kind, NewEvent};
use crate::id::{JobId, TaskId};
use crate::metrics::AttemptTimes;
use crate::proto::{Outcome, TaskResult};
use crate::state::{
    copy_after, job_state, outcome_under_cancel, quorum_decision, quorum_needed,
    resolve_dependencies, transition, CopyState, DepNode, JobState, TaskCounts, TaskEvent,
    TaskState,
};

/// An attempt that ended, as the collector (result) or the lease sweep (lost) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub task_id: TaskId,
    pub attempt: i32,
    pub outcome: Outcome,
}

/// What settling a batch changed, for events and wake-ups.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Tasks that reached a final state, with it.
    pub finished: Vec<(JobId, TaskId, TaskState)>,
    /// Tasks that went back to ready, or became ready as dependencies finished.
    pub readied: usize,
    /// Jobs whose state changed, with the new state.
    pub jobs: Vec<(JobId, JobState)>,
    /// What these changes announce, in order (written to the event log by the caller,
    /// in the same transaction).
    pub events: Vec<NewEvent>,
}

impl Settled {
    /// A task reached a final state (decided by that attempt, if one did).
    fn finish(&mut self, job_id: JobId, task_id: TaskId, to: TaskState, attempt: Option<i32>) {
        self.finished.push((job_id, task_id, to));
        self.events.push(
            NewEvent::task(Kind::TaskFinished, job_id, task_id, attempt).with_state(to.as_str()),
        );
    }

    /// Another batch's changes after these.
    pub fn extend(&mut self, other: Settled) {
        self.finished.extend(other.finished);
        self.readied += other.readied;
        self.jobs.extend(other.jobs);
        self.events.extend(other.events);
    }
}

/// Why a result was refused rather than stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such attempt: the task does not exist, or has not reached that attempt (a
    /// result planted ahead of its attempt must not take the real one's place).
    UnknownAttempt,
    /// The attempt exists but was given to another executor than the one reporting.
    NotHolder,
}

impl Refused {
    /// The dead-letter reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownAttempt => "unknown_attempt",
            Self::NotHolder => "not_holder",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Self::UnknownAttempt => "no such attempt of that task",
            Self::NotHolder => "the attempt was given to another executor",
        }
    }
}

/// What recording a batch of results came to.
#[derive(Debug, Default)]
pub struct Recorded {
    pub settled: Settled,
    /// Positions (in the batch given) of the results refused, with why.
    pub refused: Vec<(usize, Refused)>,
    /// The times of the attempts these results closed (each once: a redelivered result
    /// closes nothing), for the histograms.
    pub times: Vec<AttemptTimes>,
}

/// Stores a batch of results (each once: a redelivered result is a no-op), closes the
/// attempts they report, and settles the tasks whose current attempt that was. Only the
/// executor an attempt was given to may report it: a result for an attempt that does not
/// exist, or from another executor, is refused (the caller dead-letters it), never
/// stored. A late result of an attempt already lost is stored but decides nothing. The
/// commit notifies `<schema>_fleet_results`, for whoever watches results come in.
pub async fn record_results(
    tx: &Transaction<'_>,
    schema: &str,
    results: &[TaskResult],
) -> Result<Recorded, DbError> {
    if results.is_empty() {
        return Ok(Recorded::default());
    }
    // An executor restarted under its id may rerun an attempt and report it twice; two
    // rows for one attempt in one statement would let the stored result and the closed
    // attempt disagree. The first one reported is the one kept, as ON CONFLICT does.
    // (Reports of one attempt from two executors are kept apart: only the holder's can
    // match the attempt.)
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&TaskResult> = results
        .iter()
        .filter(|r| seen.insert((r.task_id, r.attempt, r.executor_id.clone())))
        .collect();
    let task_ids: Vec<uuid::Uuid> = firsts.iter().map(|r| r.task_id.uuid()).collect();
    let attempts: Vec<i32> = firsts.iter().map(|r| r.attempt).collect();
    let executors: Vec<&str> = firsts.iter().map(|r| r.executor_id.as_str()).collect();
    let outcomes: Vec<&str> = firsts.iter().map(|r| r.outcome.as_str()).collect();
    let exit_codes: Vec<Option<i32>> = firsts.iter().map(|r| r.exit_code).collect();
    let signals: Vec<Option<i32>> = firsts.iter().map(|r| r.signal).collect();
    let errors: Vec<Option<&str>> = firsts.iter().map(|r| r.error.as_deref()).collect();
    // PostgreSQL text cannot hold NUL.
    let text = |s: &str| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s.to_owned()
        }
    };
    let stdouts: Vec<String> = firsts.iter().map(|r| text(&r.stdout)).collect();
    let stderrs: Vec<String> = firsts.iter().map(|r| text(&r.stderr)).collect();
    let out_cut: Vec<bool> = firsts.iter().map(|r| r.stdout_truncated).collect();
    let err_cut: Vec<bool> = firsts.iter().map(|r| r.stderr_truncated).collect();
    let started: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        firsts.iter().map(|r| r.started_at).collect();
    let finished: Vec<chrono::DateTime<chrono::Utc>> =
        firsts.iter().map(|r| r.finished_at).collect();
    let channel = results_channel(schema);
    // `known`: the results whose attempt exists and is held by the executor reporting
    // it. Only those are stored, and only those close their attempt (if it is still
    // open); the job is the task's, whatever the message says. The tasks of the attempts
    // closed are locked (in id order, as every settler takes them) and read for
    // settling, in the same statement.
    let stmt = tx
        .prepare_cached(
            "WITH x AS (
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[],
                                      $6::int[], $7::text[], $8::text[], $9::text[], $10::bool[],
                                      $11::bool[], $12::timestamptz[], $13::timestamptz[])
                     AS x(task_id, attempt, executor_id, outcome, exit_code, signal, error,
                          stdout, stderr, stdout_truncated, stderr_truncated, started_at,
                          finished_at)),
             known AS (
                 SELECT x.*, t.job_id FROM x
                 JOIN attempts a ON a.task_id = x.task_id AND a.attempt = x.attempt
                                AND a.executor_id = x.executor_id
                 JOIN tasks t ON t.id = x.task_id),
             ins AS (
                 INSERT INTO results (task_id, attempt, job_id, executor_id, outcome, exit_code,
                     signal, error, stdout, stderr, stdout_truncated, stderr_truncated,
                     started_at, finished_at)
                 SELECT task_id, attempt, job_id, executor_id, outcome, exit_code, signal,
                     error, stdout, stderr, stdout_truncated, stderr_truncated, started_at,
                     finished_at
                 FROM known
                 ON CONFLICT (task_id, attempt) DO NOTHING),
             closed AS (
                 UPDATE attempts a SET state = k.outcome, finished_at = k.finished_at,
                                       started_at = coalesce(a.started_at, k.started_at)
                 FROM known k
                 WHERE a.task_id = k.task_id AND a.attempt = k.attempt
                   AND a.executor_id = k.executor_id
                   AND a.state IN ('assigned', 'running', 'reported')
                 RETURNING a.task_id, a.attempt, k.outcome, a.executor_id,
                           a.started_at = k.started_at AS first_start,
                           k.started_at AS run_start, k.finished_at AS run_end),
             locked AS (
                 SELECT t.id, t.job_id, t.state, t.attempts, t.max_attempts, t.each, t.quorum,
                        j.task_count, t.cancel_requested_at IS NOT NULL AS cancel_requested,
                        t.attempt_base, t.retry, t.target_group,
                        coalesce(t.ready_at, t.created_at) AS ready_at, t.created_at
                 FROM tasks t JOIN jobs j ON j.id = t.job_id
                 WHERE t.id IN (SELECT task_id FROM closed)
                 ORDER BY t.id FOR UPDATE OF t),
             notified AS (SELECT pg_notify($14, ''))
             SELECT 'closed', c.task_id, c.attempt, c.outcome, l.job_id, l.state, l.attempts,
                    l.max_attempts, l.each, l.quorum, l.task_count, l.cancel_requested,
                    l.attempt_base, l.retry, c.executor_id, c.first_start, l.target_group,
                    extract(epoch FROM c.run_start - l.ready_at)::float8,
                    extract(epoch FROM c.run_end - c.run_start)::float8,
                    extract(epoch FROM clock_timestamp() - l.created_at)::float8
             FROM closed c JOIN locked l ON l.id = c.task_id
             UNION ALL
             SELECT CASE WHEN EXISTS (SELECT 1 FROM attempts a
                                      WHERE a.task_id = x.task_id AND a.attempt = x.attempt)
                         THEN 'not_holder' ELSE 'unknown_attempt' END,
                    x.task_id, x.attempt, x.executor_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM x WHERE NOT EXISTS (SELECT 1 FROM known k
                                      WHERE k.task_id = x.task_id AND k.attempt = x.attempt
                                        AND k.executor_id = x.executor_id)
             UNION ALL
             SELECT 'notified', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM notified",
        )
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &task_ids,
                &attempts,
                &executors,
                &outcomes,
                &exit_codes,
                &signals,
                &errors,
                &stdouts,
                &stderrs,
                &out_cut,
                &err_cut,
                &started,
                &finished,
                &channel,
            ],
        )
        .await?;
    let mut ended = Vec::new();
    let mut tasks = HashMap::new();
    let mut refused_keys = HashMap::new();
    // Attempts that ended before an INFO said they had started: their start is
    // announced here, before their end. `first_start` is read from the row as updated
    // (its latest version, after any wait for the dispatcher's lock): the start is
    // the result's own only if nobody had recorded one, so the dispatcher (which
    // announces the starts it records) and this never both announce one.
    let mut started = Vec::new();
    let mut times = Vec::new();
    for r in &rows {
        let kind: &str = r.get(0);
        match kind {
            "notified" => {}
            "closed" => {
                let outcome: String = r.get(3);
                let task_id = TaskId::from_uuid(r.get(1));
                if let Some(outcome) = Outcome::parse(&outcome) {
                    ended.push(Ended {
                        task_id,
                        attempt: r.get(2),
                        outcome,
                    });
                }
                let locked = Locked::from_row(r, 4)?;
                if r.get::<_, Option<bool>>(15) == Some(true) {
                    let mut ev =
                        NewEvent::task(Kind::TaskStarted, locked.job_id, task_id, Some(r.get(2)));
                    ev.executor_id = r.get(14);
                    started.push(ev);
                }
                times.push(AttemptTimes {
                    group: r.get(16),
                    outcome,
                    queue_wait_secs: r.get(17),
                    run_secs: r.get(18),
                    submit_to_recorded_secs: r.get::<_, Option<f64>>(19).unwrap_or(0.0),
                });
                tasks.insert(task_id.uuid(), locked);
            }
            why => {
                let task_id = TaskId::from_uuid(r.get(1));
                let attempt: i32 = r.get(2);
                let executor: String = r.get(3);
                let why = if why == "not_holder" {
                    Refused::NotHolder
                } else {
                    Refused::UnknownAttempt
                };
                refused_keys.insert((task_id, attempt, executor), why);
            }
        }
    }
    // Every copy of a refused result is refused (a repeat within the batch included).
    let refused = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let key = (r.task_id, r.attempt, r.executor_id.to_string());
            refused_keys.get(&key).map(|&w| (i, w))
        })
        .collect();
    let mut settled = settle_locked(tx, &ended, &tasks).await?;
    settled.events.splice(0..0, started);
    Ok(Recorded {
        settled,
        refused,
        times,
    })
}

/// The channel a commit that records results notifies: `<schema>_fleet_results`.
pub fn results_channel(schema: &str) -> String {
    format!("{schema}_fleet_results")
}

/// Marks these attempts lost now and settles their tasks, as the lease sweep would
/// later: their executor says it killed them unfinished as it shut down (dispatcher),
/// or their result was refused for good (collector).
pub async fn lose(tx: &Transaction<'_>, held: &[super::HeldBy]) -> Result<Settled, DbError> {
    if held.is_empty() {
        return Ok(Settled::default());
    }
    let (tasks, attempts, executors) = super::held_by_columns(held);
    let stmt = tx
        .prepare_cached(
            "UPDATE attempts a SET state = 'lost', finished_at = clock_timestamp()
             FROM unnest($1::uuid[], $2::int[], $3::text[]) AS x(task_id, attempt, executor_id)
             WHERE a.task_id = x.task_id AND a.attempt = x.attempt
               AND a.executor_id = x.executor_id
               AND a.state = ANY($4)
             RETURNING a.task_id, a.attempt",
        )
        .await?;
    // The states through a parameter: see dispatch::OPEN.
    let open = ["assigned", "running", "reported"];
    let rows = tx
        .query(&stmt, &[&tasks, &attempts, &executors, &&open[..]])
        .await?;
    let ended: Vec<Ended> = rows
        .iter()
        .map(|r| Ended {
            task_id: TaskId::from_uuid(r.get(0)),
            attempt: r.get(1),
            outcome: Outcome::Lost,
        })
        .collect();
    settle(tx, &ended).await
}

/// A task row as settling reads it (locked FOR UPDATE).
#[derive(Debug, Clone)]
struct Locked {
    job_id: JobId,
    state: TaskState,
    attempts: i32,
    max_attempts: i32,
    each: bool,
    quorum: Option<i32>,
    /// Tasks in its job: a job of one task is settled from this row alone.
    task_count: i32,
    /// Its cancel was asked: only a success stands, nothing is tried again.
    cancel_requested: bool,
    /// Attempts of earlier runs (a manual rerun starts the budget again).
    attempt_base: i32,
    retry: Option<crate::retry::RetryPolicy>,
}

impl Locked {
    /// From a row holding, from column `at` on: job_id, state, attempts, max_attempts,
    /// each, quorum, the job's task_count, whether its cancel was asked, the attempt
    /// base, the retry policy.
    fn from_row(r: &tokio_postgres::Row, at: usize) -> Result<Self, DbError> {
        Ok(Self {
            job_id: JobId::from_uuid(r.get(at)),
            state: parse_state(r.get(at + 1))?,
            attempts: r.get(at + 2),
            max_attempts: r.get(at + 3),
            each: r.get(at + 4),
            quorum: r.get(at + 5),
            task_count: r.get(at + 6),
            cancel_requested: r.get(at + 7),
            attempt_base: r.get(at + 8),
            retry: r
                .get::<_, Option<serde_json::Value>>(at + 9)
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| DbError::Row(format!("tasks.retry: {e}")))?,
        })
    }
}

fn parse_state(s: &str) -> Result<TaskState, DbError> {
    TaskState::parse(s).ok_or_else(|| DbError::Row(format!("task state {s:?}")))
}

/// Locks the tasks (in id order, so concurrent settlers cannot deadlock) and reads them.
async fn lock_tasks(
    tx: &Transaction<'_>,
    ids: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Locked>, DbError> {
    let stmt = tx
        .prepare_cached(
            "SELECT t.id, t.job_id, t.state, t.attempts, t.max_attempts, t.each, t.quorum,
                    j.task_count, t.cancel_requested_at IS NOT NULL, t.attempt_base, t.retry
             FROM tasks t JOIN jobs j ON j.id = t.job_id
             WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE OF t",
        )
        .await?;
    let rows = tx.query(&stmt, &[&ids]).await?;
    let mut tasks = HashMap::with_capacity(rows.len());
    for r in &rows {
        tasks.insert(r.get::<_, uuid::Uuid>(0), Locked::from_row(r, 1)?);
    }
    Ok(tasks)
}

/// Task state changes decided while settling, written at the end in one statement.
#[derive(Default)]
struct Changes {
    /// (task, new state, the attempt that decided it)
    tasks: Vec<(uuid::Uuid, TaskState, Option<i32>)>,
    /// Tasks going to `retrying`, and how long they wait.
    waits: HashMap<uuid::Uuid, std::time::Duration>,
}

impl Changes {
    fn retry_in(&mut self, id: uuid::Uuid, wait: std::time::Duration) {
        self.waits.insert(id, wait);
    }

    fn set(&mut self, id: uuid::Uuid, to: TaskState, final_attempt: Option<i32>) {
        self.tasks.push((id, to, final_attempt));
    }

    /// The newest state decided for a task, if any.
    fn state_of(&self, id: uuid::Uuid) -> Option<TaskState> {
        self.tasks.iter().rev().find(|t| t.0 == id).map(|t| t.1)
    }
}

/// Applies ended attempts to their tasks through the state machine, then moves the
/// dependents of finished tasks and re-derives the state of every job touched. An
/// attempt of an `each` task ends its member's copy, and the quorum decides the task.
pub async fn settle(tx: &Transaction<'_>, ended: &[Ended]) -> Result<Settled, DbError> {
    if ended.is_empty() {
        return Ok(Settled::default());
    }
    let ids: Vec<uuid::Uuid> = ended.iter().map(|e| e.task_id.uuid()).collect();
    let tasks = lock_tasks(tx, &ids).await?;
    settle_locked(tx, ended, &tasks).await
}

/// [`settle`] with the tasks already locked and read.
async fn settle_locked(
    tx: &Transaction<'_>,
    ended: &[Ended],
    tasks: &HashMap<uuid::Uuid, Locked>,
) -> Result<Settled, DbError> {
    let mut settled = Settled::default();
    if ended.is_empty() {
        return Ok(settled);
    }
    let mut changes = Changes::default();
    let mut jobs = BTreeSet::new();
    let mut copy_ends = Vec::new();
    for e in ended {
        let Some(t) = tasks.get(&e.task_id.uuid()) else {
            continue;
        };
        if t.each {
            copy_ends.push(*e);
            continue;
        }
        // Only the current attempt decides; an older one's end is history.
        if t.attempts != e.attempt {
            continue;
        }
        let outcome = outcome_under_cancel(e.outcome, t.cancel_requested);
        let used = u32::try_from(e.attempt - t.attempt_base).unwrap_or(0);
        let event = TaskEvent::AttemptEnded {
            outcome,
            attempts_used: used,
            max_attempts: u32::try_from(t.max_attempts).unwrap_or(0),
            retry: t.retry.as_ref().is_some_and(|p| p.retries(outcome)),
        };
        let Ok(to) = transition(t.state, event) else {
            continue;
        };
        if to == TaskState::Retrying {
            // The wait grows with the attempts this run used (all but lost ones are
            // retried by the policy; a lost one in between only lengthens it).
            let wait = t.retry.as_ref().map(|p| p.delay(used)).unwrap_or_default();
            changes.retry_in(e.task_id.uuid(), wait);
        }
        changes.set(e.task_id.uuid(), to, to.is_terminal().then_some(e.attempt));
        jobs.insert(t.job_id);
        if to.is_terminal() {
            settled.finish(t.job_id, e.task_id, to, Some(e.attempt));
        } else {
            settled.readied += 1;
            if to == TaskState::Retrying {
                let mut ev =
                    NewEvent::task(Kind::TaskRetrying, t.job_id, e.task_id, Some(e.attempt))
                        .with_state(outcome.as_str());
                ev.retry_in = changes.waits.get(&e.task_id.uuid()).copied();
                settled.events.push(ev);
            }
        }
    }
    if !copy_ends.is_empty() {
        let deciding = end_copies(tx, &copy_ends, tasks).await?;
        let each: Vec<uuid::Uuid> = copy_ends.iter().map(|e| e.task_id.uuid()).collect();
        decide_each(
            tx,
            &each,
            tasks,
            &deciding,
            &mut changes,
            &mut jobs,
            &mut settled,
        )
        .await?;
    }
    resolve_jobs(tx, &jobs, tasks, changes, &mut settled).await?;
    Ok(settled)
}

/// Re-decides `each` tasks after their copies changed outside an attempt's end (fan-out,
/// a member that never came back): locks them, applies the quorum, settles their jobs.
pub async fn settle_each(tx: &Transaction<'_>, ids: &[TaskId]) -> Result<Settled, DbError> {
    let mut settled = Settled::default();
    if ids.is_empty() {
        return Ok(settled);
    }
    let ids: Vec<uuid::Uuid> = ids.iter().map(|t| t.uuid()).collect();
    let tasks = lock_tasks(tx, &ids).await?;
    let mut jobs = BTreeSet::new();
    let mut changes = Changes::default();
    decide_each(
        tx,
        &ids,
        &tasks,
        &HashMap::new(),
        &mut changes,
        &mut jobs,
        &mut settled,
    )
    .await?;
    resolve_jobs(tx, &jobs, &tasks, changes, &mut settled).await?;
    Ok(settled)
}

/// Ends the copies whose open attempt these are: succeeded, failed, or back to pending
/// (a lost attempt, while the member has attempts left). Returns, per task, the attempt
/// that ended last (the one that may decide it).
async fn end_copies(
    tx: &Transaction<'_>,
    ended: &[Ended],
    tasks: &HashMap<uuid::Uuid, Locked>,
) -> Result<HashMap<uuid::Uuid, i32>, DbError> {
    let task_ids: Vec<uuid::Uuid> = ended.iter().map(|e| e.task_id.uuid()).collect();
    let attempts: Vec<i32> = ended.iter().map(|e| e.attempt).collect();
    let rows = tx
        .query(
            "SELECT c.task_id, c.current_attempt, c.attempts FROM task_copies c
             JOIN unnest($1::uuid[], $2::int[]) AS x(task_id, attempt)
               ON c.task_id = x.task_id AND c.current_attempt = x.attempt
             WHERE c.state = 'assigned'",
            &[&task_ids, &attempts],
        )
        .await?;
    let open: HashMap<(uuid::Uuid, i32), i32> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let (mut ids, mut nums, mut states, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut deciding = HashMap::new();
    for e in ended {
        let key = (e.task_id.uuid(), e.attempt);
        let (Some(&used), Some(t)) = (open.get(&key), tasks.get(&key.0)) else {
            continue;
        };
        let mut to = copy_after(
            e.outcome,
            u32::try_from(used).unwrap_or(0),
            u32::try_from(t.max_attempts).unwrap_or(0),
        );
        let mut error = (to == CopyState::Failed && e.outcome == Outcome::Lost)
            .then_some("attempt lost: its executor stopped reporting, and no attempt is left");
        // A decided task tries nothing again: nobody would pick the copy up.
        if to == CopyState::Pending && t.state.is_terminal() {
            to = CopyState::Cancelled;
            error = Some("attempt lost after the task was decided; not tried again");
        }
        ids.push(key.0);
        nums.push(e.attempt);
        states.push(to.as_str());
        errors.push(error);
        deciding.insert(key.0, e.attempt);
    }
    if !ids.is_empty() {
        tx.execute(
            "UPDATE task_copies c SET state = x.state, error = x.error,
                 pending_since = CASE WHEN x.state = 'pending' THEN clock_timestamp() END
             FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[])
                  AS x(task_id, attempt, state, error)
             WHERE c.task_id = x.task_id AND c.current_attempt = x.attempt AND c.state = 'assigned'",
            &[&ids, &nums, &states, &errors],
        )
        .await?;
    }
    Ok(deciding)
}

/// Applies the quorum to `each` tasks that are not decided yet; a decided task's copies
/// that never started are cancelled (those running finish and are kept).
async fn decide_each(
    tx: &Transaction<'_>,
    ids: &[uuid::Uuid],
    tasks: &HashMap<uuid::Uuid, Locked>,
    deciding: &HashMap<uuid::Uuid, i32>,
    changes: &mut Changes,
    jobs: &mut BTreeSet<JobId>,
    settled: &mut Settled,
) -> Result<(), DbError> {
    let open: Vec<uuid::Uuid> = ids
        .iter()
        .filter(|id| {
            tasks
                .get(id)
                .is_some_and(|t| t.each && !t.state.is_terminal())
        })
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT task_id, count(*), count(*) FILTER (WHERE state = 'succeeded'),
                    count(*) FILTER (WHERE state IN ('failed', 'cancelled'))
             FROM task_copies WHERE task_id = ANY($1) GROUP BY task_id",
            &[&open],
        )
        .await?;
    let mut decided = Vec::new();
    for r in &rows {
        let id: uuid::Uuid = r.get(0);
        let Some(t) = tasks.get(&id) else { continue };
        let n = |i: usize| u32::try_from(r.get::<_, i64>(i)).unwrap_or(u32::MAX);
        let (members, succeeded, failed) = (n(1), n(2), n(3));
        let needed = quorum_needed(members, t.quorum.and_then(|q| u32::try_from(q).ok()));
        let Some(to) = quorum_decision(members, needed, succeeded, failed) else {
            continue;
        };
        changes.set(id, to, deciding.get(&id).copied());
        decided.push(id);
        jobs.insert(t.job_id);
        settled.finish(
            t.job_id,
            TaskId::from_uuid(id),
            to,
            deciding.get(&id).copied(),
        );
    }
    if !decided.is_empty() {
        tx.execute(
            "UPDATE task_copies SET state = 'cancelled', pending_since = NULL,
                 error = 'the task was decided before this member ran it'
             WHERE task_id = ANY($1) AND state = 'pending'",
            &[&decided],
        )
        .await?;
    }
    Ok(())
}

/// For each job: release or cancel waiting dependents, then derive the job's state; then
/// writes every task change and job state in one statement. A job of one task is derived
/// from that task alone; the tasks of a larger job are read under the job's lock (taken
/// in id order, after the tasks', so two transactions settling tasks of one job run one
/// after the other, and the second sees the first's states).
async fn resolve_jobs(
    tx: &Transaction<'_>,
    jobs: &BTreeSet<JobId>,
    locked: &HashMap<uuid::Uuid, Locked>,
    mut changes: Changes,
    settled: &mut Settled,
) -> Result<(), DbError> {
    if jobs.is_empty() && changes.tasks.is_empty() {
        return Ok(());
    }
    struct Row {
        id: uuid::Uuid,
        node: DepNode,
        attempts: i32,
    }
    let mut by_job: HashMap<uuid::Uuid, Vec<Row>> = HashMap::new();
    let mut larger = Vec::new();
    for job in jobs {
        let single = locked
            .iter()
            .find(|(_, t)| t.job_id == *job && t.task_count == 1);
        match single {
            Some((&id, t)) => {
                by_job.entry(job.uuid()).or_default().push(Row {
                    id,
                    node: DepNode {
                        state: changes.state_of(id).unwrap_or(t.state),
                        depends_on: Vec::new(),
                    },
                    attempts: t.attempts,
                });
            }
            None => larger.push(job.uuid()),
        }
    }
    if !larger.is_empty() {
        // Two statements, sent together: the read takes its snapshot only once the lock
        // is held, so it sees what a settler that held the lock before committed.
        let lock = tx
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .await?;
        let read = tx
            .prepare_cached(
                "SELECT job_id, id, state, depends_on, attempts FROM tasks
                 WHERE job_id = ANY($1) ORDER BY job_id, idx",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&larger];
        let (_, rows) = tokio::try_join!(tx.execute(&lock, &params), tx.query(&read, &params))?;
        for r in &rows {
            let id: uuid::Uuid = r.get(1);
            let deps: serde_json::Value = r.get(3);
            by_job.entry(r.get(0)).or_default().push(Row {
                id,
                node: DepNode {
                    state: match changes.state_of(id) {
                        Some(s) => s,
                        None => parse_state(r.get(2))?,
                    },
                    depends_on: serde_json::from_value(deps)
                        .map_err(|e| DbError::Row(e.to_string()))?,
                },
                attempts: r.get(4),
            });
        }
    }
    let (mut job_ids, mut job_states) = (Vec::new(), Vec::new());
    for (job, mut tasks) in by_job {
        let job_id = JobId::from_uuid(job);
        let nodes: Vec<DepNode> = tasks.iter().map(|t| t.node.clone()).collect();
        for (i, to) in resolve_dependencies(&nodes) {
            tasks[i].node.state = to;
            changes.set(tasks[i].id, to, None);
            if to.is_terminal() {
                settled.finish(job_id, TaskId::from_uuid(tasks[i].id), to, None);
            } else {
                settled.readied += 1;
            }
        }
        let mut c = TaskCounts::default();
        for t in &tasks {
            c.total += 1;
            c.started_any |= t.attempts > 0;
            match t.node.state {
                TaskState::Waiting | TaskState::Ready | TaskState::Retrying => c.queued += 1,
                TaskState::Assigned | TaskState::Running => c.active += 1,
                TaskState::Succeeded => c.succeeded += 1,
                TaskState::Failed => c.failed += 1,
                TaskState::Cancelled => c.cancelled += 1,
            }
        }
        job_ids.push(job);
        job_states.push(job_state(&c).as_str());
    }
    let task_ids: Vec<uuid::Uuid> = changes.tasks.iter().map(|t| t.0).collect();
    let task_states: Vec<&str> = changes.tasks.iter().map(|t| t.1.as_str()).collect();
    let finals: Vec<Option<i32>> = changes.tasks.iter().map(|t| t.2).collect();
    let waits: Vec<Option<f64>> = changes
        .tasks
        .iter()
        .map(|t| changes.waits.get(&t.0).map(|w| w.as_secs_f64()))
        .collect();
    // The last change of a task wins: updates are applied in order by the ordinality.
    let stmt = tx
        .prepare_cached(
            "WITH t AS (
                 UPDATE tasks t SET state = x.state,
                     ready_at = CASE WHEN x.state = 'ready' AND t.state <> 'ready'
                                     THEN clock_timestamp() ELSE t.ready_at END,
                     final_attempt = coalesce(x.final_attempt, t.final_attempt),
                     retry_at = CASE WHEN x.state = 'retrying'
                                     THEN clock_timestamp() + make_interval(secs => x.wait) END,
                     updated_at = clock_timestamp()
                 FROM (SELECT DISTINCT ON (id) id, state, final_attempt, wait
                       FROM unnest($1::uuid[], $2::text[], $3::int[], $6::float8[])
                            WITH ORDINALITY AS u(id, state, final_attempt, wait, n)
                       ORDER BY id, n DESC) x
                 WHERE t.id = x.id)
             UPDATE jobs j SET state = x.state,
                 finished_at = CASE WHEN x.state IN ('succeeded', 'failed', 'cancelled')
                                    THEN clock_timestamp() END
             FROM unnest($4::uuid[], $5::text[]) AS x(id, state)
             WHERE j.id = x.id AND j.state IS DISTINCT FROM x.state
             RETURNING j.id, j.state",
        )
        .await?;
    let changed = tx
        .query(
            &stmt,
            &[
                &task_ids,
                &task_states,
                &finals,
                &job_ids,
                &job_states,
                &waits,
            ],
        )
        .await?;
    for r in &changed {
        let s: String = r.get(1);
        if let Some(state) = JobState::parse(&s) {
            let job_id = JobId::from_uuid(r.get(0));
            settled.jobs.push((job_id, state));
            let kind = match state {
                JobState::Succeeded => Some(Kind::JobSucceeded),
                JobState::Failed => Some(Kind::JobFailed),
                JobState::Cancelled => Some(Kind::JobCancelled),
                _ => None,
            };
            if let Some(kind) = kind {
                settled
                    .events
                    .push(NewEvent::job(kind, job_id, Some(state.as_str())));
            }
        }
    }
    Ok(())
}

/// What a cancel did.
#[derive(Debug, Default)]
pub struct Cancelling {
    /// Tasks that ended `cancelled` at once (waiting, ready, `each` tasks), and the
    /// dependents and job states that followed.
    pub settled: Settled,
    /// Open attempts to kill on their executors (the dispatcher sends the cancels); their
    /// tasks end when the attempts do.
    pub killing: Vec<super::HeldBy>,
}

/// Cancels a job's unfinished tasks (`task`: that one only; its dependents follow).
/// Waiting and ready tasks end `cancelled` now; an `each` task ends now, its copies
/// not started are cancelled and its running ones killed; a plain task held by an
/// executor is marked, and its open attempt flagged for the dispatcher to kill: it ends
/// with that attempt, `cancelled` unless it succeeded first (one outcome, the real
/// one), and is never tried again. Tasks are locked in id order, as every settler takes
/// them, so a cancel and a finish of one task run one after the other. Idempotent.
pub async fn cancel(
    tx: &Transaction<'_>,
    job: JobId,
    task: Option<TaskId>,
) -> Result<Cancelling, DbError> {
    let mut out = Cancelling::default();
    let terminal = ["succeeded", "failed", "cancelled"];
    let open = ["assigned", "running"];
    let ids: Vec<uuid::Uuid> = tx
        .query(
            "SELECT id FROM tasks WHERE job_id = $1 AND ($2::uuid IS NULL OR id = $2)
                 AND state <> ALL($3)",
            &[&job.uuid(), &task.map(|t| t.uuid()), &&terminal[..]],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(out);
    }
    // The open attempts are flagged before the tasks are locked: whoever closes an
    // attempt (the collector, the lease sweep) locks the attempt, then its task; taking
    // them the other way round would deadlock with a result arriving now.
    let flag = "UPDATE attempts SET cancel_requested = true
                WHERE task_id = ANY($1) AND state = ANY($2) AND NOT cancel_requested
                RETURNING task_id, attempt, executor_id";
    out.killing = tx
        .query(flag, &[&ids, &&open[..]])
        .await?
        .iter()
        .map(super::HeldBy::from_row)
        .collect::<Result<_, _>>()?;
    let tasks = lock_tasks(tx, &ids).await?;
    let mut changes = Changes::default();
    let mut jobs = BTreeSet::new();
    let (mut marked, mut held, mut each) = (Vec::new(), Vec::new(), Vec::new());
    for (&id, t) in &tasks {
        if t.state.is_terminal() {
            continue;
        }
        marked.push(id);
        match t.state {
            TaskState::Waiting | TaskState::Ready | TaskState::Retrying => {
                changes.set(id, TaskState::Cancelled, None);
                jobs.insert(t.job_id);
                out.settled
                    .finish(t.job_id, TaskId::from_uuid(id), TaskState::Cancelled, None);
            }
            _ if t.each => {
                changes.set(id, TaskState::Cancelled, None);
                jobs.insert(t.job_id);
                out.settled
                    .finish(t.job_id, TaskId::from_uuid(id), TaskState::Cancelled, None);
                each.push(id);
                held.push(id);
            }
            _ => held.push(id),
        }
    }
    tx.execute(
        "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp())
         WHERE id = ANY($1)",
        &[&marked],
    )
    .await?;
    if !each.is_empty() {
        tx.execute(
            "UPDATE task_copies SET state = 'cancelled', pending_since = NULL,
                 error = 'cancelled before this member ran it'
             WHERE task_id = ANY($1) AND state = 'pending'",
            &[&each],
        )
        .await?;
    }
    // An attempt opened between the flagging and the lock (the dispatcher assigned the
    // task meanwhile) is flagged now; with the task locked, no other can open.
    if !held.is_empty() {
        let late: Vec<super::HeldBy> = tx
            .query(flag, &[&held, &&open[..]])
            .await?
            .iter()
            .map(super::HeldBy::from_row)
            .collect::<Result<_, _>>()?;
        out.killing.extend(late);
    }
    resolve_jobs(tx, &jobs, &tasks, changes, &mut out.settled).await?;
    Ok(out)
}
