//! Inbound channel traffic: Shopify's webhooks ([`shopify`]), taken in on
//! the HTTP port into a durable [`inbox`] and applied from it by the owner
//! of each resource's shard; what cannot be applied goes to the
//! [`exceptions`]. docs/inbound-webhooks.md has the contract.

pub mod exceptions;
pub mod inbox;
pub mod shopify;

use std::sync::Arc;

use skuld_cluster::shards::ShardTable;
use skuld_cluster::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channels::credentials::CredentialPolicy;

/// The metrics, `skuld_inbound_webhooks_*`.
pub mod metrics {
    pub const RECEIVED: &str = "skuld_inbound_webhooks_received_total";
    pub const REFUSED_SIGNATURE: &str = "skuld_inbound_webhooks_refused_signature_total";
    pub const DUPLICATES: &str = "skuld_inbound_webhooks_duplicates_total";
    pub const SUPERSEDED: &str = "skuld_inbound_webhooks_superseded_total";
    pub const APPLIED: &str = "skuld_inbound_webhooks_applied_total";
    pub const EXCEPTIONS: &str = "skuld_inbound_webhooks_exceptions_total";
    pub const INBOX_DEPTH: &str = "skuld_inbound_webhooks_inbox_depth";

    /// The topics skuld acts on, and `other`: a label from a closed set,
    /// whatever a sender puts in the header.
    pub fn topic_label(topic: &str) -> &'static str {
        match topic {
            "orders/create" => "orders/create",
            "refunds/create" => "refunds/create",
            "returns/request" => "returns/request",
            "inventory_levels/update" => "inventory_levels/update",
            _ => "other",
        }
    }

    pub fn describe() {
        metrics::describe_counter!(RECEIVED, "Webhook requests received, before verification");
        metrics::describe_counter!(
            REFUSED_SIGNATURE,
            "Webhook requests refused for a missing or wrong signature (nothing stored), by reason"
        );
        metrics::describe_counter!(
            DUPLICATES,
            "Webhook deliveries seen before, by the key that told (webhook_id, event_id)"
        );
        metrics::describe_counter!(
            SUPERSEDED,
            "Webhook deliveries older (updated_at) than one their resource applied: recorded, not applied"
        );
        metrics::describe_counter!(APPLIED, "Webhook deliveries applied, by topic");
        metrics::describe_counter!(
            EXCEPTIONS,
            "Webhook exceptions recorded (unknown SKU or location, ...), by code"
        );
        metrics::describe_gauge!(
            INBOX_DEPTH,
            "Webhook deliveries in the inbox of this node's shards, not applied yet"
        );
    }
}

/// The inbound side of a node: the HTTP routes' intake and the processor.
pub struct Inbound {
    pub intake: Arc<shopify::Intake>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Inbound {
    pub fn start(
        store: Arc<dyn Store>,
        shards: Option<Arc<ShardTable>>,
        shard_count: u32,
        credentials: CredentialPolicy,
        applier: shopify::Applier,
    ) -> Self {
        self::metrics::describe();
        let wake = Arc::new(Notify::new());
        let intake = Arc::new(shopify::Intake::new(
            Arc::clone(&store),
            credentials,
            shard_count,
            shopify::DEFAULT_MAX_BODY_BYTES,
            Arc::clone(&wake),
        ));
        let stop = CancellationToken::new();
        let processor = inbox::Processor {
            store,
            shards,
            shard_count,
            applier: Arc::new(applier),
            wake,
        };
        let task = tokio::spawn(processor.run(stop.clone()));
        Self { intake, stop, task }
    }

    /// The HTTP routes (merged into the node's HTTP port).
    pub fn routes(&self) -> axum::Router {
        shopify::routes(Arc::clone(&self.intake))
    }

    /// Stops the processor; what it had not applied stays in the inbox.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
