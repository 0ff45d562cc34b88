//! The dispatcher: a loop woken by INFO heartbeats (a slot freed, an executor appeared),
//! PostgreSQL notifications (new ready work) and a tick (timers). A round does what
//! changed: when slots are free and ready work may exist, it reads ready tasks up to the
//! free slots, plans them ([`plan`]) and opens their attempts in one fenced statement,
//! then publishes the requests. Slots are counted in memory ([`fleet`]); lease renewal,
//! heartbeat writes and sweeps run on their own timers ([`sweeps`], [`leadership`]).

pub mod fleet;
pub mod leadership;
pub mod plan;
pub mod sweeps;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::amqp::{self, keys, Names, Outgoing, Publisher};
use fleet_shared::config::Config;
use fleet_shared::db::admin::Registered;
use fleet_shared::db::dispatch::HeldBy;
use fleet_shared::db::{self, dispatch, events, DbError, Pool};
use fleet_shared::group::GroupName;
use fleet_shared::http::{self, Health};
use fleet_shared::id::ExecutorId;
use fleet_shared::policy::{self, ExecutorView, ReadyTask};
use fleet_shared::proto::{self, Control, ControlAction, Info, Request, Requests};
use fleet_shared::svc;
use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::leadership::Leader;

pub const DEFAULT_ADDR: &str = "127.0.0.1:7071";
/// Ready tasks read per page beyond the free slots: some may be ineligible, and a
/// backlog that fits in the first page is its tail, handed to free slots only
/// ([`policy::Backlog::Tail`]). 32 measured best in `make bench-balance` (see
/// docs/design.md); `make bench` reads the same either way.
const PAGE_MARGIN: i64 = 32;
/// How long before a cancel sent for an attempt still open is sent again.
const KILL_AGAIN: Duration = Duration::from_secs(3);
/// Pages of ready tasks a round reads at most (each up to the slots still free).
const MAX_PAGES_PER_ROUND: usize = 10;
/// Ready `each` tasks fanned out per round.
const EACH_PAGE: i64 = 1000;
/// Tasks remembered as given back (to be planned elsewhere): more is a storm of
/// give-backs, and the memory is dropped.
const AVOID_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Amqp(#[from] amqp::AmqpError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// Another dispatcher took over (we froze or were cut off past our lease).
    #[error("leadership lost to another dispatcher")]
    LostLeadership,
}

/// What one round did; the unit of observation for tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub lost: usize,
    pub assigned: usize,
    /// Attempts taken back unstarted (given back by their executor, or unroutable).
    pub returned: usize,
}

/// Registrations and group memberships, read on a timer.
#[derive(Default)]
struct Registry {
    registered: HashMap<String, Registered>,
    assigned: HashMap<String, Vec<GroupName>>,
    /// Executors an administrator drained.
    drained: std::collections::HashSet<String>,
}

pub struct Dispatcher {
    cfg: Config,
    pool: Pool,
    names: Names,
    leader: Leader,
    fleet: Fleet,
    registry: Registry,
    /// Attempts executors gave back (INFO `returned`) since the last round, and whether
    /// they had started.
    returned: Vec<(HeldBy, bool)>,
    /// Tasks taken back unstarted, and the executor that gave each back: planned
    /// elsewhere next if another executor has room.
    avoid: HashMap<fleet_shared::id::TaskId, ExecutorId>,
    /// Attempts executors reported finished (INFO `finished`), with when: marked
    /// `reported` in PostgreSQL once they are old enough that the collector would
    /// normally have recorded them (so that a slow collector never makes them lost).
    finished: Vec<(HeldBy, Instant)>,
    /// Ready tasks may exist that were not read: new work was notified, tasks went back
    /// to ready, an executor appeared, or the tick came.
    ready_maybe: bool,
    /// The last read of ready tasks left some unplaced (no executor had room for them).
    unplaced: bool,
    /// `each` tasks may need fanning out or copies may be waiting for a slot.
    each_maybe: bool,
    /// Attempts whose cancel was asked may be open: their holders are told to kill them.
    cancel_maybe: bool,
    /// Cancels sent, and when: sent again after [`KILL_AGAIN`] while the attempt is open.
    killing: HashMap<(fleet_shared::id::TaskId, i32), Instant>,
    /// No lease or grace sweep before this: until then the executors have not all been
    /// heard from since this dispatcher (re)started leading or came back from an outage,
    /// and an attempt whose lease ran out meanwhile may well be alive.
    sweep_after: Instant,
    /// When the last round started: a gap longer than executors have to report (the
    /// process was frozen, or a round stalled) holds the sweeps like a restart does.
    last_round: Option<Instant>,
    next_sweep: Instant,
    next_grace: Instant,
    next_flush: Instant,
    next_registry: Instant,
    next_retry: Instant,
    /// Opens tasks' secret env values (`secrets.key`).
    secrets: Option<fleet_shared::secrets::SecretBox>,
    /// When a task whose secrets do not open was last logged (once a minute at most).
    secrets_warned: Option<Instant>,
}

