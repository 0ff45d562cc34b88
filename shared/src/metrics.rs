//! Fleet's metrics beyond each service's own counters (docs/design.md, "Metrics"): the
//! process figures every service adds to `/metrics`, the fleet-wide gauges the collector
//! publishes from the figures of `GET /v1/stats`, how many executors a group wants
//! ([`desired_executors`], pure), and the histograms and counters of what results and
//! settling tell.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::db::collect::Settled;
use crate::db::stats::{GroupStats, StatsView};
use crate::event::Kind;
use crate::group::GroupName;

/// The buckets of every `*_seconds` histogram: 5 ms to 6 h.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0, 21600.0,
];

/// What one group asks of its executors, for [`desired_executors`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Ready tasks, not held.
    pub ready: u64,
    /// Tasks assigned or running.
    pub running: u64,
    /// Executors alive in the group (draining ones included).
    pub alive: u64,
    /// Their slots.
    pub slots: u64,
    /// The group's recent mean run time, when any run was recorded lately.
    pub mean_run_secs: Option<f64>,
}

/// How many executors a group needs to finish its ready and running work within
/// `target_secs`:
///
/// - work `W` = ready + running tasks; none, no executor is needed (0);
/// - slots needed `S` = `ceil(W * mean run time / target)`, at least the running tasks
///   (their slots are taken until they end) and 1, at most `W` (a task runs in one slot:
///   more slots than tasks do not help). Without a recent mean run time, `S` = `W`: one
///   slot per task, the most that can help;
/// - the answer is `ceil(S / C)`, where `C` is the mean capacity of the group's alive
///   executors, or `default_capacity` when none is alive.
pub fn desired_executors(d: &Demand, target_secs: f64, default_capacity: u64) -> u64 {
    let work = d.ready + d.running;
    if work == 0 {
        return 0;
    }
    let slots = match d.mean_run_secs {
        Some(run) if run.is_finite() && run >= 0.0 && target_secs > 0.0 => {
            let needed = (work as f64 * run / target_secs).ceil();
            // `as` saturates: a huge product is `work` after the clamp.
            (needed as u64).clamp(d.running.max(1), work)
        }
        _ => work,
    };
    let capacity = if d.alive > 0 && d.slots > 0 {
        d.slots as f64 / d.alive as f64
    } else {
        default_capacity.max(1) as f64
    };
    (slots as f64 / capacity).ceil() as u64
}

/// Run times recorded lately, per target group, in buckets of [`RunTimes::BUCKET_SECS`]
/// seconds: memory stays bounded whatever the rate. Time is given by the caller (seconds
/// on any monotonic clock), so this is pure.
#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    window_secs: u64,
    /// Per target group: (bucket number, sum of seconds, count), oldest first.
    groups: BTreeMap<GroupName, VecDeque<(u64, f64, u64)>>,
}

impl RunTimes {
    pub const BUCKET_SECS: u64 = 10;

    pub fn new(window_secs: u64) -> Self {
        Self {
            window_secs,
            groups: BTreeMap::new(),
        }
    }

    /// A run of `secs` of a task of `group`, recorded at `now`.
    pub fn add(&mut self, now: u64, group: GroupName, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        let bucket = now / Self::BUCKET_SECS;
        let q = self.groups.entry(group).or_default();
        match q.back_mut() {
            Some(b) if b.0 == bucket => {
                b.1 += secs;
                b.2 += 1;
            }
            _ => q.push_back((bucket, secs, 1)),
        }
    }

    /// Forgets the runs older than the window, and the groups left with none.
    pub fn expire(&mut self, now: u64) {
        let oldest = now.saturating_sub(self.window_secs) / Self::BUCKET_SECS;
        for q in self.groups.values_mut() {
            while q.front().is_some_and(|b| b.0 < oldest) {
                q.pop_front();
            }
        }
        self.groups.retain(|_, q| !q.is_empty());
    }

