//! A task's retry policy: which ends of an attempt are tried again, how many attempts in
//! all, and how long to wait before each. Pure; the collector applies it when it settles
//! an attempt, and the dispatcher makes a waiting task ready when its wait is over.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::proto::Outcome;

pub const DEFAULT_INITIAL_SECS: f64 = 1.0;
pub const DEFAULT_FACTOR: f64 = 2.0;
pub const DEFAULT_MAX_SECS: f64 = 300.0;
/// The longest wait accepted between two attempts (a day).
pub const MAX_WAIT_SECS: f64 = 86_400.0;
pub const MAX_FACTOR: f64 = 10.0;

/// An end of an attempt that a policy may try again. A lost attempt is always tried
/// again, at once, while attempts remain: the command never got to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    Failed,
    TimedOut,
    SpawnFailed,
}

impl RetryOn {
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Failed => Outcome::Failed,
            Self::TimedOut => Outcome::TimedOut,
            Self::SpawnFailed => Outcome::SpawnFailed,
        }
    }
}

/// As submitted: `retry: {on: [failed, timed_out], max_attempts: 5, backoff: {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub on: Vec<RetryOn>,
    /// Attempts in all (the task's `max_attempts`, which it replaces).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<BackoffSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default)]
    pub initial_secs: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub max_secs: Option<f64>,
}

/// A validated policy, as stored with the task (`tasks.retry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetryPolicy {
    pub on: Vec<RetryOn>,
    pub initial_secs: f64,
    pub factor: f64,
    pub max_secs: f64,
}

impl RetryPolicy {
    /// Whether an attempt that ended so is tried again (attempts permitting).
    pub fn retries(&self, outcome: Outcome) -> bool {
        self.on.iter().any(|o| o.outcome() == outcome)
    }

    /// The wait before the next attempt, after `failed` attempts that the policy tries
    /// again (1 for the first): `initial * factor^(failed - 1)`, at most `max`.
    pub fn delay(&self, failed: u32) -> Duration {
        let exp = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = (self.initial_secs * self.factor.powi(exp)).min(self.max_secs);
        Duration::from_secs_f64(if secs.is_finite() {
            secs.max(0.0)
        } else {
            self.max_secs
        })
    }
}

impl RetrySpec {
    /// The policy, or the field (under `retry.`) that is wrong and why.
    pub fn validate(&self) -> Result<RetryPolicy, (&'static str, String)> {
        let b = self.backoff.clone().unwrap_or_default();
        let initial = b.initial_secs.unwrap_or(DEFAULT_INITIAL_SECS);
        let factor = b.factor.unwrap_or(DEFAULT_FACTOR);
        let max = b.max_secs.unwrap_or(DEFAULT_MAX_SECS.max(initial));
        if !(0.0..=MAX_WAIT_SECS).contains(&initial) {
            return Err((
                "backoff.initial_secs",
                format!("must be 0 to {MAX_WAIT_SECS}"),
            ));
        }
        if !(1.0..=MAX_FACTOR).contains(&factor) {
            return Err(("backoff.factor", format!("must be 1 to {MAX_FACTOR}")));
        }
        if !(initial..=MAX_WAIT_SECS).contains(&max) {
            return Err((
                "backoff.max_secs",
                format!("must be at least initial_secs ({initial}) and at most {MAX_WAIT_SECS}"),
            ));
        }
        let mut on = self.on.clone();
        on.sort_by_key(|o| *o as u8);
        on.dedup();
        Ok(RetryPolicy {
            on,
            initial_secs: initial,
            factor,
            max_secs: max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RetrySpec {
        serde_json::from_str(json).expect("spec")
    }

    #[test]
    fn the_wait_grows_by_the_factor_up_to_the_cap() {
        let p = spec(
            r#"{"on": ["failed"], "backoff": {"initial_secs": 0.5, "factor": 3, "max_secs": 10}}"#,
        )
        .validate()
        .expect("valid");
        let waits: Vec<f64> = (1..=5).map(|n| p.delay(n).as_secs_f64()).collect();
        assert_eq!(waits, [0.5, 1.5, 4.5, 10.0, 10.0]);
        assert!(p.retries(Outcome::Failed));
        assert!(!p.retries(Outcome::TimedOut));
        assert!(!p.retries(Outcome::Succeeded));
        // Huge counts do not overflow.
        assert_eq!(p.delay(u32::MAX).as_secs_f64(), 10.0);
    }

    #[test]
    fn defaults_and_bad_values_are_named() {
        let p = spec(r#"{"on": ["timed_out", "failed", "failed"]}"#)
            .validate()
            .expect("valid");
        assert_eq!(p.on, [RetryOn::Failed, RetryOn::TimedOut]);
        assert_eq!((p.initial_secs, p.factor, p.max_secs), (1.0, 2.0, 300.0));
        let field = |j: &str| spec(j).validate().expect_err("invalid").0;
        assert_eq!(field(r#"{"backoff": {"factor": 0.5}}"#), "backoff.factor");
        assert_eq!(
            field(r#"{"backoff": {"initial_secs": -1}}"#),
            "backoff.initial_secs"
        );
        assert_eq!(
            field(r#"{"backoff": {"initial_secs": 5, "max_secs": 2}}"#),
            "backoff.max_secs"
        );
        assert!(serde_json::from_str::<RetrySpec>(r#"{"on": ["lost"]}"#).is_err());
        assert!(serde_json::from_str::<RetrySpec>(r#"{"tries": 3}"#).is_err());
    }
}
