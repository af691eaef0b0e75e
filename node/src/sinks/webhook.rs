//! Outbound webhooks (Standard Webhooks 1.0, CloudEvents 1.0 structured JSON).
//!
//! Each attempt is a POST of the event as a CloudEvent with `webhook-id`
//! (the event id, the same on every attempt and replay), `webhook-timestamp`
//! (the attempt's unix seconds) and `webhook-signature` (`v1,<base64 of
//! HMAC-SHA256 over "id.timestamp.body">`, one per live secret, so a
//! receiver keeps verifying across a rotation). 2xx is delivered; 410 Gone
//! disables the endpoint; anything else (3xx included: redirects are not
//! followed) is retried with exponential backoff and full jitter, or after
//! `Retry-After` when the endpoint says so, until the retry horizon, then
//! kept as a dead letter.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use skuld_actors::runtime::published::PublishedEvent;
use skuld_actors::Error;
use skuld_cluster::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use super::{cloud_event, Delivery, Sink, Stopped};

/// Record kinds: endpoint definitions by id, dead letters by
/// `<endpoint>/<event id>`.
pub const ENDPOINT_KIND: &str = "webhook_endpoint";
pub const DEAD_LETTER_KIND: &str = "webhook_dead_letter";
const SECRET_PREFIX: &str = "whsec_";
/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// Delivery settings of every endpoint.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub request_timeout: Duration,
    /// The first retry waits up to this; each next one up to twice as long.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long an event is retried before it becomes a dead letter.
    pub retry_horizon: Duration,
}

/// One endpoint as stored (JSON).
#[derive(Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub type_prefixes: Vec<String>,
    pub rate_per_second: u32,
    pub enabled: bool,
    pub disabled_reason: String,
    pub created_at_ms: i64,
    pub secrets: Vec<Secret>,
}

/// A signing secret (`whsec_...`); one retired by a rotation signs until
/// `retires_at_ms`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secret {
    pub value: String,
    pub retires_at_ms: Option<i64>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A dead letter as stored (JSON): the body as it was sent, so a replay
/// sends the same bytes even after retention deleted the event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub endpoint: String,
    pub event_id: String,
    pub event_type: String,
    pub aggregate_key: String,
    /// Its place in the stream: replays go in this order, so each key's
    /// events arrive in order again.
    pub shard: u32,
    pub seq: u64,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at_ms: i64,
    pub body: String,
}

/// A fresh secret: 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key of a `whsec_` secret (24 to 64 bytes, Standard Webhooks).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, Error> {
    let invalid = || Error::invalid("secret", "whsec_ followed by the base64 of 24 to 64 bytes");
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).ok_or_else(invalid)?)
        .map_err(|_| invalid())?;
    if (24..=64).contains(&key.len()) {
        Ok(key)
    } else {
        Err(invalid())
    }
}

