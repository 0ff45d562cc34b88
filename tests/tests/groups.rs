//! Groups as data, nested routing, and who may use the API (issue 5), against the real
//! RabbitMQ and PostgreSQL.

use std::time::Duration;

use anyhow::Result;
use fleet_tests::{client_with_token, job_of, wait_for, ExecutorSpec, TestFleet};
use serde_json::{json, Value};

const JOB_DEADLINE: Duration = Duration::from_secs(60);

async fn ran_on(fleet: &TestFleet, id: fleet_shared::id::JobId) -> Result<Vec<String>> {
    Ok(fleet
        .results(id)
        .await?
        .results
        .into_iter()
        .map(|r| r.executor_id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_group_reaches_its_subgroups_and_a_sibling_never_runs_the_other_s_work(
) -> Result<()> {
    let mut fleet = TestFleet::start("site").await?;
    for (id, group) in [
        ("web-1", "site.web"),
        ("web-2", "site.web"),
        ("db-1", "site.db"),
        ("db-2", "site.db"),
    ] {
        fleet
            .add_executor(ExecutorSpec::new(id, &[group], 2))
            .await?;
    }
    fleet
        .wait_executors(&["web-1", "web-2", "db-1", "db-2"])
        .await?;
    let site = fleet
        .submit(&job_of(40, &["true"], json!({"group": "site"})))
        .await?;
    let web = fleet
        .submit(&job_of(40, &["true"], json!({"group": "site.web"})))
        .await?;
    for id in [site, web] {
        assert_eq!(fleet.wait_job(id, JOB_DEADLINE).await?.state, "succeeded");
    }
    let site_ran = ran_on(&fleet, site).await?;
    assert_eq!(site_ran.len(), 40);
    assert!(
        site_ran.iter().any(|e| e.starts_with("web-"))
            && site_ran.iter().any(|e| e.starts_with("db-")),
        "a task for site runs on members of both subgroups: {site_ran:?}"
    );
    let web_ran = ran_on(&fleet, web).await?;
    assert_eq!(web_ran.len(), 40);
    assert!(
        web_ran.iter().all(|e| e.starts_with("web-")),
        "a task for site.web never runs on a site.db member: {web_ran:?}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_nested_listed_and_deleted_only_when_unused() -> Result<()> {
    use reqwest::Method;
    let mut fleet = TestFleet::start("groupcrud").await?;
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "site.web"})),
        )
        .await?;
    assert_eq!(s, 409, "a child before its parent: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("'site'"),
        "{b}"
    );
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "Bad Name"})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("name")),
        "{b}"
    );
    for g in ["site", "site.web", "site.db"] {
        let (s, b) = fleet
            .call(Method::POST, "/v1/groups", Some(json!({"name": g})))
            .await?;
        assert_eq!(s, 201, "{b}");
    }
    let (s, _) = fleet
        .call(Method::POST, "/v1/groups", Some(json!({"name": "site"})))
        .await?;
    assert_eq!(s, 409, "a duplicate");
    let (s, _) = fleet
        .call(Method::PUT, "/v1/groups/site.web/members/web-1", None)
        .await?;
    assert_eq!(s, 204);
    let (s, _) = fleet
        .call(Method::PUT, "/v1/groups/nowhere/members/web-1", None)
        .await?;
    assert_eq!(s, 404);

    let (_, listing) = fleet.call(Method::GET, "/v1/groups", None).await?;
    let find = |name: &str| {
        listing["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("site")["subgroups"], json!(["site.db", "site.web"]));
    assert_eq!(find("site.web")["parent"], "site");
    assert_eq!(
        find("site.web")["members"],
        json!([{"executor_id": "web-1", "source": "assigned"}])
    );

    // Refused while it has subgroups, members, or unfinished work; each with a reason.
    let (s, b) = fleet.call(Method::DELETE, "/v1/groups/site", None).await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/groups/site.web", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("web-1"),
        "{b}"
    );
    let (s, _) = fleet
        .call(Method::DELETE, "/v1/groups/site.web/members/web-1", None)
        .await?;
    assert_eq!(s, 204);
    // No executor in site.db yet: the task waits, and the group is in use.
    let waiting = fleet
        .submit(&job_of(1, &["true"], json!({"group": "site.db"})))
        .await?;
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/groups/site.db", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unfinished"),
        "{b}"
    );
    fleet
        .add_executor(ExecutorSpec::new("db-1", &["site.db"], 1))
        .await?;
    assert_eq!(
        fleet.wait_job(waiting, JOB_DEADLINE).await?.state,
        "succeeded"
    );
    // Its member declares it and is alive: still refused.
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/groups/site.db", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("db-1"),
        "{b}"
    );

    // An executor put in a group by an administrator takes that group's work.
    let (s, _) = fleet
        .call(Method::POST, "/v1/groups", Some(json!({"name": "batch"})))
        .await?;
    assert_eq!(s, 201);
    let (s, _) = fleet
        .call(Method::PUT, "/v1/groups/batch/members/db-1", None)
        .await?;
    assert_eq!(s, 204);
    let batch = fleet
        .submit(&job_of(3, &["true"], json!({"group": "batch"})))
        .await?;
    assert_eq!(
        fleet.wait_job(batch, JOB_DEADLINE).await?.state,
        "succeeded"
    );
    assert_eq!(ran_on(&fleet, batch).await?, ["db-1", "db-1", "db-1"]);

    let (s, _) = fleet
        .call(Method::DELETE, "/v1/groups/site.web", None)
        .await?;
    assert_eq!(s, 204);
    let (s, _) = fleet
        .call(Method::DELETE, "/v1/groups/site.web", None)
        .await?;
    assert_eq!(s, 404);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_token_get_401_and_a_reader_cannot_submit() -> Result<()> {
    use reqwest::Method;
    let fleet = TestFleet::start("auth").await?;
    let anonymous = client_with_token(None)?;
    let wrong = client_with_token(Some("flt_not-a-token-of-this-fleet"))?;
    let job = job_of(1, &["true"], json!({}));
    for (method, path) in [
        (Method::POST, "/v1/jobs"),
        (Method::GET, "/v1/executors"),
        (Method::GET, "/v1/groups"),
        (Method::POST, "/v1/groups"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/v1/jobs/01900000-0000-7000-8000-000000000000"),
    ] {
        for who in [&anonymous, &wrong] {
            let (s, b) = fleet
                .call_as(who, method.clone(), path, Some(job.clone()))
                .await?;
            assert_eq!(s, 401, "{method} {path}: {b}");
            assert_eq!(b["error"]["code"], "unauthorized");
        }
    }
    // Health and metrics stay open for probes.
    let (s, _) = fleet
        .call_as(&anonymous, Method::GET, "/healthz", None)
        .await?;
    assert_eq!(s, 200);

    let make = |role: &'static str| {
        let fleet = &fleet;
        async move {
            let (s, b) = fleet
                .call(
                    Method::POST,
                    "/v1/tokens",
                    Some(json!({"name": format!("a {role}"), "role": role})),
                )
                .await?;
            assert_eq!(s, 201, "{b}");
            let token = b["token"].as_str().unwrap_or_default().to_owned();
            Ok::<_, anyhow::Error>((b["token_id"].as_str().unwrap_or_default().to_owned(), token))
        }
    };
    let (_, reader_token) = make("reader").await?;
    let (submitter_id, submitter_token) = make("submitter").await?;
    let reader = client_with_token(Some(&reader_token))?;
    let submitter = client_with_token(Some(&submitter_token))?;

    let (s, b) = fleet
        .call_as(&reader, Method::POST, "/v1/jobs", Some(job.clone()))
        .await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    let (s, _) = fleet
        .call_as(&reader, Method::GET, "/v1/executors", None)
        .await?;
    assert_eq!(s, 200, "a reader reads");
    let (s, b) = fleet
        .call_as(&submitter, Method::POST, "/v1/jobs", Some(job.clone()))
        .await?;
    assert_eq!(s, 201, "a submitter submits: {b}");
    let (s, _) = fleet
        .call_as(
            &submitter,
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_eq!(s, 403, "a submitter does not administer");
    let (s, b) = fleet
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("role")),
        "{b}"
    );

    // The listing never shows a secret.
    let (_, listing) = fleet.call(Method::GET, "/v1/tokens", None).await?;
    assert!(!listing.to_string().contains(&submitter_token));
    // A revoked token stops working (within the cache time).
    let (s, _) = fleet
        .call(Method::DELETE, &format!("/v1/tokens/{submitter_id}"), None)
        .await?;
    assert_eq!(s, 204);
    wait_for(
        "the revoked token to be refused",
        Duration::from_secs(15),
        || async {
            let (s, _) = fleet
                .call_as(&submitter, Method::GET, "/v1/executors", None)
                .await?;
            Ok((s == 401).then_some(()))
        },
    )
    .await?;
    fleet.shutdown().await
}

