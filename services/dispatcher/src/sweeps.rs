//! The sweeps that settle what executors stopped doing: expired leases (in the round,
//! [`crate::Dispatcher`]'s `sweep`), and members of `each` tasks gone past their grace.

use fleet_shared::db::{self, dispatch, DbError};

use crate::{Dispatcher, Error};

/// Fails the copies of `each` tasks whose member has been gone past its grace period:
/// a transaction of its own, so its locks are taken in settle()'s order (tasks, copies,
/// jobs), and only when a lock-free look found any.
pub(crate) async fn grace(
    d: &mut Dispatcher,
    client: &mut db::Client,
) -> Result<db::collect::Settled, Error> {
    let lease = d.lease().as_secs_f64();
    let alive = d.cfg.dispatcher.executor_timeout_secs as f64;
    let gone = dispatch::grace_candidates(client, lease, alive).await?;
    if gone.is_empty() {
        return Ok(db::collect::Settled::default());
    }
    let tx = d.fenced(client).await?;
    let graced = dispatch::sweep_grace(&tx, &gone, lease, alive).await?;
    db::events::insert(&tx, &graced.events).await?;
    tx.commit().await.map_err(DbError::from)?;
    fleet_shared::metrics::count_settled(&graced);
    Ok(graced)
}
