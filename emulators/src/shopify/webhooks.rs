//! Signed Shopify webhooks (CHANNELS.md A.5): `X-Shopify-Hmac-Sha256` is the
//! base64 HMAC-SHA256 of the raw body keyed with the app secret, with the topic,
//! shop, API version, webhook id, event id and trigger time in headers. Faults:
//! delay, duplicates (same ids, as a retry), reordering and drops, because
//! Shopify guarantees none of order, timeliness or delivery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use super::inventory::{level_gid, StockedLevel};
use super::{OrderLine, ShopifyConfig};
use crate::clock;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where webhooks go; none are sent without it.
    pub url: Option<String>,
    /// `X-Shopify-API-Version` of the subscription.
    pub api_version: String,
    /// A.5: Shopify gives the receiver 5 s in total.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            api_version: "2026-04".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Webhook faults (`POST /_control/shopify/webhooks/faults`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookFaults {
    /// Wait this long before sending each batch.
    pub delay_ms: u64,
    /// Send each webhook this many extra times, with the same ids (a retry).
    pub duplicates: u32,
    /// Send each batch (an order and its level updates) in reverse order.
    pub reorder: bool,
    /// Never send the next N webhooks (lost deliveries).
    pub drop_next: u32,
    /// Sign with another key than the app secret (a forged or misrouted
    /// delivery the receiver must refuse).
    pub wrong_signature: bool,
    /// `X-Shopify-Triggered-At` this long before the send: with `delay_ms`,
    /// a delivery that arrives late (A.5: "up to a day late").
    pub backdate_ms: u64,
}

/// One attempt to deliver a webhook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WebhookDelivery {
    pub topic: String,
    pub webhook_id: String,
    pub event_id: String,
    pub triggered_at: String,
    pub body: String,
    pub hmac_sha256: String,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// Not sent: dropped by a fault.
    pub dropped: bool,
}

pub struct Webhooks {
    config: WebhookConfig,
    url: Mutex<Option<String>>,
    faults: Mutex<WebhookFaults>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
    client: reqwest::Client,
}

/// The signature Shopify puts in `X-Shopify-Hmac-Sha256`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl Webhooks {
    pub(crate) fn new(config: WebhookConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Self {
            url: Mutex::new(config.url.clone()),
            config,
            faults: Mutex::new(WebhookFaults::default()),
            deliveries: Arc::new(Mutex::new(Vec::new())),
            client,
        }
    }

    pub fn set_url(&self, url: Option<String>) {
        *self.url.lock() = url;
    }

    pub fn set_faults(&self, faults: WebhookFaults) {
        *self.faults.lock() = faults;
    }

    pub fn faults(&self) -> WebhookFaults {
        self.faults.lock().clone()
    }

    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        self.deliveries.lock().clone()
    }

    pub(crate) fn enabled(&self) -> bool {
        self.url.lock().is_some()
    }

    /// Signs and sends a batch of `(topic, payload)` in the background.
    pub(crate) fn send(&self, shop: &ShopifyConfig, events: Vec<(String, Value)>) {
        let Some(url) = self.url.lock().clone() else {
            return;
        };
        let faults = {
            let mut faults = self.faults.lock();
            let snapshot = faults.clone();
            faults.drop_next = faults.drop_next.saturating_sub(events.len() as u32);
            snapshot
        };
        let triggered_at = clock::rfc3339(clock::unix_millis().saturating_sub(faults.backdate_ms));
        let key = if faults.wrong_signature {
            format!("not-{}", shop.api_secret)
        } else {
            shop.api_secret.clone()
        };
        let mut batch: Vec<WebhookDelivery> = events
            .into_iter()
            .map(|(topic, payload)| {
                let body = payload.to_string();
                WebhookDelivery {
                    topic,
                    webhook_id: uuid::Uuid::new_v4().to_string(),
                    event_id: uuid::Uuid::new_v4().to_string(),
                    triggered_at: triggered_at.clone(),
                    hmac_sha256: sign(&key, body.as_bytes()),
                    body,
                    status: None,
                    error: None,
                    dropped: false,
                }
            })
            .collect();
        for delivery in batch.iter_mut().take(faults.drop_next as usize) {
            delivery.dropped = true;
        }
        if faults.reorder {
            batch.reverse();
        }
        let client = self.client.clone();
        let deliveries = self.deliveries.clone();
        let shop_domain = shop.shop_domain.clone();
        let api_version = self.config.api_version.clone();
        tokio::spawn(async move {
            if faults.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
            }
            for delivery in batch {
                if delivery.dropped {
                    deliveries.lock().push(delivery);
                    continue;
                }
                for _ in 0..=faults.duplicates {
                    let mut attempt = delivery.clone();
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-shopify-hmac-sha256", &attempt.hmac_sha256)
                        .header("x-shopify-topic", &attempt.topic)
                        .header("x-shopify-webhook-id", &attempt.webhook_id)
                        .header("x-shopify-event-id", &attempt.event_id)
                        .header("x-shopify-triggered-at", &attempt.triggered_at)
                        .header("x-shopify-shop-domain", &shop_domain)
                        .header("x-shopify-api-version", &api_version)
                        .body(attempt.body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) => attempt.status = Some(response.status().as_u16()),
                        Err(error) => attempt.error = Some(error.to_string()),
                    }
                    deliveries.lock().push(attempt);
                }
            }
        });
    }
}

/// A REST-shaped `orders/create` payload (A.5's table).
pub(crate) fn order_payload(
    order_id: u64,
    lines: &[OrderLine],
    skus: &BTreeMap<u64, String>,
    now_ms: u64,
) -> Value {
    let at = clock::rfc3339(now_ms);
    let line_items: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            json!({
                "id": order_id * 1000 + index as u64,
                "variant_id": line.inventory_item_id,
                "sku": skus.get(&line.inventory_item_id),
                "quantity": line.quantity,
                "fulfillable_quantity": line.quantity,
                "location_id": line.location_id,
            })
        })
        .collect();
    json!({
        "id": order_id,
        "admin_graphql_api_id": format!("gid://shopify/Order/{order_id}"),
        "name": format!("#{order_id}"),
        "created_at": at,
        "updated_at": at,
        "financial_status": "paid",
        "fulfillment_status": null,
        "line_items": line_items,
    })
}

/// An `inventory_levels/update` payload: only `available` (A.5).
pub(crate) fn level_payload(item: u64, location: u64, stocked: &StockedLevel) -> Value {
    json!({
        "inventory_item_id": item,
        "location_id": location,
        "available": stocked.levels.available,
        "updated_at": clock::rfc3339(stocked.updated_at_ms),
        "admin_graphql_api_id": level_gid(item, location),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_shopify() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), base64.
        assert_eq!(
            sign("key", b"The quick brown fox jumps over the lazy dog"),
            "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
        );
    }
}
