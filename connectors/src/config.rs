//! A connector's configuration: which channel, where, the account settings
//! (mappings, plan figures, pacing) and the credentials, which never print.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::outcome::ConnectorError;

/// The channel kinds skuld has an adapter for (CHANNELS.md A-D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectorKind {
    Shopify,
    Amazon,
    Walmart,
    AdobeCommerce,
}

impl ConnectorKind {
    pub fn name(self) -> &'static str {
        match self {
            ConnectorKind::Shopify => "shopify",
            ConnectorKind::Amazon => "amazon",
            ConnectorKind::Walmart => "walmart",
            ConnectorKind::AdobeCommerce => "adobe_commerce",
        }
    }
}

impl FromStr for ConnectorKind {
    type Err = ConnectorError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "shopify" => Ok(ConnectorKind::Shopify),
            "amazon" => Ok(ConnectorKind::Amazon),
            "walmart" => Ok(ConnectorKind::Walmart),
            "adobe_commerce" | "adobe" | "magento" => Ok(ConnectorKind::AdobeCommerce),
            other => Err(ConnectorError::Config(format!(
                "unknown channel kind {other:?}"
            ))),
        }
    }
}

/// A secret value: its `Debug` and `Display` say only that it is there, so a
/// config, an error or a log line that includes it never carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it (a header, a token form).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

/// The account's credentials by name (each adapter names the ones it reads
/// in its module doc). `Debug` lists the names, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    values: BTreeMap<String, Secret>,
}

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.values.insert(name.into(), value.into());
        self
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Secret>) {
        self.values.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.values.get(name)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.keys().map(|name| (name, "<redacted>")))
            .finish()
    }
}

/// Everything a connector is built from.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// skuld's channel id: part of every idempotency key.
    pub channel_id: String,
    pub kind: ConnectorKind,
    /// Scheme, host and port of the channel's API (an emulator's loopback
    /// address in tests). Paths are the adapter's.
    pub base_url: String,
    /// The channel's account settings (the channel definition's map).
    pub settings: BTreeMap<String, String>,
    pub credentials: Credentials,
}

impl ConnectorConfig {
    pub fn new(
        channel_id: impl Into<String>,
        kind: ConnectorKind,
        base_url: impl Into<String>,
    ) -> Self {
        ConnectorConfig {
            channel_id: channel_id.into(),
            kind,
            base_url: base_url.into(),
            settings: BTreeMap::new(),
            credentials: Credentials::new(),
        }
    }

    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    pub fn credential(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.credentials.insert(name, value);
        self
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    pub(crate) fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// A parsed setting, its default when absent, an error when unparsable
    /// (a typo in a plan figure must not silently become the default).
    pub(crate) fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConnectorError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| {
                ConnectorError::Config(format!("setting {key}: cannot parse {raw:?}"))
            }),
        }
    }

    pub(crate) fn millis_or(&self, key: &str, default_ms: u64) -> Result<Duration, ConnectorError> {
        self.parse_or(key, default_ms).map(Duration::from_millis)
    }

    pub(crate) fn secret(&self, name: &str) -> Result<&Secret, ConnectorError> {
        self.credentials.get(name).ok_or_else(|| {
            ConnectorError::Config(format!(
                "{} connector: credential {name:?} missing",
                self.kind.name()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = ConnectorConfig::new("shop-1", ConnectorKind::Shopify, "http://127.0.0.1:1")
            .credential("access_token", "shpat_very_secret");
        let printed = format!(
            "{config:?} {:?} {}",
            config.credentials.get("access_token"),
            Secret::new("x1y2")
        );
        assert!(!printed.contains("shpat_very_secret"), "{printed}");
        assert!(!printed.contains("x1y2"), "{printed}");
        assert!(printed.contains("access_token"), "{printed}");
        assert_eq!(
            config.secret("access_token").map(Secret::expose),
            Ok("shpat_very_secret")
        );
        assert!(config.secret("nope").is_err());
    }

    #[test]
    fn settings_parse_or_refuse() {
        let config = ConnectorConfig::new("c", ConnectorKind::Amazon, "http://x")
            .setting("rate", "2.5")
            .setting("bad", "fast");
        assert_eq!(config.parse_or("rate", 5.0), Ok(2.5));
        assert_eq!(config.parse_or("absent", 5.0), Ok(5.0));
        assert!(config.parse_or("bad", 5.0).is_err());
        assert_eq!("adobe_commerce".parse(), Ok(ConnectorKind::AdobeCommerce));
        assert!("ebay".parse::<ConnectorKind>().is_err());
    }
}
