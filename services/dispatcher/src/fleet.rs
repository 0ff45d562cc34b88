//! What the leader knows of the executors, in memory: each one's latest INFO, when it
//! was heard, and the attempts handed to it that it has not finished. Slots are counted
//! here, not in PostgreSQL: an attempt frees its slot when its executor says it finished
//! (INFO `finished`) or gave it back, or when the lease sweep loses it. What must be
//! durable (the executors' rows, lease extensions, running marks) is written on a timer,
//! and only what changed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_shared::db::admin::Registered;
use fleet_shared::db::dispatch::Held;
use fleet_shared::db::HeldBy;
use fleet_shared::group::GroupName;
use fleet_shared::id::{ExecutorId, TaskId};
use fleet_shared::policy::{ExecutorView, ReadyTask};
use fleet_shared::proto::Info;
use tokio::time::Instant;

/// An attempt handed out this long before an INFO arrived, and not listed in it, is not
/// on its executor: finished (its report lost) or lost on the way. Its slot is free; its
/// lease, in PostgreSQL, decides the rest.
const LISTED_WITHIN: Duration = Duration::from_secs(2);

type Key = (TaskId, i32);

/// An unstarted attempt is asked back for an idle slot only once it has waited this long
/// in its holder's hands.
pub const STEAL_AFTER: Duration = Duration::from_millis(100);

/// An unstarted attempt overtaken elsewhere is asked back only once it has waited this
/// long: a request queued behind a task a few times longer than itself starts soon
/// enough, and asking it back costs more (a round trip, a refill) than it saves.
pub const REQUEUE_AFTER: Duration = Duration::from_millis(250);

/// An executor's window (requests queued beyond its slots) is what it finishes in this
/// long at its recent pace, between `dispatcher.window_floor` and `dispatcher.window`:
/// deep enough that a freed slot starts the next request while the dispatcher refills
/// (Little's law: depth = rate x latency), no deeper. A queued request is placed before anyone
/// knows which slot frees first; one queued behind long tasks starts late while a slot
/// elsewhere takes a later one.
const REFILL_HORIZON: Duration = Duration::from_millis(20);

/// The pace is the finishes heard over this long.
const PACE_OVER: Duration = Duration::from_millis(100);

/// Finishes remembered per executor for its pace (a bound on memory): 4,096 in
/// `PACE_OVER` already make a window of 820, deeper than any sane configured one.
const PACE_KEPT: usize = 4096;

/// An attempt handed to an executor.
#[derive(Debug, Clone)]
struct Given {
    at: Instant,
    /// What another executor needs to be eligible for it; `None` when it may not move
    /// (an `each` copy, pinned to its member) or is not known (counted from PostgreSQL
    /// by a new leader).
    movable: Option<ReadyTask>,
    /// Asked back already (to run on an idle slot elsewhere).
    asked: bool,
}

struct Known {
    info: Info,
    /// Our clock when its latest INFO arrived, and our wall clock then (for the row).
    heard: Instant,
    heard_at: DateTime<Utc>,
    /// Attempts given to it and not finished.
    outstanding: HashMap<Key, Given>,
    /// When the lease of each attempt it holds was last written, and whether the
    /// running mark was.
    written: HashMap<Key, (Instant, bool)>,
    /// Its row must be written: new, or groups, labels, capacity or draining changed.
    changed: bool,
    /// When its row was last written.
    row_written: Option<Instant>,
    /// Its requests came back unroutable: nothing for it until then; the wait doubles.
    unroutable: Option<(Instant, Duration)>,
    /// Attempts were asked back from it because others overtook them: its slots are
    /// taken by long tasks. It gets no queued work (no window) until it finishes one.
    stalled: bool,
    /// When its recent finishes were heard, oldest first (its pace).
    finishes: std::collections::VecDeque<Instant>,
}