/// `webhook-signature`: `v1,<base64>` per key, space-separated.
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .filter_map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            Some(format!(
                "v1,{}",
                STANDARD.encode(mac.finalize().into_bytes())
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One HTTP client for every endpoint: no redirects (3xx is a failure).
pub fn http_client(settings: &WebhookSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("skuld-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

pub async fn load_endpoints(store: &dyn Store) -> Result<Vec<(Vec<u8>, Endpoint)>, StoreError> {
    let mut endpoints = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_records(ENDPOINT_KIND, "", after.clone(), 500)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(endpoints);
        };
        after = Some(last.clone());
        for (id, raw) in page {
            match serde_json::from_slice::<Endpoint>(&raw) {
                Ok(endpoint) => endpoints.push((raw, endpoint)),
                Err(error) => tracing::warn!(endpoint = %id, %error, "unreadable webhook endpoint"),
            }
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Gone,
    Retry {
        after: Option<Duration>,
        error: String,
    },
}

/// Sends one body to `url`, signed with `keys`.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    keys: &[Vec<u8>],
    id: &str,
    body: &str,
) -> Attempt {
    let timestamp = skuld_cluster::now_ms() / 1000;
    let signature = sign(keys, id, timestamp, body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) if response.status() == reqwest::StatusCode::GONE => Attempt::Gone,
        Ok(response) => Attempt::Retry {
            after: response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            error: format!("HTTP {}", response.status().as_u16()),
        },
        Err(error) => Attempt::Retry {
            after: None,
            error: without_url(&error),
        },
    }
}

/// A transport error without the URL (it may hold credentials).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// Full jitter: a random wait up to `base * 2^retry`, at most `cap`.
fn backoff(settings: &WebhookSettings, retry: u32) -> Duration {
    let ceiling = settings
        .retry_base
        .saturating_mul(2u32.saturating_pow(retry.min(30)))
        .min(settings.retry_cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

pub struct WebhookSink {
    endpoint: Endpoint,
    /// Each secret's key and when it stops signing.
    keys: Vec<(Vec<u8>, Option<i64>)>,
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    store: Arc<dyn Store>,
    settings: WebhookSettings,
}

impl WebhookSink {
    pub fn new(
        endpoint: Endpoint,
        client: reqwest::Client,
        store: Arc<dyn Store>,
        settings: WebhookSettings,
    ) -> Result<Self, Error> {
        let keys = endpoint
            .secrets
            .iter()
            .map(|secret| Ok((secret_key(&secret.value)?, secret.retires_at_ms)))
            .collect::<Result<Vec<_>, Error>>()?;
        let rate = NonZeroU32::new(endpoint.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            endpoint,
            keys,
            client,
            store,
            settings,
        })
    }

    /// The keys that sign now: a rotated-out secret stops at its time even
    /// while this task keeps running.
    fn live_keys(&self) -> Vec<Vec<u8>> {
        let now = skuld_cluster::now_ms();
        self.keys
            .iter()
            .filter(|(_, retires)| retires.is_none_or(|at| at > now))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Marks the endpoint disabled in the store (410 Gone).
    async fn disable(&self, reason: &str) -> Result<(), StoreError> {
        let Some(raw) = self
            .store
            .get_record(ENDPOINT_KIND, &self.endpoint.id)
            .await?
        else {
            return Ok(());
        };
        let Ok(mut endpoint) = serde_json::from_slice::<Endpoint>(&raw) else {
            return Ok(());
        };
        endpoint.enabled = false;
        endpoint.disabled_reason = reason.to_owned();
        let raw = serde_json::to_vec(&endpoint).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.store
            .put_record(ENDPOINT_KIND, &self.endpoint.id, raw)
            .await
    }

    async fn bury(
        &self,
        delivery: &Delivery,
        body: String,
        attempts: u32,
        error: String,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            endpoint: self.endpoint.id.clone(),
            event_id: delivery.event.id.clone(),
            event_type: delivery.event.event_type.clone(),
            aggregate_key: delivery.event.aggregate_key.clone(),
            shard: delivery.shard,
            seq: delivery.seq,
            attempts,
            last_error: error,
            dead_at_ms: skuld_cluster::now_ms(),
            body,
        };
        let raw = serde_json::to_vec(&letter).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.store
            .put_record(
                DEAD_LETTER_KIND,
                &format!("{}/{}", self.endpoint.id, delivery.event.id),
                raw,
            )
            .await?;
        metrics::counter!("skuld_webhook_deliveries_total", "endpoint" => self.endpoint.id.clone(), "outcome" => "dead_lettered").increment(1);
        metrics::gauge!("skuld_webhook_dead_letters", "endpoint" => self.endpoint.id.clone())
            .increment(1.0);
        Ok(())
    }

    async fn deliver_one(
        &self,
        delivery: &Delivery,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let body = cloud_event(delivery);
        let first = Instant::now();
        let outcome = |outcome: &'static str| {
            metrics::counter!("skuld_webhook_deliveries_total", "endpoint" => self.endpoint.id.clone(), "outcome" => outcome).increment(1);
        };
        for retry in 0u32.. {
            tokio::select! {
                () = self.limiter.until_ready() => {}
                () = stop.cancelled() => return Err(Stopped::Final("stopping".into())),
            }
            let keys = self.live_keys();
            let attempted = tokio::select! {
                attempted = attempt(&self.client, &self.endpoint.url, &keys, &delivery.event.id, &body) => attempted,
                () = stop.cancelled() => return Err(Stopped::Final("stopping".into())),
            };
            match attempted {
                Attempt::Delivered => {
                    outcome("delivered");
                    return Ok(());
                }
                Attempt::Gone => {
                    outcome("gone");
                    self.disable("410 Gone").await?;
                    return Err(Stopped::Final(
                        "the endpoint answered 410 Gone; disabled".into(),
                    ));
                }
                Attempt::Retry { after, error } => {
                    outcome(if after.is_some() {
                        "throttled"
                    } else {
                        "failed"
                    });
                    // The horizon counts from the event's commit, not from
                    // this task's first attempt: a restart, a shard move or
                    // the events queued behind it do not start it again.
                    let age_ms = skuld_cluster::now_ms()
                        - i64::try_from(delivery.recorded_at_ms).unwrap_or(i64::MAX);
                    let horizon_ms =
                        i64::try_from(self.settings.retry_horizon.as_millis()).unwrap_or(i64::MAX);
                    if first.elapsed() >= self.settings.retry_horizon || age_ms >= horizon_ms {
                        self.bury(delivery, body, retry + 1, error).await?;
                        return Ok(());
                    }
                    // An endpoint's Retry-After is honoured up to the cap.
                    let wait = backoff(&self.settings, retry)
                        .max(after.unwrap_or_default().min(self.settings.retry_cap));
                    tracing::debug!(endpoint = %self.endpoint.id, event = %delivery.event.id, %error, ?wait, "webhook attempt failed");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return Err(Stopped::Final("stopping".into())),
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends dead letters again (the given ids, or all); delivered ones are
    /// removed. Returns (delivered, failed).
    pub async fn replay(&self, event_ids: &[String]) -> Result<(u32, u32), StoreError> {
        let prefix = format!("{}/", self.endpoint.id);
        let mut letters = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_records(DEAD_LETTER_KIND, &prefix, after.clone(), 500)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            letters.extend(page);
        }
        let mut letters: Vec<(String, DeadLetter)> = letters
            .into_iter()
            .filter_map(|(id, raw)| Some((id, serde_json::from_slice::<DeadLetter>(&raw).ok()?)))
            .collect();
        letters.sort_by_key(|(_, letter)| (letter.shard, letter.seq));
        let (mut delivered, mut failed) = (0, 0);
        for (id, letter) in letters {
            if !event_ids.is_empty() && !event_ids.contains(&letter.event_id) {
                continue;
            }
            self.limiter.until_ready().await;
            match attempt(
                &self.client,
                &self.endpoint.url,
                &self.live_keys(),
                &letter.event_id,
                &letter.body,
            )
            .await
            {
                Attempt::Delivered => {
                    self.store.delete_record(DEAD_LETTER_KIND, &id).await?;
                    metrics::gauge!("skuld_webhook_dead_letters", "endpoint" => self.endpoint.id.clone()).decrement(1.0);
                    delivered += 1;
                }
                Attempt::Gone | Attempt::Retry { .. } => failed += 1,
            }
        }
        Ok((delivered, failed))
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> String {
        format!("webhook/{}", self.endpoint.id)
    }

    fn wants(&self, event: &PublishedEvent) -> bool {
        event.tenant == self.endpoint.tenant
            && (self.endpoint.type_prefixes.is_empty()
                || self
                    .endpoint
                    .type_prefixes
                    .iter()
                    .any(|prefix| event.event_type.starts_with(prefix.as_str())))
    }

    async fn deliver(
        &self,
        events: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        for delivery in &events {
            self.deliver_one(delivery, stop).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(secret_key(&new_secret()).is_ok());
        assert!(secret_key("whsec_c2hvcnQ=").is_err(), "5 bytes");
        assert!(secret_key("no-prefix").is_err());
        let secret = Secret {
            value: new_secret(),
            retires_at_ms: None,
        };
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let settings = WebhookSettings {
            request_timeout: Duration::from_secs(1),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1),
            retry_horizon: Duration::from_secs(10),
        };
        for retry in 0..40 {
            let ceiling = Duration::from_millis(100 * 2u64.saturating_pow(retry.min(30)))
                .min(Duration::from_secs(1));
            assert!(backoff(&settings, retry) <= ceiling);
        }
    }
}
