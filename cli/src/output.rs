//! Text views of API answers (tables, results, progress lines) and writing them to stdout.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use fleet_core::api::executors::{ExecutorDetail, ExecutorsView};
use fleet_core::api::jobs::{AttemptView, JobView, JobsPage, ResultView, ResultsView};
use fleet_core::api::stats::{Outcomes, StatsView};

use crate::client::Answer;
use crate::duration;
use crate::error::CliError;

/// Writes to stdout. A closed pipe (`fleetctl results … | head`) is the reader saying it
/// has seen enough, not an error worth a message or a panic.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Other(
            anyhow::Error::new(err).context("could not write to stdout"),
        )),
        _ => Ok(()),
    }
}

/// Prints an API answer as is, pretty, for `-o json`.
pub fn emit_json(answer: &Answer) -> Result<(), CliError> {
    let mut text = pretty_json(answer.text());
    text.push('\n');
    emit(&text)
}

/// Re-indents JSON text the way `serde_json::to_string_pretty` would, but without going
/// through a `Value`: that would sort object keys, and `-o json` promises the server's
/// answer as sent. Expects well-formed JSON (the client checks every answer).
pub fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let rest = text.get(i + 1..).unwrap_or_default().trim_start();
                if rest.starts_with(close) {
                    // Empty containers stay on one line: `{}` and `[]`.
                    out.push(c);
                    out.push(close);
                    for (_, skipped) in chars.by_ref() {
                        if skipped == close {
                            break;
                        }
                    }
                } else {
                    depth += 1;
                    out.push(c);
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

pub fn render_job(job: &JobView, now: DateTime<Utc>) -> String {
    let c = &job.counts;
    let mut out = format!("job:      {}\n", job.job_id);
    if let Some(name) = job.name.as_deref().filter(|n| !n.is_empty()) {
        out.push_str(&format!("name:     {name}\n"));
    }
    out.push_str(&format!("state:    {}\n", job.state));
    out.push_str(&format!(
        "created:  {}\n",
        with_age(Some(job.created_at), now)
    ));
    out.push_str(&format!("finished: {}\n", with_age(job.finished_at, now)));
    out.push_str(&format!(
        "tasks:    {} total, {} done: {} succeeded, {} failed, {} cancelled\n",
        c.total, c.done, c.succeeded, c.failed, c.cancelled
    ));

    let mut tasks: Vec<_> = job.tasks.iter().collect();
    tasks.sort_by_key(|t| t.index);
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.index.to_string(),
                t.name.clone(),
                t.state.clone(),
                t.attempts.to_string(),
                t.executor_id.clone().unwrap_or_else(|| "-".into()),
                or_dash(ending_parts(t.exit_code, t.signal, t.error.as_deref()).join("; ")),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["INDEX", "NAME", "STATE", "ATTEMPTS", "EXECUTOR", "RESULT"],
            &rows,
        ));
    }
    let waiting: Vec<String> = tasks
        .iter()
        .filter_map(|t| {
            let hint = t.hint.as_deref().filter(|h| !h.is_empty())?;
            Some(format!("  {} {}: {hint}\n", t.index, t.name))
        })
        .collect();
    if !waiting.is_empty() {
        out.push_str("\nwhy tasks wait:\n");
        out.extend(waiting);
    }
    let each: Vec<String> = tasks
        .iter()
        .filter(|t| t.each)
        .map(|t| {
            let ok = t.copies.iter().filter(|c| c.state == "succeeded").count();
            let needed = t
                .quorum
                .and_then(|q| usize::try_from(q).ok())
                .unwrap_or(t.copies.len());
            let members: Vec<String> = t
                .copies
                .iter()
                .map(|c| match &c.error {
                    Some(e) => format!("{} {} ({e})", c.executor_id, c.state),
                    None => format!("{} {}", c.executor_id, c.state),
                })
                .collect();
            format!(
                "  {} {}: {ok} of {needed} needed succeeded; {}\n",
                t.index,
                t.name,
                members.join(", ")
            )
        })
        .collect();
    if !each.is_empty() {
        out.push_str("\nmembers of the tasks run on every member:\n");
        out.extend(each);
    }
    let retried: Vec<String> = tasks
        .iter()
        .filter(|t| !t.each && t.history.len() > 1)
        .map(|t| format!("  {} {}: {}\n", t.index, t.name, render_history(&t.history)))
        .collect();
    if !retried.is_empty() {
        out.push_str("\nattempts of the tasks that needed more than one:\n");
        out.extend(retried);
    }
    out
}