impl Known {
    /// Its window: what it finishes in `REFILL_HORIZON` at the pace of the last
    /// `PACE_OVER`, between `floor` and `window`; none while stalled.
    fn window(&self, window: u32, floor: u32, now: Instant) -> u32 {
        if self.stalled {
            return 0;
        }
        let recent = self
            .finishes
            .iter()
            .rev()
            .take_while(|at| now.duration_since(**at) < PACE_OVER)
            .count();
        let depth = (recent as u128 * REFILL_HORIZON.as_micros()).div_ceil(PACE_OVER.as_micros());
        u32::try_from(depth)
            .unwrap_or(u32::MAX)
            .max(floor)
            .min(window)
    }
}

/// What an INFO came to.
#[derive(Debug, Default)]
pub struct Heard {
    /// Attempts given back: (the attempt, whether it had started).
    pub returned: Vec<(HeldBy, bool)>,
    /// Attempts whose result the executor published.
    pub finished: Vec<HeldBy>,
    /// Slots freed.
    pub freed: usize,
    /// An executor not known before (or back after silence): it may take tasks others
    /// could not.
    pub appeared: bool,
    /// What it says of itself changed (new, groups, labels, capacity, draining): worth
    /// writing now rather than on the timer.
    pub changed: bool,
}

impl Given {
    /// An open attempt read from PostgreSQL: counted, never moved.
    fn loaded(at: Instant) -> Self {
        Self {
            at,
            movable: None,
            asked: false,
        }
    }
}

pub struct Fleet {
    known: HashMap<ExecutorId, Known>,
    /// Open attempts of executors not heard from yet (loaded by a new leader): counted
    /// once they are.
    unheard: HashMap<ExecutorId, Vec<Key>>,
    /// An executor not heard from for this long is not alive.
    alive_for: Duration,
    /// The least paced window.
    window_floor: u32,
}

impl Fleet {
    pub fn new(alive_for: Duration) -> Self {
        Self {
            known: HashMap::new(),
            unheard: HashMap::new(),
            alive_for,
            window_floor: 1,
        }
    }

    /// Sets the least paced window (`dispatcher.window_floor`; 1 unless set).
    pub fn with_window_floor(mut self, floor: u32) -> Self {
        self.window_floor = floor;
        self
    }

    /// Forgets everything (leadership lost): rebuilt from the database and INFO.
    pub fn clear(&mut self) {
        self.known.clear();
        self.unheard.clear();
    }

    /// Takes an INFO. What it gave back or finished counts however old the message;
    /// the rest only if it is recent (younger than the alive period) and newer than the
    /// last one heard.
    pub fn heard(&mut self, mut info: Info) -> Heard {
        let mut out = Heard::default();
        let id = info.executor_id.clone();
        for r in std::mem::take(&mut info.returned) {
            out.returned.push((
                HeldBy {
                    task_id: r.task_id,
                    attempt: r.attempt,
                    executor_id: id.clone(),
                },
                r.running,
            ));
        }
        for f in std::mem::take(&mut info.finished) {
            out.finished.push(HeldBy {
                task_id: f.task_id,
                attempt: f.attempt,
                executor_id: id.clone(),
            });
        }
        let given_back: Vec<HeldBy> = out.returned.iter().map(|(h, _)| h.clone()).collect();
        out.freed += self.ended(&given_back);
        // Its pace counts the slots freed by finishing: results confirmed (unless their
        // exit was heard already) and commands that ended.
        let mut done = self.ended(&out.finished);
        // Attempts whose command ended, result not confirmed yet: their slots are free
        // (their leases are still extended while INFO lists them).
        if let Some(k) = self.known.get_mut(&id) {
            for h in info.in_flight.iter().filter(|h| h.exited) {
                if k.outstanding.remove(&(h.task_id, h.attempt)).is_some() {
                    done += 1;
                }
            }
        }
        out.freed += done;
        if done > 0 {
            if let Some(k) = self.known.get_mut(&id) {
                k.stalled = false;
                let now = Instant::now();
                while k
                    .finishes
                    .front()
                    .is_some_and(|at| now.duration_since(*at) >= PACE_OVER)
                {
                    k.finishes.pop_front();
                }
                for _ in 0..done {
                    if k.finishes.len() == PACE_KEPT {
                        k.finishes.pop_front();
                    }
                    k.finishes.push_back(now);
                }
            }
        }
        // A heartbeat that waited in the queue (through a dispatcher outage, say) says
        // nothing about whether its executor is alive now.
        let age = Utc::now().signed_duration_since(info.sent_at);
        if age.to_std().is_ok_and(|a| a > self.alive_for) {
            return out;
        }
        let now = Instant::now();
        let alive_for = self.alive_for;
        let loaded = self.unheard.remove(&id).unwrap_or_default();
        let k = self.known.entry(id).or_insert_with(|| {
            out.appeared = true;
            Known {
                info: info.clone(),
                heard: now,
                heard_at: Utc::now(),
                outstanding: loaded
                    .into_iter()
                    .map(|key| (key, Given::loaded(now)))
                    .collect(),
                written: HashMap::new(),
                changed: true,
                row_written: None,
                unroutable: None,
                stalled: false,
                finishes: std::collections::VecDeque::new(),
            }
        });
        if k.info.sent_at > info.sent_at {
            return out;
        }
        if k.heard.elapsed() >= alive_for {
            out.appeared = true;
        }
        k.changed |= k.info.groups != info.groups
            || k.info.labels != info.labels
            || k.info.capacity != info.capacity
            || k.info.draining != info.draining;
        if k.info.draining && !info.draining {
            out.appeared = true;
        }
        out.changed = k.changed;
        // Attempts given long enough ago that they would be listed if it held them.
        let listed: std::collections::HashSet<Key> = info
            .in_flight
            .iter()
            .map(|h| (h.task_id, h.attempt))
            .collect();
        let before = k.outstanding.len();
        k.outstanding.retain(|key, given| {
            listed.contains(key) || now.duration_since(given.at) < LISTED_WITHIN
        });
        out.freed += before - k.outstanding.len();
        k.written.retain(|key, _| listed.contains(key));
        k.info = info;
        k.heard = now;
        k.heard_at = Utc::now();
        out
    }

