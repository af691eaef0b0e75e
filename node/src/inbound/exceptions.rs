//! Webhook deliveries (or lines of them) that could not be applied as they
//! came: an unknown SKU or location, a channel's order that skuld's stock
//! cannot hold, a payload that does not read. Kept for a person, never
//! dropped: records of no shard, id `<tenant>/<channel>/<hash>`, so the
//! ChannelService on any node lists a channel's by prefix
//! (`ListChannelWebhookExceptions`, `skuld channels webhook-exceptions`).
//!
//! One record per (delivery's resource, code, remote reference): the same
//! unknown item named by every level update of it is one exception, the
//! latest, not thousands.

use serde::{Deserialize, Serialize};
use skuld_cluster::{Store, StoreError};
use skuld_proto::v1 as pb;
use xxhash_rust::xxh3::xxh3_128;

use skuld_actors::key::validate_tenant;
use skuld_actors::{store_error, Refusal};
use tonic::Status;

use crate::channels::definitions::{self, validate_channel_id};
use crate::channels::ledger::channel_prefix;
use crate::channels::operations::MAX_PAGE;
use crate::rpc::Failure;

const DEFAULT_PAGE: usize = 100;

pub const EXCEPTION_KIND: &str = "inbound_exception";

/// The account setting naming who acts on a channel's exceptions.
pub const OWNER_SETTING: &str = "exceptions_owner";
/// Whose they are when the channel names no one.
pub const DEFAULT_OWNER: &str = "tenant-admin";

/// Why a delivery (or a line of it) was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExceptionCode {
    /// The channel's item is mapped to no SKU of the channel's catalog.
    UnknownSku,
    /// The channel's location is mapped to no location of the network.
    UnknownLocation,
    /// Signed, but not the payload the topic has.
    UnreadablePayload,
    /// A channel's order skuld's stock could not hold (an oversell).
    InsufficientStock,
    /// skuld refused what the delivery asked (the reason in the detail).
    Refused,
}

impl ExceptionCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownSku => "UNKNOWN_SKU",
            Self::UnknownLocation => "UNKNOWN_LOCATION",
            Self::UnreadablePayload => "UNREADABLE_PAYLOAD",
            Self::InsufficientStock => "INSUFFICIENT_STOCK",
            Self::Refused => "REFUSED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookException {
    pub tenant: String,
    pub channel: String,
    pub topic: String,
    pub event_id: String,
    pub webhook_id: String,
    pub resource: String,
    pub code: ExceptionCode,
    pub detail: String,
    /// The channel's item or location named, for the UNKNOWN_* codes.
    pub remote_ref: String,
    pub owner: String,
    pub recorded_at_ms: u64,
}

impl WebhookException {
    /// The record id: one per resource, code and remote reference.
    pub fn record_id(&self) -> String {
        let identity =
            serde_json::to_vec(&(&self.resource, self.code, &self.remote_ref)).unwrap_or_default();
        format!(
            "{}{:032x}",
            channel_prefix(&self.tenant, &self.channel),
            xxh3_128(&identity)
        )
    }

    pub fn to_proto(&self, id: String) -> pb::ChannelWebhookException {
        pb::ChannelWebhookException {
            id,
            topic: self.topic.clone(),
            event_id: self.event_id.clone(),
            webhook_id: self.webhook_id.clone(),
            resource: self.resource.clone(),
            code: self.code.as_str().to_owned(),
            detail: self.detail.clone(),
            remote_ref: self.remote_ref.clone(),
            owner: self.owner.clone(),
            recorded_at_ms: i64::try_from(self.recorded_at_ms).unwrap_or(i64::MAX),
        }
    }
}

/// Writes `exceptions` (durably, together).
pub async fn record(store: &dyn Store, exceptions: &[WebhookException]) -> Result<(), StoreError> {
    if exceptions.is_empty() {
        return Ok(());
    }
    let records = exceptions
        .iter()
        .map(|exception| {
            (
                exception.record_id(),
                serde_json::to_vec(exception).unwrap_or_default(),
            )
        })
        .collect();
    store.put_records(EXCEPTION_KIND, records).await
}

/// `ListChannelWebhookExceptions`: one page of the channel's exceptions.
pub async fn list(
    store: &dyn Store,
    request: pb::ListChannelWebhookExceptionsRequest,
) -> Result<pb::ListChannelWebhookExceptionsResponse, Failure> {
    let size = match request.page_size as usize {
        0 => DEFAULT_PAGE,
        size if size <= MAX_PAGE => size,
        _ => {
            return Err(Refusal::invalid("page_size", format!("1 to {MAX_PAGE}")).into());
        }
    };
    validate_tenant("tenant", &request.tenant)?;
    validate_channel_id("channel", &request.channel)?;
    let prefix = channel_prefix(&request.tenant, &request.channel);
    let after = match request.page_token.as_str() {
        "" => None,
        token
            if token.strip_prefix(&prefix).is_some_and(|hash| {
                hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit())
            }) =>
        {
            Some(token.to_owned())
        }
        _ => {
            return Err(Refusal::invalid(
                "page_token",
                "is not a token this service gave out for this channel",
            )
            .into())
        }
    };
    if definitions::load(store, &request.tenant, &request.channel)
        .await?
        .is_none()
    {
        return Err(Status::not_found(format!(
            "tenant {:?} has no channel {:?}",
            request.tenant, request.channel
        ))
        .into());
    }
    let raw = store
        .list_records(EXCEPTION_KIND, &prefix, after, size)
        .await
        .map_err(store_error)?;
    let next_page_token = match raw.last() {
        Some((id, _)) if raw.len() == size => id.clone(),
        _ => String::new(),
    };
    let exceptions = raw
        .into_iter()
        .filter_map(|(id, raw)| {
            let exception: WebhookException = serde_json::from_slice(&raw).ok()?;
            (exception.tenant == request.tenant && exception.channel == request.channel)
                .then(|| exception.to_proto(id))
        })
        .collect();
    Ok(pb::ListChannelWebhookExceptionsResponse {
        exceptions,
        next_page_token,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exception(resource: &str, remote_ref: &str) -> WebhookException {
        WebhookException {
            tenant: "acme".into(),
            channel: "web".into(),
            topic: "inventory_levels/update".into(),
            event_id: "e".into(),
            webhook_id: "w".into(),
            resource: resource.into(),
            code: ExceptionCode::UnknownSku,
            detail: String::new(),
            remote_ref: remote_ref.into(),
            owner: DEFAULT_OWNER.into(),
            recorded_at_ms: 1,
        }
    }

    #[test]
    fn one_record_per_resource_code_and_remote_reference() {
        let first = exception("level:7:1", "7");
        let again = WebhookException {
            event_id: "later".into(),
            ..first.clone()
        };
        assert_eq!(first.record_id(), again.record_id());
        assert_ne!(first.record_id(), exception("level:8:1", "8").record_id());
        assert!(first.record_id().starts_with("acme/web/"));
    }
}
