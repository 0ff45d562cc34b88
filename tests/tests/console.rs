//! The web console in a real browser (headless Chromium over WebDriver): sign in, a job
//! shown in the list and followed live, cancelled from its page; a reader's page has no
//! controls and its forged requests are refused; a drain from the executors page stops
//! new work; filters, pages, sign-out, hold, release, retry and `each` members' results besides. Each
//! page's screenshot goes to the artefacts folder the test prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use fleet_shared::id::JobId;
use fleet_tests::webdriver::Browser;
use fleet_tests::{wait_for, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

/// `$FLEET_TEST_ARTEFACTS`, else `<target>/test-artefacts/console`.
fn artefacts() -> PathBuf {
    let dir = std::env::var_os("FLEET_TEST_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("test-artefacts/console")
        });
    eprintln!("console screenshots: {}", dir.display());
    dir
}

async fn shoot(b: &Browser, name: &str) -> Result<()> {
    let path = artefacts().join(format!("{name}.png"));
    b.screenshot(&path).await?;
    eprintln!("screenshot {}", path.display());
    Ok(())
}

/// Signs in through the sign-in page's form, as a person would.
async fn sign_in(fleet: &TestFleet, b: &Browser, token: &str, shot: Option<&str>) -> Result<()> {
    b.goto(&format!("{}/ui", fleet.api)).await?;
    b.find("#token").await?;
    ensure!(
        b.url().await?.ends_with("/ui/signin"),
        "no session: the console sends to the sign-in page"
    );
    b.type_into("#token", token).await?;
    if let Some(name) = shot {
        shoot(b, name).await?;
    }
    b.click("#signin-button").await?;
    if let Err(e) = b.wait_text("#who", "(", PATIENCE).await {
        let _ = shoot(b, "signin-failed").await;
        let page = b.text("body").await.unwrap_or_default();
        return Err(e.context(format!("at {}: {page}", b.url().await?)));
    }
    Ok(())
}

fn counter_job(name: &str, group: &str) -> Value {
    json!({"name": name, "tasks": [{"name": "counter", "group": group, "argv": ["sh", "-c",
        "i=0; while [ $i -lt 900 ]; do i=$((i+1)); echo line-$i; sleep 0.1; done"]}]})
}

