//! Channel definitions in the store's records: kind [`CHANNEL_KIND`], id
//! `<tenant>/<channel id>`, the value a [`StoredChannel`] as JSON (as the
//! webhook endpoints are). Records belong to no shard, so every node reads
//! every definition, in embedded and in cluster mode alike.
//!
//! A channel id never holds a `/` ([`validate_channel_id`]), so the record id
//! is unambiguous even for a tenant whose name holds one: the channel id is
//! what follows the last `/`. A tenant's prefix `<tenant>/` can still match
//! the records of a tenant named `<tenant>/<more>`; every listing here keeps
//! only the records whose channel names the tenant asked for.

use serde::{Deserialize, Serialize};
use skuld_actors::channel::Channel;
use skuld_actors::{Error, Refusal};
use skuld_cluster::{Store, StoreError};

/// The records' kind.
pub const CHANNEL_KIND: &str = "channel";

/// Records read per store call when listing.
const LIST_BATCH: usize = 500;

/// A channel as stored: its definition and the revision it is at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChannel {
    pub channel: Channel,
    /// 1 when created, one more on every change of the definition or the
    /// controls: what `expected_revision` guards and what a computed
    /// availability names.
    pub revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The record id of `channel_id` of `tenant`.
pub fn record_id(tenant: &str, channel_id: &str) -> String {
    format!("{tenant}/{channel_id}")
}

/// A channel id: a token (1 to 128 characters, no control characters, no
/// white space at either end) without `/`, which separates it from the
/// tenant in the record id.
pub fn validate_channel_id(field: &'static str, id: &str) -> Result<(), Refusal> {
    skuld_actors::key::validate_token(field, id)?;
    if id.contains('/') {
        return Err(Refusal::invalid(field, "must not contain '/'"));
    }
    Ok(())
}

/// Why a stored definition could not be read, without its content: a
/// serde_json message may quote a value, and no value of a definition
/// belongs in a log or an error.
fn unreadable(id: &str, error: &serde_json::Error) -> String {
    format!(
        "channel record {id:?} is unreadable ({:?} error at line {}, column {})",
        error.classify(),
        error.line(),
        error.column()
    )
}

pub fn encode(stored: &StoredChannel) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(stored)
        .map_err(|error| Error::Unavailable(format!("cannot encode a channel: {error}")))
}

fn decode(id: &str, raw: &[u8]) -> Result<StoredChannel, String> {
    serde_json::from_slice(raw).map_err(|error| unreadable(id, &error))
}

/// Keeps the readable records of `tenant` (all tenants when `None`); an
/// unreadable one is logged by id and left out, so one bad record does not
/// hide the others.
fn readable(page: Vec<(String, Vec<u8>)>, tenant: Option<&str>) -> Vec<StoredChannel> {
    page.into_iter()
        .filter_map(|(id, raw)| match decode(&id, &raw) {
            Ok(stored) => Some(stored),
            Err(reason) => {
                tracing::warn!("{reason}");
                None
            }
        })
        .filter(|stored| tenant.is_none_or(|tenant| stored.channel.tenant == tenant))
        .collect()
}

/// `channel_id` of `tenant`, if defined.
pub async fn load(
    store: &dyn Store,
    tenant: &str,
    channel_id: &str,
) -> Result<Option<StoredChannel>, Error> {
    let id = record_id(tenant, channel_id);
    let Some(raw) = store
        .get_record(CHANNEL_KIND, &id)
        .await
        .map_err(skuld_actors::store_error)?
    else {
        return Ok(None);
    };
    decode(&id, &raw).map(Some).map_err(Error::Unavailable)
}

/// Writes `stored` (durably, alone).
pub async fn save(store: &dyn Store, stored: &StoredChannel) -> Result<(), Error> {
    let id = record_id(&stored.channel.tenant, &stored.channel.id);
    store
        .put_record(CHANNEL_KIND, &id, encode(stored)?)
        .await
        .map_err(skuld_actors::store_error)
}

