//! The body of every error answer: `{"error": {"code", "message", "field"}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::error::ErrorBody;

/// What every endpoint answers with an error status (4xx, 5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

impl ErrorResponse {
    pub fn new(code: &str, message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                field,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_wrapped_in_error_and_names_its_field() -> Result<(), serde_json::Error> {
        let body = ErrorResponse::new("invalid_request", "tasks: must not be empty", None);
        assert_eq!(
            serde_json::to_string(&body)?,
            r#"{"error":{"code":"invalid_request","message":"tasks: must not be empty","field":null}}"#
        );
        Ok(())
    }
}
