//! Shopify Admin GraphQL (CHANNELS.md A).
//!
//! Writes: `inventorySetQuantities(input: {name: "available", reason,
//! referenceDocumentUri, quantities: [{inventoryItemId, locationId,
//! quantity, changeFromQuantity}]}) @idempotent(key:)` (A.1, A.3), up to 250
//! quantities per call (A.1's array cap), one cost-10 mutation whatever the
//! count, so the "bulk path" is the same mutation with a longer array.
//! The mutation is all or nothing: when some lines are refused, none is
//! applied, so the connector answers the refused lines and sends the rest
//! again (another composition, so another key), at most
//! [`MAX_ROUNDS`] times.
//!
//! Reads: `inventoryItem(id) { inventoryLevel(locationId) { quantities(names:
//! ["available"]) { name quantity } } }`, aliased, up to [`READ_CHUNK`] keys
//! per query (3 points each, well under the 1,000-point query cap, A.4).
//!
//! Mapping (account settings, the channel definition's map; the emulator
//! takes the same gids): `inventory_item_id.<sku>` is the Shopify
//! `InventoryItem` of a skuld SKU and `location_id.<location>` the
//! `Location` of a skuld location (`location_id` alone for a key without a
//! location). Either may be a gid or its number. Without a mapping a SKU or
//! location that is itself a Shopify gid or a number is used as is; any
//! other is refused as `UNMAPPED_SKU` / `UNMAPPED_LOCATION` (a dead letter:
//! the channel definition needs the mapping).
//!
//! Other settings: `api_version` (`2026-04`: the first with mandatory
//! compare and idempotency, A), `reason` (`correction`), `plan`
//! (`standard`, `advanced`, `plus`, `commerce_components`: the restore rate
//! of A.4's table, the bucket 20 times it) or `bucket_size` and
//! `restore_rate` (2,000 / 100, the Standard plan, A.4; corrected from every
//! response anyway), `max_wait_ms` (2,000: longer local waits go back to the
//! worker as `Retry`), `timeout_ms` (10,000). Credential: `access_token`
//! (`X-Shopify-Access-Token`).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde_json::{json, Map, Value};

use crate::config::{ConnectorConfig, ConnectorKind, Secret};
use crate::http::{self, Reply, DEFAULT_RETRY};
use crate::idempotency::batch_key;
use crate::limiter::{Limiter, Observation};
use crate::outcome::{http_status_class, Class, ConnectorError, PushOutcome};
use crate::{paced, Connector, ItemKey, PushItem};

/// A.1: input arrays are capped at 250 items.
pub const MAX_QUANTITIES: usize = 250;
/// A.4 (S): the default cost of a mutation.
const MUTATION_COST: f64 = 10.0;
/// Object fields per read-back alias: inventoryItem, inventoryLevel, quantities.
const READ_COST_PER_KEY: f64 = 3.0;
pub const READ_CHUNK: usize = 100;
/// Rounds of re-sending the lines a refused batch did not apply.
pub const MAX_ROUNDS: usize = 3;

const SET_MUTATION: &str =
    "mutation SkuldSetAvailable($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}";

/// What the channel said about one line of a refused batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `CHANGE_FROM_QUANTITY_STALE`: read back, return `Conflict`.
    Stale,
    Retry(String),
    Invalid(String, String),
    /// `IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED`: "retry with a new key" (A.3).
    NewKey,
}

/// The `userErrors` code table (A.1, A.2, item 19).
pub(crate) fn user_error_verdict(code: &str, message: &str) -> Verdict {
    match code {
        "CHANGE_FROM_QUANTITY_STALE" | "COMPARE_QUANTITY_STALE" => Verdict::Stale,
        "IDEMPOTENCY_CONCURRENT_REQUEST" | "ADJUST_QUANTITIES_FAILED" | "SERVICE_UNAVAILABLE" => {
            Verdict::Retry(format!("{code}: {message}"))
        }
        "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED" => Verdict::NewKey,
        // INVALID_*, ITEM_NOT_STOCKED_AT_LOCATION, NON_MUTABLE_INVENTORY_ITEM,
        // NO_DUPLICATE_..., COMPARE_QUANTITY_REQUIRED and
        // IDEMPOTENCY_KEY_PARAMETER_MISMATCH (a key is a hash of the
        // parameters, so a mismatch is a bug to look at, not to retry).
        _ => Verdict::Invalid(code.to_owned(), message.to_owned()),
    }
}