    /// The mean run time of `group`'s tasks and its subgroups' within the window; `None`
    /// when none ran.
    pub fn mean(&self, now: u64, group: &GroupName) -> Option<f64> {
        let oldest = now.saturating_sub(self.window_secs) / Self::BUCKET_SECS;
        let (sum, n) = self
            .groups
            .iter()
            .filter(|(g, _)| g.is_within(group))
            .flat_map(|(_, q)| q.iter().filter(|b| b.0 >= oldest))
            .fold((0.0, 0u64), |(s, n), b| (s + b.1, n + b.2));
        (n > 0).then(|| sum / n as f64)
    }
}

/// What [`fleet_gauges`] sets for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupGauges {
    pub group: String,
    /// (metric name, value).
    pub values: Vec<(&'static str, f64)>,
}

/// Every gauge [`fleet_gauges`] sets, by name.
pub const FLEET_GAUGES: &[&str] = &[
    "fleet_tasks_ready",
    "fleet_tasks_held",
    "fleet_tasks_waiting",
    "fleet_tasks_running",
    "fleet_executors_alive",
    "fleet_executors_draining",
    "fleet_slots_total",
    "fleet_slots_free",
    "fleet_oldest_ready_seconds",
    "fleet_run_seconds_mean",
    "fleet_desired_executors",
];

/// The gauges of each group the stats list (subgroups included, as `/v1/stats` counts).
pub fn fleet_gauges(
    stats: &StatsView,
    runs: &RunTimes,
    now: u64,
    cfg: &crate::config::MetricsConfig,
) -> Vec<GroupGauges> {
    stats
        .groups
        .iter()
        .map(|s: &GroupStats| {
            let mean = GroupName::parse(&s.group)
                .ok()
                .and_then(|g| runs.mean(now, &g));
            let demand = Demand {
                ready: s.tasks.ready,
                running: s.tasks.running,
                alive: s.executors.alive,
                slots: s.slots.total,
                mean_run_secs: mean,
            };
            let desired = desired_executors(
                &demand,
                cfg.drain_target_secs as f64,
                u64::from(cfg.default_executor_capacity),
            );
            let values = vec![
                ("fleet_tasks_ready", s.tasks.ready as f64),
                ("fleet_tasks_held", s.tasks.held as f64),
                ("fleet_tasks_waiting", s.tasks.waiting as f64),
                ("fleet_tasks_running", s.tasks.running as f64),
                ("fleet_executors_alive", s.executors.alive as f64),
                ("fleet_executors_draining", s.executors.draining as f64),
                ("fleet_slots_total", s.slots.total as f64),
                ("fleet_slots_free", s.slots.free as f64),
                (
                    "fleet_oldest_ready_seconds",
                    s.tasks.oldest_ready_secs.unwrap_or(0.0),
                ),
                ("fleet_run_seconds_mean", mean.unwrap_or(0.0)),
                ("fleet_desired_executors", desired as f64),
            ];
            GroupGauges {
                group: s.group.clone(),
                values,
            }
        })
        .collect()
}

/// Sets the fleet gauges; a group published before and no longer listed gets zeros
/// (`published` remembers which were).
pub fn publish_fleet_gauges(gauges: &[GroupGauges], published: &mut BTreeSet<String>) {
    let listed: BTreeSet<String> = gauges.iter().map(|g| g.group.clone()).collect();
    for gone in published.difference(&listed) {
        for name in FLEET_GAUGES {
            metrics::gauge!(*name, "group" => gone.clone()).set(0.0);
        }
    }
    for g in gauges {
        for (name, v) in &g.values {
            metrics::gauge!(*name, "group" => g.group.clone()).set(*v);
        }
    }
    published.extend(listed);
}

/// The times of one attempt whose result was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptTimes {
    pub group: String,
    pub outcome: String,
    /// From the task becoming ready to the attempt's start.
    pub queue_wait_secs: Option<f64>,
    /// From the attempt's start to its end, as its executor measured them.
    pub run_secs: Option<f64>,
    /// From the task's submission to the recording of this result.
    pub submit_to_recorded_secs: f64,
}