/// `#1 cpu-1 lost (late result kept, not counted) -> #2 cpu-2 succeeded`
pub fn render_history(history: &[AttemptView]) -> String {
    history
        .iter()
        .map(|a| {
            let late = if a.late_result {
                " (late result kept, not counted)"
            } else {
                ""
            };
            format!("#{} {} {}{late}", a.attempt, a.executor_id, a.state)
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

pub fn render_results(results: &ResultsView) -> String {
    if results.results.is_empty() {
        return format!("job {}: no task results yet\n", results.job_id);
    }
    let mut sorted: Vec<_> = results.results.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let blocks: Vec<String> = sorted.into_iter().map(render_result).collect();
    blocks.join("\n")
}

/// The results grouped by the executor that produced them, executors in name order.
pub fn render_results_by_executor(results: &ResultsView) -> String {
    if results.results.is_empty() {
        return format!("job {}: no task results yet\n", results.job_id);
    }
    let mut by: BTreeMap<&str, Vec<&ResultView>> = BTreeMap::new();
    for r in &results.results {
        by.entry(
            Some(r.executor_id.as_str())
                .filter(|e| !e.is_empty())
                .unwrap_or("-"),
        )
        .or_default()
        .push(r);
    }
    let mut out = String::new();
    for (executor, mut rs) in by {
        rs.sort_by_key(|r| r.index);
        out.push_str(&format!(
            "== executor {executor} ({} result(s))\n",
            rs.len()
        ));
        for r in rs {
            out.push_str(&render_result(r));
        }
        out.push('\n');
    }
    out
}

fn render_result(r: &ResultView) -> String {
    let parts = ending_parts(r.exit_code, r.signal, r.error.as_deref());
    let outcome = if parts.is_empty() {
        r.outcome.clone()
    } else {
        format!("{} ({})", r.outcome, parts.join("; "))
    };
    let took = match (r.started_at, r.finished_at) {
        (Some(start), Some(end)) => (end - start)
            .to_std()
            .map(|d| format!(" (took {})", duration::human(d)))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut out = format!("task {} {}: {outcome}\n", r.index, r.name);
    out.push_str(&format!(
        "  executor: {} (attempt {})\n",
        or_dash(r.executor_id.clone()),
        r.attempt
    ));
    out.push_str(&format!("  started:  {}\n", timestamp(r.started_at)));
    out.push_str(&format!("  finished: {}{took}\n", timestamp(r.finished_at)));
    out.push_str(&stream("stdout", &r.stdout, r.stdout_truncated));
    out.push_str(&stream("stderr", &r.stderr, r.stderr_truncated));
    out
}

/// One captured stream, indented so it cannot be mistaken for fleetctl's own lines.
fn stream(label: &str, text: &str, truncated: bool) -> String {
    if text.is_empty() && !truncated {
        return format!("  {label}: (empty)\n");
    }
    let mut out = format!("  {label}:\n");
    for line in text.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    if truncated {
        out.push_str("    [truncated]\n");
    }
    out
}

pub fn render_executors(list: &ExecutorsView, now: DateTime<Utc>) -> String {
    if list.executors.is_empty() {
        return "no executors\n".into();
    }
    let mut executors: Vec<_> = list.executors.iter().collect();
    executors.sort_by(|a, b| a.executor_id.cmp(&b.executor_id));
    let rows: Vec<Vec<String>> = executors
        .iter()
        .map(|e| {
            let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                e.executor_id.clone(),
                or_dash(e.groups.join(",")),
                or_dash(labels.join(",")),
                e.capacity.to_string(),
                e.running.to_string(),
                e.queued.to_string(),
                yes_no(e.draining),
                yes_no(e.alive),
                age(e.last_info_at, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "GROUPS",
            "LABELS",
            "CAPACITY",
            "RUNNING",
            "QUEUED",
            "DRAINING",
            "ALIVE",
            "LAST INFO",
        ],
        &rows,
    )
}

/// `fleetctl executor show`: one executor, what it holds and how it stands.
pub fn render_executor(d: &ExecutorDetail, now: DateTime<Utc>) -> String {
    let e = &d.executor;
    let mut out = format!("executor:   {}\n", e.executor_id);
    let heard = with_age(Some(e.last_info_at), now);
    out.push_str(&format!(
        "alive:      {} (last heard {heard})\n",
        yes_no(e.alive)
    ));
    let mut groups = e.groups.join(", ");
    if !d.assigned_groups.is_empty() {
        groups = format!(
            "{} (declared); {} (put in by an administrator)",
            or_dash(groups),
            d.assigned_groups.join(", ")
        );
    }
    out.push_str(&format!("groups:     {}\n", or_dash(groups)));
    let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!("labels:     {}\n", or_dash(labels.join(", "))));
    out.push_str(&format!(
        "capacity:   {} ({} running, {} queued)\n",
        e.capacity, e.running, e.queued
    ));
    let draining = match &d.drain {
        Some(dr) => format!(
            "yes (drained by {} at {}; fleetctl executor resume {})",
            dr.drained_by,
            timestamp(Some(dr.drained_at)),
            e.executor_id
        ),
        None => yes_no(e.draining),
    };
    out.push_str(&format!("draining:   {draining}\n"));
    let registered = match &d.registration {
        None => "no (it connects with the shared broker user)".to_owned(),
        Some(r) => {
            let mut line = format!(
                "yes, at {}, groups {}",
                timestamp(Some(r.registered_at)),
                or_dash(r.groups.join(", "))
            );
            if let Some(t) = r.revoked_at {
                line.push_str(&format!("; revoked at {}", timestamp(Some(t))));
            }
            line
        }
    };
    out.push_str(&format!("registered: {registered}\n"));
    out.push_str(&format!(
        "first seen: {}\n",
        with_age(Some(d.first_seen_at), now)
    ));
    if d.attempts.is_empty() {
        out.push_str("\nholds no attempt\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.job_id.to_string(),
                    a.task_id.to_string(),
                    a.attempt.to_string(),
                    a.state.clone(),
                    age(a.assigned_at, now),
                ]
            })
            .collect();
        out.push_str(&format!("\nholds {} attempt(s):\n", rows.len()));
        out.push_str(&table(
            &["JOB", "TASK", "ATTEMPT", "STATE", "ASSIGNED"],
            &rows,
        ));
    }
    out
}

/// `fleetctl stats`: one line per group, subgroups indented under their parent (whose
/// figures include theirs).
pub fn render_stats(stats: &StatsView) -> String {
    let outcomes = |o: &Outcomes| format!("{}/{}/{}", o.succeeded, o.failed, o.cancelled);
    let rows: Vec<Vec<String>> = stats
        .groups
        .iter()
        .map(|g| {
            let depth = if g.group == "default" {
                0
            } else {
                g.group.matches('.').count() + 1
            };
            let t = &g.tasks;
            let executors = match g.executors.draining {
                0 => g.executors.alive.to_string(),
                n => format!("{} ({n} draining)", g.executors.alive),
            };
            vec![
                format!("{}{}", "  ".repeat(depth), g.group),
                t.ready.to_string(),
                t.held.to_string(),
                t.waiting.to_string(),
                t.running.to_string(),
                t.oldest_ready_secs
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map_or_else(
                        || "-".into(),
                        |s| duration::human(Duration::from_secs_f64(s)),
                    ),
                executors,
                format!("{}/{}", g.slots.free, g.slots.total),
                outcomes(&g.finished.last_minute),
                outcomes(&g.finished.last_hour),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "GROUP",
            "READY",
            "HELD",
            "WAITING",
            "RUNNING",
            "OLDEST READY",
            "EXECUTORS",
            "FREE/SLOTS",
            "DONE 1M",
            "DONE 1H",
        ],
        &rows,
    );
    out.push_str(
        "(a group's figures include its subgroups'; DONE: jobs finished in the last minute \
         and hour, succeeded/failed/cancelled)\n",
    );
    out
}

/// What is known of how something ended: "exit 2", "signal 9", the error text.
fn ending_parts(exit_code: Option<i32>, signal: Option<i32>, error: Option<&str>) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(code) = exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(signal) = signal {
        parts.push(format!("signal {signal}"));
    }
    if let Some(error) = error.filter(|e| !e.is_empty()) {
        parts.push(error.to_string());
    }
    parts
}

/// Left-aligned columns two spaces apart; the last column is not padded so lines carry
/// no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count());
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// A time as the API writes it (RFC 3339, as many fractional digits as it has, `Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn timestamp(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn with_age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ({})", timestamp(Some(t)), age(t, now)),
        None => "-".into(),
    }
}

fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    // Clocks of client and server differ; a timestamp slightly in the future reads as now.
    let elapsed = (now - t).to_std().unwrap_or(Duration::ZERO);
    format!("{} ago", duration::human(elapsed))
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.into()
}

/// `fleetctl jobs`: one line per job, newest first.
pub fn render_jobs(page: &JobsPage, now: DateTime<Utc>) -> String {
    if page.jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            let done: i64 = ["succeeded", "failed", "cancelled"]
                .iter()
                .filter_map(|s| j.tasks.get(*s))
                .sum();
            let mut tasks = format!("{done}/{} done", j.task_count);
            let rest: Vec<String> = j
                .tasks
                .iter()
                .filter(|(s, n)| **n > 0 && s.as_str() != "succeeded")
                .map(|(s, n)| format!("{n} {s}"))
                .collect();
            if !rest.is_empty() {
                tasks.push_str(&format!(" ({})", rest.join(", ")));
            }
            vec![
                j.job_id.to_string(),
                or_dash(j.name.clone().unwrap_or_default()),
                j.state.clone(),
                tasks,
                or_dash(j.submitted_by.name.clone()),
                age(j.created_at, now),
            ]
        })
        .collect();
    table(
        &["JOB", "NAME", "STATE", "TASKS", "SUBMITTED BY", "CREATED"],
        &rows,
    )
}

