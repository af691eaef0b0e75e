//! Walmart Marketplace (CHANNELS.md C).
//!
//! Writes: `PUT /v3/inventory?sku=<sku>[&shipNode=<node>]` with
//! `{"sku", "quantity": {"unit": "EACH", "amount"}}` (C.1), an absolute
//! value, safe to resend. Bulk (from `bulk_threshold` items, 50 by default:
//! Walmart calls the single-item API "for exception scenarios only … highly
//! throttled", C.1): one inventory feed per ship node, `POST
//! /v3/feeds?feedType=inventory[&shipNode=]` with the spec 1.4 file
//! `{"InventoryHeader": {"version": "1.4"}, "Inventory": [...]}` as the
//! multipart `file` part (C.2); a feed is processed later, so its items are
//! `Accepted` with the feed id and confirmed by read-back (F.11: a feed
//! accepted with 200 can still end `ERROR`).
//!
//! Reads: `GET /v3/inventory?sku=[&shipNode=]`; a 404 is `None`.
//!
//! Auth: `POST /v3/token` (Basic client id and secret, `client_credentials`),
//! cached until a minute before `expires_in` (about 15 minutes), sent as
//! `WM_SEC.ACCESS_TOKEN` with `WM_SVC.NAME` and a fresh UUID in
//! `WM_QOS.CORRELATION_ID` per request (C.1). A 401 renews it once.
//!
//! Limits (C.3): a token bucket per API, the inventory one `inventory_tokens`
//! per `inventory_window_s` (200 per 60 s: the only figure seen,
//! **unconfirmed**), corrected from `x-current-token-count` and, when that is
//! 0, held until `x-next-replenish-time` (either spelling, C.3); feeds 10 per
//! hour (C.2); `Retry-After` on 429.
//!
//! Classification: an error whose `category` is `DATA` is a dead letter (the
//! item is wrong), any other by its HTTP status (item 19).
//!
//! Settings: `ship_node.<location>` (else the location id is the ship node;
//! no location: the seller's default node), `service_name` (`Walmart
//! Marketplace`), `market` (`WM_MARKET`, only outside the US),
//! `bulk_threshold`, `max_wait_ms`, `timeout_ms`. Credentials: `client_id`,
//! `client_secret`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::{ConnectorConfig, ConnectorKind, Secret};
use crate::http::{self, Reply, DEFAULT_RETRY};
use crate::limiter::{Limiter, Observation};
use crate::outcome::{http_status_class, is_success, Class, ConnectorError, PushOutcome};
use crate::{paced, Connector, ItemKey, PushItem};

/// Lines per feed file: far below C.2's 5 MB (a line is under 100 bytes).
pub const MAX_FEED_ITEMS: usize = 10_000;
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The first entry of Walmart's `errors[]` (C.3): code, message, category.
pub(crate) fn first_error(body: &Value) -> (String, String, String) {
    let first = body.pointer("/errors/0");
    let field = |name: &str| {
        first
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("code"), field("message"), field("category"))
}

/// Item 19's table for Walmart: `DATA` errors are dead letters, the rest
/// by status.
pub(crate) fn classify(status: u16, category: &str) -> Class {
    if category.eq_ignore_ascii_case("DATA") {
        return Class::Invalid;
    }
    http_status_class(status)
}

/// How long until a `x-next-replenish-time` (Unix ms), from `now`.
pub(crate) fn until_unix_ms(at_ms: f64, now: SystemTime) -> Option<Duration> {
    let now_ms = now.duration_since(UNIX_EPOCH).ok()?.as_millis() as f64;
    let wait = (at_ms - now_ms) / 1000.0;
    (wait.is_finite()).then(|| Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))
}

#[derive(Debug)]
pub struct Walmart {
    channel_id: String,
    base: String,
    config: ConnectorConfig,
    client_id: Secret,
    client_secret: Secret,
    token: Mutex<Option<(Secret, Instant)>>,
    client: Client,
    inventory_limiter: Limiter,
    feed_limiter: Limiter,
    bulk_threshold: usize,
    max_wait: Duration,
}

