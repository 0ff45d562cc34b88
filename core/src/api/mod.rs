//! The bodies of the submitter's HTTP API (docs/api.md), defined once: the server
//! serializes them and fleetctl reads them, so the two cannot drift apart. One module per
//! resource; every type both serializes and deserializes, and its JSON is what the API
//! has always sent (objects the server once built with `json!` keep their fields in
//! alphabetical order, as `json!` wrote them).

pub mod admin;
pub mod error;
pub mod events;
pub mod executors;
pub mod jobs;
pub mod logs;
pub mod scheduler;
pub mod session;
pub mod stats;
pub mod webhooks;

pub use error::ErrorResponse;
