//! The error body every boundary speaks (HTTP responses, AMQP submit replies), and the
//! transient/permanent split that decides between retrying and rejecting.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, snake_case: `invalid_request`, `not_found`, `unavailable`, ...
    pub code: String,
    pub message: String,
    #[serde(default)]
    #[schema(required = true)]
    pub field: Option<String>,
}

/// Whether an error is worth retrying.
pub trait Transience {
    fn is_transient(&self) -> bool;
}
