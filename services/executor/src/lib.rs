//! The executor: stateless. It consumes requests from its own queue (one per message, or
//! several in a `requests`), runs each as a child process within its slots, publishes the
//! result (confirmed) and only then lets go of the request (a message is acked once every
//! attempt it carried has let go of it); it reports INFO every interval, and at once when
//! an attempt ends or is given back (that frees a slot) or it starts or stops draining. A
//! request redelivered after a reconnect is recognised by (task, attempt) and not run
//! twice.

pub mod logs;
pub mod register;
pub mod run;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use fleet_shared::amqp::{self, keys, Delivery, Names, Outgoing, Publisher};
use fleet_shared::config::{Config, ConfigError};
use fleet_shared::group::GroupName;
use fleet_shared::http::{self, Health};
use fleet_shared::id::{ExecutorId, TaskId};
use fleet_shared::proto::{
    self, AttemptRef, ControlAction, ForExecutor, HeldAttempt, Info, Request, Results, TaskResult,
};
use fleet_shared::svc;
use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::Connection;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub const DEFAULT_ADDR: &str = "127.0.0.1:0";
/// Finished attempts remembered to recognise redeliveries.
const REMEMBERED: usize = 10_000;
/// Cancels remembered for requests not received yet.
const CANCELLED_EARLY: usize = 512;
/// The most results one `results` message carries...
const RESULTS_PER_MESSAGE: usize = 64;
/// ... and the most output (stdout and stderr) it takes more of: a result that alone
/// exceeds this goes alone.
const OUTPUT_PER_MESSAGE: usize = 1024 * 1024;

/// A result waiting to be published, with the request it answers (let go of once the
/// result is confirmed) and who waits for that.
struct Outbound {
    result: TaskResult,
    hold: Hold,
    confirmed: oneshot::Sender<bool>,
}

/// An attempt's share of the delivery that brought it (a `request`, or one of the
/// attempts of a `requests`): the delivery is acked when the last attempt it carried
/// lets go of it (its result confirmed, given back, or recognised as a redelivery).
/// Until then the broker keeps it, and would hand all of it back to a restarted executor.
#[derive(Clone)]
struct Hold(Arc<Carried>);

struct Carried {
    delivery: Delivery,
    left: AtomicUsize,
}

impl Hold {
    /// Shares for each of `n` attempts.
    fn split(delivery: Delivery, n: usize) -> Self {
        Self(Arc::new(Carried {
            delivery,
            left: AtomicUsize::new(n),
        }))
    }

    /// This attempt is done with its delivery; the last one acks it.
    async fn release(&self) -> Result<(), amqp::AmqpError> {
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            ack_one(&self.0.delivery).await
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Register(#[from] register::RegisterError),
}

/// Who this executor is, resolved from configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: ExecutorId,
    pub groups: Vec<GroupName>,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
}

impl Identity {
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let id = match &cfg.executor.id {
            Some(id) => ExecutorId::parse(id),
            None => ExecutorId::parse(&host_name()),
        }
        .map_err(|e| ConfigError::Invalid {
            key: "executor.id",
            message: e.to_string(),
        })?;
        let capacity = cfg.executor.capacity.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        });
        Ok(Self {
            id,
            groups: cfg.executor_groups()?,
            labels: cfg.executor_labels()?,
            capacity,
        })
    }
}

/// The host name, made into a valid executor id.
fn host_name() -> String {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "executor".into());
    let mut id: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        id = "executor".into();
    }
    id
}

type AttemptKey = (TaskId, i32);

/// The last `REMEMBERED` keys put in, the oldest forgotten first.
#[derive(Default)]
struct Recent {
    set: HashSet<AttemptKey>,
    order: VecDeque<AttemptKey>,
}

impl Recent {
    fn insert(&mut self, key: AttemptKey) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &AttemptKey) -> bool {
        self.set.contains(key)
    }
}

/// Where a held attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Received, waiting for a slot.
    Waiting,
    Running,
    /// Its command ended; its result is being published. It holds no slot.
    Exited,
}

/// The attempts held, as INFO reports them.
struct Held {
    running: u32,
    queued: u32,
    in_flight: Vec<HeldAttempt>,
}

#[derive(Default)]
struct Attempts {
    /// Received and not finished (its result not confirmed yet).
    held: HashMap<AttemptKey, Phase>,
    done: Recent,
    /// Given back: not to run when the message that brought them comes again (it stays
    /// unacked while other attempts it carried run, and a reconnect redelivers it), but
    /// to run when the dispatcher gives the same attempt again, in a new message.
    given_back: Recent,
}

