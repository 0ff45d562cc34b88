//! The dispatcher: a loop around [`Dispatcher::run_once`], woken by PostgreSQL
//! notifications (new or freed work), INFO heartbeats, and a tick. Each round records the
//! heartbeats, expires lost leases, and hands ready tasks to executors through the
//! balancing policy. It owns executors and attempts (the leases).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_shared::amqp::{self, keys, Names, Outgoing, Publisher};
use fleet_shared::config::Config;
use fleet_shared::db::dispatch::HeldBy;
use fleet_shared::db::{self, dispatch, outbox, DbError, Pool};
use fleet_shared::http::{self, Health};
use fleet_shared::id::ExecutorId;
use fleet_shared::policy::{self, ExecutorView, ReadyTask};
use fleet_shared::proto::{self, Info, Request};
use fleet_shared::svc;
use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_ADDR: &str = "127.0.0.1:7071";
/// Ready tasks read per page; a round reads pages until the free slots are filled.
const PAGE: i64 = 1000;
const MAX_PAGES_PER_ROUND: usize = 10;

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
    pub heartbeats: usize,
    pub lost: usize,
    pub assigned: usize,
    /// Attempts taken back unstarted (given back by their executor, or unroutable).
    pub returned: usize,
}

struct Seen {
    info: Info,
    at: Instant,
}

pub struct Dispatcher {
    /// Names this process in the leader row.
    holder: String,
    lead: Option<dispatch::Leadership>,
    /// When this dispatcher last became leader: until every alive executor has had time
    /// to report, it does not know all members of a group.
    led_since: Option<Instant>,
    cfg: Config,
    pool: Pool,
    names: Names,
    executors: HashMap<ExecutorId, Seen>,
    /// The latest INFO of each executor heard since the last round.
    heartbeats: HashMap<ExecutorId, (Info, DateTime<Utc>)>,
    /// Attempts executors gave back (INFO `returned`) since the last round.
    returned: Vec<(HeldBy, bool)>,
    /// Attempts executors reported finished (INFO `finished`) since the last round.
    finished: Vec<HeldBy>,
    /// No lease or grace sweep before this: until then the executors have not all been
    /// heard from since this dispatcher (re)started leading or came back from an outage,
    /// and an attempt whose lease ran out meanwhile may well be alive.
    sweep_after: Instant,
    /// Executors whose requests came back unroutable (an INFO from an executor with no
    /// queue): given nothing until then; the wait doubles on each return.
    unroutable: HashMap<ExecutorId, (Instant, Duration)>,
}

impl Dispatcher {
    pub fn new(cfg: Config, pool: Pool) -> Self {
        let names = Names::new(&cfg.amqp.prefix);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        Self {
            holder,
            lead: None,
            led_since: None,
            cfg,
            pool,
            names,
            executors: HashMap::new(),
            heartbeats: HashMap::new(),
            returned: Vec::new(),
            finished: Vec::new(),
            sweep_after: Instant::now(),
            unroutable: HashMap::new(),
        }
    }

    /// Holds the lease and grace sweeps until every executor alive has had time to
    /// report (INFO extends the leases of what it holds).
    fn hold_sweeps(&mut self) {
        let hear_all = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        self.sweep_after = self.sweep_after.max(Instant::now() + hear_all);
    }

    /// Takes an INFO heartbeat into account (recorded at the next round).
    pub fn heard(&mut self, mut info: Info) {
        // What it gave back or finished is a fact however old the message: it will not
        // run those again.
        for r in std::mem::take(&mut info.returned) {
            let held = HeldBy {
                task_id: r.task_id,
                attempt: r.attempt,
                executor_id: info.executor_id.clone(),
            };
            self.returned.push((held, r.running));
        }
        for f in std::mem::take(&mut info.finished) {
            self.finished.push(HeldBy {
                task_id: f.task_id,
                attempt: f.attempt,
                executor_id: info.executor_id.clone(),
            });
        }
        // A heartbeat that waited in the queue (through a dispatcher outage, say) says
        // nothing about whether its executor is alive now.
        let age = Utc::now().signed_duration_since(info.sent_at);
        if age > chrono::Duration::seconds(self.cfg.dispatcher.executor_timeout_secs as i64) {
            return;
        }
        let newer = self
            .executors
            .get(&info.executor_id)
            .is_none_or(|s| s.info.sent_at <= info.sent_at);
        if !newer {
            return;
        }
        self.executors.insert(
            info.executor_id.clone(),
            Seen {
                info: info.clone(),
                at: Instant::now(),
            },
        );
        self.heartbeats
            .insert(info.executor_id.clone(), (info, Utc::now()));
    }

