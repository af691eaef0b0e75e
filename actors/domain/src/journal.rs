//! The journal entry shared by every entity kind: one accepted mutation.

use serde::{Deserialize, Serialize};

/// One accepted mutation in an entity's journal: the events it caused, and
/// who caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry<E> {
    /// The entity's version after this entry.
    pub version: u64,
    pub recorded_at_ms: i64,
    /// `None` for mutations the node made itself (timers, effect results).
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
    pub events: Vec<E>,
}