impl Attempts {
    /// Whether an attempt that arrived is to run here (and is held from now on): not when
    /// it is held or done already, nor when it comes again (`redelivered`) after it was
    /// given back.
    fn admit(&mut self, key: AttemptKey, redelivered: bool) -> bool {
        if self.held.contains_key(&key)
            || self.done.contains(&key)
            || (redelivered && self.given_back.contains(&key))
        {
            return false;
        }
        self.held.insert(key, Phase::Waiting);
        true
    }

    /// What INFO says of the attempts held: running counts those whose command runs,
    /// queued those waiting for a slot; an exited one is neither (it holds no slot).
    fn held_now(&self) -> Held {
        let count = |phase| {
            let n = self.held.values().filter(|p| **p == phase).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        Held {
            running: count(Phase::Running),
            queued: count(Phase::Waiting),
            in_flight: self
                .held
                .iter()
                .map(|(&(task_id, attempt), &phase)| HeldAttempt {
                    task_id,
                    attempt,
                    running: phase != Phase::Waiting,
                    exited: phase == Phase::Exited,
                })
                .collect(),
        }
    }

    fn give_back(&mut self, key: AttemptKey) {
        self.held.remove(&key);
        self.given_back.insert(key);
    }

    fn finish(&mut self, key: AttemptKey) {
        self.held.remove(&key);
        self.done.insert(key);
    }
}

struct Shared {
    me: Identity,
    names: Names,
    cfg: Config,
    attempts: Mutex<Attempts>,
    /// Connected as its own broker user: it may not declare anything.
    registered: bool,
    /// Shutting down: take nothing new.
    draining: AtomicBool,
    /// Drained by an operator (`control` drain): start nothing new until resumed.
    drained: watch::Sender<bool>,
    /// A token per attempt held, cancelled by a `control` cancel.
    cancels: Mutex<HashMap<AttemptKey, CancellationToken>>,
    /// A token per attempt not started yet, cancelled when the dispatcher asks for it
    /// back (`control` give_back).
    givebacks: Mutex<HashMap<AttemptKey, CancellationToken>>,
    /// The span of each attempt held (its job, task and attempt), for lines about it
    /// written outside its own task (a cancel, a give-back).
    spans: Mutex<HashMap<AttemptKey, tracing::Span>>,
    /// Cancels that came before their request (control messages and requests come from
    /// different publishers, so either may arrive first); the last few hundred.
    cancelled_early: Mutex<VecDeque<AttemptKey>>,
    /// Attempts given back without a result on shutdown (acked, never to run here),
    /// reported in INFO until an INFO that carries them is confirmed.
    returned: Mutex<Vec<HeldAttempt>>,
    /// Attempts whose result was confirmed, reported in INFO until an INFO that carries
    /// them is confirmed.
    finished: Mutex<Vec<AttemptRef>>,
    /// Results waiting for the publisher (see `publish_results`).
    outbound: Mutex<Vec<Outbound>>,
    outbound_ready: Notify,
    changed: Notify,
    slots: Semaphore,
    /// The current session's publisher; `None` while reconnecting.
    publisher: watch::Sender<Option<Publisher>>,
    /// Stop starting new attempts (SIGTERM).
    stop_starting: CancellationToken,
    /// Live output of the attempts, to the log shipper.
    logs: tokio::sync::mpsc::Sender<logs::Piece>,
    /// Kill running attempts (the drain deadline passed).
    kill: CancellationToken,
    /// The latest dispatcher leadership epoch heard of (`control` leader, or requests).
    leader_epoch: AtomicI64,
}

impl Shared {
    /// Where what the executor reports goes (INFO, results, live output): its first
    /// group's exchange, from where it flows up to `default`.
    fn upward_exchange(&self) -> String {
        let group = self
            .me
            .groups
            .first()
            .cloned()
            .unwrap_or_else(GroupName::default_group);
        self.names.group_exchange(&group)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        // A panic while holding this lock cannot leave the maps inconsistent in a way
        // worse than a lost entry, so recover the guard rather than propagate the poison.
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Results waiting for the publisher. Recovered from a poisoned lock like `lock`:
    /// a result dropped here would leave its attempt held and its request unacked.
    fn outbound(&self) -> std::sync::MutexGuard<'_, Vec<Outbound>> {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> Info {
        let held = self.lock().held_now();
        Info {
            executor_id: self.me.id.clone(),
            groups: self.me.groups.clone(),
            labels: self.me.labels.clone(),
            capacity: self.me.capacity,
            running: held.running,
            queued: held.queued,
            in_flight: held.in_flight,
            draining: self.draining.load(Ordering::Relaxed) || *self.drained.borrow(),
            sent_at: Utc::now(),
            returned: self.returned.lock().map(|r| r.clone()).unwrap_or_default(),
            finished: self.finished.lock().map(|r| r.clone()).unwrap_or_default(),
        }
    }

