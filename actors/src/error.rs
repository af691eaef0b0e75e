//! The one error type of the runtime: a refusal of the domain, or an answer
//! that is not the domain's (overload, deadline, a store or owner that did
//! not answer, a shard being handed over). Each maps to one gRPC status at
//! the API edge (`skuld-node`'s `status` module).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use skuld_domain::Refusal;

/// Serializable, so that it crosses the peer hop with its type: a client
/// gets the same status and details whichever node answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The request is malformed, or the entity's state does not allow it.
    #[error(transparent)]
    Refused(#[from] Refusal),
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
    /// The owning node answered with this error and is of a version that
    /// does not send errors typed (a rolling upgrade).
    #[error("{message}")]
    Remote {
        /// The gRPC status code the owner answered with.
        code: i32,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// An event subscription's position is older than retention: events
    /// after it were deleted, so resuming there would skip them.
    #[error("events of shard {shard} up to {floor} were deleted by retention; this position cannot be resumed, start again from the oldest retained event")]
    EventsExpired {
        shard: u32,
        floor: u64,
        /// Where a subscription starts now (every retained event).
        oldest_resume_token: String,
    },
}

impl Error {
    /// A refusal of malformed input naming the field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Refused(Refusal::invalid(field, reason))
    }

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
            // From a node of an older version, by its status code: the
            // ones whose outcome is open (CANCELLED, UNKNOWN,
            // DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNAVAILABLE) and
            // RESOURCE_EXHAUSTED, as `skuld_proto::retry::worth_retrying`
            // says (a test in `skuld-node` keeps the two the same).
            Error::Remote { code, .. } => matches!(code, 1 | 2 | 4 | 8 | 10 | 13 | 14),
            Error::Refused(_) | Error::EventsExpired { .. } => false,
        }
    }
}

/// The answer to a request whose store failed: another node owns the shard
/// now (the retry is routed there), or the store could not do it.
pub fn store_error(error: skuld_cluster::StoreError) -> Error {
    match error {
        skuld_cluster::StoreError::Fenced { shard, .. } => Error::ShardMoving {
            shard,
            retry_after_ms: 100,
        },
        other => Error::Unavailable(other.to_string()),
    }
}
