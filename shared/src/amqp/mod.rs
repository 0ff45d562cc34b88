//! The RabbitMQ layer: connecting with deadlines and backoff, declaring the topology,
//! publishing in confirmed batches, consuming in batches, dead-lettering.

pub mod names;

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;

pub use lapin::message::Delivery;
pub use names::{keys, BrokerPermissions, Names, Service};

use crate::config::AmqpConfig;
use crate::error::Transience;
use crate::group::GroupName;
use crate::id::ExecutorId;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("broker TLS: {0}")]
    Tls(String),
    #[error("broker did not answer {0} in time")]
    Timeout(&'static str),
    #[error("broker refused (nack) a message to {exchange}/{key}")]
    Nacked { exchange: String, key: String },
    #[error("no queue is bound for {exchange}/{key}")]
    Unroutable { exchange: String, key: String },
    #[error("the broker returned a message to {exchange}/{key} that was not in the batch")]
    StrayReturn { exchange: String, key: String },
}

impl Transience for AmqpError {
    fn is_transient(&self) -> bool {
        !matches!(self, Self::Unroutable { .. })
    }
}

async fn deadline<T>(
    what: &'static str,
    d: Duration,
    fut: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r.map_err(AmqpError::from),
        Err(_) => Err(AmqpError::Timeout(what)),
    }
}

/// Connects to `amqp.url`. Over `amqps://` the broker's certificate must chain to a CA
/// of `amqp.ca_file` (else to one of the system's roots) and name the URL's host.
pub async fn connect(cfg: &AmqpConfig, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    // The CA file's CAs only, or the system's roots: lapin is built without roots of
    // its own. The file is read at each connection: a CA file replaced on disk is used
    // at the next reconnect (Config::validate checked it at start).
    let cert_chain = if cfg.url.starts_with("amqps://") {
        let pem = match &cfg.ca_file {
            Some(path) => crate::tls::ca_pem(path),
            None => crate::tls::system_roots_pem().map(str::to_owned),
        };
        Some(pem.map_err(|e| AmqpError::Tls(e.to_string()))?)
    } else {
        None
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    let runtime = lapin::runtime::default_runtime()?;
    deadline(
        "connect",
        cfg.connect_timeout(),
        Connection::connect_with_config(&cfg.url, props, tls, runtime),
    )
    .await
}

/// Exponential backoff with a cap, for reconnect loops that must never spin.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }

    /// The longest wait.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Sleeps for the current delay, unless cancelled first (then returns false).
    pub async fn wait(&mut self, token: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = token.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// Connects, retrying with backoff until it succeeds or the token is cancelled.
pub async fn connect_with_backoff(
    cfg: &AmqpConfig,
    name: &str,
    token: &CancellationToken,
) -> Option<Connection> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            _ = token.cancelled() => return None,
            c = connect(cfg, name) => c,
        };
        match attempt {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the broker; retrying");
                if !backoff.wait(token).await {
                    return None;
                }
            }
        }
    }
}

const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing a connection may wait for the broker's close-ok. A broker that is
/// frozen (SIGSTOP, a stalled host) never answers; past this the connection is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes a connection, waiting at most [`CLOSE_TIMEOUT`] for the broker. Closing is the
/// last thing a session does, and a close that hangs would hang the service with it.
pub async fn close(conn: &Connection, why: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await {
        Ok(Ok(())) => {}
        // Already closed or broken: nothing left to close.
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            "the broker did not answer the connection close within {CLOSE_TIMEOUT:?}; dropping it"
        ),
    }
}

/// Closes a channel, waiting at most [`CLOSE_TIMEOUT`].
pub async fn close_channel(ch: &Channel) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "done".into())).await;
}