/// The class of a top-level GraphQL error code (`errors[].extensions.code`).
pub(crate) fn top_level_class(code: &str) -> Class {
    match code {
        "THROTTLED" | "INTERNAL_SERVER_ERROR" | "SERVICE_UNAVAILABLE" | "TIMEOUT" => {
            Class::Retryable
        }
        _ => Class::Invalid,
    }
}

/// The line a user error names: `field: ["input", "quantities", "3", ...]`.
pub(crate) fn error_index(field: &Value) -> Option<usize> {
    let parts = field.as_array()?;
    let at = parts
        .iter()
        .position(|part| part.as_str() == Some("quantities"))?;
    match parts.get(at + 1)? {
        Value::String(index) => index.parse().ok(),
        Value::Number(index) => index.as_u64().and_then(|i| usize::try_from(i).ok()),
        _ => None,
    }
}

/// A.4's restore rates per plan. The bucket of 20 times the rate is what
/// responses show for Standard (2,000 / 100); for the others it is
/// unconfirmed, and the first response corrects it anyway.
pub(crate) fn plan_restore_rate(plan: &str) -> Result<f64, ConnectorError> {
    match plan {
        "standard" => Ok(100.0),
        "advanced" => Ok(200.0),
        "plus" => Ok(1_000.0),
        "commerce_components" | "enterprise" => Ok(2_000.0),
        other => Err(ConnectorError::Config(format!("shopify plan {other:?}"))),
    }
}

fn gid(kind: &str, raw: &str) -> Option<String> {
    let raw = raw.trim();
    let prefix = format!("gid://shopify/{kind}/");
    if let Some(id) = raw.strip_prefix(&prefix) {
        return (!id.is_empty()).then(|| raw.to_owned());
    }
    (!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit())).then(|| format!("{prefix}{raw}"))
}

/// Shopify's identifiers of one skuld key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    item: String,
    location: String,
}

#[derive(Debug)]
pub struct Shopify {
    channel_id: String,
    endpoint: String,
    token: Secret,
    config: ConnectorConfig,
    client: Client,
    limiter: Limiter,
    reason: String,
    max_wait: Duration,
}

impl Shopify {
    pub fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        let version = config.get_or("api_version", "2026-04").to_owned();
        let base = config.base_url.trim_end_matches('/');
        let endpoint = format!("{base}/admin/api/{version}/graphql.json");
        let plan_rate = plan_restore_rate(config.get_or("plan", "standard"))?;
        let restore_rate = config.parse_or("restore_rate", plan_rate)?;
        let bucket_size = config.parse_or("bucket_size", 20.0 * restore_rate)?;
        Ok(Shopify {
            channel_id: config.channel_id.clone(),
            endpoint,
            token: config.secret("access_token")?.clone(),
            client: http::client(config.millis_or("timeout_ms", 10_000)?)?,
            // One point kept back: the server reports whole points.
            limiter: Limiter::new("shopify cost", bucket_size, restore_rate, 1.0),
            reason: config.get_or("reason", "correction").to_owned(),
            max_wait: config.millis_or("max_wait_ms", 2_000)?,
            config,
        })
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn target(&self, sku: &str, location: Option<&str>) -> Result<Target, PushOutcome> {
        let item = self
            .config
            .get(&format!("inventory_item_id.{sku}"))
            .and_then(|id| gid("InventoryItem", id))
            .or_else(|| gid("InventoryItem", sku))
            .ok_or_else(|| {
                PushOutcome::invalid(
                    "UNMAPPED_SKU",
                    format!("no inventory_item_id.{sku} setting"),
                )
            })?;
        let key = match location {
            Some(location) => format!("location_id.{location}"),
            None => "location_id".to_owned(),
        };
        let location = self
            .config
            .get(&key)
            .and_then(|id| gid("Location", id))
            .or_else(|| location.and_then(|location| gid("Location", location)))
            .ok_or_else(|| {
                PushOutcome::invalid("UNMAPPED_LOCATION", format!("no {key} setting"))
            })?;
        Ok(Target { item, location })
    }

