//! What a user submits, and its validation into a job the services can trust. Validation
//! is pure and names the offending field (`tasks[2].argv`), for HTTP 400s and AMQP
//! rejections alike.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::group::GroupName;

pub const MAX_TASKS_PER_JOB: usize = 10_000;
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;
const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tasks: Vec<TaskSpec>,
    /// A webhook for this job's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// A job's own webhook: its events (those named, default all of the job's) are POSTed
/// to `url`, signed with `secret` (docs/events.md, "Webhooks").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub url: String,
    /// Kinds or patterns (`task.*`); empty: every event of the job.
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC key of the signature header: 16 to 256 bytes.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNotify {
    pub url: String,
    pub kinds: Vec<crate::event::Kind>,
    pub secret: String,
}

pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 256;
const MAX_URL_LEN: usize = 2048;

/// A webhook URL: `http://` or `https://`, a host, no blanks or control characters.
/// (The collector checks an https receiver's certificate against the system's roots
/// and `webhooks.ca_file`.)
pub fn check_webhook_url(field: &str, url: &str) -> Result<(), FieldError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad(field, "must start with http:// or https://"))?;
    if url.len() > MAX_URL_LEN {
        return Err(bad(field, format!("at most {MAX_URL_LEN} bytes")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(field, "must not hold blanks or control characters"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad(field, "names no host"));
    }
    Ok(())
}

/// A webhook secret: 16 to 256 bytes, no NUL.
pub fn check_webhook_secret(field: &str, secret: &str) -> Result<(), FieldError> {
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
        return Err(bad(
            field,
            format!("must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"),
        ));
    }
    no_nul(field, secret)
}

