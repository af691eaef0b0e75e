//! A channel's connector, built from its definition: the base URL and the
//! mapping from its account settings, the secrets from what its
//! `credentials_ref` names.
//!
//! The reference (`file:<path>` or `env:<NAME>`) names a JSON object of
//! credential names to values, for example `{"access_token": "shpat_..."}`
//! for Shopify; each connector's module says which names it reads. The
//! secret is read when the connector is built (on each change of the
//! definition, and again after a failure), never stored in skuld and never
//! logged: errors name the reference and what is wrong, not the content.

use std::collections::BTreeMap;

use skuld_actors::channel::{Channel, ChannelKind};
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, Credentials};

/// The account setting that holds the channel API's base URL.
pub const BASE_URL_SETTING: &str = "base_url";
/// The most a credentials file may hold.
const MAX_CREDENTIALS_BYTES: u64 = 64 * 1024;

/// Why a channel's connector could not be built (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {channel}: {reason}")]
pub struct LinkError {
    pub channel: String,
    pub reason: String,
}

/// The connector of `channel`, or why there is none.
pub fn connector_for(channel: &Channel) -> Result<Box<dyn Connector>, LinkError> {
    let failed = |reason: String| LinkError {
        channel: channel.id.clone(),
        reason,
    };
    let kind = match channel.kind {
        ChannelKind::Shopify => ConnectorKind::Shopify,
        ChannelKind::Amazon => ConnectorKind::Amazon,
        ChannelKind::Walmart => ConnectorKind::Walmart,
        ChannelKind::AdobeCommerce => ConnectorKind::AdobeCommerce,
        ChannelKind::Webhook => {
            return Err(failed(
                "a webhook channel is delivered by the webhook sink, not pushed".into(),
            ))
        }
    };
    let base_url = channel
        .account
        .get(BASE_URL_SETTING)
        .cloned()
        .ok_or_else(|| {
            failed(format!(
                "the account setting {BASE_URL_SETTING:?} is missing"
            ))
        })?;
    let mut config = ConnectorConfig::new(&channel.id, kind, base_url);
    config.settings = channel.account.clone();
    config.credentials = read_credentials(&channel.credentials_ref).map_err(failed)?;
    skuld_connectors::connect(config).map_err(|error| failed(error.to_string()))
}

/// The credentials `reference` names; empty for an empty reference.
pub fn read_credentials(reference: &str) -> Result<Credentials, String> {
    let raw = if reference.is_empty() {
        return Ok(Credentials::new());
    } else if let Some(path) = reference.strip_prefix("file:") {
        let size = std::fs::metadata(path)
            .map_err(|error| format!("cannot read {reference}: {}", error.kind()))?
            .len();
        if size > MAX_CREDENTIALS_BYTES {
            return Err(format!(
                "{reference} holds {size} bytes; at most {MAX_CREDENTIALS_BYTES}"
            ));
        }
        std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {reference}: {}", error.kind()))?
    } else if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("{reference} is not set"))?
    } else {
        return Err("credentials_ref is neither file: nor env:".into());
    };
    // The content is never quoted: serde's message could hold part of it.
    let values: BTreeMap<String, String> = serde_json::from_str(&raw).map_err(|error| {
        format!(
            "{reference} is not a JSON object of names to strings ({:?} error at line {}, column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })?;
    let mut credentials = Credentials::new();
    for (name, value) in values {
        credentials.insert(name, value);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_credentials_file_is_read_and_its_content_never_shows_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("shop.json");
        std::fs::write(&good, r#"{"access_token":"shpat_secret"}"#).unwrap();
        let credentials = read_credentials(&format!("file:{}", good.display())).unwrap();
        assert_eq!(
            credentials
                .get("access_token")
                .map(|secret| secret.expose()),
            Some("shpat_secret")
        );
        assert!(!format!("{credentials:?}").contains("shpat_secret"));

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "shpat_secret_pasted_raw").unwrap();
        let error = read_credentials(&format!("file:{}", bad.display())).unwrap_err();
        assert!(!error.contains("shpat"), "{error}");
        let missing = read_credentials("file:/nonexistent/skuld/creds.json").unwrap_err();
        assert!(
            missing.contains("/nonexistent/skuld/creds.json"),
            "{missing}"
        );
        let unset = read_credentials("env:SKULD_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(unset.contains("not set"), "{unset}");
        assert!(read_credentials("").unwrap().get("access_token").is_none());
    }
}
