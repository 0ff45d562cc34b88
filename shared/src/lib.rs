//! The Fleet contract shared by every service: ids, messages, task states, the balancing
//! policy and job validation (pure, tested without services), then the adapters that
//! speak to PostgreSQL, RabbitMQ and HTTP.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod group;
pub mod http;
pub mod id;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod retry;
pub mod state;
pub mod svc;
