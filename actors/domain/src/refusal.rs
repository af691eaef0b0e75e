//! Why a request is refused: malformed, or not allowed by the entity's
//! state. Each refusal maps to one gRPC status at the API edge (see
//! `skuld-node`'s `status` module); the runtime's error wraps it with the
//! answers that are not the domain's (overload, deadline, unavailable,
//! moving).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::position::Bucket;

/// Serializable, so that it can be stored as the answer to an idempotency
/// key and cross the peer hop with its type. Names that are literals in the
/// code are `Cow<'static, str>` for that reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    /// Malformed input: the request can never succeed as sent.
    #[error("{field}: {reason}")]
    InvalidArgument {
        field: Cow<'static, str>,
        reason: String,
    },
    /// Not enough available quantity; nothing was reserved.
    #[error("insufficient available quantity: requested {requested}, available {available}")]
    Insufficient { requested: i64, available: i64 },
    /// The change would take a bucket below zero.
    #[error("{bucket} would become {value}; a bucket may not go below zero")]
    NegativeBucket { bucket: Bucket, value: i64 },
    /// `expected_version` did not match.
    #[error("version mismatch: expected {expected}, current {current}")]
    VersionMismatch { expected: u64, current: u64 },
    /// `change_from` did not match the bucket's current value.
    #[error("change_from mismatch on {bucket}: expected {expected}, current {current}")]
    ChangeFromMismatch {
        bucket: Bucket,
        expected: i64,
        current: i64,
    },
    /// The position's state does not allow the command.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("reservation {0:?} not found")]
    ReservationNotFound(String),
    #[error("no commitment for order {0:?}")]
    CommitmentNotFound(String),
    #[error("position not found")]
    PositionNotFound,
    #[error("return {0:?} not found")]
    ReturnNotFound(String),
    #[error("return {0:?} already exists")]
    ReturnExists(String),
    #[error("exception {0} not found on this return")]
    ExceptionNotFound(u32),
    /// The return's state does not allow the command.
    #[error("{command} is not allowed in state {state}; allowed: {}", allowed.join(", "))]
    IllegalTransition {
        command: Cow<'static, str>,
        state: crate::returns::ReturnState,
        allowed: Vec<Cow<'static, str>>,
    },
    #[error("reservation id {0:?} already exists")]
    ReservationExists(String),
    #[error("idempotency key {0:?} was already used for a different request")]
    IdempotencyKeyReused(String),
    // Appended: refusals are stored as idempotency answers and cross the
    // peer hop by variant index, so new ones go last.
    #[error("order {0:?} not found")]
    OrderNotFound(String),
    #[error("order {0:?} already exists with other lines")]
    OrderExists(String),
}

impl Refusal {
    /// A refusal of malformed input naming the field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Refusal::InvalidArgument {
            field: Cow::Borrowed(field),
            reason: reason.into(),
        }
    }

    /// The entity decided this, from the command and its state: the answer
    /// an idempotency key keeps, like an acceptance. Malformed input and a
    /// reused key are not decisions: those requests never reached one.
    pub fn is_decision(&self) -> bool {
        !matches!(
            self,
            Refusal::InvalidArgument { .. } | Refusal::IdempotencyKeyReused(_)
        )
    }

    /// A short, fixed name of the refusal's kind: a metric label, never
    /// the message (which carries ids and quantities).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InvalidArgument { .. } => "invalid_argument",
            Refusal::Insufficient { .. } => "insufficient_available",
            Refusal::NegativeBucket { .. } => "negative_bucket",
            Refusal::VersionMismatch { .. } => "version_mismatch",
            Refusal::ChangeFromMismatch { .. } => "change_from_mismatch",
            Refusal::FailedPrecondition(_) => "failed_precondition",
            Refusal::ReservationNotFound(_) => "reservation_not_found",
            Refusal::CommitmentNotFound(_) => "commitment_not_found",
            Refusal::PositionNotFound => "position_not_found",
            Refusal::ReturnNotFound(_) => "return_not_found",
            Refusal::ReturnExists(_) => "return_exists",
            Refusal::ExceptionNotFound(_) => "exception_not_found",
            Refusal::IllegalTransition { .. } => "illegal_transition",
            Refusal::OrderNotFound(_) => "order_not_found",
            Refusal::OrderExists(_) => "order_exists",
            Refusal::ReservationExists(_) => "reservation_exists",
            Refusal::IdempotencyKeyReused(_) => "idempotency_key_reused",
        }
    }
}
