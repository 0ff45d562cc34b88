//! The Fleet contract, with no I/O: ids, messages, task states, the balancing policy, job
//! validation, events and the bodies of the HTTP API. The services and fleetctl both import
//! it, so a client and the server cannot disagree on a shape. Nothing here speaks to a
//! network or a database: its dependencies are serde, chrono, uuid and the hashes.

pub mod api;
pub mod auth;
pub mod error;
pub mod event;
pub mod group;
pub mod id;
pub mod job;
pub mod policy;
pub mod proto;
pub mod retry;
pub mod state;
