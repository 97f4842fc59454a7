//! The one refusal type: every way a call can fail, whichever adapter it
//! came through. `render` turns it into a `tonic::Status` or an HTTP denial;
//! the audit event and the logs read its stable [`Refusal::reason`].

use crate::gate::GateError;
use crate::identity::AuthError;
use crate::limits::Exceeded;
use crate::policy::{Denial, DenyReason};

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credential is missing or fails a check; the reason says which.
    #[error("unauthenticated: {0}")]
    Unauthenticated(AuthError),
    /// The rules refused, with the stable reason and the deciding rule.
    #[error("denied: {}", .0.reason.as_str())]
    Denied(Denial),
    /// No ext_authz route matches the HTTP request.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// The request's method.
        method: String,
        /// The request's path, without the query.
        path: String,
    },
    /// The request is malformed; every bad field is listed.
    #[error("{0}")]
    BadInput(InvalidRequest),
    /// Over one or more rate limits; a retry after `retry_after` is admitted.
    #[error("rate limited by {}", .0.names())]
    Limited(Exceeded),
    /// More calls are in flight than `limits.max_in_flight`: shed at once.
    #[error("overloaded: {max_in_flight} calls already in flight")]
    Overloaded {
        /// The bound that was reached.
        max_in_flight: usize,
    },
    /// The service cannot decide now; retrying later may succeed.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// The stable reason, e.g. `keys_unavailable`.
        reason: &'static str,
        /// A log-safe sentence.
        detail: String,
        /// How long a client should wait before retrying, in seconds.
        retry_after_secs: u32,
    },
    /// A server bug or a broken environment: logged with the request id,
    /// never blamed on the caller. The detail is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A malformed request: one or more fields that failed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", describe(.violations))]
pub struct InvalidRequest {
    /// `(field path, description)` pairs, in the order they were found.
    pub violations: Vec<(String, String)>,
}

impl Refusal {
    /// The stable, low-cardinality reason: logged, counted and returned.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Unauthenticated(error) => error.reason(),
            Refusal::Denied(denial) => denial.reason.as_str(),
            Refusal::NoRoute { .. } => "no_matching_route",
            Refusal::BadInput(_) => "invalid_request",
            Refusal::Limited(_) => "rate_limited",
            Refusal::Overloaded { .. } => "overloaded",
            Refusal::Unavailable { reason, .. } => reason,
            Refusal::Internal(_) => "internal",
        }
    }

    /// The audit event's `decision` for this refusal.
    pub fn decision(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Denied(_) | Refusal::NoRoute { .. } => "deny",
            Refusal::BadInput(_) => "invalid",
            Refusal::Limited(_) => "limited",
            Refusal::Overloaded { .. } => "shed",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::Internal(_) => "error",
        }
    }

    /// The rule that decided, for a denial.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Refusal::Denied(denial) => denial.rule.as_deref(),
            _ => None,
        }
    }

    /// A refusal of one field.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Refusal::BadInput(InvalidRequest::field(field, description))
    }
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        // Keys that never loaded, or that are too old to trust after
        // `max_stale`, are the service's state, not the caller's fault: a
        // client retries UNAVAILABLE (after RetryInfo), never UNAUTHENTICATED.
        if error.keys_unavailable() {
            Refusal::Unavailable {
                reason: error.reason(),
                detail: error.to_string(),
                retry_after_secs: 1,
            }
        } else {
            Refusal::Unauthenticated(error)
        }
    }
}

impl From<GateError> for Refusal {
    fn from(error: GateError) -> Self {
        match error {
            // An unknown project is a malformed request, not a policy decision.
            GateError::Denied(denial) if denial.reason == DenyReason::UnknownProject => {
                Refusal::field("project", denial.detail)
            }
            GateError::Denied(denial) => Refusal::Denied(denial),
            GateError::BadToken(message) => Refusal::field("token", message),
            GateError::ChannelMismatch => {
                Refusal::field("channel", "differs from the token's own channel")
            }
            bug @ (GateError::UnknownProject(_)
            | GateError::ClockOutOfRange(_)
            | GateError::Token(_)
            | GateError::NothingToIssue(_)
            | GateError::Bug(_)) => Refusal::Internal(bug.to_string()),
        }
    }
}

impl From<InvalidRequest> for Refusal {
    fn from(error: InvalidRequest) -> Self {
        Refusal::BadInput(error)
    }
}

impl InvalidRequest {
    /// An error with one violation.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut error = Self::default();
        error.push(field, description);
        error
    }

    /// Records another violation.
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push((field.into(), description.into()));
    }

    /// `Ok(())` when nothing was recorded, so validation can collect every violation first.
    pub fn into_result(self) -> Result<(), InvalidRequest> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_collection_is_ok() {
        assert_eq!(InvalidRequest::default().into_result(), Ok(()));
    }

    #[test]
    fn server_bugs_are_internal_never_the_callers_fault() {
        let bugs = [
            GateError::UnknownProject("gone".into()),
            GateError::ClockOutOfRange(u64::MAX),
            GateError::Bug("built token does not parse".into()),
        ];
        for bug in bugs {
            let refusal = Refusal::from(bug);
            assert!(matches!(refusal, Refusal::Internal(_)), "{refusal:?}");
            assert_eq!(refusal.reason(), "internal");
            assert_eq!(refusal.decision(), "error");
        }
    }

    #[test]
    fn unusable_keys_are_unavailable_and_other_auth_failures_unauthenticated() {
        let never = Refusal::from(AuthError::KeysNotLoaded { issuer: "a".into() });
        assert_eq!(never.decision(), "unavailable");
        assert_eq!(never.reason(), "keys_unavailable");
        let expired = Refusal::from(AuthError::KeysExpired { issuer: "a".into() });
        assert!(
            matches!(
                expired,
                Refusal::Unavailable {
                    reason: "keys_unavailable",
                    retry_after_secs: 1,
                    ..
                }
            ),
            "{expired:?}"
        );
        let bad = Refusal::from(AuthError::BadSignature);
        assert_eq!(bad.decision(), "unauthenticated");
        assert_eq!(bad.reason(), "bad_signature");
    }
}
