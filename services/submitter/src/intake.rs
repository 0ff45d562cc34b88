//! AMQP intake: `submit` messages from other systems, recorded in batches and answered
//! on their `reply_to`. Acked only after the jobs are committed and the replies confirmed.
//! Each message carries an API token (`submitter.amqp_auth = token`, the default) in its
//! `authorization` header, checked as HTTP's: a system that may publish to the broker
//! still cannot submit without a token, nor as someone else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::amqp::{self, Delivery, Handled, Names, Outgoing, Publisher};
use fleet_shared::auth::{Permission, Principal};
use fleet_shared::config::{AmqpAuth, Config};
use fleet_shared::db::Pool;
use fleet_shared::db::{submit, DbError};
use fleet_shared::error::ErrorBody;
use fleet_shared::http::Health;
use fleet_shared::id::JobId;
use fleet_shared::proto::{self, Submit, SubmitReply};
use fleet_shared::svc;
use lapin::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::error::ApiError;

pub async fn run(
    cfg: Config,
    pool: Pool,
    health: Health,
    auth: Arc<Authenticator>,
    publisher: watch::Sender<Option<Publisher>>,
    token: CancellationToken,
) {
    let mut sup = svc::Supervisor::new(&cfg.amqp, "fleet-submitter", &health);
    let intake = Intake {
        cfg: &cfg,
        pool: &pool,
        auth: &auth,
        secrets: fleet_shared::secrets::Policy::from_config(&cfg.secrets),
    };
    while let Some(conn) = sup.connect(&token).await {
        let result = session(&intake, &health, &publisher, &conn, &token).await;
        publisher.send_replace(None);
        if let Some(conn) = sup.ended(conn, result, &token).await {
            amqp::close(&conn, "shutdown").await;
            break;
        }
    }
}

/// What handling a batch needs.
struct Intake<'a> {
    cfg: &'a Config,
    pool: &'a Pool,
    auth: &'a Authenticator,
    secrets: fleet_shared::secrets::Policy,
}

impl Intake<'_> {
    /// A refused submission's dead letter: the message without its token (header) and
    /// without its secret env values (body), which the dead-letter queue must not keep.
    fn dead_letter(
        &self,
        n: &Names,
        d: &Delivery,
        source: &str,
        reason: &str,
        detail: &str,
    ) -> Outgoing {
        let patterns = &self.secrets.patterns;
        let (body, secrets) = fleet_shared::secrets::redact_json_values(&d.data, |k| {
            fleet_shared::job::name_matches(k, patterns)
        });
        // A parser's message may quote the value it could not take.
        let mut detail = detail.to_owned();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            detail = detail.replace(s.as_str(), fleet_shared::secrets::REDACTED);
        }
        amqp::dead_letter_body(n, d, source, reason, &detail, body)
    }
}

async fn session(
    intake: &Intake<'_>,
    health: &Health,
    shared_publisher: &watch::Sender<Option<Publisher>>,
    conn: &Connection,
    token: &CancellationToken,
) -> Result<(), amqp::AmqpError> {
    let cfg = intake.cfg;
    let n = Names::new(&cfg.amqp.prefix);
    let publisher = Publisher::new(conn, &cfg.amqp).await?;
    amqp::declare_core(conn, &n).await?;
    amqp::declare_logs_queue(publisher.channel(), &n).await?;
    // A memory or disk alarm must show (submissions answer 503) even while nobody
    // submits over AMQP.
    let _probe = amqp::spawn_alarm_probe(conn).await?;
    amqp::declare_shared_queue(
        publisher.channel(),
        &n,
        &n.submit_queue(),
        &n.submit_exchange(),
        "#",
    )
    .await?;
    let batch_size = cfg.submitter.batch_size;
    let prefetch = u16::try_from(batch_size * 2).unwrap_or(u16::MAX);
    let (_ch, consumer) =
        amqp::consume(conn, &n.submit_queue(), "fleet-submitter", prefetch).await?;
    shared_publisher.send_replace(Some(publisher.clone()));
    health.set_broker_up(true);
    let mut batches = amqp::BatchConsumer::new(
        consumer,
        batch_size,
        amqp::Linger::Always(Duration::from_millis(5)),
    );
    while let Some(deliveries) = batches.next(token).await? {
        // A shutdown while the database is down leaves the batch unacked: redelivered later.
        let handled = handle_batch(intake, &n, &deliveries, token).await;
        if !batches.finish(&deliveries, handled, &publisher).await? {
            break;
        }
    }
    Ok(())
}