impl Notify {
    fn validate(&self) -> Result<ValidNotify, FieldError> {
        check_webhook_url("notify.url", &self.url)?;
        check_webhook_secret("notify.secret", &self.secret)?;
        // A pattern (`*`) means the job's events of it; a kind named outright must be one.
        if let Some(k) = self
            .events
            .iter()
            .filter_map(|e| crate::event::Kind::parse(e.trim()))
            .find(|k| !k.of_job())
        {
            return Err(bad(
                "notify.events",
                format!(
                    "{k} is not an event of a job (executor events are for fleet-wide webhooks)"
                ),
            ));
        }
        let kinds: Vec<crate::event::Kind> =
            crate::event::Kind::parse_list(self.events.iter().map(String::as_str))
                .map_err(|e| bad("notify.events", e))?
                .into_iter()
                .filter(|k| k.of_job())
                .collect();
        Ok(ValidNotify {
            url: self.url.clone(),
            kinds,
            secret: self.secret.clone(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: stored encrypted, given to the
    /// command like `env`, never shown by the API nor logged. A variable of `env` whose
    /// name matches `secrets.env_patterns` is treated the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_secret: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Run once on every member of the group (known when the task becomes ready)
    /// instead of once on any.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub each: bool,
    /// With `each`: how many members must succeed (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Which failures are tried again, how many attempts in all, and the wait between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::retry::RetrySpec>,
}

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub name: Option<String>,
    pub tasks: Vec<ValidTask>,
    pub notify: Option<ValidNotify>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidTask {
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The secret variables, in clear: in memory only, sealed before they are stored.
    pub env_secret: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    pub timeout: Duration,
    pub priority: i32,
    pub group: GroupName,
    pub labels: BTreeMap<String, String>,
    /// Indices of the tasks of the same job this one waits for.
    pub depends_on: Vec<usize>,
    /// For an `each` task, per member.
    pub max_attempts: u32,
    pub each: bool,
    pub quorum: Option<u32>,
    pub retry: Option<crate::retry::RetryPolicy>,
}

/// The largest `quorum` accepted (far above any group's size).
pub const MAX_QUORUM: u32 = 100_000;

/// PostgreSQL text cannot hold a NUL byte: refused, naming the field.
pub fn no_nul(field: &str, s: &str) -> Result<(), FieldError> {
    if s.contains('\0') {
        Err(bad(field, "must not contain a NUL byte"))
    } else {
        Ok(())
    }
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut c = Counter(0);
    // Writing to a counter cannot fail, and strings and maps of strings always serialize.
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// What a task's `request` message holds besides its argv, env, cwd and stdin (field
/// names, ids, attempt, timeout, lease deadline, `type` and `v`), at most: a few hundred
/// bytes, with room to spare.
pub const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// Whether the task's `request` message (what the executor receives, encoded as JSON)
/// stays within [`crate::proto::MAX_MESSAGE_BYTES`], the most an executor decodes; else
/// the largest of its parts (`argv`, `env`, `cwd`, `stdin`) and the message's size.
fn request_fits(t: &TaskSpec) -> Result<(), (&'static str, usize)> {
    let parts = [
        ("argv", json_len(&t.argv)),
        ("env", json_len(&t.env)),
        ("env_secret", json_len(&t.env_secret)),
        ("cwd", t.cwd.as_ref().map_or(0, json_len)),
        ("stdin", t.stdin.as_ref().map_or(0, json_len)),
    ];
    let size = REQUEST_OVERHEAD_BYTES + parts.iter().map(|(_, n)| n).sum::<usize>();
    if size <= crate::proto::MAX_MESSAGE_BYTES {
        return Ok(());
    }
    let largest = parts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or("argv", |(part, _)| *part);
    Err((largest, size))
}

fn label_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'/')
}

impl JobSpec {
    pub fn validate(&self) -> Result<ValidJob, FieldError> {
        if let Some(name) = &self.name {
            if name.len() > MAX_NAME_LEN {
                return Err(bad("name", format!("at most {MAX_NAME_LEN} bytes")));
            }
            no_nul("name", name)?;
        }
        if self.tasks.is_empty() {
            return Err(bad("tasks", "a job needs at least one task"));
        }
        if self.tasks.len() > MAX_TASKS_PER_JOB {
            return Err(bad(
                "tasks",
                format!("at most {MAX_TASKS_PER_JOB} tasks per job"),
            ));
        }
        let names: Vec<String> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| t.name.clone().unwrap_or_else(|| format!("task-{i}")))
            .collect();
        let mut index_of = HashMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let field = format!("tasks[{i}].name");
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(bad(field, format!("must be 1 to {MAX_NAME_LEN} bytes")));
            }
            no_nul(&field, name)?;
            if index_of.insert(name.as_str(), i).is_some() {
                return Err(bad(field, format!("duplicate task name {name:?}")));
            }
        }
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            tasks.push(t.validate(i, &names[i], &index_of)?);
        }
        check_acyclic(&tasks)?;
        Ok(ValidJob {
            name: self.name.clone(),
            tasks,
            notify: self.notify.as_ref().map(Notify::validate).transpose()?,
        })
    }
}

