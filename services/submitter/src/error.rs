//! The API's error type: every variant is a status and the JSON error body
//! (`fleet_core::api::ErrorResponse`), and the helpers that make the common ones.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_shared::auth::{Permission, Role};
use fleet_shared::db::DbError;
use fleet_shared::error::Transience;
use fleet_shared::http::error_response;
use fleet_shared::job::FieldError;

/// The API's error boundary: every variant is a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("a valid bearer token is required")]
    Unauthenticated,
    #[error("the join token is unknown, already used or expired")]
    BadJoinToken,
    #[error("the role {} may not do this", .0.as_str())]
    Forbidden(Role, Permission),
    /// The caller may read the job but not change it.
    #[error("the role {} may not change this job", .0.as_str())]
    NotYours(Role),
    #[error("{0}")]
    Conflict(String),
    /// A change authenticated by the console's cookie without proof that the console
    /// sent it (see crate::session).
    #[error("{0}")]
    CrossSite(&'static str),
    /// What was asked for existed once and is no longer kept.
    #[error("{0}")]
    Gone(String),
    /// A dependency other than the database is down; the client should retry.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Invalid(e) => error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.to_string(),
                Some(e.field),
            ),
            Self::NotFound(what) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
                None,
            ),
            Self::Unauthenticated => {
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                    None,
                );
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                r
            }
            Self::BadJoinToken => error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the join token is unknown, already used or expired (or the bootstrap \
                 secret is not this fleet's)",
                Some("join_token".into()),
            ),
            Self::Forbidden(role, p) => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a {} token may not {}",
                    role.as_str(),
                    match p {
                        Permission::Read => "read",
                        Permission::Submit => "submit jobs",
                        Permission::Admin => "administer groups, executors and tokens",
                    }
                ),
                None,
            ),
            Self::NotYours(role) => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                match role {
                    Role::Reader => "a reader token may not change jobs",
                    _ => "a submitter token may only change the jobs it submitted",
                },
                None,
            ),
            Self::Conflict(why) => error_response(StatusCode::CONFLICT, "conflict", why, None),
            Self::CrossSite(why) => error_response(StatusCode::FORBIDDEN, "forbidden", why, None),
            Self::Gone(why) => error_response(StatusCode::GONE, "gone", why, None),
            Self::Unavailable(what) => {
                let mut r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{what} is unavailable; retry later"),
                    None,
                );
                r.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, 1.into());
                r
            }
            Self::Db(e) if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry later",
                    None,
                )
            }
            // Details stay in the log: a 500 leaks nothing.
            Self::Db(e) => {
                tracing::error!(error = %e, "database error");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                    None,
                )
            }
        }
    }
}

/// Parses a JSON body, naming the field that is wrong on failure (`body` for the whole).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        FieldError {
            field: if path == "." { "body".into() } else { path },
            message: inner.to_string(),
        }
    })
}

impl From<fleet_shared::db::admin::AdminError> for ApiError {
    fn from(e: fleet_shared::db::admin::AdminError) -> Self {
        use fleet_shared::db::admin::AdminError;
        match e {
            AdminError::NotFound(what) => Self::NotFound(what),
            AdminError::Conflict(why) => Self::Conflict(why),
            AdminError::Db(e) => Self::Db(e),
        }
    }
}

/// A 400 naming the field that is wrong.
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

pub fn bad_id(_: uuid::Error) -> ApiError {
    invalid("job_id", "not a UUID")
}

/// Parses a JSON body, naming the field that is wrong on failure.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_json(body).map_err(ApiError::Invalid)
}

/// PostgreSQL text cannot hold a NUL byte: refused here, naming the field, rather than
/// a 500 from the database.
pub fn no_nul(field: &str, s: &str) -> Result<(), ApiError> {
    fleet_shared::job::no_nul(field, s).map_err(ApiError::Invalid)
}
