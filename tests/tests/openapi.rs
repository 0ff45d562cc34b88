//! The OpenAPI contract (issue 13): the document the submitter serves is the committed
//! `docs/openapi.json`, and every operation in it answers a real request as it says: a
//! documented status, and a body (and the request's body) valid against its schema. An
//! operation of the document that no request here exercises fails the test, so a new route
//! cannot go unchecked.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fleet_tests::sse::read_events;
use fleet_tests::{unique_name, ExecutorSpec, TestFleet};
use reqwest::Method;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn committed() -> Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {path}"))
}

/// Where two documents first differ, as a JSON pointer.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(v), Some(w)) => first_difference(v, w, format!("{at}/{k}")),
                _ => Some(format!("{at}/{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}/{i}"))),
        _ => (a != b).then_some(at),
    }
}

/// The document's schemas, and the operations exercised so far.
struct Contract {
    doc: Value,
    /// The components as they are, for requests (whose types refuse unknown fields).
    components: Value,
    /// The components where an object (not a part of another through `allOf`) has no
    /// field the document does not name: an answer must not carry undocumented fields.
    strict: Value,
    exercised: BTreeSet<(String, String)>,
}

impl Contract {
    fn new(doc: Value) -> Self {
        let components = doc["components"].clone();
        let mut strict = components.clone();
        let parts: BTreeSet<String> = components["schemas"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|s| s["allOf"].as_array())
            .flatten()
            .filter_map(|p| p["$ref"].as_str())
            .map(|r| r.rsplit('/').next().unwrap_or("").to_owned())
            .collect();
        if let Some(schemas) = strict["schemas"].as_object_mut() {
            for (name, s) in schemas.iter_mut() {
                let object = s.get("properties").is_some() || s.get("allOf").is_some();
                if object && s.get("additionalProperties").is_none() && !parts.contains(name) {
                    s["unevaluatedProperties"] = json!(false);
                }
            }
        }
        Self {
            doc,
            components,
            strict,
            exercised: BTreeSet::new(),
        }
    }

    /// Whether `value` is valid against `schema` (which may refer to the components).
    fn validate(&self, schema: &Value, value: &Value, strict: bool) -> Result<()> {
        let mut root = match schema {
            Value::Object(_) => schema.clone(),
            _ => bail!("not a schema: {schema}"),
        };
        root["components"] = if strict {
            self.strict.clone()
        } else {
            self.components.clone()
        };
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| anyhow::anyhow!("schema {schema}: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }

    fn schema_named(&self, name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn operation(&self, method: &str, template: &str) -> Result<&Value> {
        let op = &self.doc["paths"][template][method];
        ensure!(
            op.is_object(),
            "{method} {template} is not in docs/openapi.json"
        );
        Ok(op)
    }

    /// Checks a request's JSON body against its operation, and marks it exercised.
    fn request(&mut self, method: &str, template: &str, body: Option<&Value>) -> Result<()> {
        let op = self.operation(method, template)?;
        if let Some(body) = body {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            ensure!(
                schema.is_object(),
                "{method} {template} documents no JSON body"
            );
            self.validate(schema, body, false)
                .with_context(|| format!("the request body of {method} {template}: {body}"))?;
        }
        self.exercised
            .insert((method.to_owned(), template.to_owned()));
        Ok(())
    }

    /// The documented answer `status` of an operation, and the media type it has for
    /// `content_type` (`None` when the answer documents no body).
    fn answer(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
    ) -> Result<Option<(String, Value)>> {
        let op = self.operation(method, template)?;
        let answer = &op["responses"][status.to_string()];
        ensure!(
            answer.is_object(),
            "{method} {template} answered {status}, which the document does not list"
        );
        let Some(content) = answer["content"].as_object() else {
            return Ok(None);
        };
        let media = content_type.split(';').next().unwrap_or("").trim();
        let documented = content
            .get(media)
            .with_context(|| format!("{method} {template} {status}: {media} is not documented"))?;
        Ok(Some((media.to_owned(), documented["schema"].clone())))
    }

    fn response(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
        text: &str,
    ) -> Result<Value> {
        match self.answer(method, template, status, content_type)? {
            None => {
                ensure!(
                    text.is_empty(),
                    "{method} {template} {status} documents no body, and sent {text:?}"
                );
                Ok(Value::Null)
            }
            Some((media, schema)) if media == "application/json" => {
                let body: Value = serde_json::from_str(text)
                    .with_context(|| format!("{method} {template} {status}: not JSON: {text}"))?;
                self.validate(&schema, &body, true).with_context(|| {
                    format!("the answer of {method} {template} ({status}): {text}")
                })?;
                Ok(body)
            }
            Some((_, schema)) => {
                self.validate(&schema, &json!(text), true)?;
                Ok(Value::String(text.to_owned()))
            }
        }
    }

    /// Whether `path` (with its query) is an instance of `template`, and (for an answer
    /// that is not an error) each parameter of its query one the operation documents.
    fn path_and_query(&self, method: &str, template: &str, path: &str, ok: bool) -> Result<()> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let (want, got): (Vec<&str>, Vec<&str>) =
            (template.split('/').collect(), route.split('/').collect());
        ensure!(
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| w == g || (w.starts_with('{') && !g.is_empty())),
            "{path} is not an instance of {template}"
        );
        if !ok {
            return Ok(());
        }
        let params = &self.operation(method, template)?["parameters"];
        for name in query.split('&').filter(|p| !p.is_empty()) {
            let name = name.split('=').next().unwrap_or_default();
            ensure!(
                params
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "query" && p["name"] == name),
                "{method} {template}: the query parameter {name} is not documented"
            );
        }
        Ok(())
    }