async fn state(fleet: &TestFleet, job: JobId) -> Result<String> {
    Ok(fleet.job(job).await?.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_shows_in_the_list_streams_its_output_and_is_cancelled_from_its_page(
) -> Result<()> {
    // The browser first: without one the test fails at once, saying how to install it.
    let b = Browser::start().await?;
    let mut fleet = TestFleet::start("console-job").await?;
    fleet
        .add_executor(ExecutorSpec::new("ui-run", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["ui-run"]).await?;
    let admin = fleet.cfg.auth.admin_token.clone().unwrap_or_default();
    sign_in(&fleet, &b, &admin, Some("01-signin")).await?;

    let job = fleet.submit(&counter_job("console-counter", "cpu")).await?;
    let row = format!("tr[data-job-id='{job}']");
    b.wait_text(&row, "console-counter", PATIENCE).await?;
    shoot(&b, "02-jobs").await?;
    // Filters: a state the job is not in hides it, its name prefix shows it again.
    b.click("#filter-state option[value='succeeded']").await?;
    b.click("#filters button[type='submit']").await?;
    b.wait_text("#jobs", "No jobs", PATIENCE).await?;
    b.click("#filter-state option[value='']").await?;
    b.type_into("#filter-name", "console-").await?;
    b.click("#filters button[type='submit']").await?;
    b.wait_text(&row, "console-counter", PATIENCE).await?;
    ensure!(
        b.url().await?.ends_with("?name_prefix=console-"),
        "filters are kept in the address"
    );

    b.click(&format!("{row} a")).await?;
    b.wait_text("#output", "line-5", PATIENCE).await?;
    ensure!(
        state(&fleet, job).await? == "running",
        "the output was shown while the job ran"
    );
    b.wait_text("#output", "line-10", PATIENCE).await?;
    shoot(&b, "03-job-running").await?;

    b.click("#btn-hold").await?;
    wait_for("the job to be held", PATIENCE, || async {
        Ok(fleet.job(job).await?.held.then_some(()))
    })
    .await?;
    b.click("#btn-release").await?;
    wait_for("the job to be released", PATIENCE, || async {
        Ok((!fleet.job(job).await?.held).then_some(()))
    })
    .await?;

    b.click("#btn-cancel").await?;
    let done = fleet.wait_job(job, PATIENCE).await?;
    assert_eq!(done.state, "cancelled");
    b.wait_text("#job-head h1", "cancelled", PATIENCE).await?;
    ensure!(
        b.find_all("#btn-cancel").await?.is_empty(),
        "a finished job has no cancel button"
    );
    shoot(&b, "04-job-cancelled").await?;

    // Retry runs the cancelled task again; cancel ends it again.
    b.click("#btn-retry").await?;
    fleet.wait_job_state(job, "running", PATIENCE).await?;
    b.click("#btn-cancel").await?;
    assert_eq!(fleet.wait_job(job, PATIENCE).await?.state, "cancelled");

    b.click("#signout").await?;
    b.find("#token").await?;
    b.goto(&format!("{}/ui/executors", fleet.api)).await?;
    b.find("#token").await?;
    ensure!(
        b.url().await?.ends_with("/ui/signin"),
        "signed out, a page sends to the sign-in page"
    );
    b.quit().await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_no_controls_and_its_forged_control_requests_are_refused() -> Result<()> {
    // The browser first: without one the test fails at once, saying how to install it.
    let b = Browser::start().await?;
    let mut fleet = TestFleet::start("console-reader").await?;
    fleet
        .add_executor(ExecutorSpec::new("ui-read", &["cpu"], 1))
        .await?;
    fleet.wait_executors(&["ui-read"]).await?;
    let (status, made) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "auditor", "role": "reader"})),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    let reader = made["token"].as_str().unwrap_or_default().to_owned();
    let job = fleet.submit(&counter_job("watched", "cpu")).await?;
    fleet.wait_job_state(job, "running", PATIENCE).await?;

    sign_in(&fleet, &b, &reader, None).await?;
    b.goto(&format!("{}/ui/jobs/{job}", fleet.api)).await?;
    b.wait_text("#read-only", "reader", PATIENCE).await?;
    b.wait_text("#output", "line-3", PATIENCE).await?;
    ensure!(
        b.find_all("#controls button, [data-action]")
            .await?
            .is_empty(),
        "a reader's job page has no control buttons"
    );
    shoot(&b, "05-job-as-reader").await?;

    // What the page's script could send if tampered with: the reader's cookie and its
    // CSRF value. The role decides: 403.
    let forged = b
        .run_async(
            "const [path, done] = arguments;
             fetch('/ui/session').then(r => r.json()).then(me =>
               fetch(path, {method: 'POST', headers: {'X-Fleet-CSRF': me.csrf}}))
             .then(async r => done({status: r.status, body: await r.json()}))
             .catch(e => done({error: String(e)}));",
            vec![json!(format!("/v1/jobs/{job}/cancel"))],
        )
        .await?;
    assert_eq!(forged["status"], 403, "{forged}");
    assert_eq!(forged["body"]["error"]["code"], "forbidden", "{forged}");

    // A form posted with the session's cookie, as a forged page would: no CSRF header.
    b.run_async(
        "const [path, done] = arguments;
         const f = document.createElement('form');
         f.method = 'post'; f.action = path; document.body.append(f); f.submit(); done(null);",
        vec![json!(format!("/v1/jobs/{job}/cancel"))],
    )
    .await?;
    b.wait_text("body", "X-Fleet-CSRF", PATIENCE).await?;
    assert_eq!(
        state(&fleet, job).await?,
        "running",
        "nothing was cancelled"
    );

    // The same rule for an admin's cookie: without the header, or from another origin,
    // refused; with both, the change is made.
    let cookie = {
        let hex: String = fleet
            .cfg
            .auth
            .admin_token
            .clone()
            .unwrap_or_default()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("fleet_session={hex}")
    };
    let http = reqwest::Client::new();
    let cancel = format!("{}/v1/jobs/{job}/cancel", fleet.api);
    let session: Value = http
        .get(format!("{}/ui/session", fleet.api))
        .header("cookie", &cookie)
        .send()
        .await?
        .json()
        .await?;
    let csrf = session["csrf"].as_str().unwrap_or_default().to_owned();
    let post = |csrf: Option<&str>, origin: &str| {
        let mut r = http
            .post(&cancel)
            .header("cookie", &cookie)
            .header("origin", origin);
        if let Some(c) = csrf {
            r = r.header("x-fleet-csrf", c);
        }
        r.send()
    };
    let own = fleet.api.clone();
    let r = post(None, &own).await?;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let r = post(Some(&csrf), "http://elsewhere.example").await?;
    assert_eq!(r.status(), 403, "another origin");
    assert_eq!(
        state(&fleet, job).await?,
        "running",
        "nothing was cancelled"
    );
    let r = post(Some(&csrf), &own).await?;
    assert_eq!(r.status(), 202, "the console's own request");
    assert_eq!(fleet.wait_job(job, PATIENCE).await?.state, "cancelled");
    b.quit().await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_from_the_executors_page_stops_new_work_on_that_executor() -> Result<()> {
    // The browser first: without one the test fails at once, saying how to install it.
    let b = Browser::start().await?;
    // A sample of the fleet's figures every second, for the fleet page's charts.
    let mut fleet = TestFleet::start_with("console-drain", |c| {
        c.metrics.interval_secs = 1;
        c.metrics.history_secs = 1;
    })
    .await?;
    fleet
        .add_executor(ExecutorSpec::new("ui-drain", &["site.web"], 2).label("zone=a"))
        .await?;
    fleet.wait_executors(&["ui-drain"]).await?;
    for (name, description) in [("site", "the web site"), ("site.web", "front ends")] {
        let (status, body) = fleet
            .call(
                Method::POST,
                "/v1/groups",
                Some(json!({"name": name, "description": description})),
            )
            .await?;
        assert_eq!(status, 201, "{body}");
    }
    let admin = fleet.cfg.auth.admin_token.clone().unwrap_or_default();
    sign_in(&fleet, &b, &admin, None).await?;

    b.goto(&format!("{}/ui/executors", fleet.api)).await?;
    let row = "tr[data-executor='ui-drain']";
    b.wait_text(row, "zone=a", PATIENCE).await?;
    b.click(&format!("{row} [data-action='drain']")).await?;
    fleet.wait_draining("ui-drain", true).await?;
    b.wait_text(row, "draining", PATIENCE).await?;
    shoot(&b, "06-executors-draining").await?;

    let job = fleet
        .submit(&json!({"name": "after-drain", "tasks": [{"group": "site", "argv": ["true"]}]}))
        .await?;
    let hint = wait_for("the task to wait on the drain", PATIENCE, || async {
        let t = fleet.job(job).await?.tasks.remove(0);
        ensure!(
            t.executor_id.is_none(),
            "a drained executor got work: {t:?}"
        );
        Ok(t.hint.filter(|h| h.contains("draining")))
    })
    .await?;
    assert!(hint.contains("ui-drain"), "{hint}");

    b.click(&format!("{row} [data-action='resume']")).await?;
    let done = fleet.wait_job(job, PATIENCE).await?;
    assert_eq!(done.state, "succeeded");
    assert_eq!(done.tasks[0].executor_id.as_deref(), Some("ui-drain"));

    // A task run on every member: its page shows each member's result.
    let each = fleet
        .submit(
            &json!({"name": "everywhere", "tasks": [{"group": "site", "each": true,
            "argv": ["sh", "-c", "echo hello from $FLEET_EXECUTOR_ID"]}]}),
        )
        .await?;
    assert_eq!(fleet.wait_job(each, PATIENCE).await?.state, "succeeded");
    b.goto(&format!("{}/ui/jobs/{each}", fleet.api)).await?;
    b.wait_text("tr[data-member='ui-drain']", "succeeded", PATIENCE)
        .await?;
    b.click("tr[data-member='ui-drain'] summary").await?;
    b.wait_text(
        "tr[data-member='ui-drain']",
        "hello from ui-drain",
        PATIENCE,
    )
    .await?;
    shoot(&b, "07-job-each").await?;

    // Pages of one job: the newest first, then the one before it, and back.
    b.goto(&format!("{}/ui?limit=1", fleet.api)).await?;
    b.wait_text("#jobs", "everywhere", PATIENCE).await?;
    b.click("#next").await?;
    b.wait_text("#jobs", "after-drain", PATIENCE).await?;
    b.click("#prev").await?;
    b.wait_text("#jobs", "everywhere", PATIENCE).await?;

    b.goto(&format!("{}/ui/groups", fleet.api)).await?;
    b.wait_text("li[data-group='site.web']", "ui-drain", PATIENCE)
        .await?;
    ensure!(
        !b.find_all("li[data-group='site'] li[data-group='site.web']")
            .await?
            .is_empty(),
        "site.web is drawn under site"
    );
    shoot(&b, "08-groups").await?;
    // The charts start from the samples the collector stored before the page opened:
    // more points than the page's own snapshot at once.
    b.goto(&format!("{}/ui/fleet", fleet.api)).await?;
    let chart = "section[data-group='site.web'] svg.chart";
    b.find(&format!("{chart} polyline")).await?;
    let drawn = b
        .run_async(
            "const [css, done] = arguments; const e = document.querySelector(css); \
             done(e ? Number(e.getAttribute('data-points')) : 0);",
            vec![json!(chart)],
        )
        .await?;
    ensure!(
        drawn.as_u64().unwrap_or(0) >= 3,
        "the chart draws the stored history, not only the page's own sample: {drawn}"
    );
    shoot(&b, "09-fleet").await?;
    b.quit().await?;
    fleet.shutdown().await
}