impl Walmart {
    pub fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        let tokens: f64 = config.parse_or("inventory_tokens", 200.0)?;
        let window: f64 = config.parse_or("inventory_window_s", 60.0)?;
        let feeds: f64 = config.parse_or("feeds_per_hour", 10.0)?;
        Ok(Walmart {
            channel_id: config.channel_id.clone(),
            base: config.base_url.trim_end_matches('/').to_owned(),
            client_id: config.secret("client_id")?.clone(),
            client_secret: config.secret("client_secret")?.clone(),
            token: Mutex::new(None),
            client: http::client(config.millis_or("timeout_ms", 10_000)?)?,
            inventory_limiter: Limiter::new(
                "walmart inventory",
                tokens,
                tokens / window.max(1e-3),
                0.0,
            ),
            feed_limiter: Limiter::new("walmart inventory feed", feeds, feeds / 3600.0, 0.0),
            bulk_threshold: config.parse_or("bulk_threshold", 50)?,
            max_wait: config.millis_or("max_wait_ms", 2_000)?,
            config,
        })
    }

    pub fn inventory_limiter(&self) -> &Limiter {
        &self.inventory_limiter
    }

    fn ship_node(&self, location: Option<&str>) -> Option<String> {
        let location = location?;
        Some(
            self.config
                .get(&format!("ship_node.{location}"))
                .unwrap_or(location)
                .to_owned(),
        )
    }

    fn headers(&self, request: RequestBuilder) -> RequestBuilder {
        let request = request
            .header(
                "WM_SVC.NAME",
                self.config.get_or("service_name", "Walmart Marketplace"),
            )
            .header("WM_QOS.CORRELATION_ID", Uuid::new_v4().to_string())
            .header("Accept", "application/json");
        match self.config.get("market") {
            Some(market) => request.header("WM_MARKET", market),
            None => request,
        }
    }

    async fn access_token(&self) -> Result<Secret, ConnectorError> {
        if let Some((token, expires)) = self.token.lock().as_ref() {
            if Instant::now() + TOKEN_MARGIN < *expires {
                return Ok(token.clone());
            }
        }
        let request = self
            .headers(self.client.post(format!("{}/v3/token", self.base)))
            .basic_auth(self.client_id.expose(), Some(self.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")]);
        let reply = http::send(request).await?;
        let body = reply.json();
        if !is_success(reply.status) {
            let (code, message, _) = first_error(&body);
            let reason = format!("token: HTTP {} {code}: {message}", reply.status);
            return Err(match reply.status {
                400 | 401 => ConnectorError::invalid("WALMART_TOKEN", reason),
                _ => ConnectorError::retry(reply.retry_after().unwrap_or(DEFAULT_RETRY), reason),
            });
        }
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                "token: no access_token",
            ));
        };
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(900);
        let token = Secret::new(token);
        *self.token.lock() = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token)
    }

    /// One call through `limiter`, corrected from C.3's headers; a new token
    /// once on 401.
    async fn call(
        &self,
        limiter: &Limiter,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Reply, ConnectorError> {
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let permit = limiter.acquire(1.0, self.max_wait).await.map_err(|wait| {
                ConnectorError::retry(
                    wait,
                    format!("local {} budget: {} ms", limiter.name(), wait.as_millis()),
                )
            })?;
            let request = self
                .headers(build(&self.client))
                .header("WM_SEC.ACCESS_TOKEN", token.expose());
            let reply = http::send(request).await?;
            let level = reply.header_f64("x-current-token-count");
            let next = reply
                .header_f64("x-next-replenish-time")
                .or_else(|| reply.header_f64("x-next-replenishment-time"))
                .and_then(|at| until_unix_ms(at, SystemTime::now()));
            let throttled = reply.status == 429;
            if throttled {
                crate::count_throttled(&self.channel_id);
            }
            let retry_after = reply.retry_after().or(if level.is_some_and(|l| l < 1.0) {
                next
            } else {
                None
            });
            limiter.observe(
                permit,
                Observation {
                    level,
                    throttled,
                    retry_after,
                    ..Observation::default()
                },
            );
            if reply.status == 401 && attempt == 0 {
                *self.token.lock() = None;
                continue;
            }
            if throttled {
                let wait = retry_after.unwrap_or_else(|| limiter.ready_in(1.0));
                return Err(ConnectorError::retry(
                    wait.max(Duration::from_millis(10)),
                    "429 throttled",
                ));
            }
            return Ok(reply);
        }
        Err(ConnectorError::retry(
            DEFAULT_RETRY,
            "unauthorized after a new token",
        ))
    }

    fn failure(reply: &Reply) -> ConnectorError {
        let (code, message, category) = first_error(&reply.json());
        let code = if code.is_empty() {
            format!("HTTP_{}", reply.status)
        } else {
            code
        };
        let reason = format!("HTTP {} {code}: {message}", reply.status);
        match classify(reply.status, &category) {
            Class::Retryable => {
                ConnectorError::retry(reply.retry_after().unwrap_or(DEFAULT_RETRY), reason)
            }
            Class::Invalid => ConnectorError::invalid(code, reason),
        }
    }

    fn query(sku: &str, node: Option<&str>) -> Vec<(&'static str, String)> {
        let mut query = vec![("sku", sku.to_owned())];
        if let Some(node) = node {
            query.push(("shipNode", node.to_owned()));
        }
        query
    }

    async fn put_one(&self, item: &PushItem) -> PushOutcome {
        let node = self.ship_node(item.location.as_deref());
        let url = format!("{}/v3/inventory", self.base);
        let body = json!({"sku": item.sku, "quantity": {"unit": "EACH", "amount": item.value}});
        let query = Self::query(&item.sku, node.as_deref());
        let reply = self
            .call(&self.inventory_limiter, |client| {
                client.put(&url).query(&query).json(&body)
            })
            .await;
        match reply {
            Ok(reply) if is_success(reply.status) => PushOutcome::Applied,
            Ok(reply) => Self::failure(&reply).to_outcome(),
            Err(error) => error.to_outcome(),
        }
    }

    async fn feed(
        &self,
        node: Option<&str>,
        items: &[&PushItem],
    ) -> Result<String, ConnectorError> {
        let lines: Vec<Value> = items
            .iter()
            .map(
                |item| json!({"sku": item.sku, "quantity": {"unit": "EACH", "amount": item.value}}),
            )
            .collect();
        let file =
            serde_json::to_vec(&json!({"InventoryHeader": {"version": "1.4"}, "Inventory": lines}))
                .map_err(|error| ConnectorError::invalid("FEED_FILE", error.to_string()))?;
        let url = format!("{}/v3/feeds", self.base);
        let mut query = vec![("feedType", "inventory".to_owned())];
        if let Some(node) = node {
            query.push(("shipNode", node.to_owned()));
        }
        let reply = self
            .call(&self.feed_limiter, |client| {
                let part = reqwest::multipart::Part::bytes(file.clone())
                    .file_name("inventory.json")
                    .mime_str("application/json")
                    .unwrap_or_else(|_| reqwest::multipart::Part::bytes(file.clone()));
                client
                    .post(&url)
                    .query(&query)
                    .multipart(reqwest::multipart::Form::new().part("file", part))
            })
            .await?;
        if !is_success(reply.status) {
            return Err(Self::failure(&reply));
        }
        reply
            .json()
            .get("feedId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ConnectorError::retry(DEFAULT_RETRY, "feed: no feedId"))
    }

    async fn push_bulk(&self, items: &[PushItem]) -> Vec<PushOutcome> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; items.len()];
        let mut by_node: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            by_node
                .entry(self.ship_node(item.location.as_deref()))
                .or_default()
                .push(index);
        }
        for (node, indices) in by_node {
            for chunk in indices.chunks(MAX_FEED_ITEMS) {
                let feed_items: Vec<&PushItem> = chunk.iter().map(|&i| &items[i]).collect();
                let outcome = match self.feed(node.as_deref(), &feed_items).await {
                    Ok(feed_id) => PushOutcome::Accepted {
                        submission_id: format!("feed:{feed_id}"),
                    },
                    Err(error) => error.to_outcome(),
                };
                for &index in chunk {
                    outcomes[index] = Some(outcome.clone());
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| paced(DEFAULT_RETRY, "walmart feed")))
            .collect()
    }

    async fn read_one(&self, key: &ItemKey) -> Result<Option<i64>, ConnectorError> {
        let node = self.ship_node(key.location.as_deref());
        let url = format!("{}/v3/inventory", self.base);
        let query = Self::query(&key.sku, node.as_deref());
        let reply = self
            .call(&self.inventory_limiter, |client| {
                client.get(&url).query(&query)
            })
            .await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !is_success(reply.status) {
            return Err(Self::failure(&reply));
        }
        Ok(reply
            .json()
            .pointer("/quantity/amount")
            .and_then(Value::as_i64))
    }
}