    /// One GraphQL call through the limiter. The limiter is corrected from
    /// `extensions.cost` whatever the answer (A.4).
    async fn call(
        &self,
        cost: f64,
        query: &str,
        variables: Value,
    ) -> Result<Value, ConnectorError> {
        let permit = self
            .limiter
            .acquire(cost, self.max_wait)
            .await
            .map_err(|wait| {
                ConnectorError::retry(
                    wait,
                    format!("local shopify cost budget: {} ms", wait.as_millis()),
                )
            })?;
        let request = self
            .client
            .post(&self.endpoint)
            .header("X-Shopify-Access-Token", self.token.expose())
            .json(&json!({"query": query, "variables": variables}));
        let reply = http::send(request).await?;
        let body = reply.json();
        let throttled = is_throttled(&body) || reply.status == 429;
        if throttled {
            crate::count_throttled(&self.channel_id);
        }
        let observation = observation(&body, throttled, reply.retry_after());
        self.limiter.observe(permit, observation);
        if throttled {
            let wait = reply
                .retry_after()
                .unwrap_or_else(|| self.limiter.ready_in(cost))
                .max(Duration::from_millis(10));
            return Err(ConnectorError::retry(wait, "THROTTLED"));
        }
        check_reply(&reply, &body)?;
        Ok(body)
    }