/// `fleetctl job show`: the status view, then what each task was submitted as.
pub fn render_job_spec(job: &JobView, now: DateTime<Utc>) -> String {
    let mut out = render_job(job, now);
    let mut tasks: Vec<_> = job.tasks.iter().collect();
    tasks.sort_by_key(|t| t.index);
    let specs: Vec<String> = tasks
        .iter()
        // A spec without argv is none at all (a server that did not send it).
        .filter(|t| !t.spec.argv.is_empty())
        .map(|t| {
            let s = &t.spec;
            let mut lines = vec![format!(
                "  {} {}: {}",
                t.index,
                t.name,
                shell_words(&s.argv)
            )];
            let mut facts = vec![
                format!("group {}", s.group),
                format!("priority {}", s.priority),
                format!("timeout {}s", s.timeout_secs),
                format!("max attempts {}", s.max_attempts),
            ];
            if let Some(cwd) = &s.cwd {
                facts.push(format!("cwd {cwd}"));
            }
            lines.push(format!("      {}", facts.join(", ")));
            if !s.labels.is_empty() {
                let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                lines.push(format!("      labels: {}", l.join(" ")));
            }
            if !s.env.is_empty() {
                let e: Vec<String> = s
                    .env
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => format!("{k}=<hidden>"),
                    })
                    .collect();
                lines.push(format!("      env: {}", e.join(" ")));
            }
            if !s.env_secret.is_empty() {
                lines.push(format!("      secret env: {}", s.env_secret.join(" ")));
            }
            if !s.depends_on.is_empty() {
                lines.push(format!("      after: {}", s.depends_on.join(", ")));
            }
            lines.join("\n") + "\n"
        })
        .collect();
    if !specs.is_empty() {
        out.push_str("\nas submitted:\n");
        out.extend(specs);
    }
    out
}