    /// Starts counting from what PostgreSQL holds open (a new leader).
    pub fn load(&mut self, open: Vec<HeldBy>) {
        let now = Instant::now();
        for h in open {
            let key = (h.task_id, h.attempt);
            match self.known.get_mut(&h.executor_id) {
                Some(k) => {
                    k.outstanding.insert(key, Given::loaded(now));
                }
                None => self.unheard.entry(h.executor_id).or_default().push(key),
            }
        }
    }

    /// Attempts handed out, with what another executor needs to take one over (`None`:
    /// pinned to this one).
    pub fn assigned(&mut self, attempts: &[(HeldBy, Option<ReadyTask>)]) {
        let now = Instant::now();
        for (a, movable) in attempts {
            if let Some(k) = self.known.get_mut(&a.executor_id) {
                let given = Given {
                    at: now,
                    movable: movable.clone(),
                    asked: false,
                };
                k.outstanding.insert((a.task_id, a.attempt), given);
            }
        }
    }

    /// Attempts that are waiting, unstarted, in some executor's hands while a slot that
    /// could run them is idle on another (no ready task left to give it): at most as
    /// many as idle slots, taken from the executors holding the most. Asked back, each
    /// is given back by its holder (if it has not started it meanwhile) and handed out
    /// again, to the idle slot. Marks them asked.
    pub fn to_steal(&mut self, views: &[ExecutorView]) -> Vec<HeldBy> {
        let idle: Vec<&ExecutorView> = views
            .iter()
            .filter(|v| !v.draining && v.outstanding < v.capacity)
            .collect();
        let free: u32 = idle.iter().map(|v| v.capacity - v.outstanding).sum();
        if free == 0 {
            return Vec::new();
        }
        // Attempts asked back already and not yet returned take their idle slot: one
        // slot, one give-back (unless the holder has started it meanwhile).
        let pending: usize = self
            .known
            .values()
            .map(|k| {
                let started = |key: &Key| {
                    k.info
                        .in_flight
                        .iter()
                        .any(|h| h.running && (h.task_id, h.attempt) == *key)
                };
                k.outstanding
                    .iter()
                    .filter(|(key, g)| g.asked && !started(key))
                    .count()
            })
            .sum();
        let mut slots = free.saturating_sub(u32::try_from(pending).unwrap_or(u32::MAX));
        if slots == 0 {
            return Vec::new();
        }
        // Holders among the executors alive and given work (a silent or revoked one's
        // INFO is stale), other than the idle ones.
        let mut holders: Vec<&mut Known> = self
            .known
            .values_mut()
            .filter(|k| {
                let id = &k.info.executor_id;
                views.iter().any(|v| &v.id == id) && idle.iter().all(|v| &v.id != id)
            })
            .collect();
        let now = Instant::now();
        // The executor that holds the most unstarted first.
        let unstarted = |k: &Known| k.info.in_flight.iter().filter(|h| !h.running).count();
        holders.sort_by_key(|k| std::cmp::Reverse(unstarted(k)));
        let mut out = Vec::new();
        for k in holders {
            for h in k.info.in_flight.iter().filter(|h| !h.running) {
                if slots == 0 {
                    return out;
                }
                let Some(given) = k.outstanding.get_mut(&(h.task_id, h.attempt)) else {
                    continue;
                };
                let Some(task) = &given.movable else { continue };
                // One that only just left will likely start as soon as it arrives: the
                // window exists for that. Asked back is one that waits.
                if given.asked
                    || now.duration_since(given.at) < STEAL_AFTER
                    || !idle.iter().any(|v| v.is_eligible(task))
                {
                    continue;
                }
                given.asked = true;
                slots -= 1;
                out.push(HeldBy {
                    task_id: h.task_id,
                    attempt: h.attempt,
                    executor_id: k.info.executor_id.clone(),
                });
            }
        }
        out
    }