    /// One mutation of `lines` (indices into `targets`/`items`): `None` for
    /// every line when it applied, else the verdicts of the lines named.
    async fn set_batch(
        &self,
        items: &[&PushItem],
        targets: &[&Target],
        salt: &str,
    ) -> Result<Option<Vec<Option<Verdict>>>, ConnectorError> {
        let key = batch_key(items.iter().map(|item| item.idempotency_key.as_str()), salt);
        let quantities: Vec<Value> = items
            .iter()
            .zip(targets)
            .map(|(item, target)| {
                json!({
                    "inventoryItemId": target.item,
                    "locationId": target.location,
                    "quantity": item.value,
                    // Mandatory from 2026-04 (A.1): the compare against what
                    // Shopify last acknowledged, so a storefront order that
                    // moved `available` meanwhile is not overwritten (A.6).
                    // `null` (no compare) only when nothing is known: the
                    // worker reads the level back before a first push
                    // (reconciliation, item 21) precisely so that this blind
                    // set stays rare.
                    "changeFromQuantity": item.change_from,
                })
            })
            .collect();
        let variables = json!({
            "input": {
                "name": "available",
                "reason": self.reason,
                "referenceDocumentUri": format!("gid://skuld/InventoryPush/{key}"),
                "quantities": quantities,
            },
            "key": key,
        });
        let body = self.call(MUTATION_COST, SET_MUTATION, variables).await?;
        let Some(payload) = body
            .pointer("/data/inventorySetQuantities")
            .filter(|p| p.is_object())
        else {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                "no inventorySetQuantities payload",
            ));
        };
        let errors = payload
            .get("userErrors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if errors.is_empty() {
            return Ok(None);
        }
        let mut verdicts = vec![None; items.len()];
        for error in &errors {
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN");
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            let verdict = user_error_verdict(code, message);
            match error_index(error.get("field").unwrap_or(&Value::Null)) {
                Some(index) if index < verdicts.len() => {
                    // The first verdict of a line stands (a stale line that
                    // is also invalid is invalid either way after a re-read).
                    verdicts[index].get_or_insert(verdict);
                }
                // An error of the whole input concerns every line.
                _ => {
                    for slot in verdicts.iter_mut() {
                        slot.get_or_insert(verdict.clone());
                    }
                }
            }
        }
        Ok(Some(verdicts))
    }

    /// Pushes one chunk of distinct targets, re-sending what a refused
    /// batch left unapplied.
    async fn push_chunk(&self, items: &[&PushItem], targets: &[&Target]) -> Vec<PushOutcome> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; items.len()];
        let mut stale = Vec::new();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut salted: HashSet<usize> = HashSet::new();
        for round in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let batch_items: Vec<&PushItem> = pending.iter().map(|&i| items[i]).collect();
            let batch_targets: Vec<&Target> = pending.iter().map(|&i| targets[i]).collect();
            let salt = if pending.iter().any(|i| salted.contains(i)) {
                format!("new-key-{round}")
            } else {
                String::new()
            };
            let verdicts = match self.set_batch(&batch_items, &batch_targets, &salt).await {
                Ok(verdicts) => verdicts,
                Err(error) => {
                    let outcome = error.to_outcome();
                    for &index in &pending {
                        outcomes[index] = Some(outcome.clone());
                    }
                    pending.clear();
                    break;
                }
            };
            let Some(verdicts) = verdicts else {
                for &index in &pending {
                    outcomes[index] = Some(PushOutcome::Applied);
                }
                pending.clear();
                break;
            };
            let mut next = Vec::new();
            for (&index, verdict) in pending.iter().zip(verdicts) {
                match verdict {
                    // Blameless: refused only because another line was.
                    None => next.push(index),
                    Some(Verdict::Stale) => stale.push(index),
                    Some(Verdict::Retry(reason)) => {
                        outcomes[index] = Some(PushOutcome::retry(DEFAULT_RETRY, reason));
                    }
                    Some(Verdict::Invalid(code, message)) => {
                        outcomes[index] = Some(PushOutcome::invalid(code, message));
                    }
                    Some(Verdict::NewKey) => {
                        salted.insert(index);
                        next.push(index);
                    }
                }
            }
            pending = next;
        }
        for index in pending {
            outcomes[index] = Some(PushOutcome::retry(
                DEFAULT_RETRY,
                "batch refused for other lines too often",
            ));
        }
        if !stale.is_empty() {
            // A.6: on a stale compare, read the level back and hand it to the
            // worker, which recomputes and sends with a new key. Never a
            // blind retry.
            let stale_targets: Vec<&Target> = stale.iter().map(|&i| targets[i]).collect();
            match self.read_targets(&stale_targets).await {
                Ok(remotes) => {
                    for (&index, remote) in stale.iter().zip(remotes) {
                        outcomes[index] = Some(match remote {
                            Some(remote) => PushOutcome::Conflict { remote },
                            None => PushOutcome::invalid(
                                "ITEM_NOT_STOCKED_AT_LOCATION",
                                "stale compare, and the level is gone on read-back",
                            ),
                        });
                    }
                }
                Err(error) => {
                    let reason = format!("CHANGE_FROM_QUANTITY_STALE; read-back failed: {error}");
                    let after = match &error {
                        ConnectorError::Retry { after, .. } => *after,
                        _ => DEFAULT_RETRY,
                    };
                    for &index in &stale {
                        outcomes[index] = Some(PushOutcome::retry(after, reason.clone()));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| PushOutcome::retry(DEFAULT_RETRY, "no outcome"))
            })
            .collect()
    }

    async fn read_targets(&self, targets: &[&Target]) -> Result<Vec<Option<i64>>, ConnectorError> {
        // A read answers all or nothing: a chunk the budget refuses fails
        // the whole read and loses the chunks already paid for. So start
        // only when the budget covers every chunk (else the worker, retrying
        // the same keys after the wait of one chunk, reads one chunk per
        // attempt and throws it away, forever).
        let (_, capacity, _) = self.limiter.snapshot();
        let whole = (READ_COST_PER_KEY * targets.len() as f64).min(capacity - 1.0);
        let wait = self.limiter.ready_in(whole);
        if wait > self.max_wait {
            return Err(ConnectorError::retry(
                wait,
                format!(
                    "local shopify cost budget: {} ms for the whole read",
                    wait.as_millis()
                ),
            ));
        }
        let mut values = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(READ_CHUNK) {
            let mut declarations = Vec::new();
            let mut selections = Vec::new();
            let mut variables = Map::new();
            for (index, target) in chunk.iter().enumerate() {
                declarations.push(format!("$i{index}: ID!, $l{index}: ID!"));
                selections.push(format!(
                    "r{index}: inventoryItem(id: $i{index}) {{ inventoryLevel(locationId: $l{index}) {{ quantities(names: [\"available\"]) {{ name quantity }} }} }}"
                ));
                variables.insert(format!("i{index}"), json!(target.item));
                variables.insert(format!("l{index}"), json!(target.location));
            }
            let query = format!(
                "query SkuldReadBack({}) {{ {} }}",
                declarations.join(", "),
                selections.join(" ")
            );
            let cost = READ_COST_PER_KEY * chunk.len() as f64;
            let body = self.call(cost, &query, Value::Object(variables)).await?;
            for index in 0..chunk.len() {
                let quantities = body.pointer(&format!("/data/r{index}/inventoryLevel/quantities"));
                let available = quantities.and_then(Value::as_array).and_then(|quantities| {
                    quantities
                        .iter()
                        .find(|q| q.get("name").and_then(Value::as_str) == Some("available"))
                        .and_then(|q| q.get("quantity"))
                        .and_then(Value::as_i64)
                });
                values.push(available);
            }
        }
        Ok(values)
    }
}

