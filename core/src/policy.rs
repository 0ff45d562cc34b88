//! Balancing: which ready task goes to which executor. Pure; the dispatcher feeds it
//! what PostgreSQL and the INFO heartbeats say and applies its answer.
//!
//! Each executor's outstanding work (assigned, not finished) is kept at most at
//! `capacity + window`: enough queued that it never idles between results, not so much
//! that a slow or dead executor hoards work an idle peer could run.

use std::collections::{BTreeMap, HashMap};

use crate::group::GroupName;
use crate::id::{ExecutorId, TaskId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorView {
    pub id: ExecutorId,
    pub groups: Vec<GroupName>,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    /// Attempts assigned to it and not yet finished.
    pub outstanding: u32,
    pub draining: bool,
    /// The most requests it may hold beyond its slots, below the configured window (the
    /// dispatcher paces it by how fast the executor finishes); `u32::MAX`: the window.
    pub window: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyTask {
    pub id: TaskId,
    pub group: GroupName,
    pub labels: BTreeMap<String, String>,
}

impl ExecutorView {
    pub fn limit(&self, window: u32) -> u32 {
        self.capacity.saturating_add(window.min(self.window))
    }

    pub fn has_room(&self, window: u32) -> bool {
        !self.draining && self.capacity > 0 && self.outstanding < self.limit(window)
    }

    /// Right group (or a subgroup of it) and every required label.
    pub fn is_eligible(&self, task: &ReadyTask) -> bool {
        self.groups.iter().any(|g| g.is_within(&task.group))
            && task
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Whether `self` is less loaded than `other`, relative to capacity:
    /// outstanding/capacity compared by cross-multiplication to stay in integers.
    fn less_loaded_than(&self, other: &ExecutorView) -> bool {
        let a = u64::from(self.outstanding) * u64::from(other.capacity);
        let b = u64::from(other.outstanding) * u64::from(self.capacity);
        a < b || (a == b && (self.capacity, &other.id) > (other.capacity, &self.id))
    }
}

/// Free slots across all executors, the most ready tasks worth fetching for one round.
pub fn free_slots(executors: &[ExecutorView], window: u32) -> u32 {
    executors
        .iter()
        .filter(|e| e.has_room(window))
        .map(|e| e.limit(window) - e.outstanding)
        .sum()
}

/// The target groups some executor with room could run a task of: each such executor's
/// groups and every group enclosing them. The dispatcher reads only ready tasks of these
/// groups, so that a backlog no executor can serve (a group with no members, or all of
/// them full) does not hide the tasks behind it. Sorted, without repeats.
pub fn servable_groups(executors: &[ExecutorView], window: u32) -> Vec<GroupName> {
    let mut out: Vec<GroupName> = executors
        .iter()
        .filter(|e| e.has_room(window))
        .flat_map(|e| e.groups.iter().flat_map(GroupName::lineage))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a round saw of the ready backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// More may wait behind the tasks read: requests queue in executors' windows, so that
    /// a slot that frees starts the next one at once.
    Deep,
    /// Every ready task is in sight (the read came back short): a task that more than one
    /// executor could run goes to a free slot only, and otherwise waits (in PostgreSQL)
    /// for the next slot to free, wherever that is. The last tasks decide when a batch
    /// ends; queued early behind a long task on one executor, one starts late while a
    /// slot elsewhere frees first and takes a later one. A task only one executor can
    /// run loses nothing by waiting in its window.
    Tail,
}

/// Gives each task, in the order given (highest priority, then oldest, first), to the
/// eligible executor with room and the smallest outstanding/capacity ratio. Tasks no
/// executor can take now are skipped, so they do not block the ones behind them.
/// `executors[i].outstanding` is updated as work is handed out.
pub fn assign(
    ready: &[ReadyTask],
    executors: &mut [ExecutorView],
    window: u32,
) -> Vec<(TaskId, ExecutorId)> {
    assign_avoiding(ready, executors, window, &HashMap::new(), Backlog::Deep)
}

/// As [`assign`], but a task listed in `avoid` goes to the executor named there only if no
/// other eligible executor has room: a task just given back by an executor that could
/// not start it (it was overtaken there) should not go straight back to it.
pub fn assign_avoiding(
    ready: &[ReadyTask],
    executors: &mut [ExecutorView],
    window: u32,
    avoid: &HashMap<TaskId, ExecutorId>,
    backlog: Backlog,
) -> Vec<(TaskId, ExecutorId)> {
    let mut out = Vec::new();
    for task in ready {
        let avoided = avoid.get(&task.id);
        let w = match backlog {
            Backlog::Tail
                if executors
                    .iter()
                    .filter(|e| !e.draining && e.capacity > 0 && e.is_eligible(task))
                    .nth(1)
                    .is_some() =>
            {
                0
            }
            _ => window,
        };
        let mut best: Option<usize> = None;
        for pass in [true, false] {
            for (i, e) in executors.iter().enumerate() {
                if !e.has_room(w) || !e.is_eligible(task) {
                    continue;
                }
                if pass && avoided == Some(&e.id) {
                    continue;
                }
                if best.is_none_or(|b| e.less_loaded_than(&executors[b])) {
                    best = Some(i);
                }
            }
            if best.is_some() || avoided.is_none() {
                break;
            }
        }
        if let Some(b) = best {
            executors[b].outstanding += 1;
            out.push((task.id, executors[b].id.clone()));
            if free_slots(executors, window) == 0 {
                break;
            }
        }
    }
    out
}

/// The members of an `each` task: every known executor eligible for it (group and
/// labels), whether or not it has room or is draining, in id order.
pub fn members(task: &ReadyTask, executors: &[ExecutorView]) -> Vec<ExecutorId> {
    let mut m: Vec<ExecutorId> = executors
        .iter()
        .filter(|e| e.is_eligible(task))
        .map(|e| e.id.clone())
        .collect();
    m.sort();
    m.dedup();
    m
}

/// Copies of `each` tasks are pinned to their member: each goes to its own executor if
/// that one is known, not draining and has room, else waits. In the order given.
pub fn assign_pinned(
    copies: &[(TaskId, ExecutorId)],
    executors: &mut [ExecutorView],
    window: u32,
) -> Vec<(TaskId, ExecutorId)> {
    let mut out = Vec::new();
    for (task, member) in copies {
        if let Some(e) = executors
            .iter_mut()
            .find(|e| &e.id == member && e.has_room(window))
        {
            e.outstanding += 1;
            out.push((*task, member.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str, groups: &[&str], cap: u32, out: u32) -> ExecutorView {
        ExecutorView {
            id: ExecutorId::parse(id).expect("id"),
            groups: groups
                .iter()
                .map(|g| GroupName::parse(g).expect("g"))
                .collect(),
            labels: BTreeMap::new(),
            capacity: cap,
            outstanding: out,
            draining: false,
            window: u32::MAX,
        }
    }

    fn task(group: &str) -> ReadyTask {
        ReadyTask {
            id: TaskId::new(),
            group: GroupName::parse(group).expect("g"),
            labels: BTreeMap::new(),
        }
    }

    fn count_for(assigned: &[(TaskId, ExecutorId)], id: &str) -> usize {
        assigned.iter().filter(|(_, e)| e.as_str() == id).count()
    }

    #[test]
    fn only_groups_an_executor_with_room_serves_are_read() {
        let names =
            |v: Vec<GroupName>| -> Vec<String> { v.iter().map(|g| g.to_string()).collect() };
        let full = exec("full-1", &["site.db"], 2, 2);
        let mut drained = exec("drained-1", &["batch"], 2, 0);
        drained.draining = true;
        let web = exec("web-1", &["site.web", "lab.gpu.a100"], 2, 0);
        let execs = [full, drained, web];
        assert_eq!(
            names(servable_groups(&execs, 0)),
            [
                "default",
                "lab",
                "lab.gpu",
                "lab.gpu.a100",
                "site",
                "site.web"
            ]
        );
        // With a window, the full executor has room again.
        assert!(names(servable_groups(&execs, 1)).contains(&"site.db".to_owned()));
        assert!(servable_groups(&[], 4).is_empty());
    }

    #[test]
    fn at_the_tail_a_task_several_could_run_waits_for_a_free_slot() {
        let ready: Vec<ReadyTask> = (0..6).map(|_| task("cpu")).collect();
        let fleet = || vec![exec("a", &["cpu"], 2, 0), exec("b", &["cpu"], 2, 2)];
        // Deep: a's two slots, then the windows (2 each) of a and b.
        let mut ex = fleet();
        let got = assign_avoiding(&ready, &mut ex, 2, &HashMap::new(), Backlog::Deep);
        assert_eq!(got.len(), 6);
        // Tail: a's free slots only, the first two in order; the rest wait.
        let mut ex = fleet();
        let got = assign_avoiding(&ready, &mut ex, 2, &HashMap::new(), Backlog::Tail);
        assert_eq!(
            got.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![ready[0].id, ready[1].id]
        );
        assert_eq!(count_for(&got, "a"), 2);
        // A task only b can run may still wait in b's window.
        let mut ex = vec![exec("a", &["cpu"], 2, 2), exec("b", &["gpu"], 2, 2)];
        let got = assign_avoiding(&[task("gpu")], &mut ex, 2, &HashMap::new(), Backlog::Tail);
        assert_eq!(count_for(&got, "b"), 1);
    }

    #[test]
    fn a_task_given_back_goes_elsewhere_if_it_can() {
        let mut ex = vec![exec("a", &["cpu"], 2, 0), exec("b", &["cpu"], 2, 1)];
        let t = task("cpu");
        let avoid = HashMap::from([(t.id, ExecutorId::parse("a").expect("valid"))]);
        // `a` is the less loaded, but the task was just given back by it.
        let got = assign_avoiding(std::slice::from_ref(&t), &mut ex, 0, &avoid, Backlog::Deep);
        assert_eq!(got, vec![(t.id, ExecutorId::parse("b").expect("valid"))]);
        // With no room elsewhere, it goes back to `a` rather than waiting.
        let mut ex = vec![exec("a", &["cpu"], 2, 0), exec("b", &["cpu"], 2, 2)];
        let got = assign_avoiding(std::slice::from_ref(&t), &mut ex, 0, &avoid, Backlog::Deep);
        assert_eq!(got, vec![(t.id, ExecutorId::parse("a").expect("valid"))]);
    }

    #[test]
    fn work_spreads_evenly_over_equal_executors() {
        let mut ex = vec![
            exec("a", &["cpu"], 4, 0),
            exec("b", &["cpu"], 4, 0),
            exec("c", &["cpu"], 4, 0),
        ];
        let tasks: Vec<_> = (0..12).map(|_| task("cpu")).collect();
        let got = assign(&tasks, &mut ex, 0);
        assert_eq!(got.len(), 12);
        for id in ["a", "b", "c"] {
            assert_eq!(count_for(&got, id), 4);
        }
    }

    #[test]
    fn outstanding_is_capped_at_capacity_plus_window() {
        let mut ex = vec![exec("a", &["cpu"], 2, 1)];
        let tasks: Vec<_> = (0..10).map(|_| task("cpu")).collect();
        let got = assign(&tasks, &mut ex, 2);
        assert_eq!(got.len(), 3);
        assert_eq!(ex[0].outstanding, 4);
        assert!(assign(&tasks, &mut ex, 2).is_empty());
    }

    #[test]
    fn the_least_loaded_relative_to_capacity_gets_the_task() {
        // b holds 2 of 8 (25 %), a holds 1 of 2 (50 %): b is less loaded.
        let mut ex = vec![exec("a", &["cpu"], 2, 1), exec("b", &["cpu"], 8, 2)];
        let got = assign(&[task("cpu")], &mut ex, 0);
        assert_eq!(got[0].1.as_str(), "b");
    }

    #[test]
    fn only_members_of_the_group_or_its_subgroups_are_eligible() {
        let mut ex = vec![
            exec("web", &["site.web"], 4, 0),
            exec("db", &["site.db"], 4, 0),
            exec("other", &["cpu"], 4, 0),
        ];
        let tasks: Vec<_> = (0..6).map(|_| task("site")).collect();
        let got = assign(&tasks, &mut ex, 0);
        assert_eq!(count_for(&got, "other"), 0);
        assert_eq!(count_for(&got, "web") + count_for(&got, "db"), 6);

        let got = assign(&[task("site.web"), task("site.web")], &mut ex, 4);
        assert!(got.iter().all(|(_, e)| e.as_str() == "web"));
    }

    #[test]
    fn required_labels_must_all_match() {
        let mut gpu = exec("gpu", &["lab.gpu"], 1, 0);
        gpu.labels.insert("gpu".into(), "yes".into());
        let mut ex = vec![exec("cpu", &["lab"], 8, 0), gpu];
        let mut t = task("lab");
        t.labels.insert("gpu".into(), "yes".into());
        let got = assign(&[t.clone(), t.clone(), t], &mut ex, 1);
        assert_eq!(got.len(), 2, "gpu executor holds capacity 1 + window 1");
        assert!(got.iter().all(|(_, e)| e.as_str() == "gpu"));
    }

    #[test]
    fn draining_executors_take_nothing_and_ineligible_tasks_do_not_block_others() {
        let mut a = exec("a", &["cpu"], 4, 0);
        a.draining = true;
        let mut ex = vec![a, exec("b", &["cpu"], 4, 0)];
        let tasks = vec![task("nowhere"), task("cpu")];
        let got = assign(&tasks, &mut ex, 0);
        assert_eq!(got, vec![(tasks[1].id, ex[1].id.clone())]);
    }

    #[test]
    fn free_slots_count_only_executors_with_room() {
        let mut d = exec("d", &["cpu"], 4, 0);
        d.draining = true;
        let ex = vec![exec("a", &["cpu"], 4, 1), exec("b", &["cpu"], 2, 5), d];
        assert_eq!(free_slots(&ex, 2), 5);
    }

    #[test]
    fn members_of_an_each_task_are_every_eligible_executor_busy_or_not() {
        let mut busy = exec("w2", &["site.web"], 1, 9);
        busy.draining = true;
        let ex = vec![
            exec("w1", &["site.web"], 1, 0),
            busy,
            exec("d1", &["site.db"], 1, 0),
        ];
        let ids = |v: Vec<ExecutorId>| v.iter().map(|e| e.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(members(&task("site.web"), &ex)), ["w1", "w2"]);
        assert_eq!(ids(members(&task("site"), &ex)), ["d1", "w1", "w2"]);
    }

    #[test]
    fn a_pinned_copy_goes_only_to_its_own_member_when_it_has_room() {
        let mut draining = exec("c", &["cpu"], 1, 0);
        draining.draining = true;
        let mut ex = vec![
            exec("a", &["cpu"], 1, 0),
            exec("b", &["cpu"], 1, 1),
            draining,
        ];
        let (t1, t2, t3, t4) = (TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new());
        let id = |s: &str| ExecutorId::parse(s).expect("id");
        let copies = vec![(t1, id("a")), (t2, id("a")), (t3, id("b")), (t4, id("c"))];
        let got = assign_pinned(&copies, &mut ex, 0);
        // a has one slot: its first copy only; b is full; c drains: theirs wait.
        assert_eq!(got, vec![(t1, id("a"))]);
        assert_eq!(ex[0].outstanding, 1);
    }
}