    /// Gives an attempt back: lets go of its request (acked once no attempt it carried
    /// holds it, so that no restart under this id runs it), then says so in the next
    /// INFO, so that the dispatcher hands it out again at once (`started: false`) or
    /// counts it lost at once (`started: true`, killed unfinished) instead of waiting for
    /// its lease. It is not remembered as done: the dispatcher takes an unstarted one back
    /// with its attempt number, and may give that same attempt to this executor again, to
    /// run; only a redelivery of the message that brought it skips it.
    async fn give_back(&self, key: AttemptKey, hold: &Hold, started: bool) {
        let acked = hold.release().await;
        self.lock().give_back(key);
        self.drop_tokens(key);
        if acked.is_ok() {
            if let Ok(mut r) = self.returned.lock() {
                r.push(HeldAttempt {
                    task_id: key.0,
                    attempt: key.1,
                    running: started,
                    exited: false,
                });
            }
        }
        // Not acked (the channel is gone): the broker has it back in our queue, and only
        // its lease will tell the dispatcher.
        self.changed.notify_one();
    }

    /// An INFO carrying these was confirmed: the dispatcher has them.
    fn info_sent(&self, info: &Info) {
        if !info.returned.is_empty() {
            if let Ok(mut r) = self.returned.lock() {
                r.retain(|h| !info.returned.contains(h));
            }
        }
        if !info.finished.is_empty() {
            if let Ok(mut f) = self.finished.lock() {
                let sent: HashSet<&AttemptRef> = info.finished.iter().collect();
                f.retain(|a| !sent.contains(a));
            }
        }
    }

    /// Drops an attempt it will not report (shutdown).
    fn forget(&self, key: AttemptKey) {
        self.lock().held.remove(&key);
        self.drop_tokens(key);
    }

    /// Its cancel and give-back tokens go: the attempt ended, or is not held any more.
    fn drop_tokens(&self, key: AttemptKey) {
        if let Ok(mut c) = self.cancels.lock() {
            c.remove(&key);
        }
        if let Ok(mut g) = self.givebacks.lock() {
            g.remove(&key);
        }
        if let Ok(mut s) = self.spans.lock() {
            s.remove(&key);
        }
    }

    /// The attempt's span, for a line about it (the current one if it is not held).
    fn span_of(&self, key: AttemptKey) -> tracing::Span {
        self.spans
            .lock()
            .ok()
            .and_then(|s| s.get(&key).cloned())
            .unwrap_or_else(tracing::Span::current)
    }

    /// An operator's `control` message: drain, resume, or cancel one attempt.
    fn control(&self, action: ControlAction) {
        match action {
            ControlAction::Drain => {
                tracing::info!(
                    "drained by an operator: finishing running attempts, starting nothing new"
                );
                self.drained.send_replace(true);
            }
            ControlAction::Resume => {
                tracing::info!("resumed by an operator");
                self.drained.send_replace(false);
            }
            ControlAction::GiveBack { task_id, attempt } => {
                // Not held, or started already: nothing to give back.
                if let Some(t) = token_of(&self.givebacks, (task_id, attempt)) {
                    let _in = self.span_of((task_id, attempt)).entered();
                    tracing::debug!(%task_id, attempt, "giving an unstarted attempt back");
                    t.cancel();
                }
            }
            ControlAction::Leader { epoch } => {
                let before = self.leader_epoch.fetch_max(epoch, Ordering::SeqCst);
                if epoch > before {
                    tracing::info!(epoch, "a dispatcher leads under a new epoch");
                }
            }
            ControlAction::Cancel { task_id, attempt } => {
                match token_of(&self.cancels, (task_id, attempt)) {
                    Some(t) => {
                        let _in = self.span_of((task_id, attempt)).entered();
                        tracing::info!(%task_id, attempt, "cancelling an attempt");
                        t.cancel();
                    }
                    None => {
                        // Its request may still be on its way: remember the cancel.
                        tracing::info!(%task_id, attempt, "cancel for an attempt not held (yet); remembered");
                        if let Ok(mut early) = self.cancelled_early.lock() {
                            early.push_back((task_id, attempt));
                            if early.len() > CANCELLED_EARLY {
                                early.pop_front();
                            }
                        }
                    }
                }
            }
        }
        self.changed.notify_one();
    }

