//! TLS on every hop (issue 14, acceptance 3): a fleet whose API, broker and database
//! connections all use TLS runs jobs, every connection its processes hold is encrypted,
//! and a client that does not trust the CA is refused on each hop.
//!
//! Runs against the development CA that `infra/tls.sh local` makes and serves the local
//! RabbitMQ (AMQPS on 5671, management on 15671) and PostgreSQL with; `make test` runs
//! that first. (`make test` also runs the whole of end_to_end.rs over TLS.)

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::error::with_causes;
use fleet_shared::id::JobId;
use fleet_tests::{ExecutorSpec, TestFleet, TestTls};
use serde_json::json;

const EXECUTOR_BIN: &str = env!("CARGO_BIN_EXE_fleet-test-executor");
const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// The established TCP connections of process `pid`: (local port, remote port).
fn tcp_connections(pid: u32) -> Result<Vec<(u16, u16)>> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed meanwhile has no link: skip it.
        if let Ok(link) = std::fs::read_link(fd?.path()) {
            let link = link.display().to_string();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let port =
        |addr: &str| -> Option<u16> { u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok() };
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01: established), ..., inode (the tenth field).
            if f.len() > 9 && f[3] == "01" && inodes.contains(f[9]) {
                if let (Some(l), Some(r)) = (port(f[1]), port(f[2])) {
                    found.push((l, r));
                }
            }
        }
    }
    Ok(found)
}