/// Observes the histograms and counts the outcome of attempts whose results were
/// recorded.
pub fn observe_attempts(attempts: &[AttemptTimes]) {
    for a in attempts {
        let group = a.group.clone();
        if let Some(w) = a.queue_wait_secs {
            metrics::histogram!("fleet_task_queue_wait_seconds", "group" => group.clone())
                .record(w.max(0.0));
        }
        if let Some(r) = a.run_secs {
            metrics::histogram!("fleet_task_run_seconds", "group" => group.clone())
                .record(r.max(0.0));
        }
        metrics::histogram!("fleet_task_submit_to_recorded_seconds", "group" => group.clone())
            .record(a.submit_to_recorded_secs.max(0.0));
        metrics::counter!("fleet_attempt_outcomes_total", "group" => group, "outcome" => a.outcome.clone())
            .increment(1);
    }
}

/// Counts what settling decided (once committed): tasks finished by state, retries by
/// the outcome that caused them, jobs finished by state.
pub fn count_settled(s: &Settled) {
    for (_, _, state) in &s.finished {
        metrics::counter!("fleet_tasks_finished_total", "state" => state.as_str()).increment(1);
    }
    for e in s.events.iter().filter(|e| e.kind == Kind::TaskRetrying) {
        let outcome = e.state.clone().unwrap_or_else(|| "unknown".into());
        metrics::counter!("fleet_task_retries_total", "outcome" => outcome).increment(1);
    }
    for (_, state) in &s.jobs {
        if state.is_terminal() {
            metrics::counter!("fleet_jobs_finished_total", "state" => state.as_str()).increment(1);
        }
    }
}

