//! `GET /v1/stats`: per group, the work waiting and running, the executors and their
//! slots, and the jobs finished lately. PostgreSQL gives the figures per target group
//! (tasks), per executor and per set of groups (finished jobs, which may target several);
//! [`rollup`], pure, makes each group's figures include its subgroups', counting an
//! executor or a job once per group however many of its groups are inside it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

pub use fleet_core::api::stats::{
    ExecutorStats, FinishedStats, GroupHistory, GroupStats, HistoryPoint, Outcomes, SlotStats,
    StatsHistory, StatsView, TaskStats,
};

use super::{Client, DbError};
use crate::group::GroupName;
use crate::state::JobState;

/// What the tasks of one target group (not its subgroups) add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFigures {
    pub group: Option<GroupName>,
    /// Ready and not held: waiting for an executor.
    pub ready: u64,
    /// Held, not handed out yet (ready or waiting).
    pub held: u64,
    /// Waiting for dependencies, not held.
    pub waiting: u64,
    /// Assigned or running.
    pub running: u64,
    /// When the oldest ready (not held) task was submitted.
    pub oldest_ready: Option<DateTime<Utc>>,
}

/// One executor: its groups (declared and put in), and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorFigures {
    pub groups: Vec<GroupName>,
    /// Heard within `dispatcher.executor_timeout_secs`.
    pub alive: bool,
    /// It says so, or an administrator drained it.
    pub draining: bool,
    pub capacity: u64,
    /// Running, by its latest INFO.
    pub running: u64,
}

/// Jobs that finished in the last hour with one outcome and one set of target groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedFigures {
    pub groups: Vec<GroupName>,
    pub outcome: JobState,
    pub last_minute: u64,
    pub last_hour: u64,
}

/// Each group's figures, its subgroups' included, for the groups worth listing: those
/// created (`created`), those with unfinished tasks or executors, the groups that
/// enclose any of them, and `default` (which encloses every group). An executor or a job
/// in several groups inside one counts once for it. Sorted `default` first, then by
/// name segments (a group before its subgroups).
pub fn rollup(
    now: DateTime<Utc>,
    created: &[GroupName],
    tasks: &[TaskFigures],
    executors: &[ExecutorFigures],
    finished: &[FinishedFigures],
) -> Vec<GroupStats> {
    let mut listed: BTreeSet<GroupName> = BTreeSet::new();
    let named = created
        .iter()
        .chain(tasks.iter().filter_map(|t| t.group.as_ref()))
        .chain(executors.iter().flat_map(|e| &e.groups));
    for g in named {
        listed.extend(g.lineage());
    }
    listed.insert(GroupName::default_group());
    let mut out: Vec<GroupStats> = listed
        .iter()
        .map(|g| {
            let mut s = GroupStats {
                group: g.to_string(),
                ..GroupStats::default()
            };
            let mut oldest: Option<DateTime<Utc>> = None;
            for t in tasks
                .iter()
                .filter(|t| t.group.as_ref().is_some_and(|tg| tg.is_within(g)))
            {
                s.tasks.ready += t.ready;
                s.tasks.held += t.held;
                s.tasks.waiting += t.waiting;
                s.tasks.running += t.running;
                oldest = match (oldest, t.oldest_ready) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            s.tasks.oldest_ready_secs =
                oldest.map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0);
            let within = |groups: &[GroupName]| groups.iter().any(|eg| eg.is_within(g));
            for e in executors.iter().filter(|e| e.alive && within(&e.groups)) {
                s.executors.alive += 1;
                s.slots.total += e.capacity;
                if e.draining {
                    s.executors.draining += 1;
                } else {
                    s.slots.free += e.capacity.saturating_sub(e.running);
                }
            }
            for f in finished.iter().filter(|f| within(&f.groups)) {
                s.finished.last_minute.add(f.outcome, f.last_minute);
                s.finished.last_hour.add(f.outcome, f.last_hour);
            }
            s
        })
        .collect();
    out.sort_by_key(|s| listing_order(&s.group));
    out
}

/// `default` first, then by name segments (a group before its subgroups).
fn listing_order(group: &str) -> (bool, Vec<String>) {
    (
        group != crate::group::DEFAULT_GROUP,
        group.split('.').map(str::to_owned).collect(),
    )
}

/// The figures, read in one read-only snapshot. `silent_after_secs`: an executor not
/// heard from for this long is not alive. Every statement reads by index: the ready,
/// waiting and held tasks through their partial indexes, the running ones from the open
/// attempts and pending copies, the finished jobs through `jobs_finished` (the last
/// hour's only), each one's groups by its key.
pub async fn stats(client: &mut Client, silent_after_secs: f64) -> Result<StatsView, DbError> {
    read(client, silent_after_secs, Finished::LastHour).await
}