    /// Unstarted attempts overtaken: waiting in their holder's hands for `REQUEUE_AFTER` or
    /// more while another executor that could run them (alive, not draining) has started
    /// an attempt handed out after them. The holder's slots are taken by long attempts;
    /// given back, such an attempt is ready again with its place in the order, and goes
    /// to whoever has room first. Marks them asked. Under load, requests wait in the
    /// window for milliseconds, well under `STEAL_AFTER`: nothing is asked back.
    pub fn to_requeue(&mut self, views: &[ExecutorView]) -> Vec<HeldBy> {
        let now = Instant::now();
        // Each executor's latest hand-out among the attempts it has started.
        let latest: Vec<(&ExecutorView, Instant)> = views
            .iter()
            .filter(|v| !v.draining)
            .filter_map(|v| {
                let k = self.known.get(&v.id)?;
                let at = k
                    .info
                    .in_flight
                    .iter()
                    .filter(|h| h.running)
                    .filter_map(|h| k.outstanding.get(&(h.task_id, h.attempt)).map(|g| g.at))
                    .max()?;
                Some((v, at))
            })
            .collect();
        let mut out = Vec::new();
        for k in self.known.values_mut() {
            let id = &k.info.executor_id;
            if !views.iter().any(|v| &v.id == id) {
                continue;
            }
            // Not started as far as we know: those its latest INFO lists as waiting, and
            // those handed out since (a holder busy with long tasks sends INFO only on
            // its timer). A give-back for one that started meanwhile changes nothing.
            let running: std::collections::HashSet<Key> = k
                .info
                .in_flight
                .iter()
                .filter(|h| h.running)
                .map(|h| (h.task_id, h.attempt))
                .collect();
            for (key, given) in k.outstanding.iter_mut() {
                if running.contains(key) {
                    continue;
                }
                let Some(task) = &given.movable else { continue };
                if given.asked || now.duration_since(given.at) < REQUEUE_AFTER {
                    continue;
                }
                let overtaken = latest
                    .iter()
                    .any(|(v, at)| &v.id != id && *at > given.at && v.is_eligible(task));
                if overtaken {
                    given.asked = true;
                    k.stalled = true;
                    out.push(HeldBy {
                        task_id: key.0,
                        attempt: key.1,
                        executor_id: id.clone(),
                    });
                }
            }
        }
        out
    }

    /// Attempts that no longer hold a slot (lost, or taken back).
    pub fn ended(&mut self, attempts: &[HeldBy]) -> usize {
        let mut freed = 0;
        for a in attempts {
            if let Some(k) = self.known.get_mut(&a.executor_id) {
                if k.outstanding.remove(&(a.task_id, a.attempt)).is_some() {
                    freed += 1;
                }
                k.written.remove(&(a.task_id, a.attempt));
            }
        }
        freed
    }