impl Dispatcher {
    pub fn new(cfg: Config, pool: Pool) -> Self {
        let names = Names::new(&cfg.amqp.prefix);
        let now = Instant::now();
        Self {
            leader: Leader::new(Duration::from_secs(cfg.dispatcher.leader_ttl_secs)),
            fleet: Fleet::new(Duration::from_secs(cfg.dispatcher.executor_timeout_secs))
                .with_window_floor(cfg.dispatcher.window_floor),
            registry: Registry::default(),
            returned: Vec::new(),
            avoid: HashMap::new(),
            finished: Vec::new(),
            ready_maybe: true,
            unplaced: false,
            each_maybe: true,
            cancel_maybe: true,
            killing: HashMap::new(),
            sweep_after: now,
            last_round: None,
            next_sweep: now,
            next_grace: now,
            next_flush: now,
            next_registry: now,
            next_retry: now,
            secrets: fleet_shared::secrets::from_config(&cfg.secrets)
                .ok()
                .flatten(),
            secrets_warned: None,
            cfg,
            pool,
            names,
        }
    }

    /// Opens each row's secret env values; a row whose secrets do not open is left out
    /// (its task stays ready, and the error is logged once a minute at most).
    fn open_secrets<'r>(
        &mut self,
        rows: impl Iterator<Item = &'r mut dispatch::ReadyRow>,
    ) -> Vec<fleet_shared::id::TaskId> {
        let mut failed = Vec::new();
        for row in rows {
            if let Err(e) = plan::open_secrets(row, self.secrets.as_ref()) {
                failed.push(row.id);
                if self
                    .secrets_warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.secrets_warned = Some(Instant::now());
                    tracing::error!(task_id = %row.id, job_id = %row.job_id, error = %e,
                        "a task's secret env values do not open: it waits until they do");
                }
            }
        }
        failed
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.dispatcher.lease_timeout_secs)
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.cfg.dispatcher.tick_ms)
    }

    /// Holds the lease and grace sweeps until every executor alive has had time to
    /// report (INFO extends the leases of what it holds).
    fn hold_sweeps(&mut self) {
        let hear_all = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        self.sweep_after = self.sweep_after.max(Instant::now() + hear_all);
    }

    /// Takes an INFO heartbeat into account.
    pub fn heard(&mut self, info: Info) {
        let heard = self.fleet.heard(info);
        let now = Instant::now();
        self.finished
            .extend(heard.finished.into_iter().map(|h| (h, now)));
        if !heard.returned.is_empty() {
            self.returned.extend(heard.returned);
        }
        if heard.appeared {
            self.ready_maybe = true;
            self.each_maybe = true;
        }
        // A slot freed: ready tasks the last read left unplaced for want of room (that
        // read was not full, so the round thought it had seen them all) can go now, not
        // at the next tick.
        if heard.freed > 0 && self.unplaced {
            self.ready_maybe = true;
        }
        if heard.changed {
            // A new executor, or one that changed its groups or started draining: the
            // API and group administration read its row, so write it in this round; and
            // what it may claim (its registration) is read again before it gets work.
            self.next_flush = now;
            self.next_registry = now;
        }
    }

    /// New ready work was notified.
    pub fn notified(&mut self) {
        self.ready_maybe = true;
    }

    /// New ready work that may include `each` tasks was notified (or a change of a job:
    /// a cancel, a release, a resume).
    pub fn notified_each(&mut self) {
        self.ready_maybe = true;
        self.each_maybe = true;
        self.cancel_maybe = true;
    }

    /// The tick: look again, whatever was said.
    pub fn ticked(&mut self) {
        self.ready_maybe = true;
        self.each_maybe = true;
        self.cancel_maybe = true;
    }

    /// Waits as a standby until this dispatcher leads (false: shutdown first); then
    /// counts the open attempts from PostgreSQL and holds its sweeps until everyone has
    /// been heard.
    pub async fn wait_for_leadership(&mut self, token: &CancellationToken) -> bool {
        loop {
            if !self.leader.wait(&self.pool, self.tick(), token).await {
                return false;
            }
            self.forget();
            let open = async {
                let client = self.pool.get().await?;
                dispatch::open_attempts(&client).await
            };
            match open.await {
                Ok(open) => {
                    self.fleet.load(open);
                    self.hold_sweeps();
                    self.notified_each();
                    self.next_registry = Instant::now();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the open attempts; giving leadership up");
                    self.leader.resign(&self.pool).await;
                    tokio::select! {
                        _ = token.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    pub fn leads(&self) -> bool {
        self.leader.leads()
    }

    /// Gives leadership up at once (shutdown, or no broker to publish on).
    pub async fn resign(&mut self) {
        self.leader.resign(&self.pool).await;
        self.forget();
    }

    fn forget(&mut self) {
        self.fleet.clear();
        self.finished.clear();
        self.returned.clear();
    }

    fn step_down(&mut self) -> Error {
        self.leader.lost();
        self.forget();
        Error::LostLeadership
    }

    /// Opens a transaction fenced by our leadership, or steps down.
    async fn fenced<'c>(
        &mut self,
        client: &'c mut db::Client,
    ) -> Result<db::Transaction<'c>, Error> {
        let Some(lead) = self.leader.current().cloned() else {
            return Err(Error::LostLeadership);
        };
        let tx = client.transaction().await.map_err(DbError::from)?;
        if dispatch::fence(&tx, &lead).await? {
            Ok(tx)
        } else {
            Err(self.step_down())
        }
    }

    /// One round: what is due, and what changed.
    pub async fn run_once(&mut self, publisher: &Publisher) -> Result<Report, Error> {
        let mut report = Report::default();
        // Back from a freeze (SIGSTOP, a stalled VM) or a stalled round: the leases were
        // not extended meanwhile, and requests it published late may only now have
        // reached their executors, which have not listed them yet.
        let started = Instant::now();
        let hear_all = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        if self
            .last_round
            .replace(started)
            .is_some_and(|last| started.duration_since(last) > hear_all)
        {
            tracing::info!("this dispatcher was away longer than executors have to report; hearing them again before sweeping");
            self.hold_sweeps();
        }
        if !self.leader.renew_if_due(&self.pool).await? {
            return Err(self.step_down());
        }
        if !self.returned.is_empty() {
            self.take_back(&mut report).await?;
        }
        let now = Instant::now();
        if now >= self.next_registry {
            self.next_registry = now + Duration::from_secs(1);
            let client = self.pool.get().await.map_err(DbError::from)?;
            let (assigned, registered, drained) = tokio::try_join!(
                db::admin::assigned_groups(&client),
                db::admin::registered_executors(&client),
                db::control::drained_executors(&client),
            )?;
            self.registry = Registry {
                registered,
                assigned,
                drained,
            };
        }
        // Tasks whose retry backoff is over are ready again (checked every tick: a wait is
        // kept to within a tick).
        if now >= self.next_retry {
            self.next_retry = now + self.tick();
            let client = self.pool.get().await.map_err(DbError::from)?;
            if dispatch::retries_due(&client).await? > 0 {
                self.ready_maybe = true;
            }
        }
        // Handing work out first: it is what a client waits for. A resource alarm blocks
        // our publishes: assigning now would open attempts whose requests cannot leave,
        // and cost each task an attempt when their leases ran out.
        if !publisher.blocked() {
            let mut views = self.fleet.views(
                &self.registry.registered,
                &self.registry.assigned,
                &self.registry.drained,
                !self.cfg.dispatcher.unsafe_open_executors,
                self.cfg.dispatcher.window,
            );
            if self.each_maybe {
                self.each_maybe = false;
                self.each_round(&mut views, publisher, &mut report).await?;
            }
            if self.ready_maybe {
                self.assign_round(&mut views, publisher, &mut report)
                    .await?;
            }
            self.steal(&views, publisher).await?;
        }
        if self.cancel_maybe && !publisher.blocked() {
            self.cancel_maybe = false;
            self.kill(publisher).await?;
        }
        if now >= self.next_flush {
            self.next_flush = now + self.tick();
            self.flush().await?;
        }
        // No sweep until every executor alive has been heard since we (re)started
        // leading: leases not extended while we were away are not a sign of death.
        if now >= self.next_sweep && now >= self.sweep_after {
            self.next_sweep = now + self.tick();
            self.sweep(&mut report).await?;
        }
        metrics::counter!("fleet_dispatcher_lost_attempts_total").increment(report.lost as u64);
        metrics::counter!("fleet_dispatcher_assigned_total").increment(report.assigned as u64);
        Ok(report)
    }

    /// A control message for one executor, from the dispatcher: transient, not mandatory
    /// (one lost, or for an executor gone, changes nothing; what needs it is sent again).
    fn control(&self, executor: &ExecutorId, action: ControlAction) -> Outgoing {
        Outgoing::new(
            self.names.root_exchange(),
            keys::control(executor),
            proto::encode(&Control { action }),
        )
        .with_properties(amqp::transient_properties())
    }

    /// Tells the holders of the open attempts whose cancel was asked to kill them, and
    /// those of unstarted attempts of paused groups to give them back (again, every
    /// [`KILL_AGAIN`], while they stay open: a message lost with a broker connection, or
    /// a cancel sent before its request arrived and forgotten by a restarted executor, is
    /// sent again).
    async fn kill(&mut self, publisher: &Publisher) -> Result<(), Error> {
        let client = self.pool.get().await.map_err(DbError::from)?;
        let (kill, recall) = tokio::try_join!(
            dispatch::attempts_to_kill(&client),
            dispatch::paused_unstarted(&client),
        )?;
        drop(client);
        let now = Instant::now();
        self.killing.retain(|k, _| {
            kill.iter()
                .chain(&recall)
                .any(|h| (h.task_id, h.attempt) == *k)
        });
        let mut out = Vec::new();
        let mut sent = Vec::new();
        for (held, cancel) in kill
            .into_iter()
            .map(|h| (h, true))
            .chain(recall.into_iter().map(|h| (h, false)))
        {
            let key = (held.task_id, held.attempt);
            if self
                .killing
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < KILL_AGAIN)
            {
                continue;
            }
            let action = if cancel {
                ControlAction::Cancel {
                    task_id: held.task_id,
                    attempt: held.attempt,
                }
            } else {
                // Waiting in its executor's window when its group was paused: given
                // back, it waits in PostgreSQL until the pause is lifted.
                ControlAction::GiveBack {
                    task_id: held.task_id,
                    attempt: held.attempt,
                }
            };
            out.push(self.control(&held.executor_id, action));
            sent.push(key);
        }
        if out.is_empty() {
            return Ok(());
        }
        tracing::info!(
            messages = out.len(),
            "telling executors to kill cancelled attempts or give back paused ones"
        );
        metrics::counter!("fleet_dispatcher_kills_sent_total").increment(out.len() as u64);
        publisher.publish_all(out).await?;
        for key in sent {
            self.killing.insert(key, now);
        }
        Ok(())
    }

    /// Reads ready tasks up to the free slots (page by page while slots remain), plans
    /// them, opens their attempts in one fenced statement and sends the requests.
    async fn assign_round(
        &mut self,
        views: &mut [ExecutorView],
        publisher: &Publisher,
        report: &mut Report,
    ) -> Result<(), Error> {
        let window = self.cfg.dispatcher.window;
        let mut backlog = policy::Backlog::Deep;
        let client = self.pool.get().await.map_err(DbError::from)?;
        let mut planned = Vec::new();
        let mut cursor = None;
        let mut exhausted = false;
        let mut unplaced = false;
        for _ in 0..MAX_PAGES_PER_ROUND {
            let free = policy::free_slots(views, window);
            if free == 0 {
                break;
            }
            let limit = i64::from(free) + PAGE_MARGIN;
            let first = cursor.is_none();
            let servable = policy::servable_groups(views, window);
            let groups: Vec<&str> = servable.iter().map(GroupName::as_str).collect();
            let mut page = dispatch::ready_page(&client, &groups, cursor, limit).await?;
            let Some(last) = page.last() else {
                exhausted = true;
                break;
            };
            cursor = Some((last.priority, last.seq));
            let read = page.len();
            let failed = self.open_secrets(page.iter_mut());
            page.retain(|r| !failed.contains(&r.id));
            if first {
                backlog = plan::backlog(read, limit);
            }
            let placed = plan::plan(
                &page,
                views,
                window,
                backlog,
                self.lease(),
                chrono::Utc::now(),
                &self.avoid,
            );
            unplaced |= placed.len() < page.len();
            planned.extend(placed);
            if (read as i64) < limit {
                exhausted = true;
                break;
            }
        }
        // Nothing more to read until something changes (new work, an executor, a tick,
        // or a slot freeing if some were left unplaced).
        if exhausted {
            self.ready_maybe = false;
            self.unplaced = unplaced;
        }
        if planned.is_empty() {
            return Ok(());
        }
        let Some(lead) = self.leader.current().cloned() else {
            return Err(Error::LostLeadership);
        };
        let rows: Vec<_> = planned
            .iter()
            .map(|p| (p.task_id, p.executor_id.clone(), p.attempt))
            .collect();
        let assigned =
            dispatch::assign_planned(&client, &lead, &rows, self.lease().as_secs_f64()).await?;
        drop(client);
        if !assigned.led {
            return Err(self.step_down());
        }
        let opened: std::collections::HashSet<_> = assigned.tasks.into_iter().collect();
        if !self.avoid.is_empty() {
            self.avoid.retain(|t, _| !opened.contains(t));
        }
        let sent: Vec<(HeldBy, Request, Option<ReadyTask>)> = planned
            .into_iter()
            .filter(|p| opened.contains(&p.task_id))
            .map(|p| {
                (
                    HeldBy {
                        task_id: p.task_id,
                        attempt: p.attempt,
                        executor_id: p.executor_id,
                    },
                    p.request,
                    Some(p.task),
                )
            })
            .collect();
        report.assigned += sent.len();
        self.send(publisher, sent, report).await
    }

    /// Sends requests for attempts just opened, and takes back at once those the broker
    /// returned unroutable.
    async fn send(
        &mut self,
        publisher: &Publisher,
        mut sent: Vec<(HeldBy, Request, Option<ReadyTask>)>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let attempts: Vec<HeldBy> = sent.iter().map(|(h, _, _)| h.clone()).collect();
        let movable: Vec<(HeldBy, Option<ReadyTask>)> = sent
            .iter()
            .map(|(h, _, t)| (h.clone(), t.clone()))
            .collect();
        self.fleet.assigned(&movable);
        // A leader frozen between the commit and here (SIGSTOP, a stalled VM) may have
        // been replaced meanwhile, and its attempts lost and handed out again: sending
        // its requests now would run those tasks twice. Not sending is always safe: the
        // attempts' leases run out.
        if Instant::now() >= self.leader.surely_until() {
            tracing::warn!(
                "leadership may have lapsed during the round; its requests are not sent"
            );
            return Err(self.step_down());
        }
        // Past that check, a freeze can still fall before the broker has the requests;
        // the epoch lets executors told of a successor refuse them.
        let epoch = self.leader.current().map_or(0, |l| l.epoch);
        for (_, req, _) in &mut sent {
            req.epoch = epoch;
        }
        let root = self.names.root_exchange();
        // A request not taken within the lease is stale: its attempt is lost by then and
        // the task runs elsewhere, so it must not linger in the queue of an executor that
        // left, to run when one by that name comes back.
        let expiration = (self.cfg.dispatcher.lease_timeout_secs * 1000).to_string();
        let to: Vec<(&ExecutorId, &Request)> = sent
            .iter()
            .map(|(h, req, _)| (&h.executor_id, req))
            .collect();
        let messages = plan::messages(&to);
        let out: Vec<Outgoing> = messages
            .iter()
            .map(|(executor_id, carried)| {
                let body = match carried.as_slice() {
                    [one] => proto::encode(&sent[*one].1),
                    _ => proto::encode(&Requests {
                        requests: carried.iter().map(|&i| sent[i].1.clone()).collect(),
                    }),
                };
                // Transient: a request the broker loses (a restart) is recovered by its
                // attempt's lease, like one lost on the way.
                let props =
                    amqp::transient_properties().with_expiration(expiration.as_str().into());
                Outgoing::new(root.clone(), keys::request(executor_id), body)
                    .with_properties(props)
                    .mandatory()
            })
            .collect();
        // If this fails after the commit, the attempts' leases run out and the tasks go
        // back to ready: late, never lost.
        let returned = publisher.publish_batch(out).await?;
        let back: Vec<HeldBy> = returned
            .iter()
            .filter_map(|&m| messages.get(m))
            .flat_map(|(_, carried)| carried.iter().filter_map(|&i| attempts.get(i).cloned()))
            .collect();
        for h in &attempts {
            if !back.iter().any(|b| b.executor_id == h.executor_id) {
                self.fleet.routable(&h.executor_id);
            }
        }
        if !back.is_empty() {
            let mut quarantined = std::collections::BTreeSet::new();
            for b in &back {
                if quarantined.insert(b.executor_id.clone()) {
                    if let Some(wait) = self.fleet.unroutable(&b.executor_id) {
                        tracing::warn!(executor_id = %b.executor_id,
                            "requests for this executor came back unroutable (it reports INFO but has no queue); giving it nothing for {wait:?}");
                        metrics::counter!("fleet_dispatcher_unroutable_total").increment(1);
                    }
                }
            }
            // Nobody received these: take them back now rather than at their leases,
            // and keep the broker session, which did nothing wrong.
            self.fleet.ended(&back);
            let mut client = self.pool.get().await.map_err(DbError::from)?;
            let tx = self.fenced(&mut client).await?;
            report.returned += dispatch::unassign(&tx, &back).await? as usize;
            let cancelled = dispatch::end_cancelled(&tx, &back).await?;
            events::insert(&tx, &cancelled.events).await?;
            tx.commit().await.map_err(DbError::from)?;
            fleet_shared::metrics::count_settled(&cancelled);
            report.assigned -= back.len().min(report.assigned);
            self.ready_maybe = true;
        }
        Ok(())
    }

    /// No ready task is left, yet a slot is idle while unstarted attempts wait in another
    /// executor's hands (behind its long tasks, say): asks for them back (`give_back`),
    /// so that they run on the idle slot once returned. A request lost, or one its holder
    /// started meanwhile, changes nothing.
    async fn steal(&mut self, views: &[ExecutorView], publisher: &Publisher) -> Result<(), Error> {
        // Overtaken ones, whatever else is ready: given back, they keep their place in
        // the order. Idle slots, once no ready task is left to fill them.
        let mut wanted = self.fleet.to_requeue(views);
        if !self.ready_maybe {
            wanted.extend(self.fleet.to_steal(views));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let out: Vec<Outgoing> = wanted
            .iter()
            .map(|h| {
                self.control(
                    &h.executor_id,
                    ControlAction::GiveBack {
                        task_id: h.task_id,
                        attempt: h.attempt,
                    },
                )
            })
            .collect();
        metrics::counter!("fleet_dispatcher_give_backs_asked_total").increment(out.len() as u64);
        publisher.publish_all(out).await?;
        Ok(())
    }

    /// Attempts executors gave back (shutting down, or asked to): the unstarted ones are taken back
    /// (ready again, no attempt spent), the started ones lost at once.
    async fn take_back(&mut self, report: &mut Report) -> Result<(), Error> {
        let (started, unstarted): (Vec<_>, Vec<_>) = self
            .returned
            .iter()
            .cloned()
            .partition(|(_, started)| *started);
        let unstarted: Vec<HeldBy> = unstarted.into_iter().map(|(h, _)| h).collect();
        // Each goes elsewhere next if it can (see policy::assign_avoiding).
        if self.avoid.len() > AVOID_MAX {
            self.avoid.clear();
        }
        self.avoid
            .extend(unstarted.iter().map(|h| (h.task_id, h.executor_id.clone())));
        let started: Vec<HeldBy> = started.into_iter().map(|(h, _)| h).collect();
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let tx = self.fenced(&mut client).await?;
        let taken = dispatch::unassign(&tx, &unstarted).await? as usize;
        let mut lost = dispatch::lose(&tx, &started).await?;
        let cancelled = dispatch::end_cancelled(&tx, &unstarted).await?;
        lost.extend(cancelled);
        events::insert(&tx, &lost.events).await?;
        tx.commit().await.map_err(DbError::from)?;
        fleet_shared::metrics::count_settled(&lost);
        drop(client);
        // Kept until written: the INFO that carried them is acked with this round, and
        // a round that failed before the commit takes them back at the next one.
        self.returned.clear();
        report.returned += taken;
        report.lost += lost.finished.len() + lost.readied;
        self.ready_maybe = true;
        self.each_maybe = true;
        Ok(())
    }

    /// Writes what is due: executors' rows, lease extensions and running marks, and
    /// `reported` for attempts finished a while ago (a third of the lease: well before
    /// their lease could run out, and by when the collector has normally closed them,
    /// so this mostly matches nothing).
    async fn flush(&mut self) -> Result<(), Error> {
        let lease = self.lease();
        let alive_for = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        let (rows, leases) = self.fleet.due(alive_for / 3, lease / 3);
        let ripe = Instant::now() - lease / 3;
        let split = self.finished.partition_point(|(_, at)| *at <= ripe);
        let old: Vec<HeldBy> = self.finished[..split]
            .iter()
            .map(|(h, _)| h.clone())
            .collect();
        if rows.is_empty() && leases.is_empty() && old.is_empty() {
            return Ok(());
        }
        let written = async {
            let mut client = self.pool.get().await.map_err(DbError::from)?;
            let tx = self.fenced(&mut client).await?;
            let at: Vec<_> = rows.iter().map(|(i, at)| (i, *at)).collect();
            dispatch::upsert_executors(&tx, &at).await?;
            dispatch::extend_leases(&tx, &leases, lease.as_secs_f64()).await?;
            dispatch::mark_reported(&tx, &old, self.cfg.dispatcher.result_timeout_secs as f64)
                .await?;
            tx.commit().await.map_err(DbError::from)?;
            Ok::<(), Error>(())
        }
        .await;
        match written {
            Ok(()) => {
                self.finished.drain(..split);
                Ok(())
            }
            Err(e) => {
                self.fleet.rewrite();
                Err(e)
            }
        }
    }

    /// Expired leases (and revoked executors' attempts), then, every few ticks, members
    /// of `each` tasks gone past their grace.
    async fn sweep(&mut self, report: &mut Report) -> Result<(), Error> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let tx = self.fenced(&mut client).await?;
        let (mut settled, lost) = dispatch::sweep_leases(&tx).await?;
        // Tasks failed as lost (and their jobs) are announced like any other outcome.
        events::insert(&tx, &settled.events).await?;
        // Executors not heard from within the timeout are announced lost, once.
        dispatch::lose_executors(&tx, self.cfg.dispatcher.executor_timeout_secs as f64).await?;
        tx.commit().await.map_err(DbError::from)?;
        fleet_shared::metrics::count_settled(&settled);
        self.fleet.ended(&lost);
        let now = Instant::now();
        if now >= self.next_grace {
            self.next_grace = now + self.tick() * 4;
            let graced = sweeps::grace(self, &mut client).await?;
            settled.extend(graced);
        }
        drop(client);
        if !lost.is_empty() || settled.readied > 0 {
            self.ready_maybe = true;
            self.each_maybe = true;
        }
        report.lost += settled.finished.len() + settled.readied;
        Ok(())
    }

    /// Fans out `each` tasks that became ready, then gives waiting copies to their
    /// members that have a slot (copies wait for their own member only, so they go
    /// before ordinary tasks).
    async fn each_round(
        &mut self,
        views: &mut [ExecutorView],
        publisher: &Publisher,
        report: &mut Report,
    ) -> Result<(), Error> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        // Members are the executors heard from; right after taking the lead, not all of
        // them have been heard yet, and a fan-out would leave some out for good.
        let heard_all = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        if self.leader.led_for() >= heard_all {
            let ready = dispatch::ready_each(&client, EACH_PAGE).await?;
            let fan: Vec<_> = ready
                .iter()
                .filter_map(|r| {
                    let m = policy::members(&plan::ready_task(r), views);
                    (!m.is_empty()).then_some((r.id, m))
                })
                .collect();
            if !fan.is_empty() {
                let tx = self.fenced(&mut client).await?;
                let ids = dispatch::fan_out(&tx, &fan).await?;
                let settled = db::collect::settle_each(&tx, &ids).await?;
                events::insert(&tx, &settled.events).await?;
                tx.commit().await.map_err(DbError::from)?;
                fleet_shared::metrics::count_settled(&settled);
                tracing::debug!(tasks = ids.len(), "each tasks fanned out");
            }
        }
        // (Before everyone has been heard, the tick brings it back here.)
        let pending = dispatch::pending_copies(&client).await?;
        let pinned = policy::assign_pinned(&pending, views, self.cfg.dispatcher.window);
        if pinned.is_empty() {
            return Ok(());
        }
        let ids: Vec<_> = pinned.iter().map(|(t, _)| *t).collect();
        let mut rows = dispatch::task_rows(&client, &ids).await?;
        let failed = self.open_secrets(rows.values_mut());
        let pinned: Vec<_> = pinned
            .into_iter()
            .filter(|(t, _)| !failed.contains(t))
            .collect();
        if pinned.is_empty() {
            return Ok(());
        }
        let Some(epoch) = self.leader.current().map(|l| l.epoch) else {
            return Err(Error::LostLeadership);
        };
        let tx = self.fenced(&mut client).await?;
        let assignments =
            dispatch::assign_copies(&tx, &pinned, self.lease().as_secs_f64(), epoch).await?;
        tx.commit().await.map_err(DbError::from)?;
        drop(client);
        // A copy is pinned to its member: never moved elsewhere.
        let sent: Vec<(HeldBy, Request, Option<ReadyTask>)> = assignments
            .into_iter()
            .filter_map(|a| {
                let row = rows.get(&a.task_id)?;
                let held = HeldBy {
                    task_id: a.task_id,
                    attempt: a.attempt,
                    executor_id: a.executor_id,
                };
                Some((held, plan::request(row, a.attempt, a.lease_deadline), None))
            })
            .collect();
        report.assigned += sent.len();
        self.send(publisher, sent, report).await
    }
}

