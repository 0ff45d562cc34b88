//! A round's plan, from what it read: which ready task goes to which executor, under
//! which attempt number, and the request that goes with it. Pure: no database, no
//! broker, so tests drive it with data alone.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_shared::db::dispatch::ReadyRow;
use fleet_shared::id::{ExecutorId, TaskId};
use fleet_shared::policy::{self, ExecutorView, ReadyTask};
use fleet_shared::proto::Request;

/// One attempt to open, and what to send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub task_id: TaskId,
    pub executor_id: ExecutorId,
    /// The task's attempt counter plus one: the database opens it only if the counter
    /// has not moved since it was read.
    pub attempt: i32,
    pub request: Request,
    /// What an executor needs to be eligible for it (should it move to an idle slot).
    pub task: ReadyTask,
}

/// What a round's first read of ready tasks (`read` of at most `limit`) says of the
/// backlog: a short read means every ready task is in sight ([`policy::Backlog::Tail`]).
pub fn backlog(read: usize, limit: i64) -> policy::Backlog {
    if i64::try_from(read).unwrap_or(i64::MAX) < limit {
        policy::Backlog::Tail
    } else {
        policy::Backlog::Deep
    }
}

pub fn ready_task(r: &ReadyRow) -> ReadyTask {
    ReadyTask {
        id: r.id,
        group: r.group.clone(),
        labels: r.labels.clone(),
    }
}

/// Plans the ready tasks (in the order read: highest priority, then oldest) onto the
/// executors through the balancing policy; `views` count what is handed out. `now` and
/// `lease` date the requests' (informative) lease deadline. A task in `avoid` was just
/// given back by the executor named there, and goes elsewhere if it can.
pub fn plan(
    ready: &[ReadyRow],
    views: &mut [ExecutorView],
    window: u32,
    backlog: policy::Backlog,
    lease: Duration,
    now: DateTime<Utc>,
    avoid: &HashMap<TaskId, ExecutorId>,
) -> Vec<Planned> {
    let tasks: Vec<ReadyTask> = ready.iter().map(ready_task).collect();
    let deadline = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::zero());
    policy::assign_avoiding(&tasks, views, window, avoid, backlog)
        .into_iter()
        .filter_map(|(task_id, executor_id)| {
            let row = ready.iter().find(|r| r.id == task_id)?;
            let attempt = row.attempts + 1;
            Some(Planned {
                task_id,
                executor_id,
                attempt,
                request: request(row, attempt, deadline),
                task: ready_task(row),
            })
        })
        .collect()
}

/// Opens a row's sealed secret env values into its `env` (the request carries them
/// like the others); without a key, or with another one, says why not.
pub fn open_secrets(
    row: &mut ReadyRow,
    sealer: Option<&fleet_shared::secrets::SecretBox>,
) -> Result<(), fleet_shared::secrets::SecretError> {
    let Some(sealed) = row.env_secret.take() else {
        return Ok(());
    };
    let Some(b) = sealer else {
        row.env_secret = Some(sealed);
        return Err(fleet_shared::secrets::SecretError::BadKey(
            "not set on this dispatcher, and a task has secret env values".into(),
        ));
    };
    match b.open(row.id.uuid(), &sealed) {
        Ok(secret) => {
            row.env.extend(secret);
            Ok(())
        }
        Err(e) => {
            row.env_secret = Some(sealed);
            Err(e)
        }
    }
}

/// The request for one attempt of a task.
pub fn request(row: &ReadyRow, attempt: i32, lease_deadline: DateTime<Utc>) -> Request {
    Request {
        task_id: row.id,
        attempt,
        job_id: row.job_id,
        argv: row.argv.clone(),
        env: row.env.clone(),
        cwd: row.cwd.clone(),
        stdin: row.stdin.clone(),
        timeout_secs: row.timeout_secs,
        lease_deadline,
        // Set when it is sent, by the leader sending it.
        epoch: 0,
    }
}

/// The most requests one `requests` message carries...
pub const REQUESTS_PER_MESSAGE: usize = 64;
/// ... and the most bytes (of argv, env, cwd and stdin) it takes more of: a request that
/// alone exceeds this goes alone.
pub const BYTES_PER_MESSAGE: usize = 1024 * 1024;

