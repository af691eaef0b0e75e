//! Allocation controls and a channel's available-to-sell.
//!
//! `ats(channel, sku) = Σ over the network of available(location)`, each
//! term and the sum shaped by the channel's controls (DOMAIN.md 1.2, the
//! Fluent model):
//!
//! * Two levels. A *line* is one location's stock; location-scoped
//!   controls (`Location`, `SkuLocation`) shape each line. A channel that
//!   publishes per SKU sums the lines and then applies its SKU-scoped
//!   controls (`Sku`, `All`) to the sum; one that publishes per location
//!   publishes each line, so every control shapes the line.
//! * No stacking by default: at each level only the first matching control
//!   applies, first by priority (1 first), then the more specific scope
//!   (SKU-location, SKU, location, all), then the control id. With
//!   `stacking` every matching control applies, in that order.
//! * A line starts at the location's available quantity, never below 0 (a
//!   backorder is not stock to sell), and no control raises a value: the
//!   result is never negative and never above the network's available.
//! * Allocation shares split one pool between channels: each channel gets
//!   `floor(pool × share)` and the channel first by priority among those
//!   sharing the pool also gets what the rounding left over. Channels share
//!   a pool when they have the same network and publication;
//!   [`validate_shares`] keeps their shares at most the whole pool.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::definition::{Channel, Publication};
use crate::key::validate_token;
use crate::Refusal;

/// Controls one channel holds at most.
pub const MAX_CONTROLS: usize = 1_000;
/// Largest quantity a control names, and the most any line counts.
pub const MAX_QUANTITY: i64 = 1_000_000_000;
/// 100 %, in basis points.
pub const WHOLE: u32 = 10_000;
/// Largest control priority.
pub const MAX_PRIORITY: u32 = 1_000_000;

/// What a control does to the quantity it shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlKind {
    /// Holds back this many units.
    QuantityBuffer { units: i64 },
    /// Holds back this share, rounded up (basis points).
    PercentBuffer { basis_points: u32 },
    /// Sells none.
    Exclusion,
    /// Shows at most this many units.
    RingFenceCap { units: i64 },
    /// Shows 0 while fewer than this many units are left.
    Minimum { units: i64 },
    /// This channel's share of a pool shared with other channels (basis
    /// points).
    AllocationShare { basis_points: u32 },
}

impl ControlKind {
    pub fn name(&self) -> &'static str {
        match self {
            ControlKind::QuantityBuffer { .. } => "quantity_buffer",
            ControlKind::PercentBuffer { .. } => "percent_buffer",
            ControlKind::Exclusion => "exclusion",
            ControlKind::RingFenceCap { .. } => "ring_fence_cap",
            ControlKind::Minimum { .. } => "minimum",
            ControlKind::AllocationShare { .. } => "allocation_share",
        }
    }
}

/// What a control applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Every SKU the channel sells.
    All,
    Sku(String),
    Location(String),
    SkuLocation {
        sku: String,
        location: String,
    },
}

impl Scope {
    /// Whether the scope shapes a location's line rather than a SKU's sum.
    fn is_location_scoped(&self) -> bool {
        matches!(self, Scope::Location(_) | Scope::SkuLocation { .. })
    }

    /// Whether the scope covers `sku` (at `location`, for a line).
    fn covers(&self, sku: &str, location: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Sku(own) => own == sku,
            Scope::Location(own) => location == Some(own.as_str()),
            Scope::SkuLocation {
                sku: own_sku,
                location: own_location,
            } => own_sku == sku && location == Some(own_location.as_str()),
        }
    }

    /// Rank among controls of one priority: the more specific first.
    fn specificity(&self) -> u8 {
        match self {
            Scope::SkuLocation { .. } => 0,
            Scope::Sku(_) => 1,
            Scope::Location(_) => 2,
            Scope::All => 3,
        }
    }
}

/// One control of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub id: String,
    pub kind: ControlKind,
    pub scope: Scope,
    /// 1 applies first.
    pub priority: u32,
}

impl Control {
    fn order(&self, other: &Control) -> Ordering {
        (self.priority, self.scope.specificity(), self.id.as_str()).cmp(&(
            other.priority,
            other.scope.specificity(),
            other.id.as_str(),
        ))
    }