    /// Its requests came back unroutable: nothing for it for a while (1 s, doubling up
    /// to a minute while it goes on). Returns the wait.
    pub fn unroutable(&mut self, id: &ExecutorId) -> Option<Duration> {
        let k = self.known.get_mut(id)?;
        let wait = k.unroutable.map_or(Duration::from_secs(1), |(_, w)| {
            (w * 2).min(Duration::from_secs(60))
        });
        k.unroutable = Some((Instant::now() + wait, wait));
        Some(wait)
    }

    /// A request to it was taken by its queue.
    pub fn routable(&mut self, id: &ExecutorId) {
        if let Some(k) = self.known.get_mut(id) {
            k.unroutable = None;
        }
    }

    /// The executors that may take work now, as the balancing policy sees them: alive,
    /// not in quarantine, registered if registration is required (and held to their
    /// registered groups), with the groups an administrator put them in; draining if
    /// they say so or an administrator drained them (`drained`, kept in PostgreSQL).
    pub fn views(
        &self,
        registered: &HashMap<String, Registered>,
        assigned: &HashMap<String, Vec<GroupName>>,
        drained: &std::collections::HashSet<String>,
        require_registration: bool,
        window: u32,
    ) -> Vec<ExecutorView> {
        let now = Instant::now();
        let mut views: Vec<ExecutorView> = self
            .known
            .values()
            .filter(|k| now.duration_since(k.heard) < self.alive_for)
            .filter(|k| k.unroutable.is_none_or(|(until, _)| until <= now))
            .filter_map(|k| {
                let id = k.info.executor_id.as_str();
                let declared = match registered.get(id) {
                    Some(r) if r.revoked => return None,
                    Some(r) => &r.groups,
                    None if require_registration => return None,
                    None => &k.info.groups,
                };
                let mut groups = declared.clone();
                for g in assigned.get(id).into_iter().flatten() {
                    if !groups.contains(g) {
                        groups.push(g.clone());
                    }
                }
                Some(ExecutorView {
                    id: k.info.executor_id.clone(),
                    groups,
                    labels: k.info.labels.clone(),
                    capacity: k.info.capacity,
                    outstanding: u32::try_from(k.outstanding.len()).unwrap_or(u32::MAX),
                    draining: k.info.draining || drained.contains(id),
                    // Paced; a stalled one gets work only for a slot actually free.
                    window: k.window(window, self.window_floor, now),
                })
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// What is due to be written: the rows of executors that changed (or were not
    /// written for `row_every`), and the attempts whose lease was not extended for
    /// `lease_every` or that started since. Marks them written; after a failed write,
    /// [`Self::rewrite`] makes them due again.
    pub fn due(
        &mut self,
        row_every: Duration,
        lease_every: Duration,
    ) -> (Vec<(Info, DateTime<Utc>)>, Vec<Held>) {
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut leases = Vec::new();
        let alive_for = self.alive_for;
        for k in self.known.values_mut() {
            // A row is written again only for news: an executor gone silent keeps its
            // last one (its `last_info_at` says when it was heard).
            if k.changed
                || k.row_written
                    .is_none_or(|w| k.heard > w && now.duration_since(w) >= row_every)
            {
                rows.push((k.info.clone(), k.heard_at));
                k.changed = false;
                k.row_written = Some(now);
            }
            // A lease is extended only on the word of an INFO heard since it was last
            // extended: an executor gone silent extends nothing.
            for h in &k.info.in_flight {
                let key = (h.task_id, h.attempt);
                let due = match k.written.get(&key) {
                    // Not written since it was first listed (or since a failed write):
                    // on the word of an INFO still recent.
                    None => now.duration_since(k.heard) < alive_for,
                    Some((at, running)) => {
                        k.heard > *at
                            && ((h.running && !running) || now.duration_since(*at) >= lease_every)
                    }
                };
                if due {
                    leases.push(Held {
                        attempt: HeldBy {
                            task_id: h.task_id,
                            attempt: h.attempt,
                            executor_id: k.info.executor_id.clone(),
                        },
                        running: h.running,
                    });
                    k.written.insert(key, (now, h.running));
                }
            }
        }
        (rows, leases)
    }

    /// A write of what [`Self::due`] returned failed: all of it is due again.
    pub fn rewrite(&mut self) {
        for k in self.known.values_mut() {
            k.changed = true;
            k.written.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_shared::proto::HeldAttempt;

    use super::*;
    use crate::plan::tests::executor as view;

    fn info(id: &str, group: &str, capacity: u32, held: &[(TaskId, bool)]) -> Info {
        Info {
            running: held.iter().filter(|(_, r)| *r).count() as u32,
            queued: held.iter().filter(|(_, r)| !*r).count() as u32,
            in_flight: held
                .iter()
                .map(|(t, running)| HeldAttempt {
                    task_id: *t,
                    attempt: 1,
                    running: *running,
                    exited: false,
                })
                .collect(),
            ..Info::idle(
                ExecutorId::parse(id).expect("valid"),
                vec![GroupName::parse(group).expect("valid")],
                capacity,
            )
        }
    }

    /// As if every attempt had been handed out a while ago.
    fn waited(fleet: &mut Fleet) {
        let then = Instant::now() - REQUEUE_AFTER.max(STEAL_AFTER) * 2;
        for k in fleet.known.values_mut() {
            for g in k.outstanding.values_mut() {
                g.at = then;
            }
        }
    }

    fn given(fleet: &mut Fleet, executor: &str, group: &str, tasks: &[TaskId], movable: bool) {
        let attempts: Vec<(HeldBy, Option<ReadyTask>)> = tasks
            .iter()
            .map(|t| {
                let held = HeldBy {
                    task_id: *t,
                    attempt: 1,
                    executor_id: ExecutorId::parse(executor).expect("valid"),
                };
                let task = ReadyTask {
                    id: *t,
                    group: GroupName::parse(group).expect("valid"),
                    labels: BTreeMap::new(),
                };
                (held, movable.then_some(task))
            })
            .collect();
        fleet.assigned(&attempts);
    }

    #[test]
    fn waiting_attempts_are_asked_back_for_idle_slots_once_each() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (long, q1, q2) = (TaskId::new(), TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("b", "cpu", 1, &[]));
        given(&mut fleet, "a", "cpu", &[long, q1, q2], true);
        // a runs the long one, two wait behind it; b is idle with one slot.
        fleet.heard(info(
            "a",
            "cpu",
            1,
            &[(long, true), (q1, false), (q2, false)],
        ));
        let views = [view("a", "cpu", 1, 3), view("b", "cpu", 1, 0)];
        // Just handed out: likely to start at once, not asked.
        assert!(fleet.to_steal(&views).is_empty());
        waited(&mut fleet);
        let asked = fleet.to_steal(&views);
        assert_eq!(asked.len(), 1, "one idle slot: one attempt asked back");
        assert_eq!(asked[0].executor_id.as_str(), "a");
        assert!(asked[0].task_id == q1 || asked[0].task_id == q2);
        assert_ne!(asked[0].task_id, long, "a started attempt is never asked");
        // While that one is on its way back, the slot is spoken for: nothing more.
        assert!(fleet.to_steal(&views).is_empty());
        // The holder started it meanwhile (the give-back came too late): the slot is idle
        // again, and the other one is asked for, once.
        let started = asked[0].task_id;
        let other = if started == q1 { q2 } else { q1 };
        fleet.heard(info(
            "a",
            "cpu",
            1,
            &[(long, true), (started, true), (other, false)],
        ));
        let again = fleet.to_steal(&views);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].task_id, other);
        assert!(fleet.to_steal(&views).is_empty());
    }

    #[test]
    fn an_attempt_overtaken_elsewhere_is_asked_back_once() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (long, q, short, gpu) = (TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("b", "cpu", 1, &[]));
        fleet.heard(info("c", "gpu", 1, &[]));
        // a runs a long one with q waiting behind it.
        given(&mut fleet, "a", "cpu", &[long, q], true);
        fleet.heard(info("a", "cpu", 1, &[(long, true), (q, false)]));
        waited(&mut fleet);
        let views = [
            view("a", "cpu", 1, 2),
            view("b", "cpu", 1, 1),
            view("c", "gpu", 1, 1),
        ];
        // Nobody started anything handed out after q: q is not overtaken.
        assert!(fleet.to_requeue(&views).is_empty());
        // c starts a later one, but c could not run q: still not overtaken.
        given(&mut fleet, "c", "gpu", &[gpu], true);
        fleet.heard(info("c", "gpu", 1, &[(gpu, true)]));
        assert!(fleet.to_requeue(&views).is_empty());
        // b starts one handed out after q: q is asked back, once.
        given(&mut fleet, "b", "cpu", &[short], true);
        fleet.heard(info("b", "cpu", 1, &[(short, true)]));
        let asked = fleet.to_requeue(&views);
        assert_eq!(asked.len(), 1);
        assert_eq!((asked[0].task_id, asked[0].executor_id.as_str()), (q, "a"));
        assert!(fleet.to_requeue(&views).is_empty());
        // a is stalled: no window, so it gets no queued work...
        let outstanding_of_a = |fleet: &Fleet| {
            fleet
                .views(
                    &HashMap::new(),
                    &HashMap::new(),
                    &Default::default(),
                    false,
                    4,
                )
                .into_iter()
                .find(|v| v.id.as_str() == "a")
                .map(|v| (v.outstanding, v.window))
        };
        assert_eq!(outstanding_of_a(&fleet), Some((2, 0)));
        // ... until it finishes something; then its window is paced (one finish: 1).
        let mut done = info("a", "cpu", 1, &[(q, false)]);
        done.finished = vec![fleet_shared::proto::AttemptRef {
            task_id: long,
            attempt: 1,
        }];
        fleet.heard(done);
        assert_eq!(outstanding_of_a(&fleet), Some((1, 1)));
    }

    #[test]
    fn the_window_follows_the_pace_of_finishes() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        fleet.heard(info("a", "cpu", 2, &[]));
        let used = |fleet: &Fleet, window| {
            fleet
                .views(
                    &HashMap::new(),
                    &HashMap::new(),
                    &Default::default(),
                    false,
                    window,
                )
                .into_iter()
                .find(|v| v.id.as_str() == "a")
                .map(|v| v.window)
        };
        // Nothing finished yet: a window of one, of the configured 4.
        assert_eq!(used(&fleet, 4), Some(1));
        // Finishing fast (40 in 100 ms: 8 in the 20 ms horizon): the whole window.
        let tasks: Vec<TaskId> = (0..40).map(|_| TaskId::new()).collect();
        given(&mut fleet, "a", "cpu", &tasks, true);
        let mut fast = info("a", "cpu", 2, &[]);
        fast.finished = tasks
            .iter()
            .map(|t| fleet_shared::proto::AttemptRef {
                task_id: *t,
                attempt: 1,
            })
            .collect();
        fleet.heard(fast);
        assert_eq!(used(&fleet, 4), Some(4));
        // Window 0 configured: none, however fast.
        assert_eq!(used(&fleet, 0), Some(0));
        // The pace is forgotten once old: back to one.
        let k = fleet.known.values_mut().next().expect("known");
        for at in k.finishes.iter_mut() {
            *at -= PACE_OVER;
        }
        assert_eq!(used(&fleet, 4), Some(1));
    }

