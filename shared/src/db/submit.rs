//! Statements the submitter owns: inserting jobs and their tasks, idempotently.

use super::{wake_channel, Client, DbError};
use crate::id::{JobId, TaskId};
use crate::job::ValidJob;
use crate::state::TaskState;

pub struct NewJob {
    pub id: JobId,
    pub idempotency_key: Option<String>,
    pub job: ValidJob,
    /// Who submitted it (see `auth::may` for what that allows).
    pub owner: crate::auth::Principal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub job_id: JobId,
    /// False when the idempotency key named an existing job.
    pub created: bool,
}

/// Inserts a batch of jobs, their tasks and the dispatcher's wake-up in one statement
/// (one transaction, one commit), whatever the number of jobs and tasks; a second read
/// only when some key was seen before. Idempotency keys are per owner (the submitting
/// API token; those without one share a scope of their own): a job whose key its owner
/// used already (or that repeats within the batch for the same owner) is not inserted
/// again, and its ticket names that owner's job. Another owner's job with the same key is
/// never named: keys are not shared, nor guessable across tokens.
///
/// Safe to call again with the same jobs (same ids) after an error whose outcome is
/// unknown (the insert committed, then the connection dropped before the read): a job
/// already stored under its own id is not inserted twice, and its ticket says created.
///
/// Secret env values are sealed with `sealer` (`secrets.key`); a job that has some when
/// there is no key is refused (the API refuses it before, naming the field).
pub async fn insert_jobs(
    client: &Client,
    schema: &str,
    jobs: &[NewJob],
    sealer: Option<&crate::secrets::SecretBox>,
) -> Result<Vec<Ticket>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let job_ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.id.uuid()).collect();
    let names: Vec<Option<&str>> = jobs.iter().map(|j| j.job.name.as_deref()).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
    let owner_ids: Vec<Option<uuid::Uuid>> = jobs
        .iter()
        .map(|j| j.owner.token_id.map(|t| t.uuid()))
        .collect();
    let owner_names: Vec<&str> = jobs.iter().map(|j| j.owner.name.as_str()).collect();
    let counts: Vec<i32> = jobs
        .iter()
        .map(|j| i32::try_from(j.job.tasks.len()).unwrap_or(i32::MAX))
        .collect();
    // The jobs' own webhooks (`notify`), registered with them.
    let hooked: Vec<&NewJob> = jobs.iter().filter(|j| j.job.notify.is_some()).collect();
    let hook_jobs: Vec<uuid::Uuid> = hooked.iter().map(|j| j.id.uuid()).collect();
    let hook = |f: fn(&crate::job::ValidNotify) -> String| -> Vec<String> {
        hooked
            .iter()
            .filter_map(|j| j.job.notify.as_ref().map(f))
            .collect()
    };
    let hook_urls = hook(|n| n.url.clone());
    let hook_secrets = hook(|n| n.secret.clone());
    let hook_kinds = hook(|n| {
        n.kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let hook_by: Vec<&str> = hooked.iter().map(|j| j.owner.name.as_str()).collect();
    let mut t = TaskColumns::default();
    for j in jobs {
        for (idx, task) in j.job.tasks.iter().enumerate() {
            t.push(j.id, idx, task, sealer)?;
        }
    }
    let stmt = client
        .prepare_cached(
            "WITH j AS (
                 INSERT INTO jobs (id, name, idempotency_key, task_count, owner_token, owner_name)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[],
                                      $24::uuid[], $25::text[])
                 ON CONFLICT DO NOTHING
                 RETURNING id),
             t AS (
                 INSERT INTO tasks (id, job_id, idx, name, argv, env, cwd, stdin, timeout_secs,
                                    priority, target_group, labels, depends_on, max_attempts,
                                    each, quorum, state, retry, env_secret,
                                    env_secret_names)
                 SELECT x.* FROM unnest($5::uuid[], $6::uuid[], $7::int[], $8::text[],
                                        $9::jsonb[], $10::jsonb[], $11::text[], $12::text[],
                                        $13::bigint[], $14::int[], $15::text[], $16::jsonb[],
                                        $17::jsonb[], $18::int[], $19::bool[], $20::int[],
                                        $21::text[], $26::jsonb[], $32::bytea[],
                                        $33::jsonb[])
                     AS x(id, job_id, idx, name, argv, env, cwd, stdin, timeout_secs, priority,
                          target_group, labels, depends_on, max_attempts, each, quorum, state,
                          retry, env_secret, env_secret_names)
                 WHERE x.job_id IN (SELECT id FROM j)),
             accepted AS (
                 INSERT INTO events (kind, job_id) SELECT 'job.accepted', id FROM j ORDER BY id),
             hooks AS (
                 INSERT INTO webhooks (id, url, secret, kinds, job_id, created_by)
                 SELECT gen_random_uuid(), h.url, h.secret, string_to_array(h.kinds, ','),
                        h.job_id, h.created_by
                 FROM unnest($27::uuid[], $28::text[], $29::text[], $30::text[], $31::text[])
                      AS h(job_id, url, secret, kinds, created_by)
                 WHERE h.job_id IN (SELECT id FROM j)),
             woken AS (SELECT pg_notify($22, $23) WHERE EXISTS (SELECT 1 FROM j))
             SELECT id FROM j
             UNION ALL SELECT NULL FROM woken",
        )
        .await?;
    let channel = wake_channel(schema);
    let payload = if t.each.iter().any(|e| *e) {
        super::WAKE_EACH
    } else {
        ""
    };
    let created: std::collections::HashSet<uuid::Uuid> = client
        .query(
            &stmt,
            &[
                &job_ids,
                &names,
                &keys,
                &counts,
                &t.id,
                &t.job_id,
                &t.idx,
                &t.name,
                &t.argv,
                &t.env,
                &t.cwd,
                &t.stdin,
                &t.timeout_secs,
                &t.priority,
                &t.group,
                &t.labels,
                &t.depends_on,
                &t.max_attempts,
                &t.each,
                &t.quorum,
                &t.state,
                &channel,
                &payload,
                &owner_ids,
                &owner_names,
                &t.retry,
                &hook_jobs,
                &hook_urls,
                &hook_secrets,
                &hook_kinds,
                &hook_by,
                &t.env_secret,
                &t.env_secret_names,
            ],
        )
        .await?
        .iter()
        .filter_map(|r| r.get::<_, Option<uuid::Uuid>>(0))
        .collect();

    // Not inserted: a key its owner used before, or (a call made again) the job itself,
    // stored by an earlier call whose answer was lost.
    let missing: Vec<&NewJob> = jobs
        .iter()
        .filter(|j| !created.contains(&j.id.uuid()))
        .collect();
    let existing: Vec<(Option<String>, uuid::Uuid, uuid::Uuid)> = if missing.is_empty() {
        Vec::new()
    } else {
        let keyed: Vec<&NewJob> = missing
            .iter()
            .copied()
            .filter(|j| j.idempotency_key.is_some())
            .collect();
        let keys: Vec<&str> = keyed
            .iter()
            .filter_map(|j| j.idempotency_key.as_deref())
            .collect();
        let scopes: Vec<uuid::Uuid> = keyed.iter().map(|j| key_scope(&j.owner)).collect();
        let ids: Vec<uuid::Uuid> = missing.iter().map(|j| j.id.uuid()).collect();
        // Each (owner scope, key) pair probes the unique index of migration 0019 (the
        // same expression); LATERAL with LIMIT keeps that a probe per pair whatever the
        // statistics (joined plainly, the generic plan of a table analysed while empty
        // reads the whole index). The jobs themselves are found by id.
        let stmt = client
            .prepare_cached(
                "SELECT j.idempotency_key, j.owner_token, j.id
                 FROM unnest($1::text[], $2::uuid[]) AS m(key, scope),
                 LATERAL (SELECT idempotency_key, owner_token, id FROM jobs
                          WHERE COALESCE(owner_token,
                                         '00000000-0000-0000-0000-000000000000'::uuid)
                                  = m.scope
                            AND idempotency_key = m.key
                          LIMIT 1) j
                 UNION ALL
                 SELECT idempotency_key, owner_token, id FROM jobs WHERE id = ANY($3)",
            )
            .await?;
        client
            .query(&stmt, &[&keys, &scopes, &ids])
            .await?
            .iter()
            .map(|r| {
                let owner: Option<uuid::Uuid> = r.get(1);
                (r.get(0), owner.unwrap_or(uuid::Uuid::nil()), r.get(2))
            })
            .collect()
    };
    jobs.iter()
        .map(|j| {
            let stored = || existing.iter().any(|(_, _, id)| *id == j.id.uuid());
            if created.contains(&j.id.uuid()) || stored() {
                return Ok(Ticket {
                    job_id: j.id,
                    created: true,
                });
            }
            let (key, scope) = (j.idempotency_key.as_deref(), key_scope(&j.owner));
            existing
                .iter()
                .find(|(k, s, _)| key.is_some() && k.as_deref() == key && *s == scope)
                .map(|(_, _, id)| Ticket {
                    job_id: JobId::from_uuid(*id),
                    created: false,
                })
                .ok_or_else(|| DbError::Row(format!("job {} neither inserted nor found", j.id)))
        })
        .collect()
}