    /// Whether a request of this leadership epoch comes from a dispatcher replaced since
    /// (0: not said, never); a later one is remembered.
    fn superseded(&self, epoch: i64) -> bool {
        epoch != 0 && self.leader_epoch.fetch_max(epoch, Ordering::SeqCst) > epoch
    }

    /// Publishes on the current session, waiting out reconnects; gives up only when
    /// running attempts are being killed (shutdown past its drain deadline).
    async fn publish_reliably(&self, msg: Outgoing) -> bool {
        let mut rx = self.publisher.subscribe();
        let mut backoff = amqp::Backoff::default();
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                Some(p) => match p.publish(msg.clone()).await {
                    Ok(()) => return true,
                    Err(e) => {
                        tracing::warn!(error = %e, "publishing failed; retrying");
                        if !backoff.wait(&self.kill).await {
                            return false;
                        }
                    }
                },
                None => {
                    tokio::select! {
                        _ = self.kill.cancelled() => return false,
                        _ = rx.changed() => {}
                    }
                }
            }
        }
    }
}

pub async fn run(
    mut cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
    // reqwest and the HTTPS listener speak TLS through rustls, with ring.
    fleet_shared::tls::install_provider();
    let mut me = Identity::from_config(&cfg)?;
    // A registered executor connects as its own broker user, whose permissions cover only
    // its queue and its groups: the submitter declared those for it.
    let registered = match register::credential(&cfg, &me.id, &me.groups, &token).await {
        Ok(Some(c)) => {
            cfg.amqp.url = register::url_with(&cfg.amqp.url, &c);
            me.groups = c.groups;
            true
        }
        Ok(None) => false,
        Err(register::RegisterError::Cancelled) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    fleet_shared::logging::set_field("executor_id", me.id.to_string());
    tracing::info!(executor_id = %me.id, capacity = me.capacity, groups = ?me.groups, "executor starting");
    let health = Health::new(false);
    let server_token = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        http::health_routes(health.clone()),
        server_token.clone(),
    ));
    let (publisher, _) = watch::channel(None);
    let (logs_tx, logs_rx) = tokio::sync::mpsc::channel(logs::QUEUE);
    let shared = Arc::new(Shared {
        logs: logs_tx,
        slots: Semaphore::new(me.capacity as usize),
        me,
        names: Names::new(&cfg.amqp.prefix),
        cfg: cfg.clone(),
        attempts: Mutex::default(),
        registered,
        draining: AtomicBool::new(false),
        drained: watch::channel(false).0,
        cancels: Mutex::default(),
        givebacks: Mutex::default(),
        spans: Mutex::default(),
        cancelled_early: Mutex::default(),
        returned: Mutex::default(),
        finished: Mutex::default(),
        outbound: Mutex::default(),
        outbound_ready: Notify::new(),
        changed: Notify::new(),
        publisher,
        stop_starting: token.child_token(),
        kill: CancellationToken::new(),
        leader_epoch: AtomicI64::new(0),
    });
    let tracker = TaskTracker::new();
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), heartbeat_stop.clone()));
    let results_stop = CancellationToken::new();
    let results = tokio::spawn(publish_results(shared.clone(), results_stop.clone()));
    let shipper = {
        let s = shared.clone();
        let (exchange, key) = (s.upward_exchange(), keys::log(&s.me.id));
        let batcher = logs::Batcher::new(s.me.id.clone(), s.cfg.executor.max_live_output_bytes);
        tokio::spawn(logs::ship(logs_rx, batcher, move |chunks| {
            let s = s.clone();
            let msg = Outgoing::new(
                exchange.clone(),
                key.clone(),
                proto::encode(&proto::Logs { chunks }),
            );
            async move {
                // Not mandatory: with no collector yet, live output is dropped (the
                // result still carries it, capped); a result must not be.
                if !s.publish_reliably(msg).await {
                    tracing::warn!("live output not sent: shutting down");
                }
            }
        }))
    };

    let name = format!("fleet-executor-{}", shared.me.id);
    let mut conn_slot = None;
    // The channel requests came on, kept open through the drain: the attempts still
    // running are acked on it when their results are confirmed. (Closing it would hand
    // every unacked request back to the queue at once, to run again after a restart.)
    let mut consuming = None;
    let mut sup = svc::Supervisor::new(&cfg.amqp, &name, &health);
    while let Some(conn) = sup.connect(&token).await {
        let result = match session(&shared, &health, &conn, &tracker, &token).await {
            Ok(ch) => {
                consuming = Some(ch);
                Ok(())
            }
            Err(e) => {
                shared.publisher.send_replace(None);
                Err(e)
            }
        };
        if let Some(conn) = sup.ended(conn, result, &token).await {
            conn_slot = Some(conn);
            break;
        }
    }

    // Drain: take nothing new, say so, let running attempts finish within the deadline.
    shared.draining.store(true, Ordering::Relaxed);
    shared.changed.notify_one();
    tracker.close();
    let drain = Duration::from_secs(cfg.executor.drain_timeout_secs);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            "drain deadline passed; killing running attempts (their leases will expire)"
        );
        shared.kill.cancel();
        tracker.wait().await;
    }
    // Every attempt has reported (or been given up): nothing more to publish; each
    // attempt's live output went before its result.
    results_stop.cancel();
    let _ = results.await;
    shipper.abort();
    // The last INFO says what was given back.
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    if let Some(ch) = consuming {
        amqp::close_channel(&ch).await;
    }
    if let Some(conn) = conn_slot {
        amqp::close(&conn, "shutdown").await;
    }
    server_token.cancel();
    let _ = server.await;
    Ok(())
}