impl TaskSpec {
    fn validate(
        &self,
        i: usize,
        name: &str,
        index_of: &HashMap<&str, usize>,
    ) -> Result<ValidTask, FieldError> {
        let f = |field: &str| format!("tasks[{i}].{field}");
        match self.argv.first() {
            None => return Err(bad(f("argv"), "must name a command")),
            Some(cmd) if cmd.is_empty() => return Err(bad(f("argv[0]"), "must not be empty")),
            _ => {}
        }
        for (j, arg) in self.argv.iter().enumerate() {
            no_nul(&f(&format!("argv[{j}]")), arg)?;
        }
        for (field, vars) in [("env", &self.env), ("env_secret", &self.env_secret)] {
            for (k, v) in vars {
                if k.is_empty() || k.contains('=') {
                    return Err(bad(f(field), format!("bad variable name {k:?}")));
                }
                no_nul(&f(field), k)?;
                no_nul(&f(field), v)?;
            }
        }
        if let Some(k) = self.env_secret.keys().find(|k| self.env.contains_key(*k)) {
            return Err(bad(
                f("env_secret"),
                format!("{k:?} is in env too: give it once"),
            ));
        }
        if let Some(cwd) = &self.cwd {
            if cwd.is_empty() {
                return Err(bad(f("cwd"), "must not be empty"));
            }
            no_nul(&f("cwd"), cwd)?;
        }
        if let Some(stdin) = &self.stdin {
            if stdin.len() > MAX_STDIN_BYTES {
                return Err(bad(f("stdin"), format!("at most {MAX_STDIN_BYTES} bytes")));
            }
            no_nul(&f("stdin"), stdin)?;
        }
        request_fits(self).map_err(|(part, size)| {
            bad(
                f(part),
                format!(
                    "the task's request message would be {size} bytes (argv, env, cwd and \
                     stdin as JSON), over the {} byte message limit",
                    crate::proto::MAX_MESSAGE_BYTES
                ),
            )
        })?;
        let timeout_secs = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(bad(
                f("timeout_secs"),
                format!("must be 1 to {MAX_TIMEOUT_SECS}"),
            ));
        }
        let priority = self.priority.unwrap_or(0);
        if !PRIORITY_RANGE.contains(&priority) {
            return Err(bad(
                f("priority"),
                format!(
                    "must be {} to {}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ));
        }
        let group = match &self.group {
            None => GroupName::default_group(),
            Some(g) => GroupName::parse(g).map_err(|e| bad(f("group"), e.to_string()))?,
        };
        for (k, v) in &self.labels {
            if !label_key_ok(k) {
                return Err(bad(f("labels"), format!("bad label key {k:?}")));
            }
            no_nul(&f(&format!("labels.{k}")), v)?;
        }
        let retry_max = self.retry.as_ref().and_then(|r| r.max_attempts);
        let (max_field, max_attempts) = match (self.max_attempts, retry_max) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    f("retry.max_attempts"),
                    format!("contradicts max_attempts ({a}); give one of them"),
                ))
            }
            (_, Some(b)) => ("retry.max_attempts", b),
            (a, None) => ("max_attempts", a.unwrap_or(DEFAULT_MAX_ATTEMPTS)),
        };
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(bad(
                f(max_field),
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let retry = match &self.retry {
            None => None,
            Some(_) if self.each => {
                return Err(bad(
                    f("retry"),
                    "an `each` task's copies are retried only when lost; a retry policy is \
                     not supported with each",
                ))
            }
            Some(r) => Some(
                r.validate()
                    .map_err(|(field, why)| bad(f(&format!("retry.{field}")), why))?,
            ),
        };
        if let Some(q) = self.quorum {
            if !self.each {
                return Err(bad(f("quorum"), "only an `each` task has a quorum"));
            }
            if !(1..=MAX_QUORUM).contains(&q) {
                return Err(bad(f("quorum"), format!("must be 1 to {MAX_QUORUM}")));
            }
        }
        let mut depends_on = Vec::with_capacity(self.depends_on.len());
        for (j, dep) in self.depends_on.iter().enumerate() {
            let field = f(&format!("depends_on[{j}]"));
            match index_of.get(dep.as_str()) {
                None => return Err(bad(field, format!("no task named {dep:?} in this job"))),
                Some(&d) if d == i => return Err(bad(field, "a task cannot depend on itself")),
                Some(&d) if !depends_on.contains(&d) => depends_on.push(d),
                Some(_) => {}
            }
        }
        Ok(ValidTask {
            name: name.to_owned(),
            argv: self.argv.clone(),
            env: self.env.clone(),
            env_secret: self.env_secret.clone(),
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            timeout: Duration::from_secs(timeout_secs),
            priority,
            group,
            labels: self.labels.clone(),
            depends_on,
            max_attempts,
            each: self.each,
            quorum: self.quorum,
            retry,
        })
    }
}

impl ValidJob {
    /// Moves each `env` variable whose name `is_secret` says is secret into `env_secret`.
    pub fn mark_secrets(&mut self, is_secret: impl Fn(&str) -> bool) {
        for t in &mut self.tasks {
            let names: Vec<String> = t.env.keys().filter(|k| is_secret(k)).cloned().collect();
            for k in names {
                if let Some(v) = t.env.remove(&k) {
                    t.env_secret.insert(k, v);
                }
            }
        }
    }

    /// The field of the first task with a secret variable, if any.
    pub fn first_secret(&self) -> Option<String> {
        self.tasks
            .iter()
            .position(|t| !t.env_secret.is_empty())
            .map(|i| format!("tasks[{i}].env_secret"))
    }
}

