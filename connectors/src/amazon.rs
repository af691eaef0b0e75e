//! Amazon Selling Partner API (CHANNELS.md B).
//!
//! Writes: `patchListingsItem`, `PATCH
//! /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=<one>` with one
//! `merge` on `/attributes/fulfillment_availability` of
//! `[{fulfillment_channel_code, quantity}]` (B.1: merge changes the quantity
//! without restating `restock_date` or `lead_time_to_ship_max_days`).
//! `ACCEPTED` means accepted for processing, not applied (B.1, F.11): the
//! outcome is [`PushOutcome::Accepted`] and the worker confirms it with
//! [`Connector::read`]. `INVALID` (issues of severity `ERROR`) is a dead
//! letter.
//!
//! Bulk (from `bulk_threshold` items, 1,500 by default: below that the
//! listings API performs better, B.3): one `JSON_LISTINGS_FEED` of `PATCH`
//! messages (createFeedDocument, upload, createFeed), at most 10,000
//! messages, one marketplace; every item is `Accepted` with the feed id.
//!
//! Reads: `getListingsItem` with `includedData=fulfillmentAvailability`; a
//! 404 is `None`.
//!
//! Auth: Login with Amazon, `POST <token_url>` with the `refresh_token`
//! grant; the access token is cached until a minute before it expires and
//! sent as `x-amz-access-token`; a 403 drops it and the call is tried once
//! more with a new one.
//!
//! Limits (B.2, B.3): one bucket per operation, listings 5/s burst 10
//! (`listings_rate`, `listings_burst`), its rate corrected from
//! `x-amzn-RateLimit-Limit`; createFeedDocument 0.5/s burst 15, createFeed
//! 0.0083/s burst 15. A 429 empties the bucket and honours `Retry-After`.
//!
//! Settings: `seller_id`, `marketplace_id` (required), `product_type`
//! (`PRODUCT`), `fulfillment_channel_code` (`DEFAULT`) for a key without a
//! location and `fulfillment_channel_code.<location>` for one with,
//! `token_url` (`<base_url>/auth/o2/token`), `bulk_threshold`,
//! `max_wait_ms` (2,000), `timeout_ms`. Credentials: `client_id`,
//! `client_secret`, `refresh_token`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::{Client, Method, RequestBuilder, Url};
use serde_json::{json, Value};

use crate::config::{ConnectorConfig, ConnectorKind, Secret};
use crate::http::{self, Reply, DEFAULT_RETRY};
use crate::limiter::{Limiter, Observation};
use crate::outcome::{http_status_class, is_success, Class, ConnectorError, PushOutcome};
use crate::{paced, Connector, ItemKey, PushItem};

