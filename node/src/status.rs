//! The one place where errors become gRPC statuses.
//!
//! | error (refusals first) | status |
//! |---|---|
//! | InvalidArgument | INVALID_ARGUMENT |
//! | Insufficient, NegativeBucket, VersionMismatch, ChangeFromMismatch, IllegalTransition, FailedPrecondition | FAILED_PRECONDITION (with google.rpc.PreconditionFailure) |
//! | ReservationNotFound, CommitmentNotFound, PositionNotFound, ReturnNotFound, OrderNotFound, ExceptionNotFound | NOT_FOUND |
//! | IdempotencyKeyReused, ReservationExists, ReturnExists, OrderExists | ALREADY_EXISTS |
//! | Overloaded | RESOURCE_EXHAUSTED (google.rpc.RetryInfo and `retry-after-ms`) |
//! | DeadlineExceeded | DEADLINE_EXCEEDED |
//! | Unavailable | UNAVAILABLE (retry with the same idempotency key) |
//! | ShardMoving | UNAVAILABLE (RetryInfo and `retry-after-ms`: a handoff is under way) |
//! | EventsExpired | OUT_OF_RANGE (google.rpc.ErrorInfo EVENTS_EXPIRED, metadata `oldest_resume_token`) |
//! | Remote | the code the owning node answered with |
//!
//! and, from authentication and authorization (`crate::auth`):
//!
//! | failure | status |
//! |---|---|
//! | no credential, or one that does not verify | UNAUTHENTICATED, one message for every cause |
//! | a role or tenant the credential does not grant | PERMISSION_DENIED, one message |
//! | the tenant's request quota | RESOURCE_EXHAUSTED (google.rpc.RetryInfo and `retry-after-ms`) |

use std::time::Duration;

use skuld_actors::{Error, Refusal};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Metadata key carrying the retry hint in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

fn precondition(kind: &str, subject: &str, refusal: &Refusal) -> Status {
    let details =
        ErrorDetails::with_precondition_failure_violation(kind, subject, refusal.to_string());
    Status::with_error_details(Code::FailedPrecondition, refusal.to_string(), details)
}

/// The status of a refusal: what the client did wrong, or what the entity's
/// state does not allow.
fn refusal_status(refusal: &Refusal) -> Status {
    let message = refusal.to_string();
    match refusal {
        Refusal::InvalidArgument { field, reason } => {
            let details = ErrorDetails::with_bad_request_violation(field.as_ref(), reason.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Refusal::Insufficient { .. } => {
            precondition("INSUFFICIENT_AVAILABLE", "available", refusal)
        }
        Refusal::NegativeBucket { bucket, .. } => {
            precondition("NEGATIVE_BUCKET", &bucket.to_string(), refusal)
        }
        Refusal::VersionMismatch { .. } => {
            precondition("VERSION_MISMATCH", "expected_version", refusal)
        }
        Refusal::ChangeFromMismatch { bucket, .. } => {
            precondition("CHANGE_FROM_MISMATCH", &bucket.to_string(), refusal)
        }
        Refusal::FailedPrecondition(_) => Status::failed_precondition(message),
        Refusal::IllegalTransition { state, .. } => {
            precondition("ILLEGAL_TRANSITION", &state.to_string(), refusal)
        }
        Refusal::ReservationNotFound(_)
        | Refusal::CommitmentNotFound(_)
        | Refusal::PositionNotFound
        | Refusal::ReturnNotFound(_)
        | Refusal::OrderNotFound(_)
        | Refusal::ExceptionNotFound(_) => Status::not_found(message),
        Refusal::IdempotencyKeyReused(_)
        | Refusal::ReservationExists(_)
        | Refusal::ReturnExists(_)
        | Refusal::OrderExists(_) => Status::already_exists(message),
    }
}

pub fn to_status(error: &Error) -> Status {
    let message = error.to_string();
    match error {
        Error::Refused(refusal) => refusal_status(refusal),
        Error::Overloaded { retry_after_ms, .. } => {
            with_retry_hint(Code::ResourceExhausted, message, *retry_after_ms)
        }
        Error::DeadlineExceeded => Status::deadline_exceeded(message),
        Error::Unavailable(_) => Status::unavailable(message),
        Error::ShardMoving { retry_after_ms, .. } => {
            with_retry_hint(Code::Unavailable, message, *retry_after_ms)
        }
        Error::EventsExpired {
            oldest_resume_token,
            ..
        } => {
            let details = ErrorDetails::with_error_info(
                "EVENTS_EXPIRED",
                "skuld",
                [(
                    "oldest_resume_token".to_owned(),
                    oldest_resume_token.clone(),
                )],
            );
            Status::with_error_details(Code::OutOfRange, message, details)
        }
        Error::Remote {
            code,
            retry_after_ms,
            ..
        } => match retry_after_ms {
            Some(retry_after_ms) => {
                with_retry_hint(Code::from_i32(*code), message, *retry_after_ms)
            }
            None => Status::new(Code::from_i32(*code), message),
        },
    }
}

/// The retry hint of an error, if it carries one.
pub fn retry_after_ms(error: &Error) -> Option<u64> {
    match error {
        Error::Overloaded { retry_after_ms, .. } | Error::ShardMoving { retry_after_ms, .. } => {
            Some(*retry_after_ms)
        }
        Error::Remote { retry_after_ms, .. } => *retry_after_ms,
        _ => None,
    }
}

/// What every authentication failure answers: the same text whatever the
/// cause (missing, malformed, expired, unknown key, bad signature), so a
/// caller cannot probe which part of a forged token was wrong.
pub const UNAUTHENTICATED: &str =
    "unauthenticated: a valid bearer token or a known client certificate is required";
/// What every authorization failure answers. It names neither the check
/// that failed nor the entity, so it cannot tell whether the entity exists.
pub const PERMISSION_DENIED: &str =
    "permission denied: the credential does not grant this request for this tenant";

pub fn unauthenticated() -> Status {
    Status::unauthenticated(UNAUTHENTICATED)
}

pub fn permission_denied() -> Status {
    Status::permission_denied(PERMISSION_DENIED)
}

/// A tenant over its request quota: RESOURCE_EXHAUSTED with the same retry
/// hint (RetryInfo and `retry-after-ms`) as an overloaded node.
pub fn tenant_quota_exhausted(retry_after_ms: u64) -> Status {
    with_retry_hint(
        Code::ResourceExhausted,
        "tenant request quota exceeded on this node".into(),
        retry_after_ms,
    )
}

fn with_retry_hint(code: Code, message: String, retry_after_ms: u64) -> Status {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(retry_after_ms)));
    let mut status = Status::with_error_details(code, message, details);
    if let Ok(value) = MetadataValue::try_from(retry_after_ms.to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overload_carries_a_retry_hint() {
        let status = to_status(&Error::Overloaded {
            queue: "node".into(),
            retry_after_ms: 100,
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "100");
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(100)));
    }

    #[test]
    fn refusals_map_to_their_codes() {
        let insufficient = to_status(&Error::Refused(Refusal::Insufficient {
            requested: 3,
            available: 1,
        }));
        assert_eq!(insufficient.code(), Code::FailedPrecondition);
        assert!(insufficient.message().contains("available 1"));
        assert_eq!(
            to_status(&Error::Refused(Refusal::IdempotencyKeyReused("k".into()))).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            to_status(&Error::Refused(Refusal::ReservationNotFound("r".into()))).code(),
            Code::NotFound
        );
    }
}
