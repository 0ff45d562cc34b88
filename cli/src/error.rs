//! Errors a command can end with, and the exit code each one maps to.

use std::fmt;
use std::time::Duration;

use crate::duration;

/// Exit code when the server could not be reached (BSD `EX_UNAVAILABLE`).
pub const EXIT_UNREACHABLE: u8 = 69;
/// Exit code for every other failure; clap uses 2 for usage errors on its own.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug)]
pub enum CliError {
    /// The server answered with the API's error JSON.
    Api {
        message: String,
        field: Option<String>,
    },
    /// The server answered with an error status but not with the error JSON
    /// (a proxy in the way, or a server of another kind at that address).
    Http {
        status: u16,
        body: String,
    },
    /// No connection could be made.
    Unreachable {
        addr: String,
        reason: String,
    },
    /// A connection was made (or attempted) but no answer came within the deadline.
    Timeout {
        addr: String,
        after: Duration,
    },
    Other(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } | CliError::Timeout { .. } => EXIT_UNREACHABLE,
            CliError::Api { .. } | CliError::Http { .. } | CliError::Other(_) => EXIT_FAILURE,
        }
    }

    /// Worth trying again later: the server may come back or catch up.
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } | CliError::Timeout { .. } => true,
            // 502..504 come from the server or a proxy while it restarts or is overloaded.
            CliError::Http { status, .. } => matches!(status, 502..=504),
            CliError::Api { .. } | CliError::Other(_) => false,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api {
                message,
                field: Some(field),
            } => write!(f, "{message} (field: {field})"),
            CliError::Api {
                message,
                field: None,
            } => write!(f, "{message}"),
            CliError::Http { status, body } if body.is_empty() => {
                write!(f, "server answered HTTP {status}")
            }
            CliError::Http { status, body } => write!(f, "server answered HTTP {status}: {body}"),
            CliError::Unreachable { addr, reason } => write!(
                f,
                "could not reach the Fleet API at {addr}: {reason}\n\
                 hint: is the submitter running there? check FLEET_ADDR (or --addr)"
            ),
            CliError::Timeout { addr, after } => write!(
                f,
                "the Fleet API at {addr} did not answer within {}\n\
                 hint: check FLEET_ADDR (or --addr), or allow more time with --timeout",
                duration::human(*after)
            ),
            CliError::Other(err) => write!(f, "{err:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        CliError::Other(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_names_the_field_when_there_is_one() {
        let with = CliError::Api {
            message: "argv must not be empty".into(),
            field: Some("tasks[0].argv".into()),
        };
        assert_eq!(
            with.to_string(),
            "argv must not be empty (field: tasks[0].argv)"
        );
        let without = CliError::Api {
            message: "job not found".into(),
            field: None,
        };
        assert_eq!(without.to_string(), "job not found");
        assert_eq!(without.exit_code(), 1);
    }

    #[test]
    fn unreachable_server_exits_69_and_names_the_address() {
        let err = CliError::Unreachable {
            addr: "http://127.0.0.1:7070".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(err.exit_code(), 69);
        let text = err.to_string();
        assert!(text.contains("http://127.0.0.1:7070"));
        assert!(text.contains("FLEET_ADDR"));
    }
}
