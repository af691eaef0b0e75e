//! The ChannelService's RPCs over the push worker's work: dead letters,
//! their replay, drift, and reconciliation on request. The service
//! (`channels_api`) checks the caller; these check the request and act on
//! the store's records, which every node's worker reads.

use std::collections::BTreeMap;

use skuld_actors::key::{validate_tenant, validate_token};
use skuld_actors::{store_error, Error, Refusal};
use skuld_cluster::Store;
use skuld_proto::v1 as pb;
use tonic::Status;

use super::definitions::{self, validate_channel_id};
use super::keys::{encode_mark, DirtyMark, PushKey, DIRTY_KIND};
use super::ledger::{self, DeadLetter, Drift};
use super::worker::RECONCILE_KIND;
use crate::rpc::Failure;

/// The most a page holds, and the most ids one replay names.
pub const MAX_PAGE: usize = 1_000;
const DEFAULT_PAGE: usize = 100;

fn page_size(requested: u32) -> Result<usize, Refusal> {
    match requested as usize {
        0 => Ok(DEFAULT_PAGE),
        size if size <= MAX_PAGE => Ok(size),
        _ => Err(Refusal::invalid("page_size", format!("1 to {MAX_PAGE}"))),
    }
}

/// A record id of the channel's dead letters or drift, as a page token or
/// a replay names it: only ids this service gave out are taken.
fn record_id(
    field: &'static str,
    tenant: &str,
    channel: &str,
    id: &str,
) -> Result<Option<String>, Refusal> {
    if id.is_empty() {
        return Ok(None);
    }
    let valid = id
        .strip_prefix(&ledger::channel_prefix(tenant, channel))
        .is_some_and(|hash| hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(Some(id.to_owned()))
    } else {
        Err(Refusal::invalid(
            field,
            "is not an id this service gave out for this channel",
        ))
    }
}

/// Checks the tenant and channel named and that the channel exists.
async fn channel_named(store: &dyn Store, tenant: &str, channel: &str) -> Result<(), Failure> {
    validate_tenant("tenant", tenant)?;
    validate_channel_id("channel", channel)?;
    match definitions::load(store, tenant, channel).await? {
        Some(_) => Ok(()),
        None => {
            Err(Status::not_found(format!("tenant {tenant:?} has no channel {channel:?}")).into())
        }
    }
}

/// The token of the page after `page`, if it was full.
fn next_token<T>(page: &[(String, T)], size: usize) -> String {
    match page.last() {
        Some((id, _)) if page.len() == size => id.clone(),
        _ => String::new(),
    }
}

