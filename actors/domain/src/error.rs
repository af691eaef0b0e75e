//! The one error type of this crate. Each variant maps to one gRPC status at
//! the API edge (see `skuld-node`'s `status` module).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::position::Bucket;

/// Serializable, so that a refusal can be stored as the answer to an
/// idempotency key and cross the peer hop with its type. Names that are
/// literals in the code are `Cow<'static, str>` for that reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
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
    /// A bounded queue is full; retry after the hint.
    #[error("overloaded: {queue} queue is full")]
    Overloaded {
        queue: Cow<'static, str>,
        retry_after_ms: u64,
    },
    /// The caller's deadline passed before the command was applied.
    #[error("deadline exceeded before the command was applied; nothing changed")]
    DeadlineExceeded,
    /// The store failed or the node is stopping; nothing was acknowledged.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No node serves the key's shard right now (a handoff or a failover);
    /// nothing was applied, retry after the hint.
    #[error("shard {shard} is moving between nodes; retry shortly")]
    ShardMoving { shard: u32, retry_after_ms: u64 },
    /// The owning node answered with this error (cluster mode).
    #[error("{message}")]
    Remote {
        /// The gRPC status code the owner answered with.
        code: i32,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl Error {
    /// A refusal of malformed input naming the field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: Cow::Borrowed(field),
            reason: reason.into(),
        }
    }
}

impl Error {
    /// The entity decided against the command: an answer that depends on
    /// the command and the entity's state only, which an idempotency key
    /// keeps like an acceptance. Malformed input, overload, unavailability
    /// and deadlines are not: those requests never reached a decision.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Insufficient { .. }
            | Error::NegativeBucket { .. }
            | Error::VersionMismatch { .. }
            | Error::ChangeFromMismatch { .. }
            | Error::FailedPrecondition(_)
            | Error::ReservationNotFound(_)
            | Error::CommitmentNotFound(_)
            | Error::PositionNotFound
            | Error::ReturnNotFound(_)
            | Error::ReturnExists(_)
            | Error::ExceptionNotFound(_)
            | Error::IllegalTransition { .. }
            | Error::ReservationExists(_) => true,
            Error::InvalidArgument { .. }
            | Error::IdempotencyKeyReused(_)
            | Error::Overloaded { .. }
            | Error::DeadlineExceeded
            | Error::Unavailable(_)
            | Error::ShardMoving { .. }
            | Error::Remote { .. } => false,
        }
    }
}

impl Error {
    /// The request did not happen, or may not have, for a passing reason:
    /// sending it again with the same idempotency key may succeed (a full
    /// queue, a deadline, a store or owner that did not answer, a shard
    /// being handed over). Decided here, where errors are made, for every
    /// caller that retries on its own (a return's inventory steps).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Overloaded { .. }
            | Error::DeadlineExceeded
            | Error::Unavailable(_)
            | Error::ShardMoving { .. } => true,
            // From a node of an older version: DEADLINE_EXCEEDED,
            // RESOURCE_EXHAUSTED, UNAVAILABLE.
            Error::Remote { code, .. } => matches!(code, 4 | 8 | 14),
            _ => false,
        }
    }
}
