//! Group commit for HTTP submissions. Each request queues its jobs, then asks the pool
//! for a connection; whichever request gets one first writes everything queued by then
//! (its own jobs and those of requests still waiting) in one statement, one commit, and
//! hands each its tickets. A request alone writes at once; under load, requests that
//! arrive while others write share a commit. Waiting for a connection stays bounded
//! (`database.pool_wait_ms`): a pool that is exhausted still answers 503 at once, and a
//! request answered 503 had its jobs taken by nobody. A write that fails as a group is
//! done again request by request; `insert_jobs` is safe to repeat (nothing is stored
//! twice when the first write committed and only its answer was lost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_shared::db::submit::{self, NewJob, Ticket};
use fleet_shared::db::{Client, DbError, Pool};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Jobs written together at most; more wait for the next writer.
const MAX_JOBS: usize = 2_000;
/// Groups written at once. Two keep a 2-core database busy while the next group
/// gathers; more only split the queue into smaller groups (more commits, more
/// statements, more wake-ups of the dispatcher for the same jobs).
const WRITERS: usize = 2;

struct Pending {
    id: u64,
    jobs: Vec<NewJob>,
    reply: oneshot::Sender<Result<Vec<Ticket>, DbError>>,
}

#[derive(Clone)]
pub struct Inserter {
    pool: Pool,
    schema: String,
    /// Seals secret env values (`secrets.key`).
    sealer: Option<fleet_shared::secrets::SecretBox>,
    queue: Arc<Mutex<Vec<Pending>>>,
    next_id: Arc<AtomicU64>,
    writers: Arc<Semaphore>,
    wait: Duration,
}

impl Inserter {
    /// `wait`: how long a request may wait for a writer and its connection.
    pub fn new(
        pool: Pool,
        schema: String,
        sealer: Option<fleet_shared::secrets::SecretBox>,
        wait: Duration,
    ) -> Self {
        Self {
            pool,
            schema,
            sealer,
            queue: Arc::default(),
            next_id: Arc::default(),
            writers: Arc::new(Semaphore::new(WRITERS)),
            wait,
        }
    }

    /// A writer's turn and a connection, within the wait.
    async fn writer(&self) -> Result<(OwnedSemaphorePermit, Client), DbError> {
        // A timeout is the pool's kind of refusal (and the semaphore is never closed).
        tokio::time::timeout(self.wait, async {
            let permit = self
                .writers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| DbError::no_connection_in_time())?;
            Ok((permit, self.pool.get().await?))
        })
        .await
        .unwrap_or_else(|_| Err(DbError::no_connection_in_time()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        // A panic while holding the queue leaves a queue, still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes these jobs (with whatever else is queued); their tickets, in order.
    pub async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Ticket>, DbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        self.lock().push(Pending { id, jobs, reply });
        let client = tokio::select! {
            // Another request's writer took ours and answered.
            a = &mut answer => return a.unwrap_or_else(|_| Err(stopped())),
            c = self.writer() => c,
        };
        let (permit, client) = match client {
            Ok(c) => c,
            Err(e) => {
                // No connection in time: unless a writer took our jobs meanwhile (then
                // its answer is ours), they were not written, and the caller is told.
                let removed = {
                    let mut queue = self.lock();
                    let at = queue.iter().position(|p| p.id == id);
                    at.map(|i| queue.remove(i)).is_some()
                };
                if removed {
                    return Err(e);
                }
                return answer.await.unwrap_or_else(|_| Err(stopped()));
            }
        };
        // The writing goes on in a task of its own: this request may be dropped (its
        // client went away) while it writes others' jobs too, and they must still get
        // their answers. It writes groups from the head of the queue until our own jobs
        // are no longer queued (requests ahead of us may fill a group on their own).
        let this = self.clone();
        let writer = tokio::spawn(async move {
            loop {
                let group = this.next_group();
                if group.is_empty() {
                    break;
                }
                write(&client, &this.schema, this.sealer.as_ref(), group).await;
                if !this.lock().iter().any(|p| p.id == id) {
                    break;
                }
            }
            drop(permit);
        });
        let _ = writer.await;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Takes the head of the queue: up to MAX_JOBS jobs, at least one request.
    fn next_group(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        let mut n = 0;
        let take = queue
            .iter()
            .take_while(|p| {
                n += p.jobs.len();
                n <= MAX_JOBS
            })
            .count()
            .max(1)
            .min(queue.len());
        queue.drain(..take).collect()
    }
}

fn stopped() -> DbError {
    DbError::Row("the submission was dropped before it was written".into())
}

/// Writes a group in one statement; if that fails, each request alone, so that each gets
/// its own answer and one bad request cannot fail the others.
async fn write(
    client: &Client,
    schema: &str,
    sealer: Option<&fleet_shared::secrets::SecretBox>,
    group: Vec<Pending>,
) {
    if group.len() == 1 {
        for p in group {
            let _ = p
                .reply
                .send(submit::insert_jobs(client, schema, &p.jobs, sealer).await);
        }
        return;
    }
    let mut all: Vec<NewJob> = Vec::new();
    let mut sizes = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for p in group {
        sizes.push(p.jobs.len());
        all.extend(p.jobs);
        replies.push(p.reply);
    }
    match submit::insert_jobs(client, schema, &all, sealer).await {
        Ok(tickets) => {
            let mut rest = tickets.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "a group of submissions failed; writing them one by one");
            let mut all = all.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let jobs: Vec<NewJob> = all.by_ref().take(n).collect();
                let _ = reply.send(submit::insert_jobs(client, schema, &jobs, sealer).await);
            }
        }
    }
}
