//! Channel connectors: the I/O adapters that write a channel's sellable
//! quantity and read it back, one per channel behind one trait, each with
//! its account's rate limiter and its error classification (CHANNELS.md
//! A-D and items 17-21).
//!
//! A connector holds no scheduling state: the push worker keeps each key's
//! `PushState` (skuld-domain, item 15), decides what is due, builds
//! [`PushItem`]s and turns each [`PushOutcome`] into a transition
//! (`succeeded`, `conflicted`, `failed` with [`backoff::retry_delay`],
//! `abandoned` for a dead letter). An `Accepted` outcome is not an
//! acknowledgement: the worker confirms it with [`Connector::read`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod config;
pub mod http;
pub mod idempotency;
pub mod limiter;
pub mod outcome;

pub mod adobe;
pub mod amazon;
pub mod sap;
pub mod shopify;
pub mod walmart;

use std::time::Duration;

use async_trait::async_trait;

pub use config::{ConnectorConfig, ConnectorKind, Credentials, Secret};
pub use idempotency::idempotency_key;
pub use outcome::{ConnectorError, PushOutcome};

/// A key as skuld names it: the SKU and, for a channel that is pushed per
/// location, skuld's location id (each adapter maps both to the channel's
/// identifiers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub sku: String,
    pub location: Option<String>,
}

impl ItemKey {
    pub fn new(sku: impl Into<String>, location: Option<&str>) -> Self {
        ItemKey {
            sku: sku.into(),
            location: location.map(str::to_owned),
        }
    }
}

/// One value to write (a `Push` of skuld-domain, with its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushItem {
    pub sku: String,
    pub location: Option<String>,
    /// The channel's sellable quantity.
    pub value: i64,
    /// The desired version pushed.
    pub version: u64,
    /// What the channel is believed to show (the last acknowledged value,
    /// or the remote figure of a conflict); `None` when unknown.
    pub change_from: Option<i64>,
    /// From [`idempotency_key`]: the same for a retry of this push.
    pub idempotency_key: String,
}

impl PushItem {
    /// An item with its idempotency key derived from the other fields.
    pub fn new(
        channel_id: &str,
        sku: impl Into<String>,
        location: Option<&str>,
        value: i64,
        version: u64,
        change_from: Option<i64>,
    ) -> Self {
        let sku = sku.into();
        let idempotency_key =
            idempotency_key(channel_id, &sku, location, value, version, change_from);
        PushItem {
            sku,
            location: location.map(str::to_owned),
            value,
            version,
            change_from,
            idempotency_key,
        }
    }

    pub fn key(&self) -> ItemKey {
        ItemKey {
            sku: self.sku.clone(),
            location: self.location.clone(),
        }
    }
}

/// One channel account's adapter.
///
/// `push` returns one outcome per item, in order, and never fails as a
/// whole: a call that could not be made (the limiter's wait too long, the
/// channel down) is a `Retry` of each item it carried. Items are sent in
/// calls of at most [`Connector::max_batch`]; from
/// [`Connector::bulk_threshold`] items on, the adapter takes the channel's
/// bulk path (CHANNELS.md item 17).
#[async_trait]
pub trait Connector: Send + Sync {
    fn kind(&self) -> ConnectorKind;

    /// skuld's channel id this connector writes for.
    fn channel_id(&self) -> &str;

    /// The most items one `push` call should carry.
    fn max_batch(&self) -> usize;

    /// From this many items in one `push` on, the bulk path is used.
    fn bulk_threshold(&self) -> usize;

    /// The most items a `push` below the bulk threshold should carry: an
    /// adapter that writes item by item (Amazon's listings, Walmart's
    /// single-item updates) says how many its budget takes in about a
    /// burst, so that one call does not hold the account for minutes while
    /// a decrease waits behind it.
    fn small_batch(&self) -> usize {
        self.max_batch()
    }

    /// How long the account limiter would make a push wait now (the worker
    /// may sleep that long instead of calling).
    fn ready_in(&self) -> Duration;

    /// Whether every write names the figure it replaces and the channel
    /// refuses it when that figure is no longer shown (Shopify's
    /// `changeFromQuantity`). Then a former owner's write that lands late
    /// is refused rather than put over a newer one; channels that overwrite
    /// blindly make the worker wait out such writes after a shard move.
    fn refuses_stale_writes(&self) -> bool {
        false
    }

    async fn push(&self, items: &[PushItem]) -> Vec<PushOutcome>;

    /// What the channel shows for each key, in order; `None` where the
    /// channel does not know the item (or location). Used for reconciliation
    /// (item 21) and to confirm an `Accepted` push.
    async fn read(&self, keys: &[ItemKey]) -> Result<Vec<Option<i64>>, ConnectorError>;
}

/// Builds the adapter for `config.kind`.
pub fn connect(config: ConnectorConfig) -> Result<Box<dyn Connector>, ConnectorError> {
    Ok(match config.kind {
        ConnectorKind::Shopify => Box::new(shopify::Shopify::new(config)?),
        ConnectorKind::Amazon => Box::new(amazon::Amazon::new(config)?),
        ConnectorKind::Walmart => Box::new(walmart::Walmart::new(config)?),
        ConnectorKind::AdobeCommerce => Box::new(adobe::Adobe::new(config)?),
    })
}

/// Counts a call the channel refused for its rate limit, for the node's
/// `/metrics` (`skuld_channel_throttled_total{channel}`): a connector whose
/// limiter mirrors the budget well keeps it at 0.
pub(crate) fn count_throttled(channel_id: &str) {
    metrics::counter!("skuld_channel_throttled_total", "channel" => channel_id.to_owned())
        .increment(1);
}

/// The `after` of a local wait turned into a retry.
pub(crate) fn paced(wait: Duration, limiter: &str) -> PushOutcome {
    PushOutcome::retry(
        wait,
        format!(
            "local {limiter} budget: next call in {} ms",
            wait.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_builds_each_kind_and_refuses_a_missing_credential() {
        let base = "http://127.0.0.1:9";
        let configs = [
            ConnectorConfig::new("s", ConnectorKind::Shopify, base).credential("access_token", "t"),
            ConnectorConfig::new("a", ConnectorKind::Amazon, base)
                .setting("seller_id", "A1")
                .setting("marketplace_id", "M1")
                .credential("client_id", "i")
                .credential("client_secret", "s")
                .credential("refresh_token", "r"),
            ConnectorConfig::new("w", ConnectorKind::Walmart, base)
                .credential("client_id", "i")
                .credential("client_secret", "s"),
            ConnectorConfig::new("m", ConnectorKind::AdobeCommerce, base)
                .credential("access_token", "t"),
        ];
        for config in configs {
            let kind = config.kind;
            let connector = connect(config).unwrap();
            assert_eq!(connector.kind(), kind);
            assert!(connector.max_batch() >= 1);
        }
        for kind in [
            ConnectorKind::Shopify,
            ConnectorKind::Amazon,
            ConnectorKind::Walmart,
            ConnectorKind::AdobeCommerce,
        ] {
            let error = connect(ConnectorConfig::new("x", kind, base)).err();
            assert!(matches!(error, Some(ConnectorError::Config(_))), "{kind:?}");
        }
    }

    #[test]
    fn push_items_carry_their_key() {
        let item = PushItem::new("c", "SKU", Some("l"), 5, 9, Some(4));
        assert_eq!(
            item.idempotency_key,
            idempotency_key("c", "SKU", Some("l"), 5, 9, Some(4))
        );
        assert_eq!(item.key(), ItemKey::new("SKU", Some("l")));
    }
}
