//! `GET /v1/events`: a page of events (each line is an [`Event`], the shape the AMQP
//! events exchange and webhooks use too).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::event::Event;

/// A page of `GET /v1/events` (without `follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; `None` when nothing was read from the start.
    #[schema(required = true)]
    pub next: Option<i64>,
}