/// The messages a round sends: each executor's requests, in the order given, together
/// (a `requests` list; one alone goes as a `request`), up to a message's worth. Each
/// message as its executor and the places in `to` of the requests it carries. (One
/// message per executor per round instead of one per attempt: about a third of the
/// request messages in `make bench`, whose rounds give an executor 3 at a time.)
pub fn messages(to: &[(&ExecutorId, &Request)]) -> Vec<(ExecutorId, Vec<usize>)> {
    let mut out: Vec<(ExecutorId, Vec<usize>, usize)> = Vec::new();
    for (i, (executor, req)) in to.iter().enumerate() {
        let size = request_bytes(req);
        let open = out.iter_mut().rev().find(|(e, _, _)| e == *executor);
        match open {
            Some((_, carried, bytes))
                if carried.len() < REQUESTS_PER_MESSAGE && *bytes + size <= BYTES_PER_MESSAGE =>
            {
                carried.push(i);
                *bytes += size;
            }
            _ => out.push(((*executor).clone(), vec![i], size)),
        }
    }
    out.into_iter()
        .map(|(e, carried, _)| (e, carried))
        .collect()
}

/// What a request weighs in a message, near enough: its strings.
fn request_bytes(r: &Request) -> usize {
    r.argv.iter().map(String::len).sum::<usize>()
        + r.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + r.cwd.as_ref().map_or(0, String::len)
        + r.stdin.as_ref().map_or(0, String::len)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use fleet_shared::group::GroupName;
    use fleet_shared::id::JobId;

    use super::*;

    fn row(priority: i32, seq: i64, attempts: i32, group: &str) -> ReadyRow {
        ReadyRow {
            id: TaskId::new(),
            job_id: JobId::new(),
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            cwd: None,
            stdin: None,
            timeout_secs: 60,
            priority,
            seq,
            group: GroupName::parse(group).expect("valid"),
            labels: BTreeMap::new(),
            each: false,
            attempts,
            env_secret: None,
        }
    }

    pub(crate) fn executor(id: &str, group: &str, capacity: u32, outstanding: u32) -> ExecutorView {
        ExecutorView {
            id: ExecutorId::parse(id).expect("valid"),
            groups: vec![GroupName::parse(group).expect("valid")],
            labels: BTreeMap::new(),
            capacity,
            outstanding,
            draining: false,
            window: u32::MAX,
        }
    }

    /// A plan with a 15 s lease, dated `now`, avoiding nothing.
    fn plan_at(
        ready: &[ReadyRow],
        views: &mut [ExecutorView],
        window: u32,
        now: DateTime<Utc>,
    ) -> Vec<Planned> {
        plan(
            ready,
            views,
            window,
            policy::Backlog::Deep,
            Duration::from_secs(15),
            now,
            &HashMap::new(),
        )
    }

    #[test]
    fn a_plan_fills_free_slots_in_order_and_numbers_the_next_attempt() {
        let ready = vec![
            row(5, 1, 0, "cpu"),
            row(0, 2, 2, "cpu"),
            row(0, 3, 0, "cpu"),
        ];
        let mut views = vec![executor("a", "cpu", 1, 0), executor("b", "cpu", 1, 1)];
        let now = Utc::now();
        let planned = plan_at(&ready, &mut views, 0, now);
        // One slot is free (b has its one taken): the first task.
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].task_id, ready[0].id);
        assert_eq!(planned[0].executor_id.as_str(), "a");
        assert_eq!(planned[0].attempt, 1);
        let mut views = vec![executor("a", "cpu", 2, 0)];
        let planned = plan_at(&ready, &mut views, 0, now);
        assert_eq!(
            planned.iter().map(|p| p.task_id).collect::<Vec<_>>(),
            vec![ready[0].id, ready[1].id]
        );
        // A task on its third attempt gets number 3, and its request says so.
        assert_eq!(planned[1].attempt, 3);
        assert_eq!(planned[1].request.attempt, 3);
        assert_eq!(planned[1].request.task_id, ready[1].id);
        assert_eq!(
            planned[1].request.lease_deadline,
            now + chrono::Duration::seconds(15)
        );
        assert_eq!(views[0].outstanding, 2);
    }

    #[test]
    fn the_window_lets_an_executor_hold_more_than_its_slots() {
        let ready: Vec<ReadyRow> = (0..10).map(|i| row(0, i, 0, "cpu")).collect();
        let mut views = vec![executor("a", "cpu", 2, 0)];
        assert_eq!(plan_at(&ready, &mut views, 2, Utc::now()).len(), 4);
    }

    #[test]
    fn a_short_read_is_the_tail_of_the_backlog() {
        assert_eq!(backlog(19, 19), policy::Backlog::Deep);
        assert_eq!(backlog(3, 19), policy::Backlog::Tail);
        assert_eq!(backlog(0, 19), policy::Backlog::Tail);
    }

    #[test]
    fn tasks_nobody_can_take_are_skipped_not_blocking() {
        let ready = vec![row(9, 1, 0, "gpu"), row(0, 2, 0, "cpu")];
        let mut views = vec![executor("a", "cpu", 1, 0)];
        let planned = plan_at(&ready, &mut views, 0, Utc::now());
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].task_id, ready[1].id);
    }

    #[test]
    fn a_round_sends_each_executor_its_requests_together_up_to_a_message_s_worth() {
        let a = ExecutorId::parse("a").expect("valid");
        let b = ExecutorId::parse("b").expect("valid");
        let reqs: Vec<Request> = (0..5)
            .map(|i| request(&row(0, i, 0, "cpu"), 1, Utc::now()))
            .collect();
        let to = vec![
            (&a, &reqs[0]),
            (&b, &reqs[1]),
            (&a, &reqs[2]),
            (&a, &reqs[3]),
            (&b, &reqs[4]),
        ];
        assert_eq!(
            messages(&to),
            vec![(a.clone(), vec![0, 2, 3]), (b.clone(), vec![1, 4])]
        );
        // No more than a message's worth of requests...
        let many: Vec<(&ExecutorId, &Request)> = (0..REQUESTS_PER_MESSAGE + 1)
            .map(|_| (&a, &reqs[0]))
            .collect();
        let sizes: Vec<usize> = messages(&many).iter().map(|(_, c)| c.len()).collect();
        assert_eq!(sizes, vec![REQUESTS_PER_MESSAGE, 1]);
        // ... or of bytes: a big one goes alone, and what follows it in a new message.
        let mut big = reqs[0].clone();
        big.stdin = Some("x".repeat(BYTES_PER_MESSAGE));
        let to = vec![(&a, &reqs[1]), (&a, &big), (&a, &reqs[2])];
        assert_eq!(
            messages(&to),
            vec![(a.clone(), vec![0]), (a.clone(), vec![1]), (a, vec![2])]
        );
    }

    #[test]
    fn nothing_is_planned_without_a_free_slot() {
        let ready = vec![row(0, 1, 0, "cpu")];
        let mut views = vec![executor("a", "cpu", 1, 1)];
        assert!(plan_at(&ready, &mut views, 0, Utc::now()).is_empty());
        let mut draining = executor("b", "cpu", 4, 0);
        draining.draining = true;
        assert!(plan_at(&ready, &mut [draining], 0, Utc::now()).is_empty());
    }

    #[test]
    fn secrets_open_into_the_request_env_only_with_the_key() {
        let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let b = fleet_shared::secrets::SecretBox::from_hex(key).expect("key");
        let mut r = row(0, 1, 0, "default");
        r.env.insert("HOME".into(), "/".into());
        let secret = BTreeMap::from([("API_TOKEN".to_string(), "s3cret".to_string())]);
        r.env_secret = Some(b.seal(r.id.uuid(), &secret));
        let mut without = r.clone();
        assert!(open_secrets(&mut without, None).is_err());
        assert!(without.env_secret.is_some(), "kept sealed");
        let mut moved = r.clone();
        moved.id = TaskId::new();
        assert!(
            open_secrets(&mut moved, Some(&b)).is_err(),
            "bound to its task"
        );
        open_secrets(&mut r, Some(&b)).expect("opens");
        let req = request(&r, 1, Utc::now());
        assert_eq!(req.env.get("API_TOKEN").map(String::as_str), Some("s3cret"));
        assert_eq!(req.env.get("HOME").map(String::as_str), Some("/"));
        assert_eq!(r.env_secret, None);
    }
}