/// Whose idempotency keys a submission's key is among: its API token's id, or, for
/// submissions without one (the bootstrap admin, the AMQP intake with broker auth, auth
/// disabled), the nil UUID, as migration 0019's unique index counts them.
fn key_scope(owner: &crate::auth::Principal) -> uuid::Uuid {
    owner.token_id.map_or(uuid::Uuid::nil(), |t| t.uuid())
}

/// The tasks of a batch, column by column, as `unnest` takes them.
#[derive(Default)]
struct TaskColumns {
    id: Vec<uuid::Uuid>,
    job_id: Vec<uuid::Uuid>,
    idx: Vec<i32>,
    name: Vec<String>,
    argv: Vec<serde_json::Value>,
    env: Vec<serde_json::Value>,
    cwd: Vec<Option<String>>,
    stdin: Vec<Option<String>>,
    timeout_secs: Vec<i64>,
    priority: Vec<i32>,
    group: Vec<String>,
    labels: Vec<serde_json::Value>,
    depends_on: Vec<serde_json::Value>,
    max_attempts: Vec<i32>,
    each: Vec<bool>,
    quorum: Vec<Option<i32>>,
    state: Vec<&'static str>,
    retry: Vec<Option<serde_json::Value>>,
    env_secret: Vec<Option<Vec<u8>>>,
    env_secret_names: Vec<Option<serde_json::Value>>,
}