fn millis(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

fn dead_letter_to_proto(id: String, letter: DeadLetter) -> pb::ChannelDeadLetter {
    pb::ChannelDeadLetter {
        id,
        sku: letter.key.sku,
        location: letter.location.unwrap_or_default(),
        code: letter.code,
        message: letter.message,
        value: letter.value,
        attempts: letter.attempts,
        first_at_ms: millis(letter.first_at_ms),
        last_at_ms: millis(letter.last_at_ms),
    }
}

fn drift_to_proto(drift: Drift) -> pb::ChannelDrift {
    pb::ChannelDrift {
        sku: drift.key.sku,
        location: drift.location.unwrap_or_default(),
        remote: drift.remote,
        believed: drift.believed,
        desired: drift.desired,
        found_at_ms: millis(drift.found_at_ms),
    }
}

pub async fn list_dead_letters(
    store: &dyn Store,
    request: pb::ListChannelDeadLettersRequest,
) -> Result<pb::ListChannelDeadLettersResponse, Failure> {
    let size = page_size(request.page_size)?;
    let after = record_id(
        "page_token",
        &request.tenant,
        &request.channel,
        &request.page_token,
    )?;
    channel_named(store, &request.tenant, &request.channel).await?;
    let page = ledger::dead_letters(store, &request.tenant, &request.channel, after, size)
        .await
        .map_err(store_error)?;
    let next_page_token = next_token(&page, size);
    Ok(pb::ListChannelDeadLettersResponse {
        dead_letters: page
            .into_iter()
            .map(|(id, letter)| dead_letter_to_proto(id, letter))
            .collect(),
        next_page_token,
    })
}

pub async fn replay_dead_letters(
    store: &dyn Store,
    shard_count: u32,
    request: pb::ReplayChannelDeadLettersRequest,
) -> Result<pb::ReplayChannelDeadLettersResponse, Failure> {
    if request.ids.len() > MAX_PAGE {
        return Err(Error::Refused(Refusal::invalid(
            "ids",
            format!("at most {MAX_PAGE} per request"),
        ))
        .into());
    }
    let mut ids = Vec::with_capacity(request.ids.len());
    for id in &request.ids {
        match record_id("ids", &request.tenant, &request.channel, id)? {
            Some(id) => ids.push(id),
            None => {
                return Err(
                    Error::Refused(Refusal::invalid("ids", "must not hold an empty id")).into(),
                )
            }
        }
    }
    channel_named(store, &request.tenant, &request.channel).await?;
    let mut letters = Vec::new();
    if ids.is_empty() {
        let mut after = None;
        loop {
            let page =
                ledger::dead_letters(store, &request.tenant, &request.channel, after, MAX_PAGE)
                    .await
                    .map_err(store_error)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            letters.extend(page);
        }
    } else {
        for id in ids {
            let found = store
                .get_record(ledger::DEAD_LETTER_KIND, &id)
                .await
                .map_err(store_error)?
                .and_then(|raw| serde_json::from_slice::<DeadLetter>(&raw).ok());
            if let Some(letter) = found {
                letters.push((id, letter));
            }
        }
    }
    let replayed = ledger::replay(store, &letters, shard_count)
        .await
        .map_err(store_error)?;
    tracing::info!(tenant = %request.tenant, channel = %request.channel, replayed, "channel dead letters replayed");
    Ok(pb::ReplayChannelDeadLettersResponse {
        replayed: u32::try_from(replayed).unwrap_or(u32::MAX),
    })
}

pub async fn list_drift(
    store: &dyn Store,
    request: pb::ListChannelDriftRequest,
) -> Result<pb::ListChannelDriftResponse, Failure> {
    let size = page_size(request.page_size)?;
    let after = record_id(
        "page_token",
        &request.tenant,
        &request.channel,
        &request.page_token,
    )?;
    channel_named(store, &request.tenant, &request.channel).await?;
    let page = ledger::drifts(store, &request.tenant, &request.channel, after, size)
        .await
        .map_err(store_error)?;
    let next_page_token = next_token(&page, size);
    Ok(pb::ListChannelDriftResponse {
        drift: page
            .into_iter()
            .map(|(_, drift)| drift_to_proto(drift))
            .collect(),
        next_page_token,
    })
}

pub async fn reconcile(
    store: &dyn Store,
    request: pb::ReconcileChannelRequest,
) -> Result<pb::ReconcileChannelResponse, Failure> {
    channel_named(store, &request.tenant, &request.channel).await?;
    let requested_at_ms = skuld_cluster::now_ms();
    store
        .put_record(
            RECONCILE_KIND,
            &definitions::record_id(&request.tenant, &request.channel),
            requested_at_ms.to_string().into_bytes(),
        )
        .await
        .map_err(store_error)?;
    Ok(pb::ReconcileChannelResponse { requested_at_ms })
}

/// Marks each SKU's push key dirty, as a stock change would: the worker of
/// the key's shard computes and pushes it.
pub async fn sync(
    store: &dyn Store,
    shard_count: u32,
    request: pb::SyncChannelRequest,
) -> Result<pb::SyncChannelResponse, Failure> {
    if request.skus.is_empty() || request.skus.len() > MAX_PAGE {
        return Err(Error::Refused(Refusal::invalid(
            "skus",
            format!("1 to {MAX_PAGE} per request"),
        ))
        .into());
    }
    for sku in &request.skus {
        validate_token("skus", sku)?;
    }
    channel_named(store, &request.tenant, &request.channel).await?;
    let at = format!("sync:{}", skuld_cluster::now_ms());
    let marks: BTreeMap<String, Vec<u8>> = request
        .skus
        .iter()
        .map(|sku| {
            let key = PushKey::new(&request.tenant, &request.channel, sku);
            let mark = DirtyMark {
                key,
                at: at.clone(),
            };
            (mark.key.record_id(shard_count), encode_mark(&mark))
        })
        .collect();
    let queued = marks.len();
    store
        .put_records(DIRTY_KIND, marks.into_iter().collect())
        .await
        .map_err(store_error)?;
    tracing::info!(tenant = %request.tenant, channel = %request.channel, queued, "channel SKUs queued for a sync");
    Ok(pb::SyncChannelResponse {
        queued: u32::try_from(queued).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_ids_of_the_channels_own_records_are_taken() {
        let good = format!("acme/web/{}", "0a".repeat(16));
        assert_eq!(
            record_id("ids", "acme", "web", &good).unwrap(),
            Some(good.clone())
        );
        assert_eq!(record_id("ids", "acme", "web", "").unwrap(), None);
        for bad in [
            format!("acme/shop/{}", "0a".repeat(16)),
            format!("globex/web/{}", "0a".repeat(16)),
            "acme/web/short".to_owned(),
            format!("acme/web/{}", "zz".repeat(16)),
        ] {
            assert!(record_id("ids", "acme", "web", &bad).is_err(), "{bad}");
        }
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE);
        assert!(page_size(1_001).is_err());
    }
}