/// Wake-ups from PostgreSQL: any new ready work, and work that may include `each`
/// tasks.
#[derive(Default)]
struct Wake {
    any: Arc<Notify>,
    each: Arc<Notify>,
}

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
    // reqwest and the HTTPS listener speak TLS through rustls, with ring.
    fleet_shared::tls::install_provider();
    let (pool, health) = svc::db_and_health(&cfg)?;
    let server = tokio::spawn(http::serve(
        listener,
        http::health_routes(health.clone()),
        token.clone(),
    ));
    if !svc::migrate(&cfg, &pool, &health, &token).await? {
        let _ = server.await;
        return Ok(());
    }
    let wake = Wake::default();
    let listener_task = tokio::spawn(db::listen_for_wakes(
        cfg.database.clone(),
        wake.any.clone(),
        wake.each.clone(),
        token.clone(),
    ));
    let mut dispatcher = Dispatcher::new(cfg.clone(), pool);
    let mut sup = svc::Supervisor::new(&cfg.amqp, "fleet-dispatcher", &health);
    while let Some(conn) = sup.connect(&token).await {
        let result = session(&mut dispatcher, &health, &conn, &wake, &token).await;
        // Without a broker this dispatcher cannot hand anything out: a standby that
        // has one should lead, now rather than when our lease runs out. On shutdown,
        // likewise.
        dispatcher.resign().await;
        if let Some(conn) = sup.ended(conn, result, &token).await {
            amqp::close(&conn, "shutdown").await;
            break;
        }
    }
    dispatcher.resign().await;
    token.cancel();
    let _ = listener_task.await;
    let _ = server.await;
    Ok(())
}