    fn unexercised(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for m in METHODS {
                if item.get(m).is_some() && !self.exercised.contains(&(m.to_owned(), path.clone()))
                {
                    missing.push(format!("{} {path}", m.to_uppercase()));
                }
            }
        }
        missing
    }
}

/// A fleet, and the contract every call through it is checked against.
struct Checked {
    fleet: TestFleet,
    contract: Contract,
}

impl Checked {
    /// Sends a request (to `path`, an instance of the document's `template`), checks it
    /// and its answer against the document, and returns the answer's status and body.
    async fn call_with(
        &mut self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
        tweak: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(u16, Value)> {
        let m = method.as_str().to_lowercase();
        self.contract.request(&m, template, body.as_ref())?;
        let mut req = self
            .fleet
            .http
            .request(method.clone(), format!("{}{path}", self.fleet.api));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = tweak(req).send().await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp.text().await?;
        self.contract
            .path_and_query(&m, template, path, status < 400)?;
        let answer = self
            .contract
            .response(&m, template, status, &content_type, &text)?;
        Ok((status, answer))
    }

    async fn call(
        &mut self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        self.call_with(method, template, path, body, |r| r).await
    }

    /// [`Self::call`], expecting `status`.
    async fn expect(
        &mut self,
        status: u16,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (got, answer) = self.call(method.clone(), template, path, body).await?;
        ensure!(
            got == status,
            "{method} {path}: expected {status}, got {got}: {answer}"
        );
        Ok(answer)
    }

    /// Opens a stream of Server-Sent Events and checks that it is one the document
    /// lists; the first event's `data` is checked against the schema `data`.
    async fn first_event(&mut self, template: &str, path: &str, data: &str) -> Result<String> {
        self.contract.request("get", template, None)?;
        let resp = self
            .fleet
            .http
            .get(format!("{}{path}", self.fleet.api))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        ensure!(status == 200, "GET {path}: {status}");
        self.contract.path_and_query("get", template, path, true)?;
        let (media, _) = self
            .contract
            .answer("get", template, status, &content_type)?
            .context("a stream with no documented body")?;
        ensure!(media == "text/event-stream", "GET {path}: {media}");
        let mut first = None;
        tokio::time::timeout(
            DEADLINE,
            read_events(resp, |ev, _| {
                first = Some(ev);
                false
            }),
        )
        .await??;
        let ev = first.context("the stream ended without an event")?;
        let body: Value = serde_json::from_str(&ev.data)?;
        self.contract
            .validate(&self.contract.schema_named(data), &body, true)
            .with_context(|| format!("the first event of GET {path}: {}", ev.data))?;
        Ok(ev.event)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_committed_one() -> Result<()> {
    let fleet = TestFleet::start("openapi-doc").await?;
    // No token: the document is public.
    let anonymous = fleet_tests::client_with_token(None)?;
    let resp = anonymous
        .get(format!("{}/openapi.json", fleet.api))
        .send()
        .await?;
    ensure!(resp.status() == 200, "GET /openapi.json: {}", resp.status());
    let served: Value = resp.json().await?;
    let committed = committed()?;
    if served != committed {
        bail!(
            "docs/openapi.json is not what the submitter serves (first difference at {}); \
             regenerate it with `make openapi` and commit it",
            first_difference(&served, &committed, String::new()).unwrap_or_default()
        );
    }
    let page = anonymous.get(format!("{}/docs", fleet.api)).send().await?;
    ensure!(page.status() == 200, "GET /docs: {}", page.status());
    ensure!(page.text().await?.contains("/openapi.json"));
    fleet.shutdown().await
}

#[test]
fn a_missing_required_field_or_an_undocumented_one_fails_validation() -> Result<()> {
    let contract = Contract::new(committed()?);
    let schema = contract.schema_named("Submitted");
    let good = json!({"created": true, "job_id": "0190c5a4-7b1e-7000-8000-000000000001"});
    contract.validate(&schema, &good, true)?;
    let mut missing = good.clone();
    missing.as_object_mut().map(|o| o.remove("job_id"));
    ensure!(contract.validate(&schema, &missing, true).is_err());
    let mut extra = good.clone();
    extra["surprise"] = json!(1);
    ensure!(contract.validate(&schema, &extra, true).is_err());
    let bad_id = json!({"created": true, "job_id": "not-a-uuid"});
    ensure!(contract.validate(&schema, &bad_id, true).is_err());
    // A flattened type (allOf) keeps its parts' fields, and refuses others.
    let token = contract.schema_named("NewToken");
    let made = json!({"token_id": "0190c5a4-7b1e-7000-8000-000000000001", "name": "ci",
        "role": "reader", "created_at": "2026-01-01T00:00:00Z", "revoked_at": null, "token": "x"});
    contract.validate(&token, &made, true)?;
    let mut odd = made.clone();
    odd["surprise"] = json!(1);
    ensure!(contract.validate(&token, &odd, true).is_err());
    // A request refuses unknown fields, as the server does.
    let spec = contract.schema_named("JobSpec");
    contract.validate(&spec, &json!({"tasks": [{"argv": ["true"]}]}), false)?;
    ensure!(contract
        .validate(
            &spec,
            &json!({"tasks": [{"argv": ["true"], "tries": 2}]}),
            false
        )
        .is_err());
    // A query parameter the operation does not document is refused, and so is a path
    // that is not the template's.
    ensure!(contract
        .path_and_query("get", "/v1/jobs", "/v1/jobs?colour=red", true)
        .is_err());
    contract.path_and_query("get", "/v1/jobs", "/v1/jobs?state=failed&limit=5", true)?;
    ensure!(contract
        .path_and_query("get", "/v1/jobs/{id}", "/v1/jobs/x/results", true)
        .is_err());
    // An answer with an undocumented status is refused.
    ensure!(contract
        .answer("get", "/v1/jobs/{id}", 418, "application/json")
        .is_err());
    Ok(())
}

/// Every `$ref` of `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                    _ => refs(v, format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed() -> Result<()> {
    let doc = committed()?;
    ensure!(doc["openapi"] == "3.1.0", "{}", doc["openapi"]);
    let mut all = Vec::new();
    refs(&doc, String::new(), &mut all);
    for (at, r) in &all {
        let target = r
            .strip_prefix('#')
            .and_then(|p| doc.pointer(p))
            .with_context(|| format!("{at}: {r} resolves to nothing"))?;
        ensure!(target.is_object(), "{at}: {r} is not a schema");
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            ensure!(METHODS.contains(&method.as_str()), "{path}: {method}");
            let id = op["operationId"].as_str().unwrap_or_default();
            ensure!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?} again"
            );
            ensure!(op["tags"].is_array(), "{method} {path}: no tag");
            ensure!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no answers"
            );
            if let Some(body) = op.get("requestBody") {
                ensure!(
                    body["content"].is_object(),
                    "{method} {path}: a body without content"
                );
            }
            for name in op["security"].as_array().into_iter().flatten() {
                for scheme in name.as_object().into_iter().flatten().map(|(k, _)| k) {
                    ensure!(
                        doc["components"]["securitySchemes"][scheme].is_object(),
                        "{method} {path}: unknown security scheme {scheme}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_document_says() -> Result<()> {
    use Method as M;
    // A sample of the history every second, so that it has points to check.
    let mut fleet = TestFleet::start_with("openapi-routes", |c| c.metrics.history_secs = 1).await?;
    let executor = unique_name("oa").replace('.', "-");
    let executor = executor[..executor.len().min(60)].to_owned();
    fleet
        .add_executor(ExecutorSpec::new(&executor, &["oa"], 2))
        .await?;
    fleet.wait_executors(&[&executor]).await?;
    let mut c = Checked {
        fleet,
        contract: Contract::new(committed()?),
    };

    // The service's own routes.
    c.expect(200, M::GET, "/healthz", "/healthz", None).await?;
    c.expect(200, M::GET, "/readyz", "/readyz", None).await?;
    c.expect(200, M::GET, "/metrics", "/metrics", None).await?;
    c.expect(200, M::GET, "/openapi.json", "/openapi.json", None)
        .await?;
    c.expect(200, M::GET, "/docs", "/docs", None).await?;

    // Submitting: one that finishes (one task fails), one that waits for a group nobody
    // serves.
    let done = json!({"name": "openapi-done", "tasks": [
        {"name": "hello", "argv": ["sh", "-c", "echo hello; echo oops >&2"], "group": "oa",
         "env": {"GREETING": "hi"}, "labels": {}, "timeout_secs": 60, "priority": 5},
        {"name": "fails", "argv": ["sh", "-c", "exit 3"], "group": "oa", "max_attempts": 1,
         "depends_on": ["hello"]},
    ]});
    let key = unique_name("key");
    let (status, made) = c
        .call_with(M::POST, "/v1/jobs", "/v1/jobs", Some(done.clone()), |r| {
            r.header("Idempotency-Key", &key)
        })
        .await?;
    ensure!(status == 201, "submit: {status} {made}");
    let done_id = made["job_id"].as_str().context("job_id")?.to_owned();
    let (status, again) = c
        .call_with(M::POST, "/v1/jobs", "/v1/jobs", Some(done), |r| {
            r.header("Idempotency-Key", &key)
        })
        .await?;
    ensure!(
        status == 200 && again["created"] == false,
        "{status} {again}"
    );
    c.expect(
        400,
        M::POST,
        "/v1/jobs",
        "/v1/jobs",
        Some(json!({"tasks": []})),
    )
    .await?;
    let waiting = c
        .expect(
            200,
            M::POST,
            "/v1/jobs/batch",
            "/v1/jobs/batch",
            Some(json!({"jobs": [{"job": {"name": "openapi-waits", "tasks": [
                {"argv": ["true"], "group": "oa-nobody"}]}, "idempotency_key": unique_name("b")}]})),
        )
        .await?;
    let wait_id = waiting["jobs"][0]["job_id"]
        .as_str()
        .context("job_id")?
        .to_owned();

    // Reading.
    let finished = c.fleet.wait_job(done_id.parse()?, DEADLINE).await?;
    ensure!(finished.state == "failed", "{finished:?}");
    c.expect(
        200,
        M::GET,
        "/v1/jobs",
        "/v1/jobs?state=failed,succeeded&group=oa&limit=10&mine=true",
        None,
    )
    .await?;
    c.expect(400, M::GET, "/v1/jobs", "/v1/jobs?colour=red", None)
        .await?;
    let job = c
        .expect(
            200,
            M::GET,
            "/v1/jobs/{id}",
            &format!("/v1/jobs/{done_id}"),
            None,
        )
        .await?;
    c.expect(
        404,
        M::GET,
        "/v1/jobs/{id}",
        "/v1/jobs/0190c5a4-7b1e-7000-8000-000000000001",
        None,
    )
    .await?;
    c.expect(
        200,
        M::GET,
        "/v1/jobs/{id}/results",
        &format!("/v1/jobs/{done_id}/results"),
        None,
    )
    .await?;
    let logs = "/v1/jobs/{id}/tasks/{task}/logs";
    c.expect(
        200,
        M::GET,
        logs,
        &format!("/v1/jobs/{done_id}/tasks/hello/logs?stream=both&limit=100"),
        None,
    )
    .await?;
    let event = c
        .first_event(
            logs,
            &format!("/v1/jobs/{done_id}/tasks/hello/logs?follow=true"),
            "Chunk",
        )
        .await?;
    ensure!(event == "chunk", "first log event: {event}");
    c.expect(
        200,
        M::GET,
        "/v1/events",
        &format!("/v1/events?job={done_id}&kind=job.*,task.*&limit=50"),
        None,
    )
    .await?;
    let event = c
        .first_event(
            "/v1/events",
            &format!("/v1/events?job={done_id}&follow=true"),
            "Event",
        )
        .await?;
    ensure!(event == "job.accepted", "first event: {event}");
    c.expect(
        410,
        M::GET,
        "/v1/events",
        "/v1/events?after=999999999999",
        None,
    )
    .await?;

    // Changing: the job that waits is held, reprioritised, cancelled, run again and
    // cancelled again, then deleted; the finished one has its failed task run again.
    let job_path = format!("/v1/jobs/{wait_id}");
    c.expect(
        200,
        M::PATCH,
        "/v1/jobs/{id}",
        &job_path,
        Some(json!({"held": true, "priority": 7})),
    )
    .await?;
    c.expect(
        202,
        M::POST,
        "/v1/jobs/{id}/cancel",
        &format!("{job_path}/cancel"),
        None,
    )
    .await?;
    c.expect(
        202,
        M::POST,
        "/v1/jobs/{id}/retry",
        &format!("{job_path}/retry"),
        None,
    )
    .await?;
    c.expect(
        202,
        M::POST,
        "/v1/jobs/{id}/tasks/{task}/cancel",
        &format!("{job_path}/tasks/0/cancel"),
        None,
    )
    .await?;
    c.fleet.wait_job(wait_id.parse()?, DEADLINE).await?;
    c.expect(204, M::DELETE, "/v1/jobs/{id}", &job_path, None)
        .await?;
    c.expect(
        202,
        M::POST,
        "/v1/jobs/{id}/tasks/{task}/retry",
        &format!("/v1/jobs/{done_id}/tasks/fails/retry"),
        None,
    )
    .await?;
    let finished = c.fleet.wait_job(done_id.parse()?, DEADLINE).await?;
    ensure!(finished.state == "failed", "{finished:?}");

    // The scheduler and the figures.
    c.expect(200, M::GET, "/v1/scheduler", "/v1/scheduler", None)
        .await?;
    c.expect(
        200,
        M::POST,
        "/v1/scheduler/pause",
        "/v1/scheduler/pause",
        Some(json!({"group": "oa-paused"})),
    )
    .await?;
    c.expect(
        200,
        M::POST,
        "/v1/scheduler/resume",
        "/v1/scheduler/resume",
        Some(json!({"group": "oa-paused"})),
    )
    .await?;
    c.expect(200, M::GET, "/v1/stats", "/v1/stats", None)
        .await?;
    let started = std::time::Instant::now();
    loop {
        let history = c
            .expect(
                200,
                M::GET,
                "/v1/stats/history",
                "/v1/stats/history?minutes=5",
                None,
            )
            .await?;
        let points = &history["groups"][0]["points"];
        if points.as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no sample to check: {history}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Executors and their control.
    c.expect(200, M::GET, "/v1/executors", "/v1/executors", None)
        .await?;
    let exec_path = format!("/v1/executors/{executor}");
    c.expect(200, M::GET, "/v1/executors/{id}", &exec_path, None)
        .await?;
    // Alive: it cannot be forgotten.
    c.expect(409, M::DELETE, "/v1/executors/{id}", &exec_path, None)
        .await?;
    c.expect(
        202,
        M::POST,
        "/v1/executors/{id}/drain",
        &format!("{exec_path}/drain"),
        None,
    )
    .await?;
    c.expect(
        202,
        M::POST,
        "/v1/executors/{id}/resume",
        &format!("{exec_path}/resume"),
        None,
    )
    .await?;
    let task_id = job["tasks"][0]["task_id"].clone();
    c.expect(
        202,
        M::POST,
        "/v1/executors/{id}/cancel",
        &format!("{exec_path}/cancel"),
        Some(json!({"task_id": task_id, "attempt": 1})),
    )
    .await?;
    let join = c
        .expect(
            201,
            M::POST,
            "/v1/join-tokens",
            "/v1/join-tokens",
            Some(json!({"groups": ["oa-reg"], "ttl_secs": 600})),
        )
        .await?;
    let registered = format!("{executor}-r");
    let registered = &registered[registered.len().saturating_sub(64)..];
    c.expect(
        201,
        M::POST,
        "/v1/executors/register",
        "/v1/executors/register",
        Some(json!({"join_token": join["token"], "executor_id": registered, "groups": ["oa-reg"]})),
    )
    .await?;
    c.expect(
        200,
        M::POST,
        "/v1/executors/{id}/revoke",
        &format!("/v1/executors/{registered}/revoke"),
        None,
    )
    .await?;

    // Groups.
    c.expect(
        201,
        M::POST,
        "/v1/groups",
        "/v1/groups",
        Some(json!({"name": "oa-made", "description": "made by the OpenAPI test"})),
    )
    .await?;
    c.expect(200, M::GET, "/v1/groups", "/v1/groups", None)
        .await?;
    let member = "/v1/groups/{name}/members/{executor}";
    let member_path = format!("/v1/groups/oa-made/members/{executor}");
    c.expect(204, M::PUT, member, &member_path, None).await?;
    c.expect(204, M::DELETE, member, &member_path, None).await?;
    c.expect(
        202,
        M::POST,
        "/v1/groups/{name}/drain",
        "/v1/groups/oa/drain",
        None,
    )
    .await?;
    c.expect(
        202,
        M::POST,
        "/v1/groups/{name}/resume",
        "/v1/groups/oa/resume",
        None,
    )
    .await?;
    c.expect(
        204,
        M::DELETE,
        "/v1/groups/{name}",
        "/v1/groups/oa-made",
        None,
    )
    .await?;

    // Tokens and webhooks.
    let token = c
        .expect(
            201,
            M::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"name": "openapi-reader", "role": "reader"})),
        )
        .await?;
    c.expect(200, M::GET, "/v1/tokens", "/v1/tokens", None)
        .await?;
    let hook = c
        .expect(
            201,
            M::POST,
            "/v1/webhooks",
            "/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["job.*"], "group": "oa"})),
        )
        .await?;
    c.expect(200, M::GET, "/v1/webhooks", "/v1/webhooks", None)
        .await?;
    c.expect(
        204,
        M::DELETE,
        "/v1/webhooks/{id}",
        &format!("/v1/webhooks/{}", hook["id"].as_str().context("id")?),
        None,
    )
    .await?;

    // The console's session, signed in with the reader token, as its page does.
    let secret = token["token"].as_str().context("token")?.to_owned();
    c.expect(
        200,
        M::POST,
        "/ui/session",
        "/ui/session",
        Some(json!({"token": secret})),
    )
    .await?;
    c.expect(200, M::GET, "/ui/session", "/ui/session", None)
        .await?;
    c.expect(204, M::DELETE, "/ui/session", "/ui/session", None)
        .await?;
    // A reader may not submit: 403, as documented.
    let reader = fleet_tests::client_with_token(Some(&secret))?;
    let spec = json!({"tasks": [{"argv": ["true"]}]});
    c.contract.request("post", "/v1/jobs", Some(&spec))?;
    let resp = reader
        .post(format!("{}/v1/jobs", c.fleet.api))
        .json(&spec)
        .send()
        .await?;
    let status = resp.status().as_u16();
    ensure!(status == 403, "a reader's submission: {status}");
    let text = resp.text().await?;
    c.contract
        .response("post", "/v1/jobs", status, "application/json", &text)?;
    c.expect(
        204,
        M::DELETE,
        "/v1/tokens/{id}",
        &format!("/v1/tokens/{}", token["token_id"].as_str().context("id")?),
        None,
    )
    .await?;

    let missing = c.contract.unexercised();
    ensure!(
        missing.is_empty(),
        "operations in docs/openapi.json that this test does not exercise: {}",
        missing.join(", ")
    );
    c.fleet.shutdown().await
}
