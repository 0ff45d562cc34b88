//! The adapters every service shares: PostgreSQL (`db`), RabbitMQ (`amqp`), HTTP helpers,
//! configuration and the service skeleton. The pure contract (ids, messages, task states,
//! the balancing policy, job validation) lives in `fleet-core`; it is re-exported here
//! under its old paths so `fleet_shared::id::...` and `crate::proto::...` keep working.

pub use fleet_core::{auth, error, event, group, id, job, policy, proto, retry, state};

pub mod amqp;
pub mod config;
pub mod db;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod secrets;
pub mod svc;
pub mod tls;
