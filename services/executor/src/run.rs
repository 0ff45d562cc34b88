//! Running one attempt as a child process: in its own process group (so a timeout or a
//! cancel kills everything it started), stdout and stderr captured up to a cap, the exit
//! code and the terminating signal kept apart.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_shared::proto::Outcome;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    pub timeout: Duration,
    pub max_output: usize,
    /// Where live output goes while the command runs (none: only the result has it).
    pub tap: Option<crate::logs::Tap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

impl Ran {
    /// An attempt cancelled before its command started.
    pub fn cancelled_before_start() -> Self {
        Self {
            outcome: Outcome::Cancelled,
            exit_code: None,
            signal: None,
            error: Some("cancelled before it started".into()),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            started_at: None,
            finished_at: Utc::now(),
        }
    }
}

/// After the main process exits, how long its pipes may stay open (held by children it
/// left behind) before we stop reading.
const PIPE_GRACE: Duration = Duration::from_secs(2);

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        // ESRCH (nothing left in the group) is the common, harmless case.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn capture<R: AsyncRead + Unpin>(
    reader: Option<R>,
    max: usize,
    tap: Option<(crate::logs::Tap, crate::logs::Stream)>,
) -> (String, bool) {
    let Some(mut reader) = reader else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some((tap, stream)) = &tap {
                    tap.send(*stream, &buf[..n]).await;
                }
                // Keep reading past the cap so the child never blocks on a full pipe.
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

pub async fn run(spec: &Spec, cancel: &CancellationToken) -> Ran {
    let started = Utc::now();
    let Some(program) = spec.argv.first() else {
        return spawn_failed(started, "empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    // The executor's own configuration (broker and database URLs, with passwords) is
    // not the task's business.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEET_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return spawn_failed(started, format!("cannot start {program:?}: {e}")),
    };
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    if let (Some(mut w), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
        // Dropping the pipe after writing is the child's EOF.
        tokio::spawn(async move {
            let _ = w.write_all(data.as_bytes()).await;
        });
    }
    use crate::logs::Stream;
    let tap = |s: Stream| spec.tap.clone().map(|t| (t, s));
    let out = tokio::spawn(capture(
        child.stdout.take(),
        spec.max_output,
        tap(Stream::Stdout),
    ));
    let err = tokio::spawn(capture(
        child.stderr.take(),
        spec.max_output,
        tap(Stream::Stderr),
    ));

    let (status, cut) = tokio::select! {
        s = child.wait() => (s, None),
        _ = tokio::time::sleep(spec.timeout) => {
            kill_group(pgid);
            (child.wait().await, Some(Outcome::TimedOut))
        }
        _ = cancel.cancelled() => {
            kill_group(pgid);
            (child.wait().await, Some(Outcome::Cancelled))
        }
    };
    // Whatever the command left running belongs to a finished attempt.
    kill_group(pgid);
    let (stdout, stdout_truncated) = tokio::time::timeout(PIPE_GRACE, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (stderr, stderr_truncated) = tokio::time::timeout(PIPE_GRACE, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if let Some(t) = &spec.tap {
        // The live output goes before the result (bounded: a stuck broker does not hold
        // the result back for long).
        let _ = tokio::time::timeout(PIPE_GRACE, t.end()).await;
    }
    let finished_at = Utc::now();
    let (exit_code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let (outcome, error) = match (cut, &status) {
        (Some(Outcome::TimedOut), _) => (
            Outcome::TimedOut,
            Some(format!(
                "timed out after {}s; its process group was killed",
                spec.timeout.as_secs()
            )),
        ),
        (Some(o), _) => (o, Some("cancelled; its process group was killed".into())),
        (None, Err(e)) => (
            Outcome::Failed,
            Some(format!("cannot wait for the process: {e}")),
        ),
        (None, Ok(s)) if s.success() => (Outcome::Succeeded, None),
        (None, Ok(s)) => (
            Outcome::Failed,
            s.signal().map(|sig| format!("killed by signal {sig}")),
        ),
    };
    Ran {
        outcome,
        exit_code,
        signal,
        error,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        started_at: Some(started),
        finished_at,
    }
}

fn spawn_failed(started: DateTime<Utc>, error: String) -> Ran {
    Ran {
        outcome: Outcome::SpawnFailed,
        exit_code: None,
        signal: None,
        error: Some(error),
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        started_at: None,
        finished_at: started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(30),
            max_output: 1024,
            tap: None,
        }
    }

    #[tokio::test]
    async fn exit_code_and_output_are_captured() {
        let mut s = spec(&["sh", "-c", "cat; echo oops >&2; exit 3"]);
        s.stdin = Some("hello".into());
        let r = run(&s, &CancellationToken::new()).await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.signal, None);
        assert_eq!(r.stdout, "hello");
        assert_eq!(r.stderr, "oops\n");
    }

    #[tokio::test]
    async fn a_signal_is_kept_apart_from_the_exit_code() {
        let r = run(
            &spec(&["sh", "-c", "kill -TERM $$"]),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.exit_code, None);
        assert_eq!(r.signal, Some(15));
    }

    #[tokio::test]
    async fn a_missing_command_is_a_spawn_failure() {
        let r = run(
            &spec(&["/nonexistent/fleet-no-such-command"]),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.outcome, Outcome::SpawnFailed);
        assert!(r
            .error
            .unwrap_or_default()
            .contains("fleet-no-such-command"));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_truncated_and_flagged() {
        let r = run(
            &spec(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.stdout.len(), 1024);
        assert!(r.stdout_truncated);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("fleet-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pidfile = dir.join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut s = spec(&["sh", "-c", &script]);
        s.timeout = Duration::from_millis(500);
        let r = run(&s, &CancellationToken::new()).await;
        assert_eq!(r.outcome, Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        // The grandchild was killed with its group: no such process, or a zombie waiting
        // for whichever process adopted it to reap it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let dead = || {
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|st| {
                        st.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true)
        };
        while !dead() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gone = dead();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(gone, "grandchild {pid} survived the timeout");
    }
}