fn reply_to(d: &Delivery, reply: &SubmitReply) -> Option<Outgoing> {
    let to = d.properties.reply_to().as_ref()?;
    let mut props = amqp::json_properties();
    if let Some(c) = d.properties.correlation_id() {
        props = props.with_correlation_id(c.clone());
    }
    Some(Outgoing::new("", to.as_str(), proto::encode(reply)).with_properties(props))
}

fn rejection(code: &str, message: String, field: Option<String>) -> SubmitReply {
    SubmitReply {
        accepted: false,
        job_id: None,
        created: false,
        error: Some(ErrorBody {
            code: code.into(),
            message,
            field,
        }),
    }
}

/// The idempotency key of a submission: `amqp:<message_id>`. An empty `message_id` is no
/// key at all (else every submission without one would be merged into the first); one
/// with a NUL byte is refused (PostgreSQL text cannot hold it).
fn idempotency_key(message_id: Option<&str>) -> Result<Option<String>, String> {
    match message_id {
        None | Some("") => Ok(None),
        Some(m) if m.contains('\0') => Err("message_id: must not contain a NUL byte".into()),
        Some(m) => Ok(Some(format!("amqp:{m}"))),
    }
}

/// Records a batch; says what to publish (replies, dead letters) before the ack.
async fn handle_batch(
    intake: &Intake<'_>,
    n: &Names,
    deliveries: &[Delivery],
    token: &CancellationToken,
) -> Handled {
    let (cfg, pool) = (intake.cfg, intake.pool);
    let source = n.submit_queue();
    let mut out = Vec::new();
    let mut jobs = Vec::new();
    let mut accepted_from = Vec::new();
    // Each distinct token of the batch is looked up once.
    let mut known: HashMap<String, Result<Principal, Refusal>> = HashMap::new();
    for d in deliveries {
        let owner = match intake.cfg.submitter.amqp_auth {
            AmqpAuth::Broker => Principal::amqp_intake(),
            AmqpAuth::Token => {
                let header = amqp::header_text(d, proto::SUBMIT_TOKEN_HEADER);
                let key = header.clone().unwrap_or_default();
                let found = match known.get(&key) {
                    Some(f) => f.clone(),
                    None => {
                        let Some(f) = submitter_of(intake, header.as_deref(), token).await else {
                            return Handled::Shutdown;
                        };
                        known.insert(key, f.clone());
                        f
                    }
                };
                match found {
                    Ok(who) => who,
                    Err(r) => {
                        out.push(intake.dead_letter(n, d, &source, r.code, &r.message));
                        out.extend(reply_to(d, &rejection(r.code, r.message, None)));
                        continue;
                    }
                }
            }
        };
        let parsed = proto::decode::<Submit>(&d.data).map_err(|e| {
            let field = match &e {
                proto::DecodeError::Invalid { field, .. } => Some(field.clone()),
                _ => None,
            };
            (e.reason(), e.to_string(), field)
        });
        let valid = parsed.and_then(|s| {
            let refused = |f: fleet_shared::job::FieldError| {
                ("invalid", f.to_string(), Some(format!("job.{}", f.field)))
            };
            let mut job = s.job.validate().map_err(refused)?;
            intake.secrets.prepare(&mut job).map_err(refused)?;
            let message_id = d.properties.message_id().as_ref().map(|m| m.as_str());
            let key = idempotency_key(message_id)
                .map_err(|why| ("invalid", why, Some("message_id".to_owned())))?;
            Ok((job, key))
        });
        match valid {
            Ok((job, key)) => {
                jobs.push(submit::NewJob {
                    id: JobId::new(),
                    idempotency_key: key,
                    job,
                    owner,
                });
                accepted_from.push(d);
            }
            Err((reason, message, field)) => {
                out.push(intake.dead_letter(n, d, &source, reason, &message));
                out.extend(reply_to(d, &rejection("invalid_request", message, field)));
            }
        }
    }
    if !jobs.is_empty() {
        let schema = &cfg.database.schema;
        let sealer = intake.secrets.sealer.as_ref();
        let mut tickets = Vec::with_capacity(jobs.len());
        match svc::retry("recording submitted jobs", token, || {
            insert(pool, schema, sealer, &jobs)
        })
        .await
        {
            None => return Handled::Shutdown,
            Some(Ok(t)) => tickets = t.into_iter().map(Some).collect(),
            Some(Err(e)) => {
                // One bad submission must not take its batch down with it: record them
                // one by one; what fails alone is refused (reply and dead letter).
                tracing::warn!(error = %e, "a batch of submissions was refused; recording them one by one");
                for (job, d) in jobs.iter().zip(&accepted_from) {
                    let one = std::slice::from_ref(job);
                    match svc::retry("recording a submitted job", token, || {
                        insert(pool, schema, sealer, one)
                    })
                    .await
                    {
                        None => return Handled::Shutdown,
                        Some(Ok(t)) => tickets.push(t.into_iter().next()),
                        Some(Err(e)) => {
                            out.push(intake.dead_letter(
                                n,
                                d,
                                &source,
                                "rejected_by_database",
                                &e.to_string(),
                            ));
                            out.extend(reply_to(
                                d,
                                &rejection(
                                    "internal",
                                    "the job could not be recorded".into(),
                                    None,
                                ),
                            ));
                            tickets.push(None);
                        }
                    }
                }
            }
        }
        for (d, t) in accepted_from.iter().zip(tickets) {
            let Some(t) = t else { continue };
            metrics::counter!("fleet_submitter_jobs_total", "via" => "amqp", "created" => t.created.to_string())
                .increment(1);
            out.extend(reply_to(
                d,
                &SubmitReply {
                    accepted: true,
                    job_id: Some(t.job_id),
                    created: t.created,
                    error: None,
                },
            ));
        }
    }
    Handled::Publish(out)
}