/// Consumes requests until shutdown; then returns the consuming channel, which must stay
/// open until the attempts it delivered are acked.
async fn session(
    shared: &Arc<Shared>,
    health: &Health,
    conn: &Connection,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<lapin::Channel, amqp::AmqpError> {
    let n = &shared.names;
    let publisher = Publisher::new(conn, &shared.cfg.amqp).await?;
    if !shared.registered {
        amqp::declare_core(conn, n).await?;
        amqp::declare_executor_queue(publisher.channel(), n, &shared.me.id, &shared.me.groups)
            .await?;
    }
    // The dispatcher bounds what it sends us to capacity + window; the prefetch only
    // needs to be no smaller than that.
    let prefetch =
        u16::try_from(shared.me.capacity.saturating_mul(4).saturating_add(64)).unwrap_or(u16::MAX);
    let queue = n.executor_queue(&shared.me.id);
    let tag = format!("fleet-executor-{}", shared.me.id);
    let (ch, mut consumer) = amqp::consume(conn, &queue, &tag, prefetch).await?;
    shared.publisher.send_replace(Some(publisher.clone()));
    health.set_broker_up(true);
    shared.changed.notify_one();
    // After shutdown: what the broker had already sent us, until the stream ends or
    // nothing more comes for a moment; each request is given back (see attempt()).
    let mut stopping_until = None;
    loop {
        let next = match stopping_until {
            None => tokio::select! {
                _ = token.cancelled() => {
                    let cancel = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                    let _ = tokio::time::timeout(amqp::CLOSE_TIMEOUT, cancel).await;
                    stopping_until = Some(tokio::time::Instant::now() + amqp::CLOSE_TIMEOUT);
                    continue;
                }
                d = consumer.next() => d,
            },
            Some(until) => match tokio::time::timeout_at(until, consumer.next()).await {
                Ok(d) => d,
                Err(_) => return Ok(ch),
            },
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            None if stopping_until.is_some() => return Ok(ch),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(amqp::AmqpError::Timeout("consumer ended")),
        };
        // Requests, or else an operator's control message; anything else is dead-lettered.
        let requests = match proto::decode_for_executor(&delivery.data) {
            Ok(ForExecutor::Requests(r)) => r,
            Ok(ForExecutor::Control(action)) => {
                shared.control(action);
                ack_one(&delivery).await?;
                continue;
            }
            Err(e) => {
                // A request's env may hold secret values (opened by the dispatcher): the
                // dead letter keeps none of its env values.
                let body = fleet_shared::secrets::redact_json(&delivery.data, |_| true);
                publisher
                    .publish(amqp::dead_letter_body(
                        n,
                        &delivery,
                        &queue,
                        e.reason(),
                        &e.to_string(),
                        body,
                    ))
                    .await?;
                ack_one(&delivery).await?;
                continue;
            }
        };
        let redelivered = delivery.redelivered;
        let hold = Hold::split(delivery, requests.len());
        for req in requests {
            if shared.superseded(req.epoch) {
                // Its sender was frozen past its leadership, and its successor may have
                // handed this attempt out again: given back, it runs nowhere twice.
                tracing::warn!(task_id = %req.task_id, attempt = req.attempt, epoch = req.epoch,
                    "request from a dispatcher that has been replaced since; given back unrun");
                metrics::counter!("fleet_executor_stale_requests_total").increment(1);
                shared
                    .give_back((req.task_id, req.attempt), &hold, false)
                    .await;
                continue;
            }
            take(shared, tracker, req, hold.clone(), redelivered).await;
        }
    }
}

/// Takes one attempt of a delivery: runs it, unless it is held or done here already, or
/// comes again (`redelivered`) after it was given back.
async fn take(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    req: Request,
    hold: Hold,
    redelivered: bool,
) {
    let key = (req.task_id, req.attempt);
    let duplicate = !shared.lock().admit(key, redelivered);
    if duplicate {
        // Already running or done here: a redelivery after a reconnect.
        let _ = hold.release().await;
        return;
    }
    let token = shared.kill.child_token();
    let early = shared
        .cancelled_early
        .lock()
        .map(|mut e| match e.iter().position(|k| *k == key) {
            Some(i) => e.remove(i).is_some(),
            None => false,
        })
        .unwrap_or(false);
    if early {
        // Reported as cancelled before it starts (see attempt()).
        token.cancel();
    }
    if let Ok(mut c) = shared.cancels.lock() {
        c.insert(key, token);
    }
    if let Ok(mut g) = shared.givebacks.lock() {
        g.insert(key, CancellationToken::new());
    }
    // Every line about the attempt says which.
    let span = tracing::info_span!("attempt", job_id = %req.job_id, task_id = %req.task_id, attempt = req.attempt);
    if let Ok(mut s) = shared.spans.lock() {
        s.insert(key, span.clone());
    }
    tracker.spawn(attempt(shared.clone(), req, hold).instrument(span));
}

/// Acks this delivery alone: requests before it may still be running, each acked when its
/// result is confirmed (a `multiple` ack would take them too, and their own acks would
/// then close the channel).
async fn ack_one(delivery: &Delivery) -> Result<(), amqp::AmqpError> {
    delivery
        .acker
        .ack(lapin::options::BasicAckOptions::default())
        .await?;
    Ok(())
}

async fn attempt(shared: Arc<Shared>, req: Request, hold: Hold) {
    let key = (req.task_id, req.attempt);
    let cancel = token_of(&shared.cancels, key).unwrap_or_else(|| shared.kill.child_token());
    let mut drained = shared.drained.subscribe();
    let giveback = token_of(&shared.givebacks, key).unwrap_or_default();
    let permit = tokio::select! {
        // A shutdown, a cancel or a give-back wins over a free slot.
        biased;
        _ = shared.stop_starting.cancelled() => {
            // Not started, and we are shutting down: give it back now, so it runs
            // elsewhere at once rather than after its lease.
            shared.give_back(key, &hold, false).await;
            return;
        }
        _ = giveback.cancelled() => {
            // The dispatcher has an idle slot for it elsewhere.
            shared.give_back(key, &hold, false).await;
            return;
        }
        _ = cancel.cancelled() => {
            // Cancelled before it started: report that, run nothing.
            let ran = run::Ran::cancelled_before_start();
            report(&shared, &req, ran, hold).await;
            return;
        }
        p = async {
            loop {
                // Drained by an operator: hold it, unstarted, until resumed; a drain that
                // came while it waited for a slot counts too.
                let _ = drained.wait_for(|d| !*d).await;
                match shared.slots.acquire().await {
                    Ok(p) if *shared.drained.borrow() => drop(p),
                    other => break other,
                }
            }
        } => p,
    };
    let Ok(slot) = permit else {
        shared.give_back(key, &hold, false).await;
        return;
    };
    if let Some(p) = shared.lock().held.get_mut(&key) {
        *p = Phase::Running;
    }
    // Started: no longer to be given back.
    if let Ok(mut g) = shared.givebacks.lock() {
        g.remove(&key);
    }
    tracing::debug!(task_id = %req.task_id, attempt = req.attempt, "starting");
    // The command learns where and as what it runs (after the task's own env, so a
    // task cannot pose as another executor).
    let mut env = req.env.clone();
    env.insert("FLEET_EXECUTOR_ID".into(), shared.me.id.to_string());
    env.insert("FLEET_JOB_ID".into(), req.job_id.to_string());
    env.insert("FLEET_TASK_ID".into(), req.task_id.to_string());
    env.insert("FLEET_ATTEMPT".into(), req.attempt.to_string());
    let spec = run::Spec {
        argv: req.argv.clone(),
        env,
        cwd: req.cwd.clone(),
        stdin: req.stdin.clone(),
        timeout: Duration::from_secs(req.timeout_secs),
        max_output: shared.cfg.executor.max_output_bytes,
        tap: (shared.cfg.executor.max_live_output_bytes > 0).then(|| {
            logs::Tap::new(
                shared.logs.clone(),
                key,
                shared.cfg.executor.max_live_output_bytes,
            )
        }),
    };
    let ran = run::run(&spec, &cancel).await;
    // The process is gone: its slot can run the next request held here while this
    // result is published (the attempt stays held, and in INFO, until it is confirmed),
    // and the dispatcher learns of the free slot now, not after the broker's confirm.
    drop(slot);
    if shared.kill.is_cancelled() {
        // Killed by our own shutdown past the drain deadline, not by the user's cancel:
        // no result; the attempt is given back as lost, and the task runs elsewhere.
        shared.give_back(key, &hold, true).await;
        return;
    }
    if let Some(p) = shared.lock().held.get_mut(&key) {
        *p = Phase::Exited;
    }
    shared.changed.notify_one();
    report(&shared, &req, ran, hold).await;
}

/// The token kept for an attempt in one of the per-attempt maps, if any.
fn token_of(
    map: &Mutex<HashMap<AttemptKey, CancellationToken>>,
    key: AttemptKey,
) -> Option<CancellationToken> {
    map.lock().ok().and_then(|m| m.get(&key).cloned())
}

/// Hands an attempt's result to the results publisher and waits until it is confirmed
/// (and the request acked) or given up.
async fn report(shared: &Arc<Shared>, req: &Request, ran: run::Ran, hold: Hold) {
    metrics::counter!("fleet_executor_attempts_total", "outcome" => ran.outcome.as_str())
        .increment(1);
    let result = TaskResult {
        task_id: req.task_id,
        attempt: req.attempt,
        job_id: req.job_id,
        executor_id: shared.me.id.clone(),
        outcome: ran.outcome,
        exit_code: ran.exit_code,
        signal: ran.signal,
        error: ran.error,
        stdout: ran.stdout,
        stderr: ran.stderr,
        stdout_truncated: ran.stdout_truncated,
        stderr_truncated: ran.stderr_truncated,
        started_at: ran.started_at,
        finished_at: ran.finished_at,
    };
    let (confirmed, done) = oneshot::channel();
    shared.outbound().push(Outbound {
        result,
        hold,
        confirmed,
    });
    shared.outbound_ready.notify_one();
    // The publisher answers for every result it takes; a closed channel means it stopped,
    // which it does only once every attempt has reported.
    let _ = done.await;
}

/// The next results to publish together: those waiting, up to a message's worth.
fn take_batch(pending: &mut Vec<Outbound>) -> Vec<Outbound> {
    let mut output = 0;
    let mut n = 0;
    for o in pending.iter() {
        let size = o.result.stdout.len() + o.result.stderr.len();
        if n == RESULTS_PER_MESSAGE || (n > 0 && output + size > OUTPUT_PER_MESSAGE) {
            break;
        }
        output += size;
        n += 1;
    }
    pending.drain(..n).collect()
}

/// Publishes results (confirmed, mandatory), then acks their requests. Results that end
/// while a publish awaits its confirm go together in the next message, so an idle
/// executor sends each result at once and a busy one sends several per message.
async fn publish_results(shared: Arc<Shared>, stop: CancellationToken) {
    let exchange = shared.upward_exchange();
    let key = keys::result(&shared.me.id);
    loop {
        let batch = take_batch(&mut shared.outbound());
        if batch.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.outbound_ready.notified() => continue,
            }
        }
        let body = if let [one] = batch.as_slice() {
            proto::encode(&one.result)
        } else {
            proto::encode(&Results {
                results: batch.iter().map(|o| o.result.clone()).collect(),
            })
        };
        // Until a collector has declared its queue a result has nowhere to go; mandatory
        // makes that an error to retry rather than a silent drop.
        let msg = Outgoing::new(exchange.clone(), key.clone(), body).mandatory();
        let sent = shared.publish_reliably(msg).await;
        for o in &batch {
            let k = (o.result.task_id, o.result.attempt);
            if sent {
                shared.lock().finish(k);
                shared.drop_tokens(k);
            } else {
                shared.forget(k);
            }
        }
        if sent {
            // The results are durable at the broker: the next INFO tells the dispatcher,
            // which frees their slots without waiting for the collector.
            if let Ok(mut f) = shared.finished.lock() {
                f.extend(batch.iter().map(|o| AttemptRef {
                    task_id: o.result.task_id,
                    attempt: o.result.attempt,
                }));
            }
        }
        shared.changed.notify_one();
        for o in batch {
            if sent {
                // If the channel this came on is gone, the ack fails; the redelivery is
                // then recognised as done and acked without running again.
                let _ = o.hold.release().await;
            }
            let _ = o.confirmed.send(sent);
        }
    }
}