    fn validate(&self) -> Result<(), Refusal> {
        validate_token("controls.id", &self.id)?;
        if self.priority == 0 || self.priority > MAX_PRIORITY {
            return Err(Refusal::invalid(
                "controls.priority",
                format!("{}: from 1 (first) to {MAX_PRIORITY}", self.id),
            ));
        }
        match &self.scope {
            Scope::All => {}
            Scope::Sku(sku) => validate_token("controls.scope.sku", sku)?,
            Scope::Location(location) => validate_token("controls.scope.location", location)?,
            Scope::SkuLocation { sku, location } => {
                validate_token("controls.scope.sku", sku)?;
                validate_token("controls.scope.location", location)?;
            }
        }
        let units_in_range = |units: i64| (0..=MAX_QUANTITY).contains(&units);
        let valid = match self.kind {
            ControlKind::QuantityBuffer { units }
            | ControlKind::RingFenceCap { units }
            | ControlKind::Minimum { units } => units_in_range(units),
            ControlKind::PercentBuffer { basis_points } => basis_points <= WHOLE,
            ControlKind::AllocationShare { basis_points } => (1..=WHOLE).contains(&basis_points),
            ControlKind::Exclusion => true,
        };
        if valid {
            Ok(())
        } else {
            Err(Refusal::invalid(
                "controls.value",
                format!(
                    "{}: units from 0 to {MAX_QUANTITY}; basis points up to {WHOLE} (a share at least 1)",
                    self.id
                ),
            ))
        }
    }
}

/// Checks a channel's controls on their own.
pub fn validate_controls(controls: &[Control]) -> Result<(), Refusal> {
    if controls.len() > MAX_CONTROLS {
        return Err(Refusal::invalid(
            "controls",
            format!("{} controls; at most {MAX_CONTROLS}", controls.len()),
        ));
    }
    let mut ids = BTreeSet::new();
    for control in controls {
        control.validate()?;
        if !ids.insert(control.id.as_str()) {
            return Err(Refusal::invalid(
                "controls.id",
                format!("{:?} is used twice", control.id),
            ));
        }
    }
    Ok(())
}

/// Checks that the channels sharing a pool (same tenant, network and
/// publication) never take more than all of it: the largest share each
/// holds, summed, is at most 100 %. Conservative on purpose: whatever SKU
/// and location a share ends up applying to, the sum holds.
pub fn validate_shares(channels: &[Channel]) -> Result<(), Refusal> {
    // Per pool: the largest shares summed, and the channels holding them.
    let mut pools: BTreeMap<Pool<'_>, (u32, Vec<&str>)> = BTreeMap::new();
    for channel in channels {
        let largest = channel
            .controls
            .iter()
            .filter_map(|control| match control.kind {
                ControlKind::AllocationShare { basis_points } => Some(basis_points),
                _ => None,
            })
            .max();
        let Some(largest) = largest else { continue };
        let pool = pools.entry(pool_of(channel)).or_default();
        pool.0 = pool.0.saturating_add(largest);
        pool.1.push(channel.id.as_str());
    }
    for (sum, members) in pools.values() {
        if *sum > WHOLE {
            return Err(Refusal::invalid(
                "controls",
                format!(
                    "the allocation shares of channels {} sharing one pool add up to {}.{:02} %; at most 100 %",
                    members.join(", "),
                    sum / 100,
                    sum % 100
                ),
            ));
        }
    }
    Ok(())
}

/// The pool a channel's shares divide: its tenant, network (as a set) and
/// whether it publishes per SKU.
type Pool<'a> = (&'a str, BTreeSet<&'a str>, bool);

/// The pool `channel`'s shares divide.
fn pool_of(channel: &Channel) -> Pool<'_> {
    (
        channel.tenant.as_str(),
        channel.network.iter().map(String::as_str).collect(),
        channel.publication == Publication::PerSku,
    )
}

/// One location's part of a SKU's availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub location: String,
    /// The location's available quantity (0 when negative or unknown).
    pub network_available: i64,
    /// After the controls of the line's level.
    pub value: i64,
}

/// A channel's available-to-sell for one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub sku: String,
    /// The network's available quantity, summed.
    pub network_available: i64,
    /// What the channel may sell of the SKU: for a per-SKU channel the
    /// published figure, for a per-location one the sum of its lines.
    pub total: i64,
    /// Per location of the network, in network order.
    pub lines: Vec<Line>,
}

impl Availability {
    /// The values a channel of `publication` is shown: `(location, value)`
    /// per line, or one `(None, total)`.
    pub fn published(&self, publication: Publication) -> Vec<(Option<&str>, i64)> {
        match publication {
            Publication::PerLocation => self
                .lines
                .iter()
                .map(|line| (Some(line.location.as_str()), line.value))
                .collect(),
            Publication::PerSku => vec![(None, self.total)],
        }
    }
}

/// `channel`'s available-to-sell for `sku`, from each location's available
/// quantity (`stock`; a location it does not name has none). `peers` are
/// the tenant's other channels, for allocation remainders; the channel
/// itself may be among them.
pub fn available_to_sell(
    channel: &Channel,
    peers: &[Channel],
    sku: &str,
    stock: &BTreeMap<String, i64>,
) -> Availability {
    let per_location = channel.publication == Publication::PerLocation;
    let mut lines = Vec::with_capacity(channel.network.len());
    for location in &channel.network {
        let network_available = stock
            .get(location)
            .copied()
            .unwrap_or(0)
            .clamp(0, MAX_QUANTITY);
        let level = Level::Line {
            location,
            every_scope: per_location,
        };
        let value = shape(channel, peers, sku, level, network_available);
        lines.push(Line {
            location: location.clone(),
            network_available,
            value,
        });
    }
    let network_available = lines.iter().map(|line| line.network_available).sum();
    let sum = lines.iter().map(|line| line.value).sum();
    let total = if per_location {
        sum
    } else {
        shape(channel, peers, sku, Level::Sum, sum)
    };
    Availability {
        sku: sku.to_owned(),
        network_available,
        total,
        lines,
    }
}