/// Ready tasks no executor can serve (their group has no member) come first in the ready
/// order; the dispatcher reads only the groups its executors with room serve, so the
/// tasks behind them still run. Before, it read the first ten pages of the backlog,
/// found nothing it could place, and the job below waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_no_executor_serves_does_not_hold_up_the_work_behind_it() -> Result<()> {
    let mut fleet = TestFleet::start("unserved").await?;
    let jobs: Vec<Value> = (0..2000)
        .map(|_| json!({"job": {"tasks": [{"argv": ["true"], "group": "nobody", "priority": 5}]}}))
        .collect();
    let (s, b) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/jobs/batch",
            Some(json!({ "jobs": jobs })),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    fleet
        .add_executor(ExecutorSpec::new("served-1", &["default"], 1))
        .await?;
    let id = fleet.submit(&job_of(1, &["true"], json!({}))).await?;
    let done = fleet.wait_job(id, JOB_DEADLINE).await?;
    assert_eq!(done.state, "succeeded");
    fleet.shutdown().await
}

/// `fleetctl group delete|add` said "no such group" for groups `fleetctl group list`
/// shows: `default`, and groups executors declare that nobody created (and their
/// ancestors). The answer now says what the group is and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_group_that_was_never_created_is_refused_for_what_it_is() -> Result<()> {
    use reqwest::Method;
    let mut fleet = TestFleet::start("declared").await?;
    fleet
        .add_executor(ExecutorSpec::new("gpu-1", &["lab.gpu"], 1))
        .await?;
    fleet.wait_executors(&["gpu-1"]).await?;
    wait_for(
        "lab.gpu listed with its declared member",
        Duration::from_secs(30),
        || async {
            let (_, b) = fleet.call(Method::GET, "/v1/groups", None).await?;
            let listed = b["groups"].as_array().is_some_and(|gs| {
                gs.iter()
                    .any(|g| g["name"] == "lab.gpu" && g["members"][0]["executor_id"] == "gpu-1")
                    && gs.iter().any(|g| g["name"] == "lab")
            });
            Ok(listed.then_some(()))
        },
    )
    .await?;
    let message = |b: &Value| b["error"]["message"].as_str().unwrap_or("").to_owned();
    for name in ["lab.gpu", "lab"] {
        let (s, b) = fleet
            .call(Method::DELETE, &format!("/v1/groups/{name}"), None)
            .await?;
        assert_eq!(s, 409, "{name}: {b}");
        let m = message(&b);
        assert!(
            m.contains("never created") && m.contains("gpu-1"),
            "{name}: {m}"
        );
    }
    let (s, b) = fleet
        .call(Method::PUT, "/v1/groups/lab.gpu/members/other-1", None)
        .await?;
    assert_eq!(s, 409, "{b}");
    let m = message(&b);
    assert!(
        m.contains("never created") && m.contains("fleetctl group create lab"),
        "{m}"
    );
    for (method, path) in [
        (Method::DELETE, "/v1/groups/default"),
        (Method::PUT, "/v1/groups/default/members/other-1"),
    ] {
        let (s, b) = fleet.call(method, path, None).await?;
        assert_eq!(s, 409, "{path}: {b}");
        assert!(message(&b).contains("'default'"), "{path}: {b}");
    }
    let (s, b) = fleet
        .call(Method::DELETE, "/v1/groups/nowhere", None)
        .await?;
    assert_eq!(s, 404, "{b}");
    // Created as the answer says, it takes members.
    for name in ["lab", "lab.gpu"] {
        let (s, b) = fleet
            .call(Method::POST, "/v1/groups", Some(json!({"name": name})))
            .await?;
        assert_eq!(s, 201, "{name}: {b}");
    }
    let (s, b) = fleet
        .call(Method::PUT, "/v1/groups/lab.gpu/members/other-1", None)
        .await?;
    assert_eq!(s, 204, "{b}");
    fleet.shutdown().await
}
