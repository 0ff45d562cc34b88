//! Finding jobs (issue 11, acceptance 1): `GET /v1/jobs` pages, filters and ownership,
//! against the real submitter and PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleet_tests::{client_with_token, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

/// Submits `jobs` in one batch as `http`; returns their ids in order.
async fn batch(fleet: &TestFleet, http: &reqwest::Client, jobs: Vec<Value>) -> Result<Vec<String>> {
    let items: Vec<Value> = jobs.into_iter().map(|j| json!({ "job": j })).collect();
    let (s, b) = fleet
        .call_as(
            http,
            Method::POST,
            "/v1/jobs/batch",
            Some(json!({ "jobs": items })),
        )
        .await?;
    if s != 200 {
        bail!("batch: {s} {b}");
    }
    Ok(b["jobs"]
        .as_array()
        .context("tickets")?
        .iter()
        .filter_map(|t| t["job_id"].as_str().map(str::to_owned))
        .collect())
}

/// Every job a query lists, following the cursor, pages of `limit`.
async fn list_all(
    fleet: &TestFleet,
    http: &reqwest::Client,
    query: &str,
    limit: u32,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/jobs?limit={limit}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, b) = fleet.call_as(http, Method::GET, &path, None).await?;
        if s != 200 {
            bail!("GET {path}: {s} {b}");
        }
        let page = b["jobs"].as_array().context("jobs")?;
        if page.len() > limit as usize {
            bail!("a page of {} over the limit {limit}", page.len());
        }
        out.extend(
            page.iter()
                .filter_map(|j| j["job_id"].as_str().map(str::to_owned)),
        );
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_visit_each_job_once_filters_narrow_and_a_submitter_sees_its_own() -> Result<()> {
    let mut fleet = TestFleet::start("find").await?;
    let (a_id, a_token) = fleet.token("team-a", "submitter").await?;
    let (b_id, b_token) = fleet.token("team-b", "submitter").await?;
    let (_, r_token) = fleet.token("auditor", "reader").await?;
    let (a, b, reader) = (
        client_with_token(Some(&a_token))?,
        client_with_token(Some(&b_token))?,
        client_with_token(Some(&r_token))?,
    );

    // 1,200 jobs, 600 per token; every 4th for group lab (every 8th in lab.x), the rest
    // for idle; every 3rd asks for gpu=yes. No executor serves them: they stay pending.
    let job = |who: &str, i: usize| {
        let group = match i % 8 {
            0 => "lab.x",
            4 => "lab",
            _ => "idle",
        };
        let mut task = json!({"argv": ["true"], "group": group, "env": {"COLOUR": "blue"}});
        if i % 3 == 0 {
            task["labels"] = json!({"gpu": "yes"});
        }
        json!({"name": format!("{who}-{i}"), "tasks": [task]})
    };
    let mut mine: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for chunk in 0..6 {
        for (who, http) in [("a", &a), ("b", &b)] {
            let jobs = (chunk * 100..(chunk + 1) * 100)
                .map(|i| job(who, i))
                .collect();
            mine.entry(who)
                .or_default()
                .extend(batch(&fleet, http, jobs).await?);
        }
    }
    let all: BTreeSet<String> = mine.values().flatten().cloned().collect();
    assert_eq!(all.len(), 1200);

    // Pages of 100 while another client keeps inserting: each of the 1,200 exactly once.
    let stop = tokio_util::sync::CancellationToken::new();
    let inserter = {
        let (fleet_api, stop, a) = (fleet.api.clone(), stop.clone(), a.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let body = json!({"jobs": (0..20).map(|i| json!({"job": {"name": format!("late-{n}-{i}"), "tasks": [{"argv": ["true"], "group": "idle"}]}})).collect::<Vec<_>>()});
                let r = a
                    .post(format!("{fleet_api}/v1/jobs/batch"))
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    n += 1;
                }
            }
            n
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=100&cursor={c}"),
            None => "/v1/jobs?limit=100".to_owned(),
        };
        let (s, body) = fleet.call(Method::GET, &path, None).await?;
        assert_eq!(s, 200, "{body}");
        let page = body["jobs"].as_array().context("jobs")?;
        assert!(page.len() <= 100);
        seen.extend(
            page.iter()
                .filter_map(|j| j["job_id"].as_str().map(str::to_owned)),
        );
        pages += 1;
        // Give the inserter room between pages, so inserts land during the walk.
        tokio::time::sleep(Duration::from_millis(20)).await;
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    stop.cancel();
    let late_batches = inserter.await?;
    assert!(late_batches > 0, "jobs were inserted during the walk");
    assert!(pages >= 12, "{pages} pages");
    let seen_set = set(&seen);
    assert_eq!(seen.len(), seen_set.len(), "no job listed twice");
    let missing: Vec<&String> = all.difference(&seen_set).collect();
    assert!(
        missing.is_empty(),
        "{} jobs never listed: {missing:?}",
        missing.len()
    );

    // Items carry task counts per state and who submitted them.
    let (_, first) = fleet
        .call(Method::GET, "/v1/jobs?limit=1&name_prefix=a-0", None)
        .await?;
    let item = &first["jobs"][0];
    assert_eq!(item["name"], "a-0", "{first}");
    assert_eq!(item["tasks"], json!({"ready": 1}), "{item}");
    assert_eq!(item["task_count"], 1);
    assert_eq!(item["submitted_by"]["name"], "team-a");
    assert_eq!(item["submitted_by"]["token_id"], a_id.as_str());

    // Each filter narrows to exactly the jobs it names.
    let expect = |pred: &dyn Fn(&str, usize) -> bool| -> BTreeSet<String> {
        mine.iter()
            .flat_map(|(who, ids)| {
                ids.iter()
                    .enumerate()
                    .filter(|(i, _)| pred(who, *i))
                    .map(|(_, id)| id.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let only_first =
        |ids: Vec<String>| -> BTreeSet<String> { set(&ids).intersection(&all).cloned().collect() };
    let by_prefix = list_all(&fleet, &fleet.http, "name_prefix=a-", 1000).await?;
    assert_eq!(set(&by_prefix), expect(&|w, _| w == "a"));
    let lab = list_all(&fleet, &fleet.http, "group=lab", 1000).await?;
    assert_eq!(
        only_first(lab),
        expect(&|_, i| i % 4 == 0),
        "lab and its subgroups"
    );
    let lab_x = list_all(&fleet, &fleet.http, "group=lab.x", 1000).await?;
    assert_eq!(only_first(lab_x), expect(&|_, i| i % 8 == 0));
    let gpu = list_all(&fleet, &fleet.http, "label=gpu%3Dyes", 1000).await?;
    assert_eq!(only_first(gpu), expect(&|_, i| i % 3 == 0));
    let by_b = list_all(&fleet, &fleet.http, &format!("submitted_by={b_id}"), 1000).await?;
    assert_eq!(set(&by_b), expect(&|w, _| w == "b"));
    let by_b_name = list_all(&fleet, &fleet.http, "submitted_by=team-b", 1000).await?;
    assert_eq!(set(&by_b_name), expect(&|w, _| w == "b"));
    let both = list_all(&fleet, &fleet.http, "name_prefix=b-1&group=lab.x", 1000).await?;
    let want: BTreeSet<String> =
        expect(&|w, i| w == "b" && i % 8 == 0 && format!("b-{i}").starts_with("b-1"));
    assert_eq!(set(&both), want, "filters combine");
    let future = list_all(
        &fleet,
        &fleet.http,
        "created_after=2999-01-01T00:00:00Z",
        1000,
    )
    .await?;
    assert!(future.is_empty());
    let past = list_all(
        &fleet,
        &fleet.http,
        "created_before=2000-01-01T00:00:00Z",
        1000,
    )
    .await?;
    assert!(past.is_empty());
    let pending = list_all(&fleet, &fleet.http, "state=pending", 1000).await?;
    assert!(all.is_subset(&set(&pending)));

    // States: a few jobs run to the end on an executor of group `run`.
    fleet
        .add_executor(ExecutorSpec::new("find-1", &["run"], 2))
        .await?;
    let mut ran = Vec::new();
    for argv in [["true"], ["true"], ["false"]] {
        let id = fleet
            .submit(&json!({"tasks": [{"argv": argv, "group": "run"}]}))
            .await?;
        ran.push(id);
    }
    for id in &ran {
        fleet.wait_job(*id, Duration::from_secs(60)).await?;
    }
    let ran: Vec<String> = ran.iter().map(|id| id.to_string()).collect();
    let ok = list_all(&fleet, &fleet.http, "state=succeeded", 1000).await?;
    assert_eq!(set(&ok), set(&ran[..2]));
    let failed = list_all(&fleet, &fleet.http, "state=failed", 1000).await?;
    assert_eq!(set(&failed), set(&ran[2..]));
    let done = list_all(&fleet, &fleet.http, "state=succeeded,failed", 1000).await?;
    assert_eq!(set(&done), set(&ran));
    let ok_pending = list_all(&fleet, &fleet.http, "state=pending", 1000).await?;
    assert!(set(&ok_pending).is_disjoint(&set(&ran)));

    // A submitter token lists and reads only its own; a reader reads all, without env
    // values; the owner sees them.
    let as_a = list_all(&fleet, &a, "", 1000).await?;
    assert!(set(&as_a).is_superset(&set(&mine["a"])));
    assert!(
        set(&as_a).is_disjoint(&set(&mine["b"])),
        "a sees none of b's jobs"
    );
    let as_a_by_b = list_all(&fleet, &a, "submitted_by=team-b", 1000).await?;
    assert!(as_a_by_b.is_empty());
    let (theirs, mine_a) = (&mine["b"][0], &mine["a"][0]);
    let (s, body) = fleet
        .call_as(&a, Method::GET, &format!("/v1/jobs/{theirs}"), None)
        .await?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (s, _) = fleet
        .call_as(&a, Method::GET, &format!("/v1/jobs/{theirs}/results"), None)
        .await?;
    assert_eq!(s, 404);
    let (s, own) = fleet
        .call_as(&a, Method::GET, &format!("/v1/jobs/{mine_a}"), None)
        .await?;
    assert_eq!(s, 200, "{own}");
    let spec = &own["tasks"][0]["spec"];
    assert_eq!(spec["argv"], json!(["true"]), "{own}");
    assert_eq!(
        spec["env"],
        json!({"COLOUR": "blue"}),
        "the owner sees env values"
    );
    assert_eq!(spec["group"], "lab.x");
    assert_eq!(spec["labels"], json!({"gpu": "yes"}));
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["timeout_secs"], 3600);
    let (s, seen_by_reader) = fleet
        .call_as(&reader, Method::GET, &format!("/v1/jobs/{mine_a}"), None)
        .await?;
    assert_eq!(s, 200);
    assert_eq!(
        seen_by_reader["tasks"][0]["spec"]["env"],
        json!({"COLOUR": null}),
        "a reader sees env names only"
    );
    let as_reader = list_all(&fleet, &reader, "", 1000).await?;
    assert!(
        set(&as_reader).is_superset(&all),
        "a reader lists every job"
    );

    // Bad parameters are named.
    for (q, field) in [
        ("limit=1001", "limit"),
        ("state=done", "state"),
        ("cursor=zz", "cursor"),
        ("stat=running", "stat"),
    ] {
        let (s, body) = fleet
            .call(Method::GET, &format!("/v1/jobs?{q}"), None)
            .await?;
        assert_eq!(
            (s, body["error"]["field"].as_str()),
            (400, Some(field)),
            "{q}: {body}"
        );
    }
    fleet.shutdown().await
}