/// argv as a shell would read it back: words with spaces or quotes in single quotes.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_keeps_key_order_and_matches_serde_layout() -> Result<(), serde_json::Error> {
        let raw = r#"{"job_id":"j","created":true,"tasks":[ ],"m":{},"s":"a, \"b\": [c] {d}\\","n":[1,{"z":null,"a":-2.5e3}]}"#;
        let pretty = pretty_json(raw);
        assert!(pretty.starts_with("{\n  \"job_id\": \"j\",\n  \"created\": true,"));
        // Same text serde_json produces for the parsed value, apart from key order.
        let ours: serde_json::Value = serde_json::from_str(&pretty)?;
        let theirs: serde_json::Value = serde_json::from_str(raw)?;
        assert_eq!(ours, theirs);
        let sorted = r#"{"a":[1,2],"b":{"c":[]},"d":"x:y,z"}"#;
        let value: serde_json::Value = serde_json::from_str(sorted)?;
        assert_eq!(pretty_json(sorted), serde_json::to_string_pretty(&value)?);
        Ok(())
    }

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let rows = vec![
            vec!["0".to_string(), "alpha".to_string(), "x".to_string()],
            vec!["12".to_string(), "b".to_string(), "yy".to_string()],
        ];
        assert_eq!(
            table(&["IDX", "NAME", "END"], &rows),
            "IDX  NAME   END\n0    alpha  x\n12   b      yy\n"
        );
    }

    #[test]
    fn ending_lists_what_is_known() {
        assert_eq!(
            ending_parts(None, Some(9), Some("timed out after 60s")),
            ["signal 9", "timed out after 60s"]
        );
        assert_eq!(ending_parts(Some(2), None, Some("")), ["exit 2"]);
        assert!(ending_parts(None, None, None).is_empty());
    }

    #[test]
    fn streams_are_indented_and_marked_when_truncated() {
        assert_eq!(stream("stdout", "", false), "  stdout: (empty)\n");
        assert_eq!(
            stream("stderr", "a\nb\n", true),
            "  stderr:\n    a\n    b\n    [truncated]\n"
        );
    }

    #[test]
    fn stats_indent_subgroups_and_show_every_figure() -> Result<(), serde_json::Error> {
        let stats: StatsView = serde_json::from_str(
            r#"{"at":"2026-01-01T00:00:00Z","groups":[
                {"group":"default","tasks":{"ready":2,"held":1,"waiting":0,"running":3,
                                            "oldest_ready_secs":75.5},
                 "executors":{"alive":3,"draining":1},"slots":{"total":6,"free":2},
                 "finished":{"last_minute":{"succeeded":1,"failed":0,"cancelled":0},
                             "last_hour":{"succeeded":9,"failed":2,"cancelled":1}}},
                {"group":"site.web","tasks":{"ready":0,"held":0,"waiting":0,"running":1,
                                             "oldest_ready_secs":null},
                 "executors":{"alive":1,"draining":0},"slots":{"total":2,"free":1},
                 "finished":{"last_minute":{"succeeded":0,"failed":0,"cancelled":0},
                             "last_hour":{"succeeded":4,"failed":0,"cancelled":0}}}]}"#,
        )?;
        let text = render_stats(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("GROUP ")
                && lines[0].contains("READY  HELD  WAITING  RUNNING  OLDEST READY  EXECUTORS"),
            "{text}"
        );
        assert_eq!(
            lines[1]
                .split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect::<Vec<_>>(),
            [
                "default",
                "2",
                "1",
                "0",
                "3",
                &*duration::human(Duration::from_secs_f64(75.5)),
                "3 (1 draining)",
                "2/6",
                "1/0/0",
                "9/2/1"
            ]
        );
        assert!(lines[2].starts_with("    site.web  0"), "{text}");
        assert!(lines[2].contains("  -  "), "no ready task, no age: {text}");
        Ok(())
    }

    #[test]
    fn an_executor_is_shown_with_what_it_holds() -> Result<(), serde_json::Error> {
        let d: ExecutorDetail = serde_json::from_str(
            r#"{"executor_id":"web-1","groups":["site.web"],"labels":{"os":"linux"},
                "capacity":2,"running":1,"queued":0,"draining":true,
                "last_info_at":"2026-01-01T00:00:00Z","alive":false,
                "first_seen_at":"2025-12-31T00:00:00Z","assigned_groups":["extra"],
                "registration":null,
                "drain":{"drained_at":"2026-01-01T00:00:00Z","drained_by":"ops"},
                "attempts":[{"task_id":"0190c5a4-7b1e-7000-8000-0000000000f1",
                             "job_id":"0190c5a4-7b1e-7000-8000-0000000000a1","attempt":2,"state":"running",
                             "assigned_at":"2026-01-01T00:00:00Z","started_at":null}]}"#,
        )?;
        let now = "2026-01-01T00:01:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap_or_else(|_| Utc::now());
        let text = render_executor(&d, now);
        for line in [
            "executor:   web-1\n",
            "alive:      no (last heard 2026-01-01T00:00:00Z (",
            "groups:     site.web (declared); extra (put in by an administrator)\n",
            "labels:     os=linux\n",
            "capacity:   2 (1 running, 0 queued)\n",
            "draining:   yes (drained by ops at 2026-01-01T00:00:00Z; fleetctl executor resume web-1)\n",
            "registered: no (",
            "holds 1 attempt(s):\nJOB ",
            "\n0190c5a4-7b1e-7000-8000-0000000000a1  0190c5a4-7b1e-7000-8000-0000000000f1  \
             2        running  ",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        Ok(())
    }

    #[test]
    fn a_waiting_task_shows_its_hint() -> Result<(), serde_json::Error> {
        let job: JobView = serde_json::from_str(
            r#"{"job_id":"0190c5a4-7b1e-7000-8000-0000000000a1","name":null,"state":"pending",
                "created_at":"2026-01-01T00:00:00Z","finished_at":null,
                "counts":{"total":2,"done":0,"succeeded":0,"failed":0,"cancelled":0},
                "tasks":[{"task_id":"0190c5a4-7b1e-7000-8000-0000000000f1","index":0,"name":"a",
                          "state":"ready","attempts":0,"executor_id":null,"exit_code":null,
                          "signal":null,"error":null,
                          "hint":"no executor is eligible: none alive in group lab (or its subgroups)"},
                         {"task_id":"0190c5a4-7b1e-7000-8000-0000000000f2","index":1,"name":"b",
                          "state":"waiting","attempts":0,"executor_id":null,"exit_code":null,
                          "signal":null,"error":null,"hint":null}]}"#,
        )?;
        let text = render_job(&job, Utc::now());
        assert!(
            text.ends_with(
                "\nwhy tasks wait:\n  0 a: no executor is eligible: none alive in group lab \
                 (or its subgroups)\n"
            ),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn an_attempt_history_names_each_executor_and_the_late_result() {
        let attempt = |attempt, executor: &str, state: &str, late_result| AttemptView {
            attempt,
            executor_id: executor.into(),
            state: state.into(),
            assigned_at: Utc::now(),
            started_at: None,
            finished_at: None,
            late_result,
        };
        let h = vec![
            attempt(1, "a", "lost", true),
            attempt(2, "b", "succeeded", false),
        ];
        assert_eq!(
            render_history(&h),
            "#1 a lost (late result kept, not counted) -> #2 b succeeded"
        );
    }
}
