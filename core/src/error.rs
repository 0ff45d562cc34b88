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

/// An error and every error underneath it, `outer: inner: innermost`, each said once:
/// the cause (connection refused, an unknown certificate issuer) is often only below.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Whether an error is worth retrying.
pub trait Transience {
    fn is_transient(&self) -> bool;
}
