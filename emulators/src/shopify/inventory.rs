//! The Shopify emulator's remote state and the two inventory mutations with
//! their 2026-04 rules (CHANNELS.md A.1 `inventorySetQuantities`, A.2
//! `inventoryAdjustQuantities`): all-or-nothing, `userErrors` with Shopify's
//! codes, `changeFromQuantity` as the compare-and-swap.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::graphql::GraphqlError;
use crate::clock;

/// A.1: input arrays are capped at 250 items in every Shopify API.
pub(crate) const MAX_INPUT_ITEMS: usize = 250;
/// A.1: set quantities must lie within ±1,000,000,000.
const SET_QUANTITY_LIMIT: i64 = 1_000_000_000;
/// A.2: adjusted quantities must lie within ±2,000,000,000.
const ADJUST_QUANTITY_LIMIT: i64 = 2_000_000_000;

/// Shopify's adjustment reasons (the list at the top of CHANNELS.md).
pub const REASONS: &[&str] = &[
    "correction",
    "cycle_count_available",
    "damaged",
    "other",
    "promotion",
    "received",
    "restock",
    "shrinkage",
];

/// The quantity names `inventoryAdjustQuantities` may change (A.2: "any
/// quantity name"); `committed` moves only with orders, `on_hand` is derived.
const ADJUSTABLE_NAMES: &[&str] = &[
    "available",
    "damaged",
    "quality_control",
    "reserved",
    "safety_stock",
    "incoming",
];

/// The quantities of one inventory item at one location. `on_hand` is the sum of
/// available, committed and the unavailable states, as in Shopify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Levels {
    pub available: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub incoming: i64,
}

impl Levels {
    pub fn with_available(available: i64) -> Self {
        Self {
            available,
            ..Self::default()
        }
    }

    pub fn unavailable(&self) -> i64 {
        self.damaged + self.quality_control + self.reserved + self.safety_stock
    }

    pub fn on_hand(&self) -> i64 {
        self.available + self.committed + self.unavailable()
    }

    /// A quantity by Shopify's name.
    pub fn get(&self, name: &str) -> Option<i64> {
        Some(match name {
            "available" => self.available,
            "committed" => self.committed,
            "damaged" => self.damaged,
            "quality_control" => self.quality_control,
            "reserved" => self.reserved,
            "safety_stock" => self.safety_stock,
            "incoming" => self.incoming,
            "unavailable" => self.unavailable(),
            "on_hand" => self.on_hand(),
            _ => return None,
        })
    }

    fn slot(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "available" => &mut self.available,
            "damaged" => &mut self.damaged,
            "quality_control" => &mut self.quality_control,
            "reserved" => &mut self.reserved,
            "safety_stock" => &mut self.safety_stock,
            "incoming" => &mut self.incoming,
            _ => return None,
        })
    }
}

/// One row of the remote state, as the control API reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LevelRow {
    pub inventory_item_id: u64,
    pub location_id: u64,
    pub sku: String,
    #[serde(flatten)]
    pub levels: Levels,
    pub on_hand: i64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct StockedLevel {
    pub levels: Levels,
    pub updated_at_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub items: BTreeMap<u64, String>,
    pub locations: BTreeMap<u64, String>,
    pub levels: BTreeMap<(u64, u64), StockedLevel>,
    next_group_id: u64,
}

pub fn item_gid(id: u64) -> String {
    format!("gid://shopify/InventoryItem/{id}")
}

pub fn location_gid(id: u64) -> String {
    format!("gid://shopify/Location/{id}")
}

/// Shopify's InventoryLevel gid names the location and the item.
pub fn level_gid(item: u64, location: u64) -> String {
    format!("gid://shopify/InventoryLevel/{location}?inventory_item_id={item}")
}

/// The numeric id of `gid://shopify/{kind}/{id}` (a bare number is accepted too).
pub(crate) fn parse_gid(value: &str, kind: &str) -> Option<u64> {
    if let Ok(id) = value.parse() {
        return Some(id);
    }
    value
        .strip_prefix("gid://shopify/")?
        .strip_prefix(kind)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

pub(crate) fn parse_level_gid(value: &str) -> Option<(u64, u64)> {
    let rest = value.strip_prefix("gid://shopify/InventoryLevel/")?;
    let (location, item) = rest.split_once("?inventory_item_id=")?;
    Some((item.parse().ok()?, location.parse().ok()?))
}

/// One entry of `userErrors`.
#[derive(Debug, Clone)]
struct UserError {
    code: &'static str,
    field: Vec<String>,
    message: String,
}

fn user_error(code: &'static str, field: &[&str], message: impl Into<String>) -> UserError {
    UserError {
        code,
        field: field.iter().map(|part| (*part).to_owned()).collect(),
        message: message.into(),
    }
}

/// A change as Shopify reports it in `inventoryAdjustmentGroup.changes`.
struct Change {
    name: &'static str,
    delta: i64,
    after: i64,
    item: u64,
    location: u64,
    ledger_document_uri: Option<String>,
}

/// The mutation being run, for the payload's type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mutation {
    SetQuantities,
    AdjustQuantities,
}