fn topic() -> ExchangeKind {
    ExchangeKind::Topic
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Exchanges every service relies on: submit intake, events, dead letters, and the root
/// group exchange.
pub async fn declare_exchanges(ch: &Channel, n: &Names) -> Result<(), AmqpError> {
    for ex in [
        n.submit_exchange(),
        n.events_exchange(),
        n.dlx(),
        n.root_exchange(),
    ] {
        deadline(
            "exchange.declare",
            DECLARE_TIMEOUT,
            ch.exchange_declare(
                ex.as_str().into(),
                topic(),
                durable_exchange(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(())
}

/// The core topology, on channels of its own: the core exchanges, and the dead-letter
/// queue that keeps what consumers refuse.
pub async fn declare_core(conn: &Connection, n: &Names) -> Result<(), AmqpError> {
    let ch = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    declare_exchanges(&ch, n).await?;
    declare_dead_queue(conn, n).await?;
    for key in dead_letter_keys(n) {
        bind_queue(&ch, &n.dead_queue(), &n.dlx(), &key).await?;
    }
    close_channel(&ch).await;
    // An older Fleet bound it with `#`, which kept expired requests too. On a channel of
    // its own: a service's own broker user may not touch that key (it is refused, and
    // the refusal closes the channel), the shared user of an older install may.
    let old = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    let unbound = deadline(
        "queue.unbind",
        DECLARE_TIMEOUT,
        old.queue_unbind(
            n.dead_queue().as_str().into(),
            n.dlx().as_str().into(),
            "#".into(),
            FieldTable::default(),
        ),
    )
    .await;
    if let Err(e) = unbound {
        tracing::debug!(error = %e, "the dead queue's old '#' binding was not removed");
    }
    close_channel(&old).await;
    Ok(())
}

/// What the dead-letter queue keeps, by routing key: what consumers refused (their
/// queue's name, `<prefix>.…`) and what the broker dead-lettered from the results, live
/// output and INFO queues. Not kept: requests and control messages that expired in an
/// executor's queue (stale by then, and a request's env may hold secret values, opened
/// for the executor, which must not rest 14 days in the dead queue), and submit messages
/// the broker dead-lettered after the delivery limit (their routing key is anyone's;
/// what the submitter refuses itself is kept, secrets redacted).
pub fn dead_letter_keys(n: &Names) -> [String; 4] {
    [
        format!("{}.#", n.prefix()),
        keys::ANY_RESULT.to_owned(),
        keys::ANY_LOG.to_owned(),
        keys::ANY_INFO.to_owned(),
    ]
}

/// The dead-letter queue keeps at most this many messages; past it the oldest go first.
pub const DEAD_LETTER_MAX: i64 = 100_000;
/// ... and none longer than this (14 days), read or not.
pub const DEAD_LETTER_TTL_MS: i64 = 14 * 24 * 3600 * 1000;

/// The dead-letter queue, bounded in count and age so that a flood of garbage cannot
/// fill the broker's disk. A queue declared by an older Fleet without the bounds is used
/// as it is (redeclaring with other arguments is refused): delete it to bound it.
async fn declare_dead_queue(conn: &Connection, n: &Names) -> Result<(), AmqpError> {
    let mut args = quorum_args();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_TTL_MS),
    );
    declare_or_keep(conn, &n.dead_queue(), args).await
}

/// Declares a durable queue with these arguments, or, if one by that name exists with
/// others (made by an older Fleet), keeps it as it is and says so: RabbitMQ refuses to
/// redeclare a queue with other arguments. On a channel of its own, since a refused
/// declaration closes the channel it was made on.
async fn declare_or_keep(conn: &Connection, name: &str, args: FieldTable) -> Result<(), AmqpError> {
    let probe = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = deadline(
        "queue.declare",
        DECLARE_TIMEOUT,
        probe.queue_declare(name.into(), opts, args),
    )
    .await;
    match declared {
        Ok(_) => {
            close_channel(&probe).await;
            Ok(())
        }
        Err(AmqpError::Lapin(e)) if is_precondition_failed(&e) => {
            tracing::warn!(
                queue = %name,
                "the queue exists with other arguments (an older version made it); it is used \
                 as it is: delete it while the fleet is stopped to have it made anew"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The dispatcher's INFO queue: a classic queue, since INFO is sent transient (a
/// heartbeat lost to a broker restart is replaced by the next; what INFO reports as
/// finished or given back is recovered by leases), and persisting each one would cost
/// the broker a disk write per finished task. Bound on `default` for every executor's
/// INFO.
pub async fn declare_info_queue(conn: &Connection, n: &Names) -> Result<(), AmqpError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(n.dlx().as_str().into()),
    );
    declare_or_keep(conn, &n.info_queue(), args).await?;
    let ch = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    bind_queue(&ch, &n.info_queue(), &n.root_exchange(), keys::ANY_INFO).await?;
    close_channel(&ch).await;
    Ok(())
}

/// The collector's live-output queue, bound on `default` for every executor's `log`
/// messages. Declared by the collector, the dispatcher and the submitter: executors send
/// live output without `mandatory` (a missing queue must not hold their output back),
/// so it must exist as soon as
/// any of them runs, or the first lines of a fleet's first tasks are lost.
pub async fn declare_logs_queue(ch: &Channel, n: &Names) -> Result<(), AmqpError> {
    declare_shared_queue(ch, n, &n.logs_queue(), &n.root_exchange(), keys::ANY_LOG).await
}

/// The broker's 406: a declaration whose arguments differ from the existing object's.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 406)
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

/// Declares a group's exchange and those of its ancestors, bound so that requests and
/// control messages flow down to subgroups and INFO, results and logs flow up to
/// `default`, where the dispatcher and collector listen.
pub async fn declare_group(ch: &Channel, n: &Names, group: &GroupName) -> Result<(), AmqpError> {
    let lineage = group.lineage();
    for g in &lineage {
        deadline(
            "exchange.declare",
            DECLARE_TIMEOUT,
            ch.exchange_declare(
                n.group_exchange(g).as_str().into(),
                topic(),
                durable_exchange(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    for pair in lineage.windows(2) {
        let (child, parent) = (n.group_exchange(&pair[0]), n.group_exchange(&pair[1]));
        for key in keys::DOWNWARD {
            bind_exchange(ch, &child, &parent, key).await?;
        }
        for key in keys::UPWARD {
            bind_exchange(ch, &parent, &child, key).await?;
        }
    }
    Ok(())
}

async fn bind_exchange(
    ch: &Channel,
    destination: &str,
    source: &str,
    key: &str,
) -> Result<(), AmqpError> {
    deadline(
        "exchange.bind",
        DECLARE_TIMEOUT,
        ch.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Shared, replicated queues (dispatcher INFO, collector results, submit intake).
    Quorum,
    /// An executor's own queue.
    Classic,
}

/// How many times a quorum queue redelivers a message that its consumers keep failing
/// on (crashing, say) before it is dead-lettered: a poison message never loops forever.
pub const DELIVERY_LIMIT: i64 = 10;

pub async fn declare_queue(
    ch: &Channel,
    name: &str,
    kind: QueueKind,
    dlx: Option<&str>,
) -> Result<(), AmqpError> {
    let mut args = match kind {
        QueueKind::Quorum => quorum_args(),
        QueueKind::Classic => FieldTable::default(),
    };
    if let Some(dlx) = dlx {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
    }
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    deadline(
        "queue.declare",
        DECLARE_TIMEOUT,
        ch.queue_declare(name.into(), opts, args),
    )
    .await?;
    Ok(())
}

pub async fn bind_queue(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), AmqpError> {
    deadline(
        "queue.bind",
        DECLARE_TIMEOUT,
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// A queue shared by competing consumers (dispatcher INFO, collector results, submit
/// intake): quorum, dead-lettering to `<prefix>.dlx`, bound on `exchange` with `key`.
pub async fn declare_shared_queue(
    ch: &Channel,
    n: &Names,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), AmqpError> {
    declare_queue(ch, queue, QueueKind::Quorum, Some(&n.dlx())).await?;
    bind_queue(ch, queue, exchange, key).await
}

/// An executor's queue: bound on each of its groups for its own requests and control
/// messages, and for control messages to everyone in the group.
pub async fn declare_executor_queue(
    ch: &Channel,
    n: &Names,
    id: &ExecutorId,
    groups: &[GroupName],
) -> Result<(), AmqpError> {
    let q = n.executor_queue(id);
    declare_queue(ch, &q, QueueKind::Classic, Some(&n.dlx())).await?;
    for g in groups {
        declare_group(ch, n, g).await?;
        let ex = n.group_exchange(g);
        for key in [
            keys::request(id),
            keys::control(id),
            keys::CONTROL_ALL.to_owned(),
        ] {
            bind_queue(ch, &q, &ex, &key).await?;
        }
    }
    Ok(())
}

/// Takes an executor's queue out of groups it no longer belongs to (re-registration with
/// other groups): it then gets no `control.all` from them.
pub async fn unbind_executor_queue(
    ch: &Channel,
    n: &Names,
    id: &ExecutorId,
    groups: &[GroupName],
) -> Result<(), AmqpError> {
    let q = n.executor_queue(id);
    for g in groups {
        let ex = n.group_exchange(g);
        for key in [
            keys::request(id),
            keys::control(id),
            keys::CONTROL_ALL.to_owned(),
        ] {
            deadline(
                "queue.unbind",
                DECLARE_TIMEOUT,
                ch.queue_unbind(
                    q.as_str().into(),
                    ex.as_str().into(),
                    key.as_str().into(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
    }
    Ok(())
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub properties: BasicProperties,
    /// Whether having no queue to go to is a failure (requests: yes; events: no).
    pub mandatory: bool,
}

impl Outgoing {
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload,
            properties: json_properties(),
            mandatory: false,
        }
    }

    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    pub fn with_properties(mut self, p: BasicProperties) -> Self {
        self.properties = p;
        self
    }
}

pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// For messages whose loss a lease recovers (requests, INFO): not written to disk by
/// the broker, which saves it a write (and most of its CPU) per message.
pub fn transient_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(1)
}

/// A channel in confirm mode. Publishes a batch, then waits once for all the confirms:
/// the batch is durable at the broker when `publish_all` returns Ok.
///
/// One batch at a time per channel (clones share the channel, and the turn). The broker
/// sends a mandatory message's `basic.return` just before its ack, but lapin does not
/// tie the two by delivery tag: it hands the oldest return not yet taken to whichever
/// confirm it settles next, and settles those of an ack covering several tags in no set
/// order. With two batches in flight on one channel (an executor's result beside its
/// live output or INFO, say), an unroutable result could be reported delivered, and so
/// be lost, while a message that was delivered was reported unroutable. With one batch
/// in flight, every return lapin hands out is one of its messages, and
/// [`Self::publish_batch`] tells which by its content.
#[derive(Clone)]
pub struct Publisher {
    ch: Channel,
    confirm_timeout: Duration,
    connection: lapin::ConnectionStatus,
    turn: std::sync::Arc<tokio::sync::Mutex<Unsettled>>,
}

/// What a batch given up at its deadline left in flight on the channel: the next batch
/// waits for it first, or the late acks would take that batch's returns.
#[derive(Default)]
struct Unsettled {
    /// Confirms not yet in.
    confirms: Vec<lapin::PublisherConfirm>,
    /// A publish was given up while lapin held its confirm: the channel's last one.
    last: bool,
}

impl Unsettled {
    async fn settle(&mut self, ch: &Channel, until: tokio::time::Instant) -> Result<(), AmqpError> {
        let late = || AmqpError::Timeout("publisher confirm");
        while let Some(c) = self.confirms.last_mut() {
            // Its batch has had its answer (an error): only that it is in matters.
            let _ = tokio::time::timeout_at(until, c)
                .await
                .map_err(|_| late())?;
            self.confirms.pop();
        }
        if self.last {
            // Whatever it carries went to a batch that had its answer already.
            let _ = tokio::time::timeout_at(until, ch.wait_for_confirms())
                .await
                .map_err(|_| late())??;
            self.last = false;
        }
        Ok(())
    }
}

impl Publisher {
    pub async fn new(conn: &Connection, cfg: &AmqpConfig) -> Result<Self, AmqpError> {
        let ch = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
        deadline(
            "confirm.select",
            DECLARE_TIMEOUT,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            ch,
            confirm_timeout: cfg.confirm_timeout(),
            connection: conn.status().clone(),
            turn: Default::default(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.ch
    }

    /// Whether the broker blocked this connection (a memory or disk alarm): a publish
    /// now would wait until the alarm clears.
    pub fn blocked(&self) -> bool {
        self.connection.blocked()
    }

    pub async fn publish(&self, msg: Outgoing) -> Result<(), AmqpError> {
        self.publish_all(vec![msg]).await
    }

    /// Publishes a batch and waits for its confirms; a mandatory message that no queue
    /// took is an error ([`AmqpError::Unroutable`]).
    pub async fn publish_all(&self, msgs: Vec<Outgoing>) -> Result<(), AmqpError> {
        let names: Vec<(String, String)> = msgs
            .iter()
            .map(|m| (m.exchange.clone(), m.routing_key.clone()))
            .collect();
        match self.publish_batch(msgs).await?.first() {
            None => Ok(()),
            Some(&i) => {
                let (exchange, key) = names[i].clone();
                Err(AmqpError::Unroutable { exchange, key })
            }
        }
    }

    /// Publishes a batch, then waits once for all the confirms, within the confirm
    /// deadline. Returns the positions (in `msgs`) of mandatory messages the broker
    /// returned because no queue was bound for them: each of those reached nobody, and
    /// the rest of the batch is durable at the broker. A nack, a timeout or a broken
    /// channel is an error, after which nothing is known of the batch.
    pub async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<Vec<usize>, AmqpError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let deadline_at = tokio::time::Instant::now() + self.confirm_timeout;
        // The wait for the turn counts against this batch's deadline, as does settling
        // what a batch given up before it left in flight.
        let mut unsettled = tokio::time::timeout_at(deadline_at, self.turn.lock())
            .await
            .map_err(|_| AmqpError::Timeout("publisher confirm"))?;
        unsettled.settle(&self.ch, deadline_at).await?;
        let mut pending = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let opts = BasicPublishOptions {
                mandatory: m.mandatory,
                ..BasicPublishOptions::default()
            };
            let published = tokio::time::timeout_at(
                deadline_at,
                self.ch.basic_publish(
                    ShortString::from(m.exchange.as_str()),
                    ShortString::from(m.routing_key.as_str()),
                    opts,
                    &m.payload,
                    m.properties.clone(),
                ),
            )
            .await;
            match published {
                Ok(Ok(confirm)) => pending.push(confirm),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    // lapin took the message (and its confirm) before the wait.
                    unsettled.confirms.extend(pending);
                    unsettled.last = true;
                    return Err(AmqpError::Timeout("basic.publish"));
                }
            }
        }
        let mut carried = Vec::new();
        let mut nacked = None;
        let mut confirms = pending.into_iter().enumerate();
        while let Some((i, mut confirm)) = confirms.next() {
            match tokio::time::timeout_at(deadline_at, &mut confirm).await {
                Err(_) => {
                    unsettled.confirms.push(confirm);
                    unsettled.confirms.extend(confirms.map(|(_, c)| c));
                    return Err(AmqpError::Timeout("publisher confirm"));
                }
                // The channel is gone, and every confirm on it with it.
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(Confirmation::Ack(r))) => carried.extend(r),
                Ok(Ok(Confirmation::Nack(r))) => {
                    carried.extend(r);
                    nacked.get_or_insert(i);
                }
                Ok(Ok(Confirmation::NotRequested)) => {}
            }
        }
        drop(unsettled);
        if let Some(i) = nacked {
            return Err(AmqpError::Nacked {
                exchange: msgs[i].exchange.clone(),
                key: msgs[i].routing_key.clone(),
            });
        }
        // Whichever confirm carried it, a return is one of this batch's mandatory
        // messages: the first not yet matched with the same destination and body (two
        // alike are interchangeable).
        let mut returned = Vec::with_capacity(carried.len());
        for r in carried {
            let d = &r.delivery;
            let found = (0..msgs.len()).find(|&i| {
                let m = &msgs[i];
                m.mandatory
                    && !returned.contains(&i)
                    && m.exchange == d.exchange.as_str()
                    && m.routing_key == d.routing_key.as_str()
                    && m.payload == d.data
            });
            match found {
                Some(i) => returned.push(i),
                // Not this batch's: lapin's count of returns is off, so one of ours may
                // have gone elsewhere. Nothing is known of the batch; its sender repeats
                // it, which every consumer takes as a no-op.
                None => {
                    return Err(AmqpError::StrayReturn {
                        exchange: d.exchange.to_string(),
                        key: d.routing_key.to_string(),
                    })
                }
            }
        }
        returned.sort_unstable();
        Ok(returned)
    }
}

/// Stops a background task when dropped (with the session that started it).
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes a resource alarm visible on `conn`. RabbitMQ blocks a connection (and says so
/// with `connection.blocked`, which [`lapin::ConnectionStatus::blocked`] reflects) only
/// once it tries to publish during a memory or disk alarm; a connection that publishes
/// rarely would go on believing all is well. This publishes a message that goes
/// nowhere (the default exchange, no such queue) every second, unless the connection is
/// blocked already, until the returned guard is dropped.
pub async fn spawn_alarm_probe(conn: &Connection) -> Result<AbortOnDrop, AmqpError> {
    let ch = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    let status = conn.status().clone();
    let task = tokio::spawn(async move {
        loop {
            if !status.blocked() {
                let sent = tokio::time::timeout(
                    Duration::from_secs(1),
                    ch.basic_publish(
                        "".into(),
                        "fleet.alarm-probe.nowhere".into(),
                        BasicPublishOptions::default(),
                        b"",
                        BasicProperties::default(),
                    ),
                )
                .await;
                if matches!(sent, Ok(Err(_))) {
                    return; // The channel is gone: so is the session.
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(AbortOnDrop(task))
}

/// Opens a channel with a prefetch and starts consuming `queue`.
pub async fn consume(
    conn: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), AmqpError> {
    let ch = deadline("channel.open", DECLARE_TIMEOUT, conn.create_channel()).await?;
    deadline(
        "basic.qos",
        DECLARE_TIMEOUT,
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = deadline(
        "basic.consume",
        DECLARE_TIMEOUT,
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((ch, consumer))
}

/// What a batch read ended with.
pub enum Batch {
    Messages(Vec<Delivery>),
    /// The consumer failed or was cancelled by the broker: reconnect.
    Broken(AmqpError),
    /// The token was cancelled.
    Shutdown,
}

/// How long a batch waits for more deliveries after its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Whatever arrives within this, always.
    Always(Duration),
    /// Only when the fleet is busy, that is when more than the first delivery was waiting
    /// already: then whatever arrives within this. A delivery that arrives alone is
    /// handled at once, so an idle fleet pays no latency for it, and a busy one writes
    /// fewer, larger batches (a commit each).
    WhenBusy(Duration),
}

/// Waits for one delivery, then takes whatever else is waiting and, as `linger` says,
/// whatever arrives within it, up to `max`.
pub async fn next_batch(
    consumer: &mut Consumer,
    max: usize,
    linger: Linger,
    token: &CancellationToken,
) -> Batch {
    let first = tokio::select! {
        _ = token.cancelled() => return Batch::Shutdown,
        d = consumer.next() => d,
    };
    let mut out = match first {
        Some(Ok(d)) => vec![d],
        Some(Err(e)) => return Batch::Broken(e.into()),
        None => return Batch::Broken(AmqpError::Timeout("consumer ended")),
    };
    let started = tokio::time::Instant::now();
    let mut until = match linger {
        Linger::Always(d) => started + d,
        // What is waiting already: taken without a wait.
        Linger::WhenBusy(_) => started,
    };
    while out.len() < max {
        let next = if until > tokio::time::Instant::now() {
            tokio::time::timeout_at(until, consumer.next()).await.ok()
        } else {
            consumer.next().now_or_never()
        };
        match next {
            Some(Some(Ok(d))) => {
                out.push(d);
                if let Linger::WhenBusy(d) = linger {
                    until = started + d;
                }
            }
            Some(Some(Err(e))) => {
                // Deliveries already taken were not acked; the broker will redeliver them.
                return Batch::Broken(e.into());
            }
            Some(None) | None => break,
        }
    }
    Batch::Messages(out)
}

/// Acks every delivery up to and including `last` on its channel.
pub async fn ack_through(last: &Delivery) -> Result<(), AmqpError> {
    let opts = lapin::options::BasicAckOptions { multiple: true };
    deadline("basic.ack", DECLARE_TIMEOUT, last.acker.ack(opts)).await?;
    Ok(())
}

/// What handling a batch came to.
pub enum Handled {
    /// Done: publish these (replies, events, dead letters), then ack the batch.
    Publish(Vec<Outgoing>),
    /// Shutting down: leave the batch unacked; the broker redelivers it.
    Shutdown,
}

/// The consume loop the collector and the submitter intake share, written as a
/// `while let` in the caller:
///
/// ```ignore
/// let mut batches = BatchConsumer::new(consumer, 256, linger);
/// while let Some(deliveries) = batches.next(&token).await? {
///     let handled = handle(&deliveries).await;
///     if !batches.finish(&deliveries, handled, &publisher).await? { break; }
/// }
/// ```
pub struct BatchConsumer {
    consumer: Consumer,
    max: usize,
    linger: Linger,
}

impl BatchConsumer {
    pub fn new(consumer: Consumer, max: usize, linger: Linger) -> Self {
        Self {
            consumer,
            max,
            linger,
        }
    }

    /// The next batch; `None` on shutdown.
    pub async fn next(
        &mut self,
        token: &CancellationToken,
    ) -> Result<Option<Vec<Delivery>>, AmqpError> {
        loop {
            match next_batch(&mut self.consumer, self.max, self.linger, token).await {
                Batch::Messages(d) if d.is_empty() => continue,
                Batch::Messages(d) => return Ok(Some(d)),
                Batch::Broken(e) => return Err(e),
                Batch::Shutdown => return Ok(None),
            }
        }
    }

    /// Carries out what handling the batch came to: publish, then ack. Returns false when
    /// the consumer should stop (shutdown); a batch left unacked then is redelivered.
    pub async fn finish(
        &mut self,
        deliveries: &[Delivery],
        handled: Handled,
        publisher: &Publisher,
    ) -> Result<bool, AmqpError> {
        let Some(last) = deliveries.last() else {
            return Ok(true);
        };
        match handled {
            Handled::Publish(out) => {
                publisher.publish_all(out).await?;
                ack_through(last).await?;
                Ok(true)
            }
            Handled::Shutdown => Ok(false),
        }
    }
}

/// A dead letter: the original body, with why it was refused in its headers.
pub fn dead_letter(n: &Names, d: &Delivery, source: &str, reason: &str, detail: &str) -> Outgoing {
    dead_letter_body(n, d, source, reason, detail, d.data.clone())
}

/// A header of a delivery as text, if it is a string; its name in any case
/// (`Authorization` as well as `authorization`).
pub fn header_text(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    let (_, value) = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))?;
    match value {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// A dead letter for part of a delivery (one result of a `results` list, say): `body`
/// instead of the delivery's, with the delivery's properties and the same headers.
pub fn dead_letter_body(
    n: &Names,
    d: &Delivery,
    source: &str,
    reason: &str,
    detail: &str,
    body: Vec<u8>,
) -> Outgoing {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    // A token is not kept where whoever reads the dead letters would find it.
    let is_token = |k: &ShortString| {
        k.as_str()
            .eq_ignore_ascii_case(crate::proto::SUBMIT_TOKEN_HEADER)
    };
    if headers.inner().keys().any(is_token) {
        let kept: std::collections::BTreeMap<_, _> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !is_token(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers = FieldTable::from(kept);
    }
    headers.insert(
        "x-fleet-reason".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-fleet-detail".into(),
        AMQPValue::LongString(detail.into()),
    );
    headers.insert(
        "x-fleet-source".into(),
        AMQPValue::LongString(source.into()),
    );
    let props = d.properties.clone().with_headers(headers);
    metrics::counter!("fleet_dead_letters_total", "source" => source.to_owned(), "reason" => reason.to_owned())
        .increment(1);
    tracing::warn!(source, reason, detail, "dead-lettering a message");
    Outgoing::new(n.dlx(), source.to_owned(), body).with_properties(props)
}