#[async_trait]
impl Connector for Walmart {
    fn kind(&self) -> ConnectorKind {
        ConnectorKind::Walmart
    }

    fn channel_id(&self) -> &str {
        &self.channel_id
    }

    fn max_batch(&self) -> usize {
        MAX_FEED_ITEMS
    }

    fn bulk_threshold(&self) -> usize {
        self.bulk_threshold
    }

    /// Item by item under the inventory bucket (C.3): a handful per call.
    fn small_batch(&self) -> usize {
        10
    }

    fn ready_in(&self) -> Duration {
        self.inventory_limiter.ready_in(1.0)
    }

    async fn push(&self, items: &[PushItem]) -> Vec<PushOutcome> {
        if items.len() >= self.bulk_threshold {
            return self.push_bulk(items).await;
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(self.put_one(item).await);
        }
        outcomes
    }

    async fn read(&self, keys: &[ItemKey]) -> Result<Vec<Option<i64>>, ConnectorError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.read_one(key).await?);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_dead_letters_others_by_status() {
        assert_eq!(classify(400, "DATA"), Class::Invalid);
        assert_eq!(classify(404, "DATA"), Class::Invalid);
        assert_eq!(classify(500, "DATA"), Class::Invalid);
        assert_eq!(classify(429, "REQUEST"), Class::Retryable);
        assert_eq!(classify(503, ""), Class::Retryable);
        assert_eq!(classify(400, "REQUEST"), Class::Invalid);
        let body = json!({"errors": [{"code": "INVALID_REQUEST_PARAM", "message": "bad sku",
            "category": "DATA", "severity": "ERROR", "field": "sku"}]});
        assert_eq!(
            first_error(&body),
            (
                "INVALID_REQUEST_PARAM".into(),
                "bad sku".into(),
                "DATA".into()
            )
        );
        assert_eq!(
            first_error(&json!("<html>")),
            (String::new(), String::new(), String::new())
        );
    }

    #[test]
    fn replenish_times_are_unix_millis() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            until_unix_ms(1_002_500.0, now),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(until_unix_ms(999_000.0, now), Some(Duration::ZERO));
        assert_eq!(until_unix_ms(f64::NAN, now), None);
    }

    #[test]
    fn locations_map_to_ship_nodes() {
        let config = ConnectorConfig::new("wm", ConnectorKind::Walmart, "http://127.0.0.1:9")
            .setting("ship_node.dc-east", "10000000002")
            .credential("client_id", "id")
            .credential("client_secret", "walmart-secret-z");
        let walmart = Walmart::new(config).unwrap();
        assert_eq!(walmart.ship_node(None), None);
        assert_eq!(
            walmart.ship_node(Some("dc-east")),
            Some("10000000002".into())
        );
        assert_eq!(walmart.ship_node(Some("777")), Some("777".into()));
        assert!(!format!("{walmart:?}").contains("walmart-secret-z"));
    }
}