impl Mutation {
    pub fn field_name(self) -> &'static str {
        match self {
            Mutation::SetQuantities => "inventorySetQuantities",
            Mutation::AdjustQuantities => "inventoryAdjustQuantities",
        }
    }

    fn payload_type(self) -> &'static str {
        match self {
            Mutation::SetQuantities => "InventorySetQuantitiesPayload",
            Mutation::AdjustQuantities => "InventoryAdjustQuantitiesPayload",
        }
    }

    fn user_error_type(self) -> &'static str {
        match self {
            Mutation::SetQuantities => "InventorySetQuantitiesUserError",
            Mutation::AdjustQuantities => "InventoryAdjustQuantitiesUserError",
        }
    }

    /// The payload with only `userErrors` (idempotency refusals).
    pub fn refused(self, code: &'static str, message: &str) -> Value {
        payload(self, None, &[user_error(code, &["input"], message)])
    }
}

fn payload(mutation: Mutation, group: Option<Value>, errors: &[UserError]) -> Value {
    let user_errors: Vec<Value> = errors
        .iter()
        .map(|error| {
            json!({
                "__typename": mutation.user_error_type(),
                "code": error.code,
                "field": error.field,
                "message": error.message,
            })
        })
        .collect();
    json!({
        "__typename": mutation.payload_type(),
        "inventoryAdjustmentGroup": group.unwrap_or(Value::Null),
        "userErrors": user_errors,
    })
}

/// Reads a required input field, or gives the top-level coercion error.
fn required<'v>(input: &'v Value, path: &str, key: &str) -> Result<&'v Value, GraphqlError> {
    match input.get(key) {
        Some(value) if !value.is_null() => Ok(value),
        _ => Err(invalid_input(path, key, "Expected value to not be null")),
    }
}

fn invalid_input(path: &str, key: &str, explanation: &str) -> GraphqlError {
    GraphqlError(json!({
        "message": format!("Variable $input of type {path} was provided invalid value for {key} ({explanation})"),
        "extensions": {"code": "INVALID_VARIABLE",
            "problems": [{"path": [key], "explanation": explanation}]},
    }))
}

fn required_str<'v>(input: &'v Value, path: &str, key: &str) -> Result<&'v str, GraphqlError> {
    required(input, path, key)?
        .as_str()
        .ok_or_else(|| invalid_input(path, key, "Could not coerce value to String"))
}

fn required_int(input: &Value, path: &str, key: &str) -> Result<i64, GraphqlError> {
    required(input, path, key)?
        .as_i64()
        .ok_or_else(|| invalid_input(path, key, "Could not coerce value to Int"))
}

/// From 2026-04 `changeFromQuantity` must be passed; `null` opts out (A.1).
fn change_from_quantity(entry: &Value, path: &str) -> Result<Option<i64>, GraphqlError> {
    match entry.get("changeFromQuantity") {
        None => Err(invalid_input(
            path,
            "changeFromQuantity",
            "changeFromQuantity is required from API version 2026-04; pass null to skip the compare",
        )),
        Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid_input(path, "changeFromQuantity", "Could not coerce value to Int")),
    }
}

fn optional_str<'v>(input: &'v Value, key: &str) -> Option<&'v str> {
    input.get(key).and_then(Value::as_str)
}