/// Where a control set applies.
#[derive(Clone, Copy)]
enum Level<'a> {
    /// One location's line; `every_scope` when the line is published as
    /// it is (a per-location channel), so SKU-scoped controls shape it too.
    Line {
        location: &'a str,
        every_scope: bool,
    },
    /// The lines' sum of a per-SKU channel.
    Sum,
}

impl Level<'_> {
    fn location(&self) -> Option<&str> {
        match self {
            Level::Line { location, .. } => Some(location),
            Level::Sum => None,
        }
    }

    fn takes(&self, scope: &Scope) -> bool {
        match self {
            Level::Line { every_scope, .. } => *every_scope || scope.is_location_scoped(),
            Level::Sum => !scope.is_location_scoped(),
        }
    }
}

/// The controls of `channel` that apply to `sku` at `level`, in order.
fn selected<'c>(channel: &'c Channel, sku: &str, level: Level<'_>) -> Vec<&'c Control> {
    let mut matching: Vec<&Control> = channel
        .controls
        .iter()
        .filter(|control| {
            level.takes(&control.scope) && control.scope.covers(sku, level.location())
        })
        .collect();
    matching.sort_by(|a, b| a.order(b));
    if !channel.stacking {
        matching.truncate(1);
    }
    matching
}

/// `value` after the controls of `channel` at `level`.
fn shape(channel: &Channel, peers: &[Channel], sku: &str, level: Level<'_>, value: i64) -> i64 {
    let mut value = value;
    for control in selected(channel, sku, level) {
        value = match control.kind {
            ControlKind::QuantityBuffer { units } => value.saturating_sub(units).max(0),
            ControlKind::PercentBuffer { basis_points } => value - ceil_share(value, basis_points),
            ControlKind::Exclusion => 0,
            ControlKind::RingFenceCap { units } => value.min(units),
            ControlKind::Minimum { units } => {
                if value < units {
                    0
                } else {
                    value
                }
            }
            ControlKind::AllocationShare { basis_points } => {
                floor_share(value, basis_points) + remainder_for(channel, peers, sku, level, value)
            }
        };
    }
    value
}

/// What rounding the shares of a pool left over, if `channel` is the one
/// that takes it: the first by priority (then id) among the channels
/// sharing the pool whose controls at `level` hold a share.
fn remainder_for(
    channel: &Channel,
    peers: &[Channel],
    sku: &str,
    level: Level<'_>,
    pool: i64,
) -> i64 {
    let pool_key = pool_of(channel);
    let mut sharers: Vec<(&Channel, u32)> = vec![];
    let mut seen_self = false;
    for candidate in std::iter::once(channel).chain(peers.iter()) {
        if candidate.id == channel.id && candidate.tenant == channel.tenant {
            if seen_self {
                continue;
            }
            seen_self = true;
        } else if pool_of(candidate) != pool_key {
            continue;
        }
        let share = selected(candidate, sku, level)
            .iter()
            .find_map(|control| match control.kind {
                ControlKind::AllocationShare { basis_points } => Some(basis_points),
                _ => None,
            });
        if let Some(share) = share {
            sharers.push((candidate, share));
        }
    }
    let first = sharers
        .iter()
        .min_by(|(a, _), (b, _)| (a.priority, a.id.as_str()).cmp(&(b.priority, b.id.as_str())));
    match first {
        Some((first, _)) if first.id == channel.id => {
            let total_share = sharers
                .iter()
                .fold(0u32, |sum, (_, share)| sum.saturating_add(*share))
                .min(WHOLE);
            let shared = floor_share(pool, total_share);
            let handed_out: i64 = sharers
                .iter()
                .map(|(_, share)| floor_share(pool, *share))
                .sum();
            (shared - handed_out).max(0)
        }
        _ => 0,
    }
}

/// `floor(value × basis_points / 100 %)`, for a value of at most
/// [`MAX_QUANTITY`] times the network size (no overflow in i128).
fn floor_share(value: i64, basis_points: u32) -> i64 {
    let product = i128::from(value.max(0)) * i128::from(basis_points.min(WHOLE));
    i64::try_from(product / i128::from(WHOLE)).unwrap_or(i64::MAX)
}

/// `ceil(value × basis_points / 100 %)`: a buffer holds back at least its
/// share.
fn ceil_share(value: i64, basis_points: u32) -> i64 {
    let product = i128::from(value.max(0)) * i128::from(basis_points.min(WHOLE));
    let whole = i128::from(WHOLE);
    i64::try_from((product + whole - 1) / whole).unwrap_or(i64::MAX)
}
