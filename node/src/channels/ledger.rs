//! What the channel worker leaves for people: dead letters (pushes a
//! channel refused as invalid) and drift (a read-back that found the
//! channel showing something else than skuld believed). Both are records
//! of no shard, id `<tenant>/<channel>/<hash of sku and location>`, so the
//! API on any node lists a channel's by prefix; one per target, the latest.

use serde::{Deserialize, Serialize};
use skuld_cluster::{Store, StoreError};
use xxhash_rust::xxh3::xxh3_128;

use super::keys::{encode_key, PushKey, REPLAY_KIND};

pub const DEAD_LETTER_KIND: &str = "channel_dead_letter";
pub const DRIFT_KIND: &str = "channel_drift";

/// A push the channel refused; replaying it pushes the *current* desired
/// value, not this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub key: PushKey,
    pub location: Option<String>,
    pub code: String,
    pub message: String,
    /// The value refused (for the reader; a replay sends what is desired then).
    pub value: i64,
    pub attempts: u32,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
}

/// A read-back that differed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub key: PushKey,
    pub location: Option<String>,
    /// What the channel showed (`None`: it did not know the item).
    pub remote: Option<i64>,
    /// What skuld believed it showed (the last acknowledged value).
    pub believed: Option<i64>,
    /// What skuld wants it to show.
    pub desired: i64,
    pub found_at_ms: u64,
}

/// The prefix of `channel`'s records of `tenant`.
pub fn channel_prefix(tenant: &str, channel: &str) -> String {
    format!("{tenant}/{channel}/")
}

/// The id of a target's record.
pub fn target_id(key: &PushKey, location: Option<&str>) -> String {
    let target = serde_json::to_vec(&(&key.sku, location)).unwrap_or_default();
    format!(
        "{}{:032x}",
        channel_prefix(&key.tenant, &key.channel),
        xxh3_128(&target)
    )
}

pub async fn put_dead_letter(store: &dyn Store, letter: &DeadLetter) -> Result<(), StoreError> {
    let id = target_id(&letter.key, letter.location.as_deref());
    store
        .put_record(
            DEAD_LETTER_KIND,
            &id,
            serde_json::to_vec(letter).unwrap_or_default(),
        )
        .await
}

/// The dead letter of a target, if there is one (its first time and
/// attempts carry over to the next refusal).
pub async fn dead_letter(
    store: &dyn Store,
    key: &PushKey,
    location: Option<&str>,
) -> Result<Option<DeadLetter>, StoreError> {
    Ok(store
        .get_record(DEAD_LETTER_KIND, &target_id(key, location))
        .await?
        .and_then(|raw| serde_json::from_slice(&raw).ok()))
}

pub async fn put_drift(store: &dyn Store, drift: &Drift) -> Result<(), StoreError> {
    let id = target_id(&drift.key, drift.location.as_deref());
    store
        .put_record(
            DRIFT_KIND,
            &id,
            serde_json::to_vec(drift).unwrap_or_default(),
        )
        .await
}

/// A page of `kind`'s records of one channel, after the record id `after`.
async fn page<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    kind: &str,
    tenant: &str,
    channel: &str,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<(String, T)>, StoreError> {
    let prefix = channel_prefix(tenant, channel);
    let rows = store.list_records(kind, &prefix, after, limit).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, raw)| serde_json::from_slice(&raw).ok().map(|value| (id, value)))
        .collect())
}

pub async fn dead_letters(
    store: &dyn Store,
    tenant: &str,
    channel: &str,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<(String, DeadLetter)>, StoreError> {
    page(store, DEAD_LETTER_KIND, tenant, channel, after, limit).await
}

pub async fn drifts(
    store: &dyn Store,
    tenant: &str,
    channel: &str,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<(String, Drift)>, StoreError> {
    page(store, DRIFT_KIND, tenant, channel, after, limit).await
}

/// Replays dead letters: each one's key is queued for the worker (a replay
/// record, which survives a crash) and the letter removed. The worker then
/// pushes the key's current desired value. Returns how many were replayed.
pub async fn replay(
    store: &dyn Store,
    letters: &[(String, DeadLetter)],
    shard_count: u32,
) -> Result<usize, StoreError> {
    let replays = letters
        .iter()
        .map(|(_, letter)| (letter.key.record_id(shard_count), encode_key(&letter.key)))
        .collect();
    store.put_records(REPLAY_KIND, replays).await?;
    for (id, _) in letters {
        store.delete_record(DEAD_LETTER_KIND, id).await?;
    }
    Ok(letters.len())
}