/// A document URI: must look like `scheme:...`; `gid://shopify/...` is
/// Shopify's own and refused where A.2 says so.
fn is_uri(value: &str) -> bool {
    match value.split_once(':') {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && !rest.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// A validated `(item, location)` line of an input.
struct Line {
    index: usize,
    item: u64,
    location: u64,
    value: i64,
    change_from: Option<i64>,
    ledger_document_uri: Option<String>,
}

/// The input is coerced (type errors are top-level errors) before anything else.
pub(crate) struct CoercedInput {
    name: String,
    reason: String,
    reference_document_uri: Option<String>,
    lines: Vec<RawLine>,
}

struct RawLine {
    item: String,
    location: String,
    value: i64,
    change_from: Option<i64>,
    ledger_document_uri: Option<String>,
}

/// Type-checks an input; errors here are top-level, nothing is run or stored.
pub(crate) fn coerce(
    mutation: Mutation,
    input: Option<&Value>,
) -> Result<CoercedInput, GraphqlError> {
    let (type_name, list_key, value_key, line_type) = match mutation {
        Mutation::SetQuantities => (
            "InventorySetQuantitiesInput!",
            "quantities",
            "quantity",
            "InventoryQuantityInput!",
        ),
        Mutation::AdjustQuantities => (
            "InventoryAdjustQuantitiesInput!",
            "changes",
            "delta",
            "InventoryChangeInput!",
        ),
    };
    let Some(input) = input.filter(|input| input.is_object()) else {
        return Err(GraphqlError::new(
            format!(
                "Argument 'input' on Field '{}' has an invalid value; expected type '{type_name}'",
                mutation.field_name()
            ),
            "argumentLiteralsIncompatible",
        ));
    };
    let name = required_str(input, type_name, "name")?.to_owned();
    let reason = required_str(input, type_name, "reason")?.to_owned();
    let list = required(input, type_name, list_key)?
        .as_array()
        .ok_or_else(|| invalid_input(type_name, list_key, "Expected a list"))?;
    if list.len() > MAX_INPUT_ITEMS {
        return Err(GraphqlError::new(
            format!(
                "The input array size of {} is greater than the maximum allowed of {MAX_INPUT_ITEMS}.",
                list.len()
            ),
            "MAX_INPUT_SIZE_EXCEEDED",
        ));
    }
    let mut lines = Vec::with_capacity(list.len());
    for entry in list {
        lines.push(RawLine {
            item: required_str(entry, line_type, "inventoryItemId")?.to_owned(),
            location: required_str(entry, line_type, "locationId")?.to_owned(),
            value: required_int(entry, line_type, value_key)?,
            change_from: change_from_quantity(entry, line_type)?,
            ledger_document_uri: optional_str(entry, "ledgerDocumentUri").map(str::to_owned),
        });
    }
    Ok(CoercedInput {
        name,
        reason,
        reference_document_uri: optional_str(input, "referenceDocumentUri").map(str::to_owned),
        lines,
    })
}

impl Inventory {
    fn next_group_gid(&mut self) -> String {
        self.next_group_id += 1;
        format!(
            "gid://shopify/InventoryAdjustmentGroup/{}",
            self.next_group_id
        )
    }

    /// Checks each line's item, location and stocking; `list` is the input key.
    fn locate(&self, input: &CoercedInput, list: &str, errors: &mut Vec<UserError>) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut seen = HashSet::new();
        for (index, raw) in input.lines.iter().enumerate() {
            let at = index.to_string();
            let item =
                parse_gid(&raw.item, "InventoryItem").filter(|id| self.items.contains_key(id));
            let location =
                parse_gid(&raw.location, "Location").filter(|id| self.locations.contains_key(id));
            let (Some(item), Some(location)) = (item, location) else {
                if item.is_none() {
                    errors.push(user_error(
                        "INVALID_INVENTORY_ITEM",
                        &["input", list, &at, "inventoryItemId"],
                        "The specified inventory item could not be found.",
                    ));
                }
                if location.is_none() {
                    errors.push(user_error(
                        "INVALID_LOCATION",
                        &["input", list, &at, "locationId"],
                        "The specified location could not be found.",
                    ));
                }
                continue;
            };
            if !self.levels.contains_key(&(item, location)) {
                errors.push(user_error(
                    "ITEM_NOT_STOCKED_AT_LOCATION",
                    &["input", list, &at, "locationId"],
                    "The specified inventory item is not stocked at the location.",
                ));
                continue;
            }
            if !seen.insert((item, location)) {
                errors.push(user_error(
                    "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",
                    &["input", list, &at],
                    "The combination of inventoryItemId and locationId must be unique.",
                ));
                continue;
            }
            lines.push(Line {
                index,
                item,
                location,
                value: raw.value,
                change_from: raw.change_from,
                ledger_document_uri: raw.ledger_document_uri.clone(),
            });
        }
        lines
    }

    fn check_reason_and_reference(input: &CoercedInput, errors: &mut Vec<UserError>) {
        if !REASONS.contains(&input.reason.as_str()) {
            errors.push(user_error(
                "INVALID_REASON",
                &["input", "reason"],
                format!(
                    "The specified reason is invalid. Valid values: {}.",
                    REASONS.join(", ")
                ),
            ));
        }
        if let Some(uri) = &input.reference_document_uri {
            if !is_uri(uri) {
                errors.push(user_error(
                    "INVALID_REFERENCE_DOCUMENT",
                    &["input", "referenceDocumentUri"],
                    "The reference document URI isn't a valid URI.",
                ));
            }
        }
    }

    fn stale(list: &str, index: usize) -> UserError {
        user_error(
            "CHANGE_FROM_QUANTITY_STALE",
            &["input", list, &index.to_string(), "changeFromQuantity"],
            "The specified changeFromQuantity does not match the current quantity.",
        )
    }

    /// A.1 `inventorySetQuantities`: absolute values, all or nothing.
    pub fn set_quantities(&mut self, input: &CoercedInput) -> (Value, Vec<(u64, u64)>) {
        let mutation = Mutation::SetQuantities;
        let mut errors = Vec::new();
        let name_is_valid = input.name == "available" || input.name == "on_hand";
        if !name_is_valid {
            errors.push(user_error(
                "INVALID_NAME",
                &["input", "name"],
                "The quantity name must be either 'available' or 'on_hand'.",
            ));
        }
        Self::check_reason_and_reference(input, &mut errors);
        let lines = self.locate(input, "quantities", &mut errors);
        for line in &lines {
            let at = line.index.to_string();
            let field = ["input", "quantities", at.as_str(), "quantity"];
            if line.value < -SET_QUANTITY_LIMIT {
                errors.push(user_error(
                    "INVALID_QUANTITY_TOO_LOW",
                    &field,
                    "The quantity can't be lower than -1,000,000,000.",
                ));
            } else if line.value > SET_QUANTITY_LIMIT {
                errors.push(user_error(
                    "INVALID_QUANTITY_TOO_HIGH",
                    &field,
                    "The quantity can't be higher than 1,000,000,000.",
                ));
            } else if line.value < 0 {
                errors.push(user_error(
                    "INVALID_QUANTITY_NEGATIVE",
                    &field,
                    "The quantity can't be negative.",
                ));
            }
            let current = self
                .levels
                .get(&(line.item, line.location))
                .map(|stocked| stocked.levels);
            let current = current
                .filter(|_| name_is_valid)
                .and_then(|levels| levels.get(&input.name));
            if let (Some(expected), Some(current)) = (line.change_from, current) {
                if expected != current {
                    errors.push(Self::stale("quantities", line.index));
                }
            }
        }
        if !errors.is_empty() {
            return (payload(mutation, None, &errors), Vec::new());
        }
        let mut changes = Vec::new();
        let now = clock::unix_millis();
        for line in &lines {
            let Some(stocked) = self.levels.get_mut(&(line.item, line.location)) else {
                continue;
            };
            // Setting on_hand moves available by the same delta (Shopify keeps
            // committed and the unavailable states as they are).
            let delta = line.value - stocked.levels.get(&input.name).unwrap_or(0);
            if delta == 0 {
                continue;
            }
            stocked.levels.available += delta;
            stocked.updated_at_ms = now;
            for name in ["available", "on_hand"] {
                changes.push(Change {
                    name,
                    delta,
                    after: stocked.levels.get(name).unwrap_or(0),
                    item: line.item,
                    location: line.location,
                    ledger_document_uri: None,
                });
            }
        }
        self.finish(mutation, input, changes)
    }

    /// A.2 `inventoryAdjustQuantities`: deltas, all or nothing.
    pub fn adjust_quantities(&mut self, input: &CoercedInput) -> (Value, Vec<(u64, u64)>) {
        let mutation = Mutation::AdjustQuantities;
        let mut errors = Vec::new();
        let name = ADJUSTABLE_NAMES
            .iter()
            .find(|name| **name == input.name)
            .copied();
        if name.is_none() {
            errors.push(user_error(
                "INVALID_QUANTITY_NAME",
                &["input", "name"],
                format!(
                    "The quantity name must be one of: {}.",
                    ADJUSTABLE_NAMES.join(", ")
                ),
            ));
        }
        Self::check_reason_and_reference(input, &mut errors);
        let lines = self.locate(input, "changes", &mut errors);
        let mut ledger_documents = HashSet::new();
        for line in &lines {
            let at = line.index.to_string();
            let ledger_field = ["input", "changes", at.as_str(), "ledgerDocumentUri"];
            match (name, &line.ledger_document_uri) {
                (Some("available"), Some(_)) => errors.push(user_error(
                    "INVALID_AVAILABLE_DOCUMENT",
                    &ledger_field,
                    "A ledger document URI is not allowed when adjusting available.",
                )),
                (Some(name), None) if name != "available" => errors.push(user_error(
                    "INVALID_QUANTITY_DOCUMENT",
                    &ledger_field,
                    "A ledger document URI is required for quantity names other than available.",
                )),
                (_, Some(uri)) if uri.starts_with("gid://shopify/") => errors.push(user_error(
                    "INTERNAL_LEDGER_DOCUMENT",
                    &ledger_field,
                    "A ledger document URI can't be a Shopify resource.",
                )),
                (_, Some(uri)) if !is_uri(uri) => errors.push(user_error(
                    "INVALID_LEDGER_DOCUMENT",
                    &ledger_field,
                    "The ledger document URI isn't a valid URI.",
                )),
                (_, Some(uri)) => {
                    ledger_documents.insert(uri.clone());
                }
                _ => {}
            }
            let current = self
                .levels
                .get(&(line.item, line.location))
                .and_then(|stocked| name.and_then(|name| stocked.levels.get(name)));
            if let Some(current) = current {
                let after = current.saturating_add(line.value);
                let field = ["input", "changes", at.as_str(), "delta"];
                if after > ADJUST_QUANTITY_LIMIT {
                    errors.push(user_error(
                        "INVALID_QUANTITY_TOO_HIGH",
                        &field,
                        "The quantity can't be higher than 2,000,000,000.",
                    ));
                } else if after < -ADJUST_QUANTITY_LIMIT {
                    errors.push(user_error(
                        "INVALID_QUANTITY_TOO_LOW",
                        &field,
                        "The quantity can't be lower than -2,000,000,000.",
                    ));
                }
                if line.change_from.is_some_and(|expected| expected != current) {
                    errors.push(Self::stale("changes", line.index));
                }
            }
        }
        if ledger_documents.len() > 1 {
            errors.push(user_error(
                "MAX_ONE_LEDGER_DOCUMENT",
                &["input", "changes"],
                "Only one ledger document URI is allowed per adjustment.",
            ));
        }
        let Some(name) = name.filter(|_| errors.is_empty()) else {
            return (payload(mutation, None, &errors), Vec::new());
        };
        let mut changes = Vec::new();
        let now = clock::unix_millis();
        for line in &lines {
            let Some(stocked) = self.levels.get_mut(&(line.item, line.location)) else {
                continue;
            };
            let Some(slot) = stocked.levels.slot(name) else {
                continue;
            };
            *slot += line.value;
            stocked.updated_at_ms = now;
            let mut names = vec![name];
            if name != "incoming" {
                names.push("on_hand");
            }
            for changed in names {
                changes.push(Change {
                    name: changed,
                    delta: line.value,
                    after: stocked.levels.get(changed).unwrap_or(0),
                    item: line.item,
                    location: line.location,
                    ledger_document_uri: line.ledger_document_uri.clone(),
                });
            }
        }
        self.finish(mutation, input, changes)
    }

    fn finish(
        &mut self,
        mutation: Mutation,
        input: &CoercedInput,
        changes: Vec<Change>,
    ) -> (Value, Vec<(u64, u64)>) {
        let mut touched: Vec<(u64, u64)> = changes.iter().map(|c| (c.item, c.location)).collect();
        touched.dedup();
        let changes: Vec<Value> = changes
            .iter()
            .map(|change| {
                json!({
                    "__typename": "InventoryChange",
                    "name": change.name,
                    "delta": change.delta,
                    "quantityAfterChange": change.after,
                    "ledgerDocumentUri": change.ledger_document_uri,
                    "item": {"__typename": "InventoryItem", "id": item_gid(change.item),
                        "sku": self.items.get(&change.item)},
                    "location": {"__typename": "Location", "id": location_gid(change.location),
                        "name": self.locations.get(&change.location)},
                })
            })
            .collect();
        let group = json!({
            "__typename": "InventoryAdjustmentGroup",
            "id": self.next_group_gid(),
            "createdAt": clock::now_rfc3339(),
            "reason": input.reason,
            "referenceDocumentUri": input.reference_document_uri,
            "changes": changes,
        });
        (payload(mutation, Some(group), &[]), touched)
    }

    pub fn rows(&self) -> Vec<LevelRow> {
        self.levels
            .iter()
            .map(|(&(item, location), stocked)| LevelRow {
                inventory_item_id: item,
                location_id: location,
                sku: self.items.get(&item).cloned().unwrap_or_default(),
                levels: stocked.levels,
                on_hand: stocked.levels.on_hand(),
                updated_at_ms: stocked.updated_at_ms,
            })
            .collect()
    }
}