/// B.3: the hard limit of messages per feed.
pub const MAX_FEED_MESSAGES: usize = 10_000;
/// A token is renewed this long before it expires.
/// Tokens of the listings buckets never spent (see `Amazon::new`).
const LISTINGS_RESERVE: f64 = 1.0;
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The class of a submission's issue severities (B.1): only `ERROR` refuses.
pub(crate) fn first_error(issues: &Value) -> Option<(String, String)> {
    issues.as_array()?.iter().find_map(|issue| {
        (issue.get("severity").and_then(Value::as_str) == Some("ERROR")).then(|| {
            (
                issue
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("INVALID")
                    .to_owned(),
                issue
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
    })
}

/// An `ErrorList`'s first code and message (B.2).
pub(crate) fn error_list(body: &Value) -> (String, String) {
    let first = body.pointer("/errors/0");
    let field = |name: &str| {
        first
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let code = field("code");
    (
        if code.is_empty() {
            "UNKNOWN".to_owned()
        } else {
            code
        },
        field("message"),
    )
}

#[derive(Debug)]
pub struct Amazon {
    channel_id: String,
    base: Url,
    token_url: String,
    seller_id: String,
    marketplace_id: String,
    product_type: String,
    config: ConnectorConfig,
    client_id: Secret,
    client_secret: Secret,
    refresh_token: Secret,
    token: Mutex<Option<(Secret, Instant)>>,
    client: Client,
    patch_limiter: Limiter,
    get_limiter: Limiter,
    document_limiter: Limiter,
    feed_limiter: Limiter,
    bulk_threshold: usize,
    max_wait: Duration,
}

impl Amazon {
    pub fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        let base = Url::parse(&config.base_url)
            .map_err(|error| ConnectorError::Config(format!("base_url: {error}")))?;
        let required = |key: &str| {
            config.get(key).map(str::to_owned).ok_or_else(|| {
                ConnectorError::Config(format!("amazon connector: setting {key} missing"))
            })
        };
        let rate = config.parse_or("listings_rate", 5.0)?;
        let burst = config.parse_or("listings_burst", 10.0)?;
        Ok(Amazon {
            channel_id: config.channel_id.clone(),
            token_url: config
                .get("token_url")
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("{}/auth/o2/token", config.base_url.trim_end_matches('/'))
                }),
            seller_id: required("seller_id")?,
            marketplace_id: required("marketplace_id")?,
            product_type: config.get_or("product_type", "PRODUCT").to_owned(),
            client_id: config.secret("client_id")?.clone(),
            client_secret: config.secret("client_secret")?.clone(),
            refresh_token: config.secret("refresh_token")?.clone(),
            token: Mutex::new(None),
            client: http::client(config.millis_or("timeout_ms", 10_000)?)?,
            // Listings items: separate buckets for patch and get (B.2).
            // One token kept back: Amazon's bucket and this one refill on
            // two clocks, and a benchmark at the full rate saw two 429s
            // without a reserve.
            patch_limiter: Limiter::new("amazon patchListingsItem", burst, rate, LISTINGS_RESERVE),
            get_limiter: Limiter::new("amazon getListingsItem", burst, rate, LISTINGS_RESERVE),
            document_limiter: Limiter::new("amazon createFeedDocument", 15.0, 0.5, 0.0),
            feed_limiter: Limiter::new("amazon createFeed", 15.0, 0.0083, 0.0),
            bulk_threshold: config.parse_or("bulk_threshold", 1500)?,
            max_wait: config.millis_or("max_wait_ms", 2_000)?,
            base,
            config,
        })
    }

    pub fn patch_limiter(&self) -> &Limiter {
        &self.patch_limiter
    }

    fn channel_code(&self, location: Option<&str>) -> Result<String, PushOutcome> {
        match location {
            None => Ok(self
                .config
                .get_or("fulfillment_channel_code", "DEFAULT")
                .to_owned()),
            Some(location) => self
                .config
                .get(&format!("fulfillment_channel_code.{location}"))
                .map(str::to_owned)
                .ok_or_else(|| {
                    PushOutcome::invalid(
                        "UNMAPPED_LOCATION",
                        format!("no fulfillment_channel_code.{location} setting"),
                    )
                }),
        }
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ConnectorError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ConnectorError::Config("base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn item_url(&self, sku: &str) -> Result<Url, ConnectorError> {
        // The SKU is one path segment, percent-encoded (B.1).
        self.url(&["listings", "2021-08-01", "items", &self.seller_id, sku])
    }

    /// The cached LWA access token, or a new one.
    async fn access_token(&self) -> Result<Secret, ConnectorError> {
        if let Some((token, expires)) = self.token.lock().as_ref() {
            if Instant::now() + TOKEN_MARGIN < *expires {
                return Ok(token.clone());
            }
        }
        let request = self.client.post(&self.token_url).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", self.refresh_token.expose()),
            ("client_id", self.client_id.expose()),
            ("client_secret", self.client_secret.expose()),
        ]);
        let reply = http::send(request).await?;
        let body = reply.json();
        if !is_success(reply.status) {
            // The OAuth error names the problem, never echoes the form.
            let error = body.get("error").and_then(Value::as_str).unwrap_or("");
            let reason = format!("LWA token: HTTP {} {error}", reply.status);
            return Err(match reply.status {
                400 | 401 => ConnectorError::invalid("LWA_TOKEN", reason),
                _ => ConnectorError::retry(reply.retry_after().unwrap_or(DEFAULT_RETRY), reason),
            });
        }
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                "LWA token: no access_token",
            ));
        };
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        let token = Secret::new(token);
        *self.token.lock() = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token)
    }

    /// One SP-API call through `limiter`, with a new token once on 403.
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
            let reply =
                http::send(build(&self.client).header("x-amz-access-token", token.expose()))
                    .await?;
            let throttled = reply.status == 429;
            if throttled {
                crate::count_throttled(&self.channel_id);
            }
            limiter.observe(
                permit,
                Observation {
                    rate: reply.header_f64("x-amzn-ratelimit-limit"),
                    throttled,
                    retry_after: reply.retry_after(),
                    ..Observation::default()
                },
            );
            if reply.status == 403 && attempt == 0 {
                *self.token.lock() = None;
                continue;
            }
            if throttled {
                let wait = reply.retry_after().unwrap_or_else(|| limiter.ready_in(1.0));
                return Err(ConnectorError::retry(
                    wait.max(Duration::from_millis(10)),
                    "QuotaExceeded",
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
        let (code, message) = error_list(&reply.json());
        let reason = format!("HTTP {} {code}: {message}", reply.status);
        match http_status_class(reply.status) {
            Class::Retryable => {
                ConnectorError::retry(reply.retry_after().unwrap_or(DEFAULT_RETRY), reason)
            }
            Class::Invalid => ConnectorError::invalid(code, reason),
        }
    }

    async fn patch_one(&self, item: &PushItem) -> PushOutcome {
        let code = match self.channel_code(item.location.as_deref()) {
            Ok(code) => code,
            Err(outcome) => return outcome,
        };
        let url = match self.item_url(&item.sku) {
            Ok(url) => url,
            Err(error) => return error.to_outcome(),
        };
        let body = json!({
            "productType": self.product_type,
            "patches": [{
                "op": "merge",
                "path": "/attributes/fulfillment_availability",
                "value": [{"fulfillment_channel_code": code, "quantity": item.value}],
            }],
        });
        let reply = self
            .call(&self.patch_limiter, |client| {
                client
                    .request(Method::PATCH, url.clone())
                    .query(&[
                        ("marketplaceIds", self.marketplace_id.as_str()),
                        ("issueLocale", "en_US"),
                    ])
                    .json(&body)
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return error.to_outcome(),
        };
        if !is_success(reply.status) {
            return Self::failure(&reply).to_outcome();
        }
        let body = reply.json();
        let submission_id = body
            .get("submissionId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match body.get("status").and_then(Value::as_str) {
            Some("ACCEPTED") => PushOutcome::Accepted { submission_id },
            // Only VALIDATION_PREVIEW answers VALID; it applies nothing.
            Some("INVALID") | Some("VALID") => {
                let (code, message) = first_error(body.get("issues").unwrap_or(&Value::Null))
                    .unwrap_or_else(|| ("INVALID".to_owned(), reply.excerpt()));
                PushOutcome::invalid(code, message)
            }
            _ => PushOutcome::retry(
                DEFAULT_RETRY,
                format!("unreadable submission: {}", reply.excerpt()),
            ),
        }
    }

    /// One `JSON_LISTINGS_FEED` of `items` (B.3): the feed id, or why not.
    async fn feed(&self, items: &[(&PushItem, String)]) -> Result<String, ConnectorError> {
        let messages: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(index, (item, code))| {
                json!({
                    "messageId": index + 1,
                    "sku": item.sku,
                    "operationType": "PATCH",
                    "productType": self.product_type,
                    "patches": [{"op": "merge", "path": "/attributes/fulfillment_availability",
                        "value": [{"fulfillment_channel_code": code, "quantity": item.value}]}],
                })
            })
            .collect();
        let document = json!({
            "header": {"sellerId": self.seller_id, "version": "2.0", "issueLocale": "en_US"},
            "messages": messages,
        });
        let content_type = "application/json; charset=UTF-8";
        let documents_url = self.url(&["feeds", "2021-06-30", "documents"])?;
        let reply = self
            .call(&self.document_limiter, |client| {
                client
                    .post(documents_url.clone())
                    .json(&json!({"contentType": content_type}))
            })
            .await?;
        if !is_success(reply.status) {
            return Err(Self::failure(&reply));
        }
        let created = reply.json();
        let (Some(document_id), Some(upload_url)) = (
            created.get("feedDocumentId").and_then(Value::as_str),
            created.get("url").and_then(Value::as_str),
        ) else {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                "createFeedDocument: no id or url",
            ));
        };
        // The presigned upload takes no SP-API token (S3 in production).
        let bytes = serde_json::to_vec(&document)
            .map_err(|error| ConnectorError::invalid("FEED_DOCUMENT", error.to_string()))?;
        let uploaded = http::send(
            self.client
                .put(upload_url)
                .header("content-type", content_type)
                .body(bytes),
        )
        .await?;
        if !is_success(uploaded.status) {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                format!("feed upload: HTTP {}", uploaded.status),
            ));
        }
        let feeds_url = self.url(&["feeds", "2021-06-30", "feeds"])?;
        let request = json!({
            "feedType": "JSON_LISTINGS_FEED",
            "marketplaceIds": [self.marketplace_id],
            "inputFeedDocumentId": document_id,
        });
        let reply = self
            .call(&self.feed_limiter, |client| {
                client.post(feeds_url.clone()).json(&request)
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
            .ok_or_else(|| ConnectorError::retry(DEFAULT_RETRY, "createFeed: no feedId"))
    }

    async fn push_bulk(&self, items: &[PushItem]) -> Vec<PushOutcome> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; items.len()];
        let mut mapped = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match self.channel_code(item.location.as_deref()) {
                Ok(code) => mapped.push((index, code)),
                Err(outcome) => outcomes[index] = Some(outcome),
            }
        }
        for chunk in mapped.chunks(MAX_FEED_MESSAGES) {
            let feed_items: Vec<(&PushItem, String)> = chunk
                .iter()
                .map(|(index, code)| (&items[*index], code.clone()))
                .collect();
            let outcome = match self.feed(&feed_items).await {
                Ok(feed_id) => PushOutcome::Accepted {
                    submission_id: format!("feed:{feed_id}"),
                },
                Err(error) => error.to_outcome(),
            };
            for (index, _) in chunk {
                outcomes[*index] = Some(outcome.clone());
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| paced(DEFAULT_RETRY, "amazon feed")))
            .collect()
    }

    async fn read_one(&self, key: &ItemKey) -> Result<Option<i64>, ConnectorError> {
        let Ok(code) = self.channel_code(key.location.as_deref()) else {
            return Ok(None);
        };
        let url = self.item_url(&key.sku)?;
        let reply = self
            .call(&self.get_limiter, |client| {
                client.get(url.clone()).query(&[
                    ("marketplaceIds", self.marketplace_id.as_str()),
                    ("includedData", "fulfillmentAvailability"),
                ])
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
            .get("fulfillmentAvailability")
            .and_then(Value::as_array)
            .and_then(|entries| {
                entries.iter().find(|entry| {
                    entry.get("fulfillmentChannelCode").and_then(Value::as_str)
                        == Some(code.as_str())
                })
            })
            .and_then(|entry| entry.get("quantity"))
            .and_then(Value::as_i64))
    }
}

