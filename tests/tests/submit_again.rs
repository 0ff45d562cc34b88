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