/// Why a submission's token was refused: the reply's error code and message.
#[derive(Debug, Clone)]
struct Refusal {
    code: &'static str,
    message: String,
}

/// The lookup of a token failed for a passing reason (the database).
#[derive(Debug)]
struct LookupFailed(String);

impl std::fmt::Display for LookupFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl fleet_shared::error::Transience for LookupFailed {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Who submits with the `authorization` header `header`: its token's holder when that
/// may submit, else why not. Retries while the database cannot answer; `None` on
/// shutdown.
async fn submitter_of(
    intake: &Intake<'_>,
    header: Option<&str>,
    token: &CancellationToken,
) -> Option<Result<Principal, Refusal>> {
    let looked = svc::retry("checking a submission's token", token, || async {
        // The Authenticator decides even without a header (`auth.disabled` lets anyone).
        match intake.auth.principal(intake.pool, header).await {
            Ok(who) => Ok(Ok(who)),
            Err(ApiError::Unauthenticated) if header.is_none() => Ok(Err(Refusal {
                code: "unauthenticated",
                message: format!(
                    "no API token: a submit message carries the header `{}: Bearer <token>`",
                    proto::SUBMIT_TOKEN_HEADER
                ),
            })),
            Err(ApiError::Unauthenticated) => Ok(Err(Refusal {
                code: "unauthenticated",
                message: format!(
                    "the API token in `{}` is unknown or revoked (the value is `Bearer <token>`)",
                    proto::SUBMIT_TOKEN_HEADER
                ),
            })),
            Err(e) => Err(LookupFailed(format!("{e:?}"))),
        }
    })
    .await?;
    let Ok(decided) = looked else {
        return None;
    };
    Some(decided.and_then(|who| {
        if who.role.allows(Permission::Submit) {
            Ok(who)
        } else {
            Err(Refusal {
                code: "forbidden",
                message: format!("a {} token may not submit jobs", who.role.as_str()),
            })
        }
    }))
}

async fn insert(
    pool: &Pool,
    schema: &str,
    sealer: Option<&fleet_shared::secrets::SecretBox>,
    jobs: &[submit::NewJob],
) -> Result<Vec<submit::Ticket>, DbError> {
    let client = pool.get().await?;
    submit::insert_jobs(&client, schema, jobs, sealer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_message_id_is_no_key() {
        assert_eq!(idempotency_key(None), Ok(None));
        assert_eq!(idempotency_key(Some("")), Ok(None));
        assert_eq!(idempotency_key(Some("k-1")), Ok(Some("amqp:k-1".into())));
        assert!(idempotency_key(Some("a\0b")).is_err());
    }
}
