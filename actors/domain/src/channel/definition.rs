//! A channel's definition: who sells, from which locations, how the
//! channel takes quantities, and where its credentials are (by reference:
//! a definition never holds a secret).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::controls::{self, Control};
use crate::key::{validate_tenant, validate_token};
use crate::Refusal;

/// Locations one channel's network holds at most.
pub const MAX_NETWORK_LOCATIONS: usize = 1_000;
/// Account settings one channel holds at most.
pub const MAX_ACCOUNT_SETTINGS: usize = 32;
/// Longest account setting value (a shop domain, a seller id, a base URL).
pub const MAX_SETTING_BYTES: usize = 512;
/// Shortest interval between two pushes of one key a definition may ask
/// for: below it a channel's budget is spent on one hot SKU.
pub const MIN_PUSH_INTERVAL_MS: u64 = 100;
/// Default interval between two increases pushed for one key.
pub const DEFAULT_PUSH_INTERVAL_MS: u64 = 1_000;
/// Default interval after which an unchanged value is asserted again.
pub const DEFAULT_REASSERT_INTERVAL_MS: u64 = 6 * 60 * 60 * 1_000;

/// The channel a connector speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChannelKind {
    Shopify,
    Amazon,
    Walmart,
    AdobeCommerce,
    /// skuld's own signed webhook of the availability stream.
    Webhook,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::Shopify,
        ChannelKind::Amazon,
        ChannelKind::Walmart,
        ChannelKind::AdobeCommerce,
        ChannelKind::Webhook,
    ];

    /// The name in the API, the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::Shopify => "shopify",
            ChannelKind::Amazon => "amazon",
            ChannelKind::Walmart => "walmart",
            ChannelKind::AdobeCommerce => "adobe_commerce",
            ChannelKind::Webhook => "webhook",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// How the channel takes quantities unless the definition says
    /// otherwise: Shopify inventory levels and Adobe source items are per
    /// location; an Amazon listing's `fulfillment_availability` and a
    /// Walmart item on its default ship node are one figure per SKU.
    pub fn default_publication(self) -> Publication {
        match self {
            ChannelKind::Shopify | ChannelKind::AdobeCommerce | ChannelKind::Webhook => {
                Publication::PerLocation
            }
            ChannelKind::Amazon | ChannelKind::Walmart => Publication::PerSku,
        }
    }
}

/// What one pushed value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Publication {
    /// One value per (SKU, location of the network).
    PerLocation,
    /// One value per SKU: the network's quantity summed.
    PerSku,
}

/// A sales channel of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    pub tenant: String,
    pub kind: ChannelKind,
    /// The locations whose stock the channel sells, in skuld's ids.
    pub network: Vec<String>,
    pub publication: Publication,
    /// Among the tenant's channels, allocation remainders go to the lowest
    /// number (see [`controls`]).
    pub priority: u32,
    pub controls: Vec<Control>,
    /// Whether every matching control applies in priority order (`true`)
    /// or only the first (`false`, the default: controls do not stack).
    pub stacking: bool,
    /// At most one increase per pushed key per this interval; decreases
    /// and zero crossings go at once.
    pub min_push_interval_ms: u64,
    /// An unchanged value is asserted again after this long (last in line).
    pub reassert_interval_ms: u64,
    /// Non-secret account settings: shop domain, seller id, marketplace,
    /// ship node, store code, the channel's base URL.
    pub account: BTreeMap<String, String>,
    /// Where the credentials are: `file:<path>` or `env:<NAME>`. Never the
    /// secret itself.
    pub credentials_ref: String,
}

impl Channel {
    /// Checks everything that can be checked on the channel alone; shares
    /// across channels are [`controls::validate_shares`].
    pub fn validate(&self) -> Result<(), Refusal> {
        validate_token("id", &self.id)?;
        validate_tenant("tenant", &self.tenant)?;
        if self.kind == ChannelKind::Webhook && self.publication != Publication::PerLocation {
            // The availability stream is per location; a webhook receiver
            // sums what it needs.
            return Err(Refusal::invalid(
                "publication",
                "a webhook channel publishes per location",
            ));
        }
        if self.network.is_empty() {
            return Err(Refusal::invalid(
                "network",
                "names at least one location the channel sells from",
            ));
        }
        if self.network.len() > MAX_NETWORK_LOCATIONS {
            return Err(Refusal::invalid(
                "network",
                format!(
                    "has {} locations; at most {MAX_NETWORK_LOCATIONS} allowed",
                    self.network.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for location in &self.network {
            validate_token("network", location)?;
            if !seen.insert(location.as_str()) {
                return Err(Refusal::invalid(
                    "network",
                    format!("names {location:?} twice"),
                ));
            }
        }
        controls::validate_controls(&self.controls)?;
        if self.min_push_interval_ms < MIN_PUSH_INTERVAL_MS {
            return Err(Refusal::invalid(
                "min_push_interval_ms",
                format!(
                    "is {}; at least {MIN_PUSH_INTERVAL_MS}",
                    self.min_push_interval_ms
                ),
            ));
        }
        if self.reassert_interval_ms < self.min_push_interval_ms {
            return Err(Refusal::invalid(
                "reassert_interval_ms",
                "must not be shorter than min_push_interval_ms",
            ));
        }
        if self.account.len() > MAX_ACCOUNT_SETTINGS {
            return Err(Refusal::invalid(
                "account",
                format!(
                    "has {} settings; at most {MAX_ACCOUNT_SETTINGS}",
                    self.account.len()
                ),
            ));
        }
        for (name, value) in &self.account {
            validate_token("account", name)?;
            if value.len() > MAX_SETTING_BYTES || value.chars().any(char::is_control) {
                return Err(Refusal::invalid(
                    "account",
                    format!("{name}: at most {MAX_SETTING_BYTES} bytes, no control characters"),
                ));
            }
        }
        validate_credentials_ref(&self.credentials_ref)
    }

    /// Whether `location` is in the channel's network.
    pub fn sells_from(&self, location: &str) -> bool {
        self.network.iter().any(|own| own == location)
    }
}

/// A reference to a secret: `file:<absolute path>` or `env:<NAME>`, or
/// empty for a channel that needs none (a local webhook).
pub fn validate_credentials_ref(reference: &str) -> Result<(), Refusal> {
    if reference.is_empty() {
        return Ok(());
    }
    let valid = if let Some(path) = reference.strip_prefix("file:") {
        path.starts_with('/')
            && path.len() <= MAX_SETTING_BYTES
            && !path.chars().any(char::is_control)
    } else if let Some(name) = reference.strip_prefix("env:") {
        !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    } else {
        false
    };
    if valid {
        Ok(())
    } else {
        // The value is not echoed: a caller who pasted a secret here must
        // not see it in an error message or a log.
        Err(Refusal::invalid(
            "credentials_ref",
            "must be file:<absolute path> or env:<NAME> (a reference, never the secret itself)",
        ))
    }
}