/// Removes `channel_id` of `tenant`; true when there was one.
pub async fn remove(store: &dyn Store, tenant: &str, channel_id: &str) -> Result<bool, Error> {
    store
        .delete_record(CHANNEL_KIND, &record_id(tenant, channel_id))
        .await
        .map_err(skuld_actors::store_error)
}

/// One page of a tenant's channels in id order, after the record id
/// `after`, and the record id to go on after (`None`: the last page).
/// A page may be shorter than `limit` and still not be the last (records
/// of another tenant whose name extends this one's are skipped).
pub async fn page_of_tenant(
    store: &dyn Store,
    tenant: &str,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<StoredChannel>, Option<String>), Error> {
    let limit = limit.max(1);
    let page = store
        .list_records(CHANNEL_KIND, &format!("{tenant}/"), after, limit)
        .await
        .map_err(skuld_actors::store_error)?;
    let next = match page.last() {
        Some((id, _)) if page.len() == limit => Some(id.clone()),
        _ => None,
    };
    Ok((readable(page, Some(tenant)), next))
}

/// Every channel of `tenant`: what shares are checked against and what an
/// allocation remainder is computed with.
pub async fn tenant_channels(store: &dyn Store, tenant: &str) -> Result<Vec<StoredChannel>, Error> {
    let mut channels = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = page_of_tenant(store, tenant, after, LIST_BATCH).await?;
        channels.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => return Ok(channels),
        }
    }
}

/// Every channel of every tenant, in record id order (tenant, then channel
/// id): what the push worker starts from and reloads.
pub async fn all_channels(store: &dyn Store) -> Result<Vec<StoredChannel>, StoreError> {
    let mut channels = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_records(CHANNEL_KIND, "", after.clone(), LIST_BATCH)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(channels);
        };
        after = Some(last.clone());
        channels.extend(readable(page, None));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use skuld_actors::channel::{ChannelKind, Publication};

    use super::*;

    fn stored(tenant: &str, id: &str) -> StoredChannel {
        StoredChannel {
            channel: Channel {
                id: id.into(),
                tenant: tenant.into(),
                kind: ChannelKind::Shopify,
                network: vec!["DC1".into()],
                publication: Publication::PerLocation,
                priority: 1,
                controls: vec![],
                stacking: false,
                min_push_interval_ms: 1_000,
                reassert_interval_ms: 60_000,
                account: BTreeMap::new(),
                credentials_ref: "env:SHOP_TOKEN".into(),
            },
            revision: 1,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn a_channel_id_never_holds_the_separator() {
        assert!(validate_channel_id("id", "shop-eu").is_ok());
        assert!(validate_channel_id("id", "shop/eu").is_err());
        assert!(validate_channel_id("id", "").is_err());
        assert!(validate_channel_id("id", " shop").is_err());
    }

    #[test]
    fn records_round_trip_and_an_unreadable_one_is_named_without_its_content() {
        let channel = stored("acme", "shop");
        let raw = encode(&channel).unwrap();
        assert_eq!(decode("acme/shop", &raw).unwrap(), channel);
        let reason = decode("acme/shop", br#"{"channel": "hunter2-secret"}"#).unwrap_err();
        assert!(reason.contains("acme/shop"), "{reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }

    #[test]
    fn a_tenant_listing_skips_a_tenant_whose_name_extends_it() {
        let records = vec![
            (
                "acme/shop".to_owned(),
                encode(&stored("acme", "shop")).unwrap(),
            ),
            (
                "acme/eu/shop".to_owned(),
                encode(&stored("acme/eu", "shop")).unwrap(),
            ),
            ("acme/bad".to_owned(), b"not json".to_vec()),
        ];
        let kept = readable(records.clone(), Some("acme"));
        assert_eq!(kept, vec![stored("acme", "shop")]);
        assert_eq!(readable(records, None).len(), 2);
    }
}