/// [`stats`] without the jobs finished (left at zero): what the collector's gauges read
/// every few seconds, which counting a busy hour's finished jobs would make costly.
pub async fn current(client: &mut Client, silent_after_secs: f64) -> Result<StatsView, DbError> {
    read(client, silent_after_secs, Finished::None).await
}

/// Which finished jobs a read counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    None,
    /// The last minute's only (`last_hour` then counts those too): what a sample keeps.
    LastMinute,
    LastHour,
}

async fn read(
    client: &mut Client,
    silent_after_secs: f64,
    finished: Finished,
) -> Result<StatsView, DbError> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let alive: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&silent_after_secs];
    let (now, task_rows, executor_rows, created, finished_rows) = tokio::try_join!(
        tx.query_one("SELECT now()", &[]),
        tx.query(
            "SELECT target_group, 'ready', count(*), min(created_at) FROM tasks
             WHERE state = 'ready' AND NOT held GROUP BY target_group
             UNION ALL
             SELECT target_group, 'held', count(*), NULL::timestamptz FROM tasks
             WHERE held AND state IN ('ready', 'waiting') GROUP BY target_group
             UNION ALL
             SELECT target_group, 'waiting', count(*), NULL FROM tasks
             WHERE state = 'waiting' AND NOT held GROUP BY target_group
             UNION ALL
             SELECT t.target_group, 'running', count(*), NULL FROM tasks t
             WHERE t.state IN ('assigned', 'running')
               AND t.id IN (SELECT a.task_id FROM attempts a
                            WHERE a.state IN ('assigned', 'running', 'reported')
                            UNION
                            SELECT c.task_id FROM task_copies c WHERE c.state = 'pending')
             GROUP BY t.target_group",
            &[],
        ),
        tx.query(
            "SELECT e.groups, e.capacity, e.running,
                    e.last_info_at >= now() - make_interval(secs => $1),
                    e.draining OR EXISTS (SELECT 1 FROM executor_drains d
                                          WHERE d.executor_id = e.id),
                    ARRAY(SELECT m.group_name FROM group_members m WHERE m.executor_id = e.id)
             FROM executors e",
            &alive,
        ),
        tx.query("SELECT name FROM groups", &[]),
        async {
            let window: f64 = match finished {
                Finished::None => return Ok(Vec::new()),
                Finished::LastMinute => 60.0,
                Finished::LastHour => 3600.0,
            };
            tx.query(
                "SELECT s.groups, s.state,
                    count(*) FILTER (WHERE s.finished_at >= now() - interval '1 minute'),
                    count(*)
             FROM (SELECT j.state, j.finished_at,
                          ARRAY(SELECT DISTINCT t.target_group FROM tasks t
                                WHERE t.job_id = j.id ORDER BY 1) AS groups
                   FROM jobs j WHERE j.finished_at >= now() - make_interval(secs => $1)) s
             GROUP BY s.groups, s.state",
                &[&window],
            )
            .await
        },
    )?;
    tx.commit().await?;
    let now: DateTime<Utc> = now.get(0);
    let group = |s: &str| GroupName::parse(s).ok();
    let count = |r: &tokio_postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    let mut by_group: BTreeMap<String, TaskFigures> = BTreeMap::new();
    for r in &task_rows {
        let name: String = r.get(0);
        let f = by_group.entry(name.clone()).or_insert_with(|| TaskFigures {
            group: group(&name),
            ..TaskFigures::default()
        });
        let n = count(r, 2);
        match r.get::<_, &str>(1) {
            "ready" => {
                f.ready = n;
                f.oldest_ready = r.get(3);
            }
            "held" => f.held = n,
            "waiting" => f.waiting = n,
            _ => f.running = n,
        }
    }
    let tasks: Vec<TaskFigures> = by_group.into_values().collect();
    let executors = executor_rows
        .iter()
        .map(|r| {
            let mut names: Vec<String> = serde_json::from_value(r.get(0))
                .map_err(|e| DbError::Row(format!("executor groups: {e}")))?;
            names.extend(r.get::<_, Vec<String>>(5));
            let int = |i: usize| u64::try_from(r.get::<_, i32>(i)).unwrap_or(0);
            Ok(ExecutorFigures {
                groups: names.iter().filter_map(|g| group(g)).collect(),
                capacity: int(1),
                running: int(2),
                alive: r.get(3),
                draining: r.get(4),
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let created: Vec<GroupName> = created.iter().filter_map(|r| group(r.get(0))).collect();
    let finished: Vec<FinishedFigures> = finished_rows
        .iter()
        .filter_map(|r| {
            Some(FinishedFigures {
                groups: r
                    .get::<_, Vec<String>>(0)
                    .iter()
                    .filter_map(|g| group(g))
                    .collect(),
                outcome: JobState::parse(r.get(1))?,
                last_minute: count(r, 2),
                last_hour: count(r, 3),
            })
        })
        .collect();
    Ok(StatsView {
        at: now,
        groups: rollup(now, &created, &tasks, &executors, &finished),
    })
}

/// The start of the step of `step_secs` that holds `at` (steps counted from the Unix
/// epoch): every collector files a sample taken within one step under the same time.
pub fn sample_time(at: DateTime<Utc>, step_secs: u64) -> DateTime<Utc> {
    let step = i64::try_from(step_secs.max(1)).unwrap_or(i64::MAX);
    let t = at.timestamp().div_euclid(step) * step;
    DateTime::from_timestamp(t, 0).unwrap_or(at)
}

/// Takes a sample for the console's charts: the figures of [`stats`] (the finished jobs
/// of the last minute only) stored per group under [`sample_time`], unless a sample of
/// that step is stored already; and deletes the samples older than `keep_hours`. Returns
/// the view read, for the gauges.
pub async fn sample(
    client: &mut Client,
    silent_after_secs: f64,
    step_secs: u64,
    keep_hours: u64,
) -> Result<StatsView, DbError> {
    let view = read(client, silent_after_secs, Finished::LastMinute).await?;
    let at = sample_time(view.at, step_secs);
    let n = |f: fn(&GroupStats) -> u64| -> Vec<i64> {
        view.groups
            .iter()
            .map(|g| i64::try_from(f(g)).unwrap_or(i64::MAX))
            .collect()
    };
    let groups: Vec<&str> = view.groups.iter().map(|g| g.group.as_str()).collect();
    let (ready, held, waiting, running) = (
        n(|g| g.tasks.ready),
        n(|g| g.tasks.held),
        n(|g| g.tasks.waiting),
        n(|g| g.tasks.running),
    );
    let (alive, total, free) = (
        n(|g| g.executors.alive),
        n(|g| g.slots.total),
        n(|g| g.slots.free),
    );
    let finished = n(|g| {
        let m = &g.finished.last_minute;
        m.succeeded + m.failed + m.cancelled
    });
    let keep = keep_hours.saturating_mul(3600) as f64;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO fleet_samples (at, group_name, ready, held, waiting, running,
                                    executors_alive, slots_total, slots_free,
                                    jobs_finished_last_minute)
         SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                                  $7::int8[], $8::int8[], $9::int8[], $10::int8[])
         ON CONFLICT (at, group_name) DO NOTHING",
        &[
            &at, &groups, &ready, &held, &waiting, &running, &alive, &total, &free, &finished,
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM fleet_samples WHERE at < $1::timestamptz - make_interval(secs => $2)",
        &[&view.at, &keep],
    )
    .await?;
    tx.commit().await?;
    Ok(view)
}

/// The samples of the last `minutes`, per group (`default` first, a group before its
/// subgroups), oldest first. Reads the primary key's range.
pub async fn history(
    client: &mut Client,
    minutes: u32,
    step_secs: u64,
) -> Result<StatsHistory, DbError> {
    let since: DateTime<Utc> = client
        .query_one(
            "SELECT now() - make_interval(mins => $1)",
            &[&i32::try_from(minutes).unwrap_or(i32::MAX)],
        )
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT at, group_name, ready, held, waiting, running, executors_alive,
                    slots_total, slots_free, jobs_finished_last_minute
             FROM fleet_samples WHERE at >= $1 ORDER BY at",
            &[&since],
        )
        .await?;
    let mut groups: BTreeMap<String, Vec<HistoryPoint>> = BTreeMap::new();
    for r in &rows {
        let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
        groups.entry(r.get(1)).or_default().push(HistoryPoint {
            at: r.get(0),
            ready: n(2),
            held: n(3),
            waiting: n(4),
            running: n(5),
            executors_alive: n(6),
            slots_total: n(7),
            slots_free: n(8),
            jobs_finished_last_minute: n(9),
        });
    }
    let mut groups: Vec<GroupHistory> = groups
        .into_iter()
        .map(|(group, points)| GroupHistory { group, points })
        .collect();
    groups.sort_by_key(|g| listing_order(&g.group));
    Ok(StatsHistory {
        step_secs,
        since,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupName {
        GroupName::parse(s).expect("valid group")
    }

    fn of<'a>(stats: &'a [GroupStats], name: &str) -> &'a GroupStats {
        stats
            .iter()
            .find(|s| s.group == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {stats:#?}"))
    }

    #[test]
    fn a_group_adds_up_its_subgroups_and_counts_each_executor_and_job_once() {
        let now = Utc::now();
        let old = now - chrono::Duration::seconds(30);
        let older = now - chrono::Duration::seconds(90);
        let tasks = vec![
            TaskFigures {
                group: Some(g("lab.gpu")),
                ready: 3,
                waiting: 1,
                oldest_ready: Some(old),
                ..TaskFigures::default()
            },
            TaskFigures {
                group: Some(g("lab")),
                ready: 1,
                held: 2,
                running: 1,
                oldest_ready: Some(older),
                ..TaskFigures::default()
            },
            TaskFigures {
                group: Some(g("default")),
                ready: 5,
                ..TaskFigures::default()
            },
        ];
        let executors = vec![
            // In two groups of `lab`: counted once for `lab`.
            ExecutorFigures {
                groups: vec![g("lab.gpu"), g("lab.cpu")],
                alive: true,
                capacity: 4,
                running: 1,
                ..ExecutorFigures::default()
            },
            ExecutorFigures {
                groups: vec![g("lab.gpu")],
                alive: true,
                draining: true,
                capacity: 2,
                running: 2,
            },
            // Gone silent: listed (its group), not counted.
            ExecutorFigures {
                groups: vec![g("old")],
                capacity: 8,
                ..ExecutorFigures::default()
            },
        ];
        let finished = vec![
            // Jobs with tasks in both lab.gpu and lab.cpu: once for `lab`.
            FinishedFigures {
                groups: vec![g("lab.cpu"), g("lab.gpu")],
                outcome: JobState::Succeeded,
                last_minute: 2,
                last_hour: 3,
            },
            FinishedFigures {
                groups: vec![g("gone")],
                outcome: JobState::Failed,
                last_minute: 0,
                last_hour: 1,
            },
        ];
        let stats = rollup(now, &[g("site")], &tasks, &executors, &finished);
        let names: Vec<&str> = stats.iter().map(|s| s.group.as_str()).collect();
        // `gone` has only finished jobs: counted in `default`, not listed.
        assert_eq!(
            names,
            ["default", "lab", "lab.cpu", "lab.gpu", "old", "site"]
        );

        let gpu = of(&stats, "lab.gpu");
        assert_eq!(
            (
                gpu.tasks.ready,
                gpu.tasks.waiting,
                gpu.tasks.held,
                gpu.tasks.running
            ),
            (3, 1, 0, 0)
        );
        assert_eq!(gpu.tasks.oldest_ready_secs, Some(30.0));
        assert_eq!(
            (gpu.executors.clone(), gpu.slots.clone()),
            (
                ExecutorStats {
                    alive: 2,
                    draining: 1
                },
                SlotStats { total: 6, free: 3 }
            )
        );
        assert_eq!(gpu.finished.last_minute.succeeded, 2);

        let lab = of(&stats, "lab");
        assert_eq!(
            (
                lab.tasks.ready,
                lab.tasks.waiting,
                lab.tasks.held,
                lab.tasks.running
            ),
            (4, 1, 2, 1)
        );
        assert_eq!(lab.tasks.oldest_ready_secs, Some(90.0));
        assert_eq!(lab.executors.alive, 2);
        assert_eq!(lab.slots, SlotStats { total: 6, free: 3 });
        assert_eq!(
            lab.finished.last_hour,
            Outcomes {
                succeeded: 3,
                ..Outcomes::default()
            }
        );
        let cpu = of(&stats, "lab.cpu");
        assert_eq!((cpu.executors.alive, cpu.slots.free), (1, 3));

        let all = of(&stats, "default");
        assert_eq!((all.tasks.ready, all.tasks.held), (9, 2));
        assert_eq!(all.executors.alive, 2);
        assert_eq!(
            all.finished.last_hour,
            Outcomes {
                succeeded: 3,
                failed: 1,
                cancelled: 0
            }
        );
        assert_eq!(all.finished.last_minute.failed, 0);

        let old = of(&stats, "old");
        assert_eq!((old.executors.alive, old.slots.total), (0, 0));
        assert_eq!(
            of(&stats, "site"),
            &GroupStats {
                group: "site".into(),
                ..GroupStats::default()
            }
        );
    }

    #[test]
    fn an_empty_fleet_lists_default_alone() {
        let stats = rollup(Utc::now(), &[], &[], &[], &[]);
        assert_eq!(
            stats,
            vec![GroupStats {
                group: "default".into(),
                ..GroupStats::default()
            }]
        );
    }

    #[test]
    fn samples_within_one_step_share_its_start() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).expect("valid");
        assert_eq!(sample_time(at(1_000_059), 60), at(1_000_020));
        assert_eq!(sample_time(at(1_000_020), 60), at(1_000_020));
        assert_eq!(sample_time(at(1_000_080), 60), at(1_000_080));
        assert_eq!(sample_time(at(7), 1), at(7));
        assert_eq!(sample_time(at(7), 0), at(7));
    }
}
