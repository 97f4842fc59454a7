//! The one place where errors become a `tonic::Status`.
//!
//! Every refusal carries `google.rpc` details (through tonic-types) so that a
//! client can act on it without parsing the message: `ErrorInfo` with a
//! stable reason, `BadRequest` with field violations, `RetryInfo`. Messages
//! never contain a JWT, a certificate or a token.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::gate::GateError;
use crate::identity::AuthError;
use crate::policy::DenyReason;

/// The `ErrorInfo.domain` of every error tokengate returns.
pub const ERROR_DOMAIN: &str = "tokengate.v1";

/// A malformed request: one or more fields that failed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", describe(.violations))]
pub struct InvalidRequest {
    /// `(field path, description)` pairs, in the order they were found.
    pub violations: Vec<(String, String)>,
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

impl From<InvalidRequest> for Status {
    fn from(error: InvalidRequest) -> Self {
        let violations: Vec<FieldViolation> = error
            .violations
            .iter()
            .map(|(field, description)| FieldViolation::new(field.clone(), description.clone()))
            .collect();
        Status::with_error_details(
            Code::InvalidArgument,
            error.to_string(),
            ErrorDetails::with_bad_request(violations),
        )
    }
}

/// A status with an `ErrorInfo` whose reason is the stable, low-cardinality `reason`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_info(code, reason, HashMap::new(), message)
}

/// A refused caller: UNAUTHENTICATED with the check that failed, or
/// UNAVAILABLE while the issuer's keys have never loaded (retrying may work).
/// `AuthError`'s text never contains the token.
pub fn auth_error(error: &AuthError) -> Status {
    let code = if error.keys_never_loaded() {
        Code::Unavailable
    } else {
        Code::Unauthenticated
    };
    with_reason(code, error.reason(), error.to_string())
}

/// A use-case failure. `request_id` ties an INTERNAL status to its log line.
pub fn gate_error(error: &GateError, request_id: &str) -> Status {
    match error {
        // An unknown project is a malformed request, not a policy decision.
        GateError::Denied(denial) if denial.reason == DenyReason::UnknownProject => {
            InvalidRequest::field("project", denial.detail.clone()).into()
        }
        GateError::Denied(denial) => {
            let mut metadata = HashMap::new();
            if let Some(rule) = &denial.rule {
                metadata.insert("rule".to_owned(), rule.clone());
            }
            with_info(
                Code::PermissionDenied,
                denial.reason.as_str(),
                metadata,
                format!("{}: {}", denial.reason.as_str(), denial.detail),
            )
        }
        GateError::BadToken(message) => InvalidRequest::field("token", message.clone()).into(),
        GateError::ChannelMismatch => {
            InvalidRequest::field("channel", "differs from the token's own channel").into()
        }
        GateError::UnknownProject(_)
        | GateError::NothingToIssue(_)
        | GateError::ClockOutOfRange(_)
        | GateError::Token(_) => with_reason(
            Code::Internal,
            "internal",
            format!("internal error; request id {request_id}"),
        ),
    }
}

fn with_info(
    code: Code,
    reason: &str,
    metadata: HashMap<String, String>,
    message: impl Into<String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
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
    fn invalid_requests_carry_every_violation() {
        let mut error = InvalidRequest::field("channel", "must not be empty");
        error.push("uid", "out of range");
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["channel", "uid"]);
        assert_eq!(
            status.message(),
            "invalid request: channel: must not be empty; uid: out of range"
        );
    }

    #[test]
    fn reasons_travel_in_error_info() {
        let status = with_reason(Code::PermissionDenied, "role_not_allowed", "denied");
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "role_not_allowed");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn an_empty_collection_is_ok() {
        assert_eq!(InvalidRequest::default().into_result(), Ok(()));
    }
}