/// INFO every interval, and at once when a slot frees or draining changes.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_millis(shared.cfg.executor.info_interval_ms);
    let exchange = shared.upward_exchange();
    let key = keys::info(&shared.me.id);
    let mut rx = shared.publisher.subscribe();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
            // At once: what changed frees a slot (a result, a request given back) or
            // closes the executor to work (drain). Changes that arrive while this INFO
            // is being published go together in the next one.
            _ = shared.changed.notified() => false,
        };
        let current = rx.borrow_and_update().clone();
        if let Some(p) = current {
            let info = shared.info();
            let msg = Outgoing::new(exchange.clone(), key.clone(), proto::encode(&info))
                .with_properties(amqp::transient_properties());
            match p.publish(msg).await {
                Ok(()) => shared.info_sent(&info),
                Err(e) => tracing::debug!(error = %e, "INFO not sent"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_whose_command_ended_is_reported_exited_and_holds_no_slot() {
        let mut a = Attempts::default();
        let (waiting, running, exited) =
            ((TaskId::new(), 1), (TaskId::new(), 1), (TaskId::new(), 2));
        for key in [waiting, running, exited] {
            assert!(a.admit(key, false));
        }
        a.held.insert(running, Phase::Running);
        a.held.insert(exited, Phase::Exited);
        let held = a.held_now();
        assert_eq!((held.running, held.queued), (1, 1));
        let of = |key: AttemptKey| {
            held.in_flight
                .iter()
                .find(|h| (h.task_id, h.attempt) == key)
                .map(|h| (h.running, h.exited))
        };
        assert_eq!(of(waiting), Some((false, false)));
        assert_eq!(of(running), Some((true, false)));
        assert_eq!(of(exited), Some((true, true)), "it ran; it holds no slot");
        // Once its result is confirmed it is no longer held at all.
        a.finish(exited);
        assert_eq!(a.held_now().in_flight.len(), 2);
    }

    #[test]
    fn an_attempt_runs_once_however_often_its_message_comes() {
        let mut a = Attempts::default();
        let key = (TaskId::new(), 1);
        assert!(a.admit(key, false), "the first delivery runs it");
        assert!(!a.admit(key, true), "not again while it is held");
        a.finish(key);
        assert!(!a.admit(key, true), "nor once it is done");
        assert!(!a.admit(key, false));
    }

    #[test]
    fn a_given_back_attempt_runs_when_given_again_not_when_redelivered() {
        let mut a = Attempts::default();
        let key = (TaskId::new(), 1);
        assert!(a.admit(key, false));
        a.give_back(key);
        assert!(a.held.is_empty(), "no longer held");
        // Its message comes again after a reconnect (it was not acked: other attempts it
        // carried still ran): given back means the dispatcher has it.
        assert!(!a.admit(key, true));
        // The dispatcher took it back and gave the same attempt to us again.
        assert!(a.admit(key, false));
        assert!(
            !a.admit(key, true),
            "held again: a redelivery of either message waits"
        );
    }
}