#[async_trait]
impl Connector for Amazon {
    fn kind(&self) -> ConnectorKind {
        ConnectorKind::Amazon
    }

    fn channel_id(&self) -> &str {
        &self.channel_id
    }

    fn max_batch(&self) -> usize {
        MAX_FEED_MESSAGES
    }

    fn bulk_threshold(&self) -> usize {
        self.bulk_threshold
    }

    /// Item by item at 5/s (B.2): a burst's worth per call.
    fn small_batch(&self) -> usize {
        10
    }

    fn ready_in(&self) -> Duration {
        self.patch_limiter.ready_in(1.0)
    }

    async fn push(&self, items: &[PushItem]) -> Vec<PushOutcome> {
        if items.len() >= self.bulk_threshold {
            return self.push_bulk(items).await;
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(self.patch_one(item).await);
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
    fn only_error_issues_refuse() {
        let issues = json!([
            {"code": "W1", "message": "warn", "severity": "WARNING"},
            {"code": "90220", "message": "bad quantity", "severity": "ERROR"},
        ]);
        assert_eq!(
            first_error(&issues),
            Some(("90220".into(), "bad quantity".into()))
        );
        assert_eq!(
            first_error(&json!([{"code": "W1", "severity": "WARNING"}])),
            None
        );
        assert_eq!(first_error(&json!("nonsense")), None);
    }

    #[test]
    fn error_lists_and_nonsense() {
        let body = json!({"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota", "details": ""}]});
        assert_eq!(
            error_list(&body),
            ("QuotaExceeded".into(), "You exceeded your quota".into())
        );
        assert_eq!(error_list(&json!(null)).0, "UNKNOWN");
    }

    #[test]
    fn skus_are_one_encoded_segment() {
        let config = ConnectorConfig::new("amz", ConnectorKind::Amazon, "http://127.0.0.1:9")
            .setting("seller_id", "A1")
            .setting("marketplace_id", "M1")
            .setting("fulfillment_channel_code.dc-1", "AMAZON_NA")
            .credential("client_id", "id")
            .credential("client_secret", "amzn-client-secret-x")
            .credential("refresh_token", "Atzr|refresh-secret-y");
        let amazon = Amazon::new(config).unwrap();
        let url = amazon.item_url("a/b c").unwrap();
        assert_eq!(url.path(), "/listings/2021-08-01/items/A1/a%2Fb%20c");
        assert_eq!(amazon.channel_code(None), Ok("DEFAULT".into()));
        assert_eq!(amazon.channel_code(Some("dc-1")), Ok("AMAZON_NA".into()));
        assert!(amazon.channel_code(Some("dc-2")).is_err());
        let printed = format!("{amazon:?}");
        assert!(
            !printed.contains("secret-x") && !printed.contains("secret-y"),
            "{printed}"
        );
    }
}