/// One broker connection: stand by until this dispatcher leads, lead until another
/// takes over (then stand by again, on the same connection), until shutdown (Ok) or a
/// broker failure (Err).
async fn session(
    d: &mut Dispatcher,
    health: &Health,
    conn: &Connection,
    wake: &Wake,
    token: &CancellationToken,
) -> Result<(), Error> {
    // A memory or disk alarm shows in the connection's status, so no round assigns
    // work whose requests could not be published.
    let _probe = amqp::spawn_alarm_probe(conn).await?;
    health.set_broker_up(true);
    loop {
        // A standby neither consumes INFO (it would take heartbeats from the leader)
        // nor touches the database beyond asking for leadership.
        if !d.leads() && !d.wait_for_leadership(token).await {
            return Ok(());
        }
        match lead(d, conn, wake, token).await {
            Err(Error::LostLeadership) => continue,
            other => return other,
        }
    }
}

/// Leads on `conn`: consumes INFO and runs rounds until shutdown, a lost leadership or
/// a broker failure. Its channels are closed on the way out, so INFO not yet acked goes
/// back to the queue for whoever leads next.
async fn lead(
    d: &mut Dispatcher,
    conn: &Connection,
    wake: &Wake,
    token: &CancellationToken,
) -> Result<(), Error> {
    let n = d.names.clone();
    let publisher = Publisher::new(conn, &d.cfg.amqp).await?;
    amqp::declare_core(conn, &n).await?;
    amqp::declare_info_queue(conn, &n).await?;
    amqp::declare_logs_queue(publisher.channel(), &n).await?;
    let (consumer_ch, consumer) =
        amqp::consume(conn, &n.info_queue(), "fleet-dispatcher", 512).await?;
    // Before any sweep can lose an attempt that a replaced leader opened: every executor
    // is told of this epoch, so that such a leader's requests, published late (it was
    // frozen after its commit), are given back unrun instead of running beside the
    // attempt that replaces them. Confirmed, so it is in every executor's queue before
    // anything it is meant to stop.
    if let Some(lead) = d.leader.current() {
        publisher
            .publish(
                Outgoing::new(
                    n.root_exchange(),
                    keys::CONTROL_ALL,
                    proto::encode(&Control {
                        action: ControlAction::Leader { epoch: lead.epoch },
                    }),
                )
                .with_properties(amqp::transient_properties()),
            )
            .await?;
    }
    // A new session: whatever was learnt of leases before it is stale until everyone
    // has reported again.
    d.hold_sweeps();
    let result = rounds(d, &publisher, consumer, wake, token).await;
    match &result {
        // The connection goes on (standing by, or draining): close what leading used.
        Ok(()) | Err(Error::LostLeadership) => {
            amqp::close_channel(&consumer_ch).await;
            amqp::close_channel(publisher.channel()).await;
        }
        // No broker to publish on: give the lease up at once; the connection and its
        // channels are closed by the supervisor.
        Err(_) => d.resign().await,
    }
    result
}

