//! One confirm channel carrying routed messages and mandatory ones that no queue takes
//! (an executor's live output and INFO beside results published before any collector
//! declared its queue): each return is reported against the message returned. lapin
//! hands a return to whichever confirm it settles next; when that was another
//! publish's, an unroutable result was reported delivered and was lost, and its task
//! waited for the result timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use fleet_shared::amqp::{self, Names, Outgoing, Publisher};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_is_reported_for_the_message_returned_and_no_other() -> Result<()> {
    fleet_tests::init_logging();
    let name = fleet_tests::unique_name("pubret");
    let cfg = fleet_tests::test_config(&name);
    let n = Names::new(&name);
    let conn = amqp::connect(&cfg.amqp, "publisher-test").await?;
    let publisher = Publisher::new(&conn, &cfg.amqp).await?;
    let ch = publisher.channel();
    let exchange = format!("{name}.x");
    let queue = format!("{name}.logs");
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // A quorum queue, as the logs queue is: its confirms come later than a return's,
    // so acks covering several publishes are common.
    amqp::declare_queue(ch, &queue, amqp::QueueKind::Quorum, Some(&n.dlx())).await?;
    amqp::bind_queue(ch, &queue, &exchange, "log.*").await?;

    let unroutable = 600;
    let told_delivered = Arc::new(AtomicUsize::new(0));
    let told_unroutable = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (p, x, wrong) = (publisher.clone(), exchange.clone(), told_unroutable.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..unroutable / 2 {
                let m = Outgoing::new(x.as_str(), format!("log.{w}"), b"chunk".to_vec());
                match p.publish(m).await {
                    Ok(()) => {}
                    Err(amqp::AmqpError::Unroutable { .. }) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }));
    }
    {
        let (p, x, lost) = (publisher.clone(), exchange.clone(), told_delivered.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..unroutable {
                let m = Outgoing::new(x.as_str(), "result.k-1", b"result".to_vec()).mandatory();
                match p.publish(m).await {
                    Ok(()) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(amqp::AmqpError::Unroutable { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // In one batch too: the positions given are those of the messages returned.
    let batch: Vec<Outgoing> = (0..40)
        .map(|i| {
            let key = if i % 3 == 0 { "nowhere.k-1" } else { "log.k-1" };
            Outgoing::new(exchange.as_str(), key, format!("{i}").into_bytes()).mandatory()
        })
        .collect();
    let returned = publisher.publish_batch(batch).await?;
    let expected: Vec<usize> = (0..40).filter(|i| i % 3 == 0).collect();

    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    amqp::close(&conn, "done").await;
    assert_eq!(
        told_delivered.load(Ordering::Relaxed),
        0,
        "unroutable mandatory messages reported delivered (lost)"
    );
    assert_eq!(
        told_unroutable.load(Ordering::Relaxed),
        0,
        "delivered messages reported unroutable"
    );
    assert_eq!(returned, expected);
    Ok(())
}