fn is_throttled(body: &Value) -> bool {
    body.get("errors")
        .and_then(Value::as_array)
        .is_some_and(|errors| {
            errors.iter().any(|error| {
                error.pointer("/extensions/code").and_then(Value::as_str) == Some("THROTTLED")
            })
        })
}

/// `extensions.cost.throttleStatus` as a limiter correction.
fn observation(body: &Value, throttled: bool, retry_after: Option<Duration>) -> Observation {
    let status = body.pointer("/extensions/cost/throttleStatus");
    let figure = |name: &str| status.and_then(|s| s.get(name)).and_then(Value::as_f64);
    Observation {
        level: figure("currentlyAvailable"),
        capacity: figure("maximumAvailable"),
        rate: figure("restoreRate"),
        throttled,
        retry_after,
    }
}

/// The non-throttle failures of a reply: its HTTP status, then top-level
/// GraphQL errors.
fn check_reply(reply: &Reply, body: &Value) -> Result<(), ConnectorError> {
    if !crate::outcome::is_success(reply.status) {
        let reason = format!("HTTP {}: {}", reply.status, reply.excerpt());
        return Err(match http_status_class(reply.status) {
            Class::Retryable => {
                ConnectorError::retry(reply.retry_after().unwrap_or(DEFAULT_RETRY), reason)
            }
            Class::Invalid => ConnectorError::invalid(format!("HTTP_{}", reply.status), reason),
        });
    }
    if let Some(error) = body
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|errors| errors.first())
    {
        let code = error
            .pointer("/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or("GRAPHQL_ERROR");
        let message = error.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(match top_level_class(code) {
            Class::Retryable => ConnectorError::retry(DEFAULT_RETRY, format!("{code}: {message}")),
            Class::Invalid => ConnectorError::invalid(code, message),
        });
    }
    if body.get("data").is_none() {
        return Err(ConnectorError::retry(
            DEFAULT_RETRY,
            format!("no data in the reply: {}", reply.excerpt()),
        ));
    }
    Ok(())
}