    #[test]
    fn a_slot_frees_when_its_command_ends_not_when_its_result_is_confirmed() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (done, running) = (TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 2, &[]));
        given(&mut fleet, "a", "cpu", &[done, running], true);
        let outstanding = |fleet: &Fleet| {
            fleet
                .views(
                    &HashMap::new(),
                    &HashMap::new(),
                    &Default::default(),
                    false,
                    0,
                )
                .into_iter()
                .find(|v| v.id.as_str() == "a")
                .map(|v| v.outstanding)
        };
        assert_eq!(outstanding(&fleet), Some(2));
        // Its command ended; the result is being published: listed, but exited.
        let mut exited = info("a", "cpu", 2, &[(done, true), (running, true)]);
        exited.in_flight[0].exited = true;
        let heard = fleet.heard(exited);
        assert_eq!(heard.freed, 1);
        assert_eq!(outstanding(&fleet), Some(1));
        // The confirm that follows frees nothing more, and the pace counts it once.
        let mut confirmed = info("a", "cpu", 2, &[(running, true)]);
        confirmed.finished = vec![fleet_shared::proto::AttemptRef {
            task_id: done,
            attempt: 1,
        }];
        let heard = fleet.heard(confirmed);
        assert_eq!(heard.freed, 0);
        assert_eq!(heard.finished.len(), 1, "still reported as finished");
        assert_eq!(outstanding(&fleet), Some(1));
        let k = fleet.known.values().next().expect("known");
        assert_eq!(k.finishes.len(), 1);
    }

    #[test]
    fn an_attempt_handed_out_since_the_holders_latest_info_counts_as_waiting() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (long, q, short) = (TaskId::new(), TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("b", "cpu", 1, &[]));
        given(&mut fleet, "a", "cpu", &[long], true);
        fleet.heard(info("a", "cpu", 1, &[(long, true)]));
        // q is handed to a, which sends no INFO (its slot is busy, nothing finishes).
        given(&mut fleet, "a", "cpu", &[q], true);
        waited(&mut fleet);
        given(&mut fleet, "b", "cpu", &[short], true);
        fleet.heard(info("b", "cpu", 1, &[(short, true)]));
        let views = [view("a", "cpu", 1, 2), view("b", "cpu", 1, 1)];
        let asked = fleet.to_requeue(&views);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].task_id, q, "the running one is never asked");
    }

    #[test]
    fn an_attempt_just_handed_out_is_not_asked_back_however_overtaken() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (long, q, short) = (TaskId::new(), TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("b", "cpu", 1, &[]));
        given(&mut fleet, "a", "cpu", &[long, q], true);
        fleet.heard(info("a", "cpu", 1, &[(long, true), (q, false)]));
        given(&mut fleet, "b", "cpu", &[short], true);
        fleet.heard(info("b", "cpu", 1, &[(short, true)]));
        // Under load a request waits in the window for milliseconds: left where it is.
        let views = [view("a", "cpu", 1, 2), view("b", "cpu", 1, 1)];
        assert!(fleet.to_requeue(&views).is_empty());
    }

    #[test]
    fn nothing_is_asked_without_an_idle_eligible_slot_or_for_pinned_copies() {
        let mut fleet = Fleet::new(Duration::from_secs(15));
        let (long, q) = (TaskId::new(), TaskId::new());
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("b", "gpu", 1, &[]));
        given(&mut fleet, "a", "cpu", &[long, q], true);
        fleet.heard(info("a", "cpu", 1, &[(long, true), (q, false)]));
        waited(&mut fleet);
        // b is idle but not in the task's group.
        let views = [view("a", "cpu", 1, 2), view("b", "gpu", 1, 0)];
        assert!(fleet.to_steal(&views).is_empty());
        // Every slot busy: nothing to steal for.
        let views = [view("a", "cpu", 1, 2), view("b", "gpu", 1, 1)];
        assert!(fleet.to_steal(&views).is_empty());
        // A holder no longer given work (silent, revoked) is not asked: its INFO is stale.
        fleet.heard(info("c", "cpu", 1, &[]));
        let views = [view("c", "cpu", 1, 0)];
        assert!(fleet.to_steal(&views).is_empty());
        // A pinned copy never moves, even to an idle slot of its group.
        let mut fleet = Fleet::new(Duration::from_secs(15));
        fleet.heard(info("a", "cpu", 1, &[]));
        fleet.heard(info("c", "cpu", 1, &[]));
        given(&mut fleet, "a", "cpu", &[long, q], false);
        fleet.heard(info("a", "cpu", 1, &[(long, true), (q, false)]));
        waited(&mut fleet);
        let views = [view("a", "cpu", 1, 2), view("c", "cpu", 1, 0)];
        assert!(fleet.to_steal(&views).is_empty());
    }
}