    fn lease_secs(&self) -> f64 {
        self.cfg.dispatcher.lease_timeout_secs as f64
    }

    fn leader_ttl(&self) -> f64 {
        self.cfg.dispatcher.leader_ttl_secs as f64
    }

    /// The epoch we lead under, if we lead.
    pub fn epoch(&self) -> Option<i64> {
        self.lead.as_ref().map(|l| l.epoch)
    }

    /// Waits as a standby until this dispatcher leads (false: shutdown first). The
    /// database being unreachable is waited out here, with backoff: it is no reason to
    /// drop the broker connection.
    pub async fn wait_for_leadership(&mut self, token: &CancellationToken) -> bool {
        let every = Duration::from_millis(self.cfg.dispatcher.tick_ms);
        let mut announced = false;
        let mut backoff = amqp::Backoff::default();
        loop {
            let asked = async {
                let client = self.pool.get().await?;
                dispatch::try_lead(&client, &self.holder, self.leader_ttl()).await
            };
            match asked.await {
                Ok(Some(lead)) => {
                    tracing::info!(holder = %self.holder, epoch = lead.epoch, "leading");
                    metrics::gauge!("fleet_dispatcher_leader").set(1.0);
                    self.lead = Some(lead);
                    self.led_since = Some(Instant::now());
                    self.hold_sweeps();
                    return true;
                }
                Ok(None) => {
                    backoff.reset(Duration::from_millis(100));
                    if !announced {
                        tracing::info!(holder = %self.holder, "standing by: another dispatcher leads");
                        metrics::gauge!("fleet_dispatcher_leader").set(0.0);
                        announced = true;
                    }
                    tokio::select! {
                        _ = token.cancelled() => return false,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask for leadership: the database is unavailable; retrying");
                    if !backoff.wait(token).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Gives leadership up at once (shutdown, or no broker to publish on), so that a
    /// standby need not wait out the lease. Bounded: a database that does not answer
    /// leaves the lease to expire by itself.
    pub async fn resign(&mut self) {
        let Some(lead) = self.lead.take() else {
            return;
        };
        self.forget_executors();
        metrics::gauge!("fleet_dispatcher_leader").set(0.0);
        let released = tokio::time::timeout(Duration::from_secs(2), async {
            let client = self.pool.get().await?;
            dispatch::release(&client, &lead).await
        })
        .await;
        match released {
            Ok(Ok(_)) => {
                tracing::info!(holder = %self.holder, epoch = lead.epoch, "leadership given up")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not give leadership up; it expires by itself")
            }
            Err(_) => tracing::warn!("could not give leadership up in 2s; it expires by itself"),
        }
    }

    fn forget_executors(&mut self) {
        // Rebuilt from the next INFO round if we lead again.
        self.executors.clear();
        self.heartbeats.clear();
        self.returned.clear();
        self.finished.clear();
        self.unroutable.clear();
    }

    fn step_down(&mut self) -> Error {
        tracing::info!(holder = %self.holder, "another dispatcher took over; standing by");
        metrics::gauge!("fleet_dispatcher_leader").set(0.0);
        self.lead = None;
        self.forget_executors();
        Error::LostLeadership
    }

    /// Opens a transaction fenced by our leadership, or steps down.
    async fn fenced<'c>(
        &mut self,
        client: &'c mut fleet_shared::db::Client,
    ) -> Result<fleet_shared::db::Transaction<'c>, Error> {
        let Some(lead) = self.lead.clone() else {
            return Err(Error::LostLeadership);
        };
        let tx = client.transaction().await.map_err(DbError::from)?;
        if dispatch::fence(&tx, &lead).await? {
            Ok(tx)
        } else {
            Err(self.step_down())
        }
    }

    /// Fans ready `each` tasks out to the members `views` knows. A task whose group has
    /// no member yet stays ready; one whose quorum exceeds its members fails at once.
    async fn fan_out(
        &mut self,
        client: &mut fleet_shared::db::Client,
        views: &[ExecutorView],
        publisher: &Publisher,
    ) -> Result<(), Error> {
        // Members are the executors heard from; right after taking the lead, not all of
        // them have been heard yet, and a fan-out would leave some out for good.
        let heard_all = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        if self.led_since.is_none_or(|t| t.elapsed() < heard_all) {
            return Ok(());
        }
        let ready = dispatch::ready_each(client, PAGE).await?;
        let fan: Vec<_> = ready
            .iter()
            .filter_map(|r| {
                let m = policy::members(&ready_task(r), views);
                (!m.is_empty()).then_some((r.id, m))
            })
            .collect();
        if fan.is_empty() {
            return Ok(());
        }
        let tx = self.fenced(client).await?;
        let ids = dispatch::fan_out(&tx, &fan).await?;
        let settled = db::collect::settle_each(&tx, &ids).await?;
        outbox::enqueue(&tx, &outbox::events(&self.names, &settled)).await?;
        tx.commit().await.map_err(DbError::from)?;
        tracing::debug!(tasks = ids.len(), "each tasks fanned out");
        if !settled.finished.is_empty() {
            self.relay_events(publisher).await?;
        }
        Ok(())
    }

    /// Sends what the outbox holds (one batch: the collector drains any backlog, and a
    /// long relay here would outlast our leadership lease).
    async fn relay_events(&self, publisher: &Publisher) -> Result<(), Error> {
        match outbox::relay(&self.pool, publisher, self.names.prefix(), Some(1)).await {
            Ok(_) => Ok(()),
            Err(outbox::RelayError::Amqp(e)) => Err(e.into()),
            // The collector's relay, or ours next time, sends them.
            Err(outbox::RelayError::Db(e)) => {
                tracing::warn!(error = %e, "outbox relay postponed");
                Ok(())
            }
        }
    }

    pub async fn run_once(&mut self, publisher: &Publisher) -> Result<Report, Error> {
        let mut report = Report::default();
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let Some(lead) = self.lead.clone() else {
            return Err(Error::LostLeadership);
        };
        let renewing = Instant::now();
        if !dispatch::renew(&client, &lead, self.leader_ttl()).await? {
            return Err(self.step_down());
        }
        // By our own clock, the lease we just renewed cannot have run out before this.
        let lead_until = renewing + Duration::from_secs(self.cfg.dispatcher.leader_ttl_secs);

        if !self.heartbeats.is_empty() || !self.returned.is_empty() || !self.finished.is_empty() {
            // Taken out first: heartbeats are ephemeral, and a batch the database
            // refuses must not stand in front of every later round (the next INFO comes
            // within a second). Attempts given back are not: an executor that gave one
            // back will not run it, and only its lease would recover it otherwise.
            let beats: Vec<_> = std::mem::take(&mut self.heartbeats).into_values().collect();
            let (started, unstarted): (Vec<_>, Vec<_>) = self
                .returned
                .iter()
                .cloned()
                .partition(|(_, started)| *started);
            let unstarted: Vec<HeldBy> = unstarted.into_iter().map(|(h, _)| h).collect();
            let started: Vec<HeldBy> = started.into_iter().map(|(h, _)| h).collect();
            let result_secs = self.cfg.dispatcher.result_timeout_secs as f64;
            let tx = self.fenced(&mut client).await?;
            dispatch::apply_infos(&tx, &beats, self.lease_secs()).await?;
            dispatch::mark_reported(&tx, &self.finished, result_secs).await?;
            report.returned = dispatch::unassign(&tx, &unstarted).await? as usize;
            let lost = dispatch::lose(&tx, &started).await?;
            outbox::enqueue(&tx, &outbox::events(&self.names, &lost)).await?;
            tx.commit().await.map_err(DbError::from)?;
            self.returned.clear();
            self.finished.clear();
            report.heartbeats = beats.len();
            report.lost += lost.finished.len() + lost.readied;
        }

        // No sweep until every executor alive has been heard since we (re)started
        // leading: leases not extended while we were away are not a sign of death.
        if Instant::now() >= self.sweep_after {
            self.sweep(&mut client, publisher, &mut report).await?;
        }
        metrics::counter!("fleet_dispatcher_lost_attempts_total").increment(report.lost as u64);

        // Three small reads, pipelined on one connection. Groups an administrator put
        // executors in add to those they declare; registered executors are held to the
        // groups they registered with, and revoked ones get nothing (the sweep above
        // already lost their attempts).
        let (outstanding, assigned, registered) = tokio::try_join!(
            dispatch::outstanding(&client),
            db::admin::assigned_groups(&client),
            db::admin::registered_executors(&client),
        )?;
        let require = self.cfg.dispatcher.require_registration;
        let alive_for = Duration::from_secs(self.cfg.dispatcher.executor_timeout_secs);
        let now = Instant::now();
        let mut views: Vec<ExecutorView> = self
            .executors
            .values()
            .filter(|s| s.at.elapsed() < alive_for)
            // Its requests came back unroutable: no queue takes them.
            .filter(|s| {
                self.unroutable
                    .get(&s.info.executor_id)
                    .is_none_or(|(until, _)| *until <= now)
            })
            .filter_map(|s| {
                let id = s.info.executor_id.as_str();
                let declared = match registered.get(id) {
                    Some(r) if r.revoked => return None,
                    Some(r) => &r.groups,
                    None if require => return None,
                    None => &s.info.groups,
                };
                Some((s, with_assigned(declared, assigned.get(id))))
            })
            .map(|(s, groups)| ExecutorView {
                id: s.info.executor_id.clone(),
                groups,
                labels: s.info.labels.clone(),
                capacity: s.info.capacity,
                outstanding: outstanding
                    .get(s.info.executor_id.as_str())
                    .copied()
                    .unwrap_or(0),
                draining: s.info.draining,
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        let window = self.cfg.dispatcher.window;
        // A resource alarm blocks our publishes: assigning now would open attempts whose
        // requests cannot leave, and cost each task an attempt when their leases ran out.
        if publisher.blocked() {
            return Ok(report);
        }

        // `each` tasks that became ready fan out into one copy per member known now.
        self.fan_out(&mut client, &views, publisher).await?;
        // Copies wait for their own member only, so they go first.
        let pending = dispatch::pending_copies(&client).await?;
        let pinned = policy::assign_pinned(&pending, &mut views, window);

        let mut rows = HashMap::new();
        let mut pairs = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES_PER_ROUND {
            if policy::free_slots(&views, window) == 0 {
                break;
            }
            let page = dispatch::ready_page(&client, cursor, PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = Some((last.priority, last.seq));
            let ready: Vec<ReadyTask> = page.iter().map(ready_task).collect();
            pairs.extend(policy::assign(&ready, &mut views, window));
            let full = page.len() as i64 == PAGE;
            rows.extend(page.into_iter().map(|r| (r.id, r)));
            if !full {
                break;
            }
        }
        if pairs.is_empty() && pinned.is_empty() {
            return Ok(report);
        }
        if !pinned.is_empty() {
            let ids: Vec<_> = pinned.iter().map(|(t, _)| *t).collect();
            rows.extend(dispatch::task_rows(&client, &ids).await?);
        }

        let tx = self.fenced(&mut client).await?;
        let mut assignments = dispatch::assign(&tx, &pairs, self.lease_secs(), lead.epoch).await?;
        assignments
            .extend(dispatch::assign_copies(&tx, &pinned, self.lease_secs(), lead.epoch).await?);
        tx.commit().await.map_err(DbError::from)?;
        report.assigned = assignments.len();
        metrics::counter!("fleet_dispatcher_assigned_total").increment(assignments.len() as u64);

        let root = self.names.root_exchange();
        // A request not taken within the lease is stale: its attempt is lost by then and
        // the task runs elsewhere, so it must not linger in the queue of an executor that
        // left, to run when one by that name comes back.
        let expiration = (self.cfg.dispatcher.lease_timeout_secs * 1000).to_string();
        let sent: Vec<&dispatch::Assignment> = assignments
            .iter()
            .filter(|a| rows.contains_key(&a.task_id))
            .collect();
        let out: Vec<Outgoing> = sent
            .iter()
            .filter_map(|a| {
                let row = rows.get(&a.task_id)?;
                let req = Request {
                    task_id: a.task_id,
                    attempt: a.attempt,
                    job_id: row.job_id,
                    argv: row.argv.clone(),
                    env: row.env.clone(),
                    cwd: row.cwd.clone(),
                    stdin: row.stdin.clone(),
                    timeout_secs: row.timeout_secs,
                    lease_deadline: a.lease_deadline,
                };
                let props = amqp::json_properties().with_expiration(expiration.as_str().into());
                Some(
                    Outgoing::new(
                        root.clone(),
                        keys::request(&a.executor_id),
                        proto::encode(&req),
                    )
                    .with_properties(props)
                    .mandatory(),
                )
            })
            .collect();
        // If this fails after the commit, the attempts' leases run out and the tasks go
        // back to ready: late, never lost.
        // A leader frozen between the commit and here (SIGSTOP, a stalled VM) may have
        // been replaced meanwhile, and its attempts lost and handed out again: sending
        // its requests now would run those tasks twice. Not sending is always safe: the
        // attempts' leases run out.
        if Instant::now() >= lead_until {
            tracing::warn!(
                "leadership may have lapsed during the round; its requests are not sent"
            );
            return Err(self.step_down());
        }
        let returned = publisher.publish_batch(out).await?;
        let back: Vec<HeldBy> = returned
            .iter()
            .filter_map(|&i| sent.get(i))
            .map(|a| HeldBy {
                task_id: a.task_id,
                attempt: a.attempt,
                executor_id: a.executor_id.clone(),
            })
            .collect();
        self.note_routes(&sent, &back);
        if !back.is_empty() {
            // Nobody received these: take them back now rather than at their leases,
            // and keep the broker session, which did nothing wrong.
            let tx = self.fenced(&mut client).await?;
            report.returned += dispatch::unassign(&tx, &back).await? as usize;
            tx.commit().await.map_err(DbError::from)?;
            report.assigned -= back.len().min(report.assigned);
        }
        Ok(report)
    }

    /// Executors whose requests came back unroutable get nothing for a while (1 s,
    /// doubling up to a minute while it goes on); one that took a request is cleared.
    fn note_routes(&mut self, sent: &[&dispatch::Assignment], back: &[HeldBy]) {
        let now = Instant::now();
        let unroutable: std::collections::BTreeSet<&ExecutorId> =
            back.iter().map(|b| &b.executor_id).collect();
        for id in &unroutable {
            let wait = self
                .unroutable
                .get(*id)
                .map_or(Duration::from_secs(1), |(_, w)| {
                    (*w * 2).min(Duration::from_secs(60))
                });
            tracing::warn!(executor_id = %id,
                "requests for this executor came back unroutable (it reports INFO but has no queue); giving it nothing for {wait:?}");
            metrics::counter!("fleet_dispatcher_unroutable_total").increment(1);
            self.unroutable.insert((*id).clone(), (now + wait, wait));
        }
        for a in sent {
            if !unroutable.contains(&a.executor_id) {
                self.unroutable.remove(&a.executor_id);
            }
        }
    }

    /// Expired leases (and revoked executors' attempts), then members of `each` tasks
    /// gone past their grace.
    async fn sweep(
        &mut self,
        client: &mut fleet_shared::db::Client,
        publisher: &Publisher,
        report: &mut Report,
    ) -> Result<(), Error> {
        let tx = self.fenced(client).await?;
        let mut settled = dispatch::sweep_leases(&tx).await?;
        // Tasks failed as lost (and their jobs) are announced like any other outcome.
        outbox::enqueue(&tx, &outbox::events(&self.names, &settled)).await?;
        tx.commit().await.map_err(DbError::from)?;
        // Members of `each` tasks gone past their grace: a transaction of its own, so its
        // locks are taken in settle()'s order (tasks, copies, jobs), and only when a
        // lock-free look found any.
        let alive_secs = self.cfg.dispatcher.executor_timeout_secs as f64;
        let gone = dispatch::grace_candidates(client, self.lease_secs(), alive_secs).await?;
        if !gone.is_empty() {
            let tx = self.fenced(client).await?;
            let graced = dispatch::sweep_grace(&tx, &gone, self.lease_secs(), alive_secs).await?;
            outbox::enqueue(&tx, &outbox::events(&self.names, &graced)).await?;
            tx.commit().await.map_err(DbError::from)?;
            settled.finished.extend(graced.finished);
            settled.jobs.extend(graced.jobs);
        }
        if !settled.finished.is_empty() || !settled.jobs.is_empty() {
            self.relay_events(publisher).await?;
        }
        report.lost += settled.finished.len() + settled.readied;
        Ok(())
    }
}

fn ready_task(r: &dispatch::ReadyRow) -> ReadyTask {
    ReadyTask {
        id: r.id,
        group: r.group.clone(),
        labels: r.labels.clone(),
    }
}

/// An executor's declared groups plus the ones it was put in.
fn with_assigned(
    declared: &[fleet_shared::group::GroupName],
    assigned: Option<&Vec<fleet_shared::group::GroupName>>,
) -> Vec<fleet_shared::group::GroupName> {
    let mut groups = declared.to_vec();
    for g in assigned.into_iter().flatten() {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    groups
}

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), Error> {
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
    let wake = Arc::new(Notify::new());
    let listener_task = tokio::spawn(db::listen_for_wakes(
        cfg.database.clone(),
        wake.clone(),
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
    wake: &Notify,
    token: &CancellationToken,
) -> Result<(), Error> {
    // A memory or disk alarm shows in the connection's status, so no round assigns
    // work whose requests could not be published.
    let _probe = amqp::spawn_alarm_probe(conn).await?;
    health.set_broker_up(true);
    loop {
        // A standby neither consumes INFO (it would take heartbeats from the leader)
        // nor touches the database beyond asking for leadership.
        if d.lead.is_none() && !d.wait_for_leadership(token).await {
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
    wake: &Notify,
    token: &CancellationToken,
) -> Result<(), Error> {
    let n = d.names.clone();
    let publisher = Publisher::new(conn, &d.cfg.amqp).await?;
    amqp::declare_core(conn, &n).await?;
    let ch = publisher.channel();
    amqp::declare_shared_queue(ch, &n, &n.info_queue(), &n.root_exchange(), keys::ANY_INFO).await?;
    let (consumer_ch, consumer) =
        amqp::consume(conn, &n.info_queue(), "fleet-dispatcher", 512).await?;
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
    wake: &Notify,
    token: &CancellationToken,
) -> Result<(), Error> {
    let n = d.names.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(d.cfg.dispatcher.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db_backoff = amqp::Backoff::default();
    loop {
        let mut last = None;
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tick.tick() => {}
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
                if report.returned > 0 {
                    // Tasks taken back are ready again: hand them out at once.
                    wake.notify_one();
                }
                if report.assigned > 0 || report.lost > 0 || report.returned > 0 {
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
                if !db_backoff.wait(token).await {
                    return Ok(());
                }
            }
        }
        // Heartbeats are ephemeral: one lost to a crash is replaced by the next.
        if let Some(last) = last {
            amqp::ack_through(&last).await?;
        }
    }
}