#[async_trait]
impl Connector for Shopify {
    fn kind(&self) -> ConnectorKind {
        ConnectorKind::Shopify
    }

    fn channel_id(&self) -> &str {
        &self.channel_id
    }

    fn max_batch(&self) -> usize {
        MAX_QUANTITIES
    }

    /// Any batch goes as one `quantities[]` mutation: it costs what a single
    /// line does (A.4), so batching is always the cheaper path.
    fn bulk_threshold(&self) -> usize {
        2
    }

    fn ready_in(&self) -> Duration {
        self.limiter.ready_in(MUTATION_COST)
    }

    /// Every `inventorySetQuantities` carries `changeFromQuantity`, the last
    /// figure acknowledged (or read back): a stale one is refused.
    fn refuses_stale_writes(&self) -> bool {
        true
    }

    async fn push(&self, items: &[PushItem]) -> Vec<PushOutcome> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; items.len()];
        let mut targets: Vec<Option<Target>> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match self.target(&item.sku, item.location.as_deref()) {
                Ok(target) => targets.push(Some(target)),
                Err(outcome) => {
                    outcomes[index] = Some(outcome);
                    targets.push(None);
                }
            }
        }
        // Chunks of at most 250 distinct (item, location) pairs: a pair twice
        // in one input is NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR, so a
        // second push of a key goes in a later chunk.
        let mut remaining: Vec<usize> =
            (0..items.len()).filter(|&i| targets[i].is_some()).collect();
        while !remaining.is_empty() {
            let mut chunk = Vec::new();
            let mut seen = HashSet::new();
            let mut later = Vec::new();
            for index in remaining {
                let Some(target) = targets[index].as_ref() else {
                    continue;
                };
                if chunk.len() < MAX_QUANTITIES && seen.insert(target) {
                    chunk.push(index);
                } else {
                    later.push(index);
                }
            }
            let chunk_items: Vec<&PushItem> = chunk.iter().map(|&i| &items[i]).collect();
            let chunk_targets: Vec<&Target> =
                chunk.iter().filter_map(|&i| targets[i].as_ref()).collect();
            let results = self.push_chunk(&chunk_items, &chunk_targets).await;
            for (&index, outcome) in chunk.iter().zip(results) {
                outcomes[index] = Some(outcome);
            }
            remaining = later;
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| paced(DEFAULT_RETRY, "shopify")))
            .collect()
    }

    async fn read(&self, keys: &[ItemKey]) -> Result<Vec<Option<i64>>, ConnectorError> {
        let mapped: Vec<Option<Target>> = keys
            .iter()
            .map(|key| self.target(&key.sku, key.location.as_deref()).ok())
            .collect();
        let known: Vec<&Target> = mapped.iter().flatten().collect();
        let mut values = self.read_targets(&known).await?.into_iter();
        Ok(mapped
            .iter()
            .map(|target| target.as_ref().and_then(|_| values.next().flatten()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_error_table() {
        let table = [
            ("CHANGE_FROM_QUANTITY_STALE", Verdict::Stale),
            ("COMPARE_QUANTITY_STALE", Verdict::Stale),
            ("IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED", Verdict::NewKey),
        ];
        for (code, verdict) in table {
            assert_eq!(user_error_verdict(code, ""), verdict, "{code}");
        }
        for code in [
            "IDEMPOTENCY_CONCURRENT_REQUEST",
            "ADJUST_QUANTITIES_FAILED",
            "SERVICE_UNAVAILABLE",
        ] {
            assert!(
                matches!(user_error_verdict(code, ""), Verdict::Retry(_)),
                "{code}"
            );
        }
        for code in [
            "INVALID_INVENTORY_ITEM",
            "INVALID_LOCATION",
            "INVALID_NAME",
            "INVALID_QUANTITY_NEGATIVE",
            "INVALID_QUANTITY_TOO_HIGH",
            "INVALID_QUANTITY_TOO_LOW",
            "INVALID_REASON",
            "INVALID_REFERENCE_DOCUMENT",
            "ITEM_NOT_STOCKED_AT_LOCATION",
            "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",
            "NON_MUTABLE_INVENTORY_ITEM",
            "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
            "COMPARE_QUANTITY_REQUIRED",
        ] {
            assert!(
                matches!(user_error_verdict(code, ""), Verdict::Invalid(..)),
                "{code}"
            );
        }
        assert_eq!(top_level_class("THROTTLED"), Class::Retryable);
        assert_eq!(top_level_class("INTERNAL_SERVER_ERROR"), Class::Retryable);
        assert_eq!(top_level_class("INVALID_VARIABLE"), Class::Invalid);
        assert_eq!(top_level_class("MAX_COST_EXCEEDED"), Class::Invalid);
    }

    #[test]
    fn plans_set_the_bucket() {
        assert_eq!(plan_restore_rate("standard"), Ok(100.0));
        assert_eq!(plan_restore_rate("plus"), Ok(1_000.0));
        assert!(plan_restore_rate("gold").is_err());
        let config = ConnectorConfig::new("shop", ConnectorKind::Shopify, "http://127.0.0.1:9")
            .credential("access_token", "t")
            .setting("plan", "advanced");
        let (_, capacity, rate) = Shopify::new(config).unwrap().limiter().snapshot();
        assert_eq!((capacity, rate), (4_000.0, 200.0));
    }

    #[test]
    fn error_fields_name_their_line() {
        assert_eq!(
            error_index(&json!(["input", "quantities", "3", "changeFromQuantity"])),
            Some(3)
        );
        assert_eq!(error_index(&json!(["input", "quantities", 7])), Some(7));
        assert_eq!(error_index(&json!(["input", "reason"])), None);
        assert_eq!(error_index(&json!(null)), None);
        assert_eq!(error_index(&json!(["input", "quantities", "x"])), None);
    }

    #[test]
    fn ids_map_by_setting_or_convention() {
        let config = ConnectorConfig::new("shop", ConnectorKind::Shopify, "http://127.0.0.1:9")
            .credential("access_token", "t")
            .setting("inventory_item_id.SKU-1", "gid://shopify/InventoryItem/11")
            .setting("location_id.store-a", "22")
            .setting("location_id", "gid://shopify/Location/33");
        let shopify = Shopify::new(config).map_err(|e| e.to_string());
        let shopify = shopify.as_ref().unwrap();
        assert_eq!(
            shopify.target("SKU-1", Some("store-a")),
            Ok(Target {
                item: "gid://shopify/InventoryItem/11".into(),
                location: "gid://shopify/Location/22".into()
            })
        );
        assert_eq!(
            shopify.target("44", None).map(|t| t.location),
            Ok("gid://shopify/Location/33".into())
        );
        assert!(matches!(
            shopify.target("SKU-2", None),
            Err(PushOutcome::Invalid { code, .. }) if code == "UNMAPPED_SKU"
        ));
        assert!(matches!(
            shopify.target("SKU-1", Some("store-b")),
            Err(PushOutcome::Invalid { code, .. }) if code == "UNMAPPED_LOCATION"
        ));
        assert_eq!(gid("Location", "gid://shopify/Location/"), None);
    }

    #[test]
    fn throttle_bodies_correct_the_limiter() {
        let body = json!({"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}],
            "extensions":{"cost":{"requestedQueryCost":10,"actualQueryCost":null,
            "throttleStatus":{"maximumAvailable":2000.0,"currentlyAvailable":4,"restoreRate":100.0}}}});
        assert!(is_throttled(&body));
        let seen = observation(&body, true, None);
        assert_eq!(seen.level, Some(4.0));
        assert_eq!(seen.capacity, Some(2000.0));
        assert_eq!(seen.rate, Some(100.0));
        assert!(!is_throttled(&json!({"errors": "Not Found"})));
        assert_eq!(
            observation(&json!([1, 2]), false, None),
            Observation::default()
        );
    }
}