/// The process's own figures in Prometheus text, read from `/proc/self` at each scrape
/// (the exporter does not collect them): CPU seconds, resident and virtual memory, open
/// and allowed file descriptors, start time. Empty where there is no `/proc`.
pub fn process_text() -> String {
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    // /proc reports times in USER_HZ, which is 100 on every Linux architecture.
    const TICKS: f64 = 100.0;
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        put(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            (utime + stime) / TICKS,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim();
            v.parse::<f64>().ok()
        })
    };
    if let Some(rss) = kib("VmRSS:") {
        put(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss * 1024.0,
        );
    }
    if let Some(vm) = kib("VmSize:") {
        put(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vm * 1024.0,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        put(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits.lines().find_map(|l| {
        l.strip_prefix("Max open files")?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    });
    if let Some(max) = max_fds {
        put(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        put(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start / TICKS,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupName {
        GroupName::parse(s).expect("valid group")
    }

    fn demand(ready: u64, running: u64, alive: u64, slots: u64, mean: Option<f64>) -> Demand {
        Demand {
            ready,
            running,
            alive,
            slots,
            mean_run_secs: mean,
        }
    }

    #[test]
    fn nothing_to_do_wants_no_executor() {
        assert_eq!(
            desired_executors(&demand(0, 0, 3, 6, Some(10.0)), 300.0, 1),
            0
        );
        assert_eq!(desired_executors(&demand(0, 0, 0, 0, None), 300.0, 1), 0);
    }

    #[test]
    fn without_a_run_time_each_task_gets_a_slot() {
        // 6 tasks, executors of 2 slots: 3 executors.
        assert_eq!(desired_executors(&demand(2, 4, 2, 4, None), 300.0, 1), 3);
        // 7 tasks: 4 (a half-used executor is still one).
        assert_eq!(desired_executors(&demand(3, 4, 2, 4, None), 300.0, 1), 4);
        // No executor alive: the default capacity.
        assert_eq!(desired_executors(&demand(5, 0, 0, 0, None), 300.0, 1), 5);
        assert_eq!(desired_executors(&demand(5, 0, 0, 0, None), 300.0, 2), 3);
    }

    #[test]
    fn the_backlog_is_drained_within_the_target_at_the_mean_run_time() {
        // 1000 tasks of 60 s in 300 s: 200 slots; executors of 4: 50.
        assert_eq!(
            desired_executors(&demand(1000, 0, 10, 40, Some(60.0)), 300.0, 1),
            50
        );
        // Twice the time allowed: half the executors.
        assert_eq!(
            desired_executors(&demand(1000, 0, 10, 40, Some(60.0)), 600.0, 1),
            25
        );
        // Short tasks: one slot would do, but the 8 running keep theirs.
        assert_eq!(
            desired_executors(&demand(10, 8, 2, 8, Some(0.1)), 300.0, 1),
            2
        );
        // Nothing running: still one slot.
        assert_eq!(
            desired_executors(&demand(3, 0, 1, 4, Some(0.1)), 300.0, 1),
            1
        );
        // Tasks longer than the target: one slot each, no more.
        assert_eq!(
            desired_executors(&demand(5, 1, 1, 2, Some(3600.0)), 300.0, 1),
            3
        );
        // A nonsense mean is no mean.
        assert_eq!(
            desired_executors(&demand(5, 1, 1, 2, Some(f64::NAN)), 300.0, 1),
            3
        );
    }

    #[test]
    fn run_times_roll_up_subgroups_and_expire() {
        let mut r = RunTimes::new(60);
        r.add(0, g("lab.gpu"), 10.0);
        r.add(5, g("lab.gpu"), 20.0);
        r.add(30, g("lab"), 30.0);
        r.add(30, g("cpu"), 1.0);
        assert_eq!(r.mean(30, &g("lab.gpu")), Some(15.0));
        assert_eq!(r.mean(30, &g("lab")), Some(20.0));
        assert_eq!(r.mean(30, &g("default")), Some(61.0 / 4.0));
        assert_eq!(r.mean(30, &g("idle")), None);
        // 75 s on: the runs of the first bucket are out of the window.
        assert_eq!(r.mean(75, &g("lab")), Some(30.0));
        r.expire(75);
        assert_eq!(r.mean(75, &g("lab.gpu")), None);
        r.expire(200);
        assert!(r.groups.is_empty());
        // Nonsense is not recorded.
        r.add(200, g("cpu"), -1.0);
        r.add(200, g("cpu"), f64::INFINITY);
        assert_eq!(r.mean(200, &g("cpu")), None);
    }

    #[test]
    fn gauges_per_group_with_desired_executors() {
        use crate::db::stats::{ExecutorStats, SlotStats, TaskStats};
        let group = |name: &str, ready, running, alive, total, free| GroupStats {
            group: name.into(),
            tasks: TaskStats {
                ready,
                held: 1,
                waiting: 0,
                running,
                oldest_ready_secs: (ready > 0).then_some(12.5),
            },
            executors: ExecutorStats { alive, draining: 0 },
            slots: SlotStats { total, free },
            ..GroupStats::default()
        };
        let view = StatsView {
            at: chrono::Utc::now(),
            groups: vec![
                group("default", 10, 4, 2, 8, 4),
                group("idle", 0, 0, 0, 0, 0),
            ],
        };
        let mut runs = RunTimes::new(600);
        runs.add(100, g("cpu"), 60.0);
        let cfg = crate::config::MetricsConfig::default();
        let gauges = fleet_gauges(&view, &runs, 100, &cfg);
        let of = |name: &str, metric: &str| {
            gauges
                .iter()
                .find(|g| g.group == name)
                .and_then(|g| g.values.iter().find(|v| v.0 == metric))
                .map(|v| v.1)
        };
        // 14 tasks of 60 s in 300 s: 3 slots, but 4 run; 4 slots an executor: 1.
        assert_eq!(of("default", "fleet_desired_executors"), Some(1.0));
        assert_eq!(of("default", "fleet_run_seconds_mean"), Some(60.0));
        assert_eq!(of("default", "fleet_tasks_held"), Some(1.0));
        assert_eq!(of("default", "fleet_oldest_ready_seconds"), Some(12.5));
        assert_eq!(of("idle", "fleet_desired_executors"), Some(0.0));
        assert_eq!(of("idle", "fleet_oldest_ready_seconds"), Some(0.0));
        // Every gauge, each once.
        for g in &gauges {
            let names: Vec<&str> = g.values.iter().map(|v| v.0).collect();
            assert_eq!(names, FLEET_GAUGES);
        }
    }

    #[test]
    fn process_figures_are_read() {
        let text = process_text();
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
            ] {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name} "))),
                    "{name} missing from {text}"
                );
            }
        }
    }
}