/// What a process's connections to the broker and the database are: the number to the
/// plain AMQP port, to the AMQPS port, and the local ports of those to PostgreSQL.
fn hops(pid: u32) -> Result<(usize, usize, Vec<i32>)> {
    let conns = tcp_connections(pid)?;
    let to = |port: u16| conns.iter().filter(move |(_, r)| *r == port);
    Ok((
        to(5672).count(),
        to(5671).count(),
        to(5432).map(|(l, _)| i32::from(*l)).collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_tls_on_every_hop_runs_jobs_and_holds_no_plain_connection() -> Result<()> {
    let tls = TestTls::dev();
    let bootstrap = "bootstrap-secret-of-the-tls-test";
    // The default registration (no open mode): the executor registers over HTTPS and
    // connects over AMQPS as the broker user it was given.
    let fleet = TestFleet::start_with("tls_hops", |c| {
        tls.apply(c);
        c.dispatcher.unsafe_open_executors = false;
        c.auth.executor_bootstrap_secret = Some(bootstrap.into());
    })
    .await?;
    assert!(fleet.api.starts_with("https://localhost:"), "{}", fleet.api);
    assert!(fleet.cfg.amqp.url.starts_with("amqps://"));
    let creds = std::env::temp_dir().join(format!("{}-creds.json", fleet.name));
    let executor = fleet.spawn_executor_process_with(
        EXECUTOR_BIN,
        ExecutorSpec::new("tls-exec", &["cpu"], 2),
        &[
            ("FLEET_EXECUTOR__BOOTSTRAP_SECRET", bootstrap.to_owned()),
            ("FLEET_EXECUTOR__REGISTER_URL", fleet.api.clone()),
            (
                "FLEET_EXECUTOR__CREDENTIALS_FILE",
                creds.display().to_string(),
            ),
        ],
    )?;
    fleet.wait_executors(&["tls-exec"]).await?;

    // A job over HTTPS and one over AMQPS, run and recorded.
    let http_job = fleet
        .submit(&json!({"tasks": [{"argv": ["sh", "-c", "echo over https"]}]}))
        .await?;
    let body = json!({"type": "submit", "v": 1,
                      "job": {"tasks": [{"argv": ["sh", "-c", "echo over amqps"]}]}});
    let reply = fleet
        .submit_amqp(body.to_string().as_bytes(), Some("tls-1"))
        .await?;
    assert_eq!(reply["accepted"], true, "{reply}");
    let amqp_job: JobId = serde_json::from_value(reply["job_id"].clone())?;
    for (id, out) in [(http_job, "over https\n"), (amqp_job, "over amqps\n")] {
        assert_eq!(fleet.wait_job(id, JOB_DEADLINE).await?.state, "succeeded");
        let results = fleet.results(id).await?.results;
        assert_eq!(results[0].stdout, out);
        assert_eq!(results[0].executor_id, "tls-exec");
    }

    // Every connection the services (in this process) and the executor (its own) hold
    // goes to AMQPS, and every one to PostgreSQL is encrypted.
    let client = fleet.pool.get().await?;
    for (who, pid) in [
        ("services", std::process::id()),
        ("executor", executor.pid() as u32),
    ] {
        let (plain_amqp, amqps, pg_ports) = hops(pid)?;
        assert_eq!(plain_amqp, 0, "{who}: a connection to the plain AMQP port");
        assert!(amqps >= 1, "{who}: no AMQPS connection");
        if who == "executor" {
            // An executor has no database connection at all.
            assert!(pg_ports.is_empty(), "{who}: {pg_ports:?}");
            continue;
        }
        assert!(pg_ports.len() >= 2, "{who}: {pg_ports:?}");
        let rows = client
            .query(
                "SELECT a.client_port, s.ssl, s.version FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.client_port = ANY($1)",
                &[&pg_ports],
            )
            .await?;
        assert_eq!(
            rows.len(),
            pg_ports.len(),
            "{who}: backends of {pg_ports:?}"
        );
        for r in rows {
            let (port, ssl, version): (i32, bool, Option<String>) = (r.get(0), r.get(1), r.get(2));
            assert!(
                ssl,
                "{who}: the connection from port {port} is not encrypted"
            );
            assert!(
                version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
                "{who}: {version:?}"
            );
        }
    }
    drop(client);
    drop(executor);
    let _ = std::fs::remove_file(&creds);
    fleet.shutdown().await
}

/// A CA nobody uses, in a PEM file.
fn other_ca() -> Result<(tempdir::Dir, String)> {
    let dir = tempdir::Dir::new()?;
    let (ca_file, _, _) = fleet_tests::TestCa::new("unused")?.write(&dir.0, "other")?;
    Ok((dir, ca_file))
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Self> {
            let p =
                std::env::temp_dir().join(format!("fleet-tls-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_trust_the_ca_are_refused_on_every_hop() -> Result<()> {
    let tls = TestTls::dev();
    let fleet = TestFleet::start_with("tls_refuse", |c| tls.apply(c)).await?;
    let (_dir, other) = other_ca()?;
    let untrusted = |e: &str| {
        let e = e.to_ascii_lowercase();
        e.contains("unknownissuer") || e.contains("unknown issuer")
    };

    // The API: a client trusting another CA gets no answer; the fleet's client does.
    let stranger = fleet_tests::client_trusting(None, std::fs::read(&other)?.as_slice())?;
    let refused = stranger
        .get(format!("{}/readyz", fleet.api))
        .send()
        .await
        .err()
        .context("an https client that does not trust the CA was answered")?;
    assert!(
        untrusted(&with_causes(&refused)),
        "{}",
        with_causes(&refused)
    );
    assert!(fleet
        .http
        .get(format!("{}/readyz", fleet.api))
        .send()
        .await?
        .status()
        .is_success());
    // The console's session cookie, set over HTTPS, is never to be sent in clear.
    let signed_in = fleet
        .http
        .post(format!("{}/ui/session", fleet.api))
        .json(&json!({"token": fleet.cfg.auth.admin_token}))
        .send()
        .await?;
    assert!(signed_in.status().is_success(), "{}", signed_in.status());
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with("fleet_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );

    // The broker: AMQPS with another CA fails the handshake; with the fleet's, connects.
    let mut amqp = fleet.cfg.amqp.clone();
    amqp.ca_file = Some(other.clone());
    let refused = fleet_shared::amqp::connect(&amqp, "tls-refused")
        .await
        .err()
        .context("AMQPS with an untrusted CA connected")?;
    assert!(
        untrusted(&with_causes(&refused)),
        "{}",
        with_causes(&refused)
    );
    let conn = fleet_shared::amqp::connect(&fleet.cfg.amqp, "tls-trusted").await?;
    fleet_shared::amqp::close(&conn, "done").await;

    // The database: the same.
    let mut db = fleet.cfg.database.clone();
    db.ca_file = Some(other);
    let refused = fleet_shared::db::connect(&db)
        .await
        .err()
        .context("PostgreSQL over TLS with an untrusted CA connected")?;
    assert!(
        untrusted(&with_causes(&refused)),
        "{}",
        with_causes(&refused)
    );
    // And a certificate for another name than the host connected to (verify-full): the
    // server's names localhost, not wrong-name.invalid (reached at 127.0.0.1 all the same).
    let mut db = fleet.cfg.database.clone();
    db.url = "postgres://postgres@wrong-name.invalid:5432/fleet?hostaddr=127.0.0.1".into();
    if let Err(e) = fleet_shared::db::connect(&db).await {
        let e = with_causes(&e).to_ascii_lowercase();
        assert!(
            e.contains("notvalidforname") || e.contains("not valid for"),
            "{e}"
        );
    } else {
        anyhow::bail!("PostgreSQL over TLS accepted a certificate for another name");
    }
    let (client, conn) = fleet_shared::db::connect(&fleet.cfg.database).await?;
    let driver = tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl);
    drop(client);
    let _ = driver.await;
    fleet.shutdown().await
}