/// Whether a variable's name matches one of `patterns`: `*` stands for any run of
/// characters, and case does not count (`*PASSWORD*` matches `db_password`).
pub fn name_matches(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
}

/// Wildcard matching with `*` only, case-insensitive, in O(pattern x name): on a
/// mismatch, go back to the last `*` and let it take one more character.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Kahn's algorithm: a cycle would leave its tasks waiting forever.
fn check_acyclic(tasks: &[ValidTask]) -> Result<(), FieldError> {
    let mut indegree: Vec<usize> = tasks.iter().map(|t| t.depends_on.len()).collect();
    let mut dependents = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for &d in &t.depends_on {
            dependents[d].push(i);
        }
    }
    let mut stack: Vec<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = stack.pop() {
        seen += 1;
        for &n in &dependents[i] {
            indegree[n] -= 1;
            if indegree[n] == 0 {
                stack.push(n);
            }
        }
    }
    if seen == tasks.len() {
        return Ok(());
    }
    let i = indegree.iter().position(|&d| d > 0).unwrap_or(0);
    Err(bad(
        format!("tasks[{i}].depends_on"),
        "dependencies form a cycle",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(argv: &[&str]) -> TaskSpec {
        TaskSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..TaskSpec::default()
        }
    }

    fn job(tasks: Vec<TaskSpec>) -> JobSpec {
        JobSpec {
            name: None,
            tasks,
            notify: None,
        }
    }

    fn field_of(j: JobSpec) -> String {
        j.validate().expect_err("should be refused").field
    }

    #[test]
    fn defaults_fill_in_a_minimal_task() {
        let v = job(vec![task(&["true"])]).validate().expect("valid");
        let t = &v.tasks[0];
        assert_eq!(t.name, "task-0");
        assert_eq!(t.group, GroupName::default_group());
        assert_eq!(t.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(t.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(t.priority, 0);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(job(vec![])), "tasks");
        assert_eq!(
            field_of(job(vec![task(&["true"]), task(&[])])),
            "tasks[1].argv"
        );
        assert_eq!(field_of(job(vec![task(&[""])])), "tasks[0].argv[0]");
        let mut t = task(&["true"]);
        t.timeout_secs = Some(0);
        assert_eq!(field_of(job(vec![t])), "tasks[0].timeout_secs");
        let mut t = task(&["true"]);
        t.group = Some("Bad Group".into());
        assert_eq!(field_of(job(vec![t])), "tasks[0].group");
        let mut t = task(&["true"]);
        t.priority = Some(5000);
        assert_eq!(field_of(job(vec![t])), "tasks[0].priority");
        let mut t = task(&["true"]);
        t.max_attempts = Some(0);
        assert_eq!(field_of(job(vec![t])), "tasks[0].max_attempts");
        let mut t = task(&["t"]);
        t.quorum = Some(2);
        assert_eq!(
            field_of(job(vec![t.clone()])),
            "tasks[0].quorum",
            "quorum without each"
        );
        t.each = true;
        t.quorum = Some(0);
        assert_eq!(field_of(job(vec![t.clone()])), "tasks[0].quorum");
        t.quorum = Some(3);
        let v = job(vec![t]).validate().expect("valid each task");
        assert!(v.tasks[0].each);
        assert_eq!(v.tasks[0].quorum, Some(3));
        let mut t = task(&["echo", "a\0b"]);
        t.name = Some("x".into());
        assert_eq!(field_of(job(vec![t])), "tasks[0].argv[1]");
    }

    #[test]
    fn a_nul_byte_in_stdin_or_a_label_value_is_named() {
        let mut t = task(&["cat"]);
        t.stdin = Some("a\0b".into());
        assert_eq!(field_of(job(vec![t])), "tasks[0].stdin");
        let mut t = task(&["true"]);
        t.labels = BTreeMap::from([("gpu".into(), "yes\0".into())]);
        assert_eq!(
            field_of(job(vec![task(&["true"]), t])),
            "tasks[1].labels.gpu"
        );
    }

    #[test]
    fn a_task_whose_request_would_exceed_the_message_limit_is_refused() {
        let big = "x".repeat(crate::proto::MAX_MESSAGE_BYTES);
        let e = job(vec![task(&["echo", &big])])
            .validate()
            .expect_err("an argv over the message limit");
        assert_eq!(e.field, "tasks[0].argv");
        assert!(
            e.message
                .contains(&crate::proto::MAX_MESSAGE_BYTES.to_string()),
            "the limit is named: {e}"
        );
        // Many variables that each pass, together over the limit.
        let mut t = task(&["true"]);
        let value = "v".repeat(1024 * 1024);
        t.env = (0..9).map(|i| (format!("V{i}"), value.clone())).collect();
        assert_eq!(field_of(job(vec![t])), "tasks[0].env");
        // Escaping counts: a control character is six bytes in JSON.
        let mut t = task(&["true"]);
        t.cwd = Some("\u{1}".repeat(crate::proto::MAX_MESSAGE_BYTES / 5));
        assert_eq!(field_of(job(vec![t])), "tasks[0].cwd");
        // Just under the limit passes.
        let fits = "x".repeat(crate::proto::MAX_MESSAGE_BYTES - 4096);
        job(vec![task(&["echo", &fits])])
            .validate()
            .expect("a request under the limit");
    }

    #[test]
    fn the_request_overhead_bounds_what_a_request_adds() {
        let t = TaskSpec {
            argv: vec!["echo".into(), "hi".into()],
            env: BTreeMap::from([("A".into(), "b".into())]),
            cwd: Some("/tmp".into()),
            stdin: Some("in".into()),
            ..TaskSpec::default()
        };
        let req = crate::proto::Request {
            task_id: crate::id::TaskId::new(),
            attempt: i32::MAX,
            job_id: crate::id::JobId::new(),
            argv: t.argv.clone(),
            env: t.env.clone(),
            cwd: t.cwd.clone(),
            stdin: t.stdin.clone(),
            timeout_secs: u64::MAX,
            lease_deadline: chrono::DateTime::<chrono::Utc>::MAX_UTC,
            epoch: i64::MAX,
        };
        let strings = json_len(&t.argv)
            + json_len(&t.env)
            + t.cwd.as_ref().map_or(0, json_len)
            + t.stdin.as_ref().map_or(0, json_len);
        let whole = crate::proto::encode(&req).len();
        assert!(
            whole <= strings + REQUEST_OVERHEAD_BYTES,
            "{whole} > {strings} + {REQUEST_OVERHEAD_BYTES}"
        );
    }

    #[test]
    fn dependencies_resolve_by_name_and_must_not_cycle() {
        let mut a = task(&["true"]);
        a.name = Some("a".into());
        let mut b = task(&["true"]);
        b.name = Some("b".into());
        b.depends_on = vec!["a".into()];
        let v = job(vec![a.clone(), b.clone()]).validate().expect("valid");
        assert_eq!(v.tasks[1].depends_on, vec![0]);

        let mut missing = b.clone();
        missing.depends_on = vec!["nope".into()];
        assert_eq!(
            field_of(job(vec![a.clone(), missing])),
            "tasks[1].depends_on[0]"
        );

        let mut a_cyclic = a.clone();
        a_cyclic.depends_on = vec!["b".into()];
        assert!(field_of(job(vec![a_cyclic, b])).ends_with(".depends_on"));

        let mut dup = task(&["true"]);
        dup.name = Some("a".into());
        assert_eq!(field_of(job(vec![a, dup])), "tasks[1].name");
    }

    #[test]
    fn unknown_fields_are_refused_when_parsing() {
        let err = serde_json::from_str::<JobSpec>(r#"{"tasks":[{"argvv":["true"]}]}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("argvv"));
    }

    #[test]
    fn a_jobs_webhook_is_checked_field_by_field() {
        let with = |notify: serde_json::Value| -> Result<ValidJob, FieldError> {
            let spec: JobSpec =
                serde_json::from_value(serde_json::json!({"tasks": [{"argv": ["true"]}],
                                                          "notify": notify}))
                .expect("parse");
            spec.validate()
        };
        let ok = with(serde_json::json!({"url": "http://ci.example.com/h?x=1",
                                         "events": ["task.*", "job.failed"],
                                         "secret": "0123456789abcdef"}))
        .expect("valid");
        let n = ok.notify.expect("notify");
        let tls = with(serde_json::json!({"url": "https://ci.example.com:8443/h",
                                          "secret": "0123456789abcdef"}))
        .expect("https is accepted");
        assert_eq!(
            tls.notify.expect("notify").url,
            "https://ci.example.com:8443/h"
        );
        let all = with(serde_json::json!({"url": "http://x/h", "events": ["*"],
                                          "secret": "0123456789abcdef"}))
        .expect("a pattern means the job's events of it");
        assert_eq!(all.notify.expect("notify").kinds.len(), 8);
        assert_eq!(
            n.kinds.len(),
            5,
            "four task kinds and job.failed: {:?}",
            n.kinds
        );
        for (notify, field, says) in [
            (
                serde_json::json!({"url": "ftp://x/h", "secret": "0123456789abcdef"}),
                "notify.url",
                "http://",
            ),
            (
                serde_json::json!({"url": "https://", "secret": "0123456789abcdef"}),
                "notify.url",
                "host",
            ),
            (
                serde_json::json!({"url": "http:///h", "secret": "0123456789abcdef"}),
                "notify.url",
                "host",
            ),
            (
                serde_json::json!({"url": "http://x/a b", "secret": "0123456789abcdef"}),
                "notify.url",
                "blanks",
            ),
            (
                serde_json::json!({"url": "http://x/h", "secret": "short"}),
                "notify.secret",
                "16 to 256",
            ),
            (
                serde_json::json!({"url": "http://x/h", "secret": "0123456789abcdef",
                                   "events": ["task.done"]}),
                "notify.events",
                "unknown event kind",
            ),
            (
                serde_json::json!({"url": "http://x/h", "secret": "0123456789abcdef",
                                   "events": ["executor.lost"]}),
                "notify.events",
                "not an event of a job",
            ),
        ] {
            let err = with(notify.clone()).expect_err("refused");
            assert_eq!(err.field, field, "{notify}");
            assert!(err.message.contains(says), "{notify}: {}", err.message);
        }
    }

    #[test]
    fn secret_names_match_their_patterns_whatever_the_case() {
        let p: Vec<String> = ["*PASSWORD*", "*_KEY", "TOKEN"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for yes in [
            "PASSWORD",
            "db_password",
            "MY_PASSWORD_2",
            "AWS_SECRET_KEY",
            "token",
        ] {
            assert!(name_matches(yes, &p), "{yes}");
        }
        for no in ["PASS", "KEYS", "MY_KEY_ID", "TOKENS", "", "HOME"] {
            assert!(!name_matches(no, &p), "{no}");
        }
        assert!(name_matches("", &["*".to_string()]));
        assert!(name_matches("abcabd", &["a*bd".to_string()]));
        assert!(!name_matches("abcabe", &["a*bd".to_string()]));
    }

    #[test]
    fn secret_variables_are_kept_apart_and_given_once() {
        let mut t = task(&["true"]);
        t.env = BTreeMap::from([
            ("DB_PASSWORD".into(), "x".into()),
            ("HOME".into(), "/".into()),
        ]);
        t.env_secret = BTreeMap::from([("API".into(), "y".into())]);
        let mut valid = job(vec![t.clone()]).validate().expect("valid");
        assert_eq!(valid.first_secret().as_deref(), Some("tasks[0].env_secret"));
        valid.mark_secrets(|k| name_matches(k, &["*PASSWORD*".to_string()]));
        let v = &valid.tasks[0];
        assert_eq!(v.env.keys().collect::<Vec<_>>(), ["HOME"]);
        assert_eq!(
            v.env_secret.keys().collect::<Vec<_>>(),
            ["API", "DB_PASSWORD"]
        );
        t.env_secret.insert("HOME".into(), "z".into());
        assert_eq!(field_of(job(vec![t])), "tasks[0].env_secret");
    }
}
