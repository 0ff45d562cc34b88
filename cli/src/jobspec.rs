//! Turning `submit` flags into the job POST /v1/jobs takes (the server's own `JobSpec`).

use std::collections::BTreeMap;

use fleet_core::job::{JobSpec, TaskSpec};

use crate::cli::TaskOptions;

/// Parses a `K=V` flag value. Splits at the first `=` so values may hold `=` themselves
/// (`--env OPTS=a=b`); an empty value is allowed, an empty key is not.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected K=V, got `{text}`"))?;
    if key.is_empty() {
        return Err(format!("empty key in `{text}`"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses a `--secret-env` value: `K=V`, or `K` alone (its value is then read from the
/// caller's environment, by [`resolve_secrets`]).
pub fn parse_secret(text: &str) -> Result<(String, Option<String>), String> {
    match text.split_once('=') {
        Some(_) => parse_key_value(text).map(|(k, v)| (k, Some(v))),
        None if text.is_empty() => Err("empty name".into()),
        None => Ok((text.to_string(), None)),
    }
}

/// The values of `--secret-env` flags: given, or looked up with `lookup` (the
/// environment) for a name given alone; an unset one is an error naming it.
pub fn resolve_secrets(
    flags: &[(String, Option<String>)],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    flags
        .iter()
        .map(|(k, v)| match v {
            Some(v) => Ok((k.clone(), v.clone())),
            None => lookup(k)
                .map(|v| (k.clone(), v))
                .ok_or_else(|| format!("--secret-env {k}: {k} is not set in this environment")),
        })
        .collect()
}

/// Builds a one-task job from a command line. `stdin` is the already-read contents of
/// `--stdin-file`, kept out of here so this stays free of I/O.
pub fn build_job(
    opts: &TaskOptions,
    argv: &[String],
    stdin: Option<String>,
    secret_env: BTreeMap<String, String>,
) -> JobSpec {
    JobSpec {
        name: opts.name.clone(),
        tasks: vec![TaskSpec {
            // The one task carries the job's name so results read as something meaningful
            // instead of the server's default "task-0".
            name: opts.name.clone(),
            argv: argv.to_vec(),
            // Repeated keys: the last one wins, as with shells and `docker run -e`.
            env: to_map(&opts.env),
            env_secret: secret_env,
            cwd: opts.cwd.clone(),
            stdin,
            timeout_secs: opts.timeout_secs,
            priority: opts.priority,
            group: opts.group.clone(),
            labels: to_map(&opts.labels),
            max_attempts: opts.max_attempts,
            each: opts.each,
            quorum: opts.quorum,
            ..TaskSpec::default()
        }],
        ..JobSpec::default()
    }
}

fn to_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn key_value_splits_at_the_first_equals() {
        assert_eq!(parse_key_value("gpu=yes"), Ok(kv("gpu", "yes")));
        assert_eq!(parse_key_value("OPTS=a=b"), Ok(kv("OPTS", "a=b")));
        assert_eq!(parse_key_value("EMPTY="), Ok(kv("EMPTY", "")));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn minimal_command_gives_only_argv() -> Result<(), serde_json::Error> {
        let job = build_job(
            &TaskOptions::default(),
            &["true".to_string()],
            None,
            BTreeMap::new(),
        );
        assert_eq!(
            serde_json::to_value(&job)?,
            json!({"tasks": [{"argv": ["true"]}]})
        );
        Ok(())
    }

    #[test]
    fn every_flag_lands_in_the_task() -> Result<(), serde_json::Error> {
        let opts = TaskOptions {
            name: Some("build".into()),
            group: Some("cpu".into()),
            labels: vec![kv("arch", "x86_64")],
            env: vec![kv("A", "1"), kv("B", "2"), kv("A", "3")],
            secret_env: Vec::new(),
            cwd: Some("/src".into()),
            timeout_secs: Some(600),
            priority: Some(-5),
            max_attempts: Some(2),
            stdin_file: None,
            each: true,
            quorum: Some(3),
        };
        let argv = ["make".to_string(), "-j4".to_string()];
        let job = build_job(&opts, &argv, Some("input".into()), BTreeMap::new());
        assert_eq!(
            serde_json::to_value(&job)?,
            json!({
                "name": "build",
                "tasks": [{
                    "name": "build",
                    "argv": ["make", "-j4"],
                    "env": {"A": "3", "B": "2"},
                    "cwd": "/src",
                    "stdin": "input",
                    "timeout_secs": 600,
                    "priority": -5,
                    "group": "cpu",
                    "labels": {"arch": "x86_64"},
                    "max_attempts": 2,
                    "each": true,
                    "quorum": 3
                }]
            })
        );
        Ok(())
    }

    #[test]
    fn a_secret_flag_takes_its_value_or_the_environments() {
        assert_eq!(parse_secret("A=b=c"), Ok(("A".into(), Some("b=c".into()))));
        assert_eq!(parse_secret("A"), Ok(("A".into(), None)));
        assert!(parse_secret("").is_err());
        assert!(parse_secret("=x").is_err());
        let env = |k: &str| (k == "FROM_ENV").then(|| "shh".to_string());
        let flags = vec![
            ("GIVEN".into(), Some("v".into())),
            ("FROM_ENV".into(), None),
        ];
        let got = resolve_secrets(&flags, env).expect("resolved");
        assert_eq!(got.get("FROM_ENV").map(String::as_str), Some("shh"));
        assert_eq!(got.get("GIVEN").map(String::as_str), Some("v"));
        let unset = resolve_secrets(&[("NOPE".into(), None)], env).expect_err("unset");
        assert!(unset.contains("NOPE"), "{unset}");
    }
}
