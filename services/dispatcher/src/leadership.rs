//! Leadership: one dispatcher leads, under an epoch, while it renews its lease row;
//! the others stand by. The lease is renewed on a timer (a third of its length), not on
//! every round, and the leader knows by its own clock until when it surely still leads.

use std::time::Duration;

use fleet_shared::amqp::Backoff;
use fleet_shared::db::{dispatch, DbError, Pool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Leader {
    /// Names this process in the leader row.
    pub holder: String,
    ttl: Duration,
    lead: Option<dispatch::Leadership>,
    /// When it started leading this time.
    since: Option<Instant>,
    /// When the last renewal (or the taking) was sent: the lease runs at least until
    /// this plus the TTL, by our clock.
    renewed: Instant,
}

impl Leader {
    pub fn new(ttl: Duration) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        Self {
            holder,
            ttl,
            lead: None,
            since: None,
            renewed: Instant::now(),
        }
    }

    pub fn current(&self) -> Option<&dispatch::Leadership> {
        self.lead.as_ref()
    }

    pub fn leads(&self) -> bool {
        self.lead.is_some()
    }

    /// How long it has led without interruption.
    pub fn led_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Until when, by our clock, no standby can have taken over.
    pub fn surely_until(&self) -> Instant {
        self.renewed + self.ttl
    }

    /// Waits as a standby until this dispatcher leads (false: shutdown first). A
    /// database that does not answer is waited out with backoff.
    pub async fn wait(&mut self, pool: &Pool, every: Duration, token: &CancellationToken) -> bool {
        let mut announced = false;
        let mut backoff = Backoff::default();
        loop {
            let asking = Instant::now();
            let asked = async {
                let client = pool.get().await?;
                dispatch::try_lead(&client, &self.holder, self.ttl.as_secs_f64()).await
            };
            match asked.await {
                Ok(Some(lead)) => {
                    tracing::info!(holder = %self.holder, epoch = lead.epoch, "leading");
                    metrics::gauge!("fleet_dispatcher_leader").set(1.0);
                    self.lead = Some(lead);
                    self.since = Some(Instant::now());
                    self.renewed = asking;
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

    /// Renews the lease once a third of it has passed. `Ok(false)`: another dispatcher
    /// holds it now.
    pub async fn renew_if_due(&mut self, pool: &Pool) -> Result<bool, DbError> {
        let Some(lead) = self.lead.clone() else {
            return Ok(false);
        };
        if self.renewed.elapsed() < self.ttl / 3 {
            return Ok(true);
        }
        let asking = Instant::now();
        let client = pool.get().await?;
        if dispatch::renew(&client, &lead, self.ttl.as_secs_f64()).await? {
            self.renewed = asking;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Another dispatcher took over.
    pub fn lost(&mut self) {
        tracing::info!(holder = %self.holder, "another dispatcher took over; standing by");
        metrics::gauge!("fleet_dispatcher_leader").set(0.0);
        self.lead = None;
        self.since = None;
    }

    /// Gives leadership up at once (shutdown, or no broker to publish on), so that a
    /// standby need not wait out the lease. Bounded: a database that does not answer
    /// leaves the lease to expire by itself.
    pub async fn resign(&mut self, pool: &Pool) {
        let Some(lead) = self.lead.take() else {
            return;
        };
        self.since = None;
        metrics::gauge!("fleet_dispatcher_leader").set(0.0);
        let released = tokio::time::timeout(Duration::from_secs(2), async {
            let client = pool.get().await?;
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
}