impl TaskColumns {
    fn push(
        &mut self,
        job: JobId,
        idx: usize,
        t: &crate::job::ValidTask,
        sealer: Option<&crate::secrets::SecretBox>,
    ) -> Result<(), DbError> {
        let json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| DbError::Row(format!("encoding a task: {e}")))
        };
        let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let id = TaskId::new().uuid();
        self.env_secret_names.push(if t.env_secret.is_empty() {
            None
        } else {
            Some(json(serde_json::to_value(
                t.env_secret.keys().collect::<Vec<_>>(),
            ))?)
        });
        self.env_secret
            .push(match (t.env_secret.is_empty(), sealer) {
                (true, _) => None,
                (false, Some(b)) => Some(b.seal(id, &t.env_secret)),
                (false, None) => {
                    return Err(DbError::Row(
                        "a secret env value, and no secrets.key to seal it with".into(),
                    ))
                }
            });
        self.id.push(id);
        self.job_id.push(job.uuid());
        self.idx.push(int(idx));
        self.name.push(t.name.clone());
        self.argv.push(json(serde_json::to_value(&t.argv))?);
        self.env.push(json(serde_json::to_value(&t.env))?);
        self.cwd.push(t.cwd.clone());
        self.stdin.push(t.stdin.clone());
        self.timeout_secs
            .push(i64::try_from(t.timeout.as_secs()).unwrap_or(i64::MAX));
        self.priority.push(t.priority);
        self.group.push(t.group.to_string());
        self.labels.push(json(serde_json::to_value(&t.labels))?);
        self.depends_on
            .push(json(serde_json::to_value(&t.depends_on))?);
        self.max_attempts
            .push(i32::try_from(t.max_attempts).unwrap_or(i32::MAX));
        self.each.push(t.each);
        self.quorum
            .push(t.quorum.map(|q| i32::try_from(q).unwrap_or(i32::MAX)));
        self.state.push(if t.depends_on.is_empty() {
            TaskState::Ready.as_str()
        } else {
            TaskState::Waiting.as_str()
        });
        self.retry.push(
            t.retry
                .as_ref()
                .map(|r| json(serde_json::to_value(r)))
                .transpose()?,
        );
        Ok(())
    }
}
