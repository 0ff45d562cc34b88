//! Writing a batch of jobs again after an error whose outcome was unknown (the insert
//! committed, the answer was lost) stores nothing twice and answers as if written once:
//! what the group-commit inserter and the AMQP intake do when they retry.

use anyhow::Result;
use fleet_shared::db::{self, submit};
use fleet_shared::id::JobId;
use fleet_shared::job::JobSpec;
use fleet_tests::{test_config, unique_name};
use serde_json::json;

fn new_job(key: Option<&str>) -> Result<submit::NewJob> {
    let spec: JobSpec = serde_json::from_value(json!({"tasks": [{"argv": ["true"]}]}))?;
    Ok(submit::NewJob {
        id: JobId::new(),
        idempotency_key: key.map(str::to_owned),
        job: spec.validate().map_err(|e| anyhow::anyhow!("{e:?}"))?,
        owner: fleet_shared::auth::Principal::bootstrap_admin(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_again_is_stored_once_and_answered_as_created() -> Result<()> {
    fleet_tests::init_logging();
    let name = unique_name("again");
    let cfg = test_config(&name);
    let pool = db::pool(&cfg.database)?;
    db::migrate(&pool, &cfg.database.schema).await?;
    let client = pool.get().await?;
    let schema = &cfg.database.schema;
    // Keyless jobs, a keyed one, and a key repeated within the batch.
    let jobs = vec![
        new_job(None)?,
        new_job(None)?,
        new_job(Some("k-1"))?,
        new_job(Some("k-2"))?,
        new_job(Some("k-2"))?,
    ];
    let first = submit::insert_jobs(&client, schema, &jobs, None).await?;
    let again = submit::insert_jobs(&client, schema, &jobs, None).await?;
    assert_eq!(first, again, "the same answer the second time");
    for (i, t) in first.iter().take(4).enumerate() {
        assert!(t.created, "job {i} created");
        assert_eq!(t.job_id, jobs[i].id);
    }
    assert!(
        !first[4].created,
        "a key repeated within the batch names the first job"
    );
    assert_eq!(first[4].job_id, jobs[3].id);
    let stored: i64 = client
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .get(0);
    let tasks: i64 = client
        .query_one("SELECT count(*) FROM tasks", &[])
        .await?
        .get(0);
    assert_eq!((stored, tasks), (4, 4), "nothing stored twice");
    client
        .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
        .await?;
    Ok(())
}

/// A submitter token, as `Principal` carries it.
fn token_owner(name: &str) -> fleet_shared::auth::Principal {
    fleet_shared::auth::Principal {
        token_id: Some(fleet_shared::id::TokenId::new()),
        name: name.to_owned(),
        role: fleet_shared::auth::Role::Submitter,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_per_owner_within_a_batch_and_across_batches() -> Result<()> {
    fleet_tests::init_logging();
    let name = unique_name("keyowner");
    let cfg = test_config(&name);
    let pool = db::pool(&cfg.database)?;
    db::migrate(&pool, &cfg.database.schema).await?;
    let client = pool.get().await?;
    let schema = &cfg.database.schema;
    let (a, b) = (token_owner("a"), token_owner("b"));
    let owned = |who: &fleet_shared::auth::Principal| -> Result<submit::NewJob> {
        Ok(submit::NewJob {
            owner: who.clone(),
            ..new_job(Some("k"))?
        })
    };
    // One key: A twice, B once, no token (the bootstrap admin) once.
    let jobs = vec![owned(&a)?, owned(&b)?, owned(&a)?, new_job(Some("k"))?];
    let t = submit::insert_jobs(&client, schema, &jobs, None).await?;
    let created: Vec<bool> = t.iter().map(|t| t.created).collect();
    assert_eq!(created, [true, true, false, true]);
    assert_eq!(t[2].job_id, jobs[0].id, "A's repeat names A's job");
    assert_eq!(
        (t[1].job_id, t[3].job_id),
        (jobs[1].id, jobs[3].id),
        "B's and the admin's are their own"
    );
    // Later batches, in another order: each owner's key names its own job.
    let later = vec![new_job(Some("k"))?, owned(&b)?, owned(&a)?];
    let t = submit::insert_jobs(&client, schema, &later, None).await?;
    assert!(t.iter().all(|t| !t.created), "{t:?}");
    let named: Vec<JobId> = t.iter().map(|t| t.job_id).collect();
    assert_eq!(named, [jobs[3].id, jobs[1].id, jobs[0].id]);
    // A new owner with the key: a new job.
    let c = vec![owned(&token_owner("c"))?];
    let t = submit::insert_jobs(&client, schema, &c, None).await?;
    assert_eq!((t[0].job_id, t[0].created), (c[0].id, true));
    let stored: i64 = client
        .query_one("SELECT count(*) FROM jobs WHERE idempotency_key = 'k'", &[])
        .await?
        .get(0);
    assert_eq!(stored, 4, "A's, B's, the admin's, C's");
    client
        .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
        .await?;
    Ok(())
}