async fn rounds(
    d: &mut Dispatcher,
    publisher: &Publisher,
    mut consumer: lapin::Consumer,
    wake: &Wake,
    token: &CancellationToken,
) -> Result<(), Error> {
    let n = d.names.clone();
    let mut tick = tokio::time::interval(d.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db_backoff = amqp::Backoff::default();
    loop {
        let mut last = None;
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = wake.each.notified() => d.notified_each(),
            _ = wake.any.notified() => d.notified(),
            _ = tick.tick() => d.ticked(),
            first = consumer.next() => {
                // Take what else is already here without waiting: one round per burst.
                let mut next = first;
                loop {
                    match next {
                        Some(Ok(delivery)) => {
                            match proto::decode::<Info>(&delivery.data) {
                                // The routing key is what the broker checked against the
                                // sender's permissions; a body naming another executor is forged.
                                Ok(info) if delivery.routing_key.as_str() != keys::info(&info.executor_id) => publisher
                                    .publish(amqp::dead_letter(&n, &delivery, &n.info_queue(), "forged",
                                        &format!("INFO for executor {} sent with routing key {}", info.executor_id, delivery.routing_key)))
                                    .await?,
                                Ok(info) => d.heard(info),
                                Err(e) => publisher
                                    .publish(amqp::dead_letter(&n, &delivery, &n.info_queue(), e.reason(), &e.to_string()))
                                    .await?,
                            }
                            last = Some(delivery);
                        }
                        Some(Err(e)) => return Err(amqp::AmqpError::from(e).into()),
                        None => return Err(amqp::AmqpError::Timeout("consumer ended").into()),
                    }
                    match consumer.next().now_or_never() {
                        Some(n) => next = n,
                        None => break,
                    }
                }
            }
        }
        match d.run_once(publisher).await {
            Ok(report) => {
                db_backoff.reset(Duration::from_millis(100));
                if report != Report::default() {
                    tracing::debug!(?report, "round");
                }
            }
            Err(Error::Amqp(e)) => return Err(e.into()),
            // Dropping this session's consumer hands INFO back; the session stands by
            // until it may lead again.
            Err(Error::LostLeadership) => return Err(Error::LostLeadership),
            Err(e) => {
                tracing::warn!(error = %e, "dispatch round failed (database); backing off");
                // Leases were not extended meanwhile: hear everyone again before sweeping.
                d.hold_sweeps();
                d.ticked();
                if !db_backoff.wait(token).await {
                    return Ok(());
                }
            }
        }
        // INFO is acked once the round that took it ran: a dispatcher that dies before
        // leaves it (its `finished` and `returned` facts) to its successor.
        if let Some(last) = last {
            amqp::ack_through(&last).await?;
        }
    }
}
