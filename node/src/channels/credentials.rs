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
//!
//! A tenant's channels read only the tenant's own secrets
//! ([`CredentialPolicy`]): a file under `<channel_credentials_dir>/<tenant>/`
//! (after symlinks are resolved, so a Kubernetes secret mounted there
//! works), or an environment variable `SKULD_CHANNEL_<TENANT>_...`.
//! Without this, an admin of one tenant could name another tenant's
//! credentials file and send its token to a base URL of their choosing.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use skuld_actors::channel::{Channel, ChannelKind};
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, Credentials};

/// The account setting that holds the channel API's base URL.
pub const BASE_URL_SETTING: &str = "base_url";
/// The most a credentials file may hold.
const MAX_CREDENTIALS_BYTES: u64 = 64 * 1024;

/// Which secrets a tenant's channels may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialPolicy {
    /// Holds one directory per tenant; empty: no file references.
    pub dir: PathBuf,
}

impl CredentialPolicy {
    /// The environment variable prefix of `tenant`'s secrets: its name
    /// upper-cased, every other character than a letter or a digit `_`.
    pub fn env_prefix(tenant: &str) -> String {
        let name: String = tenant
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("SKULD_CHANNEL_{name}_")
    }

    /// The directory of `tenant`'s files, if the tenant's name can be one
    /// path component.
    fn tenant_dir(&self, tenant: &str) -> Result<PathBuf, String> {
        if self.dir.as_os_str().is_empty() {
            return Err(
                "file credentials need the node's [channels] channel_credentials_dir".into(),
            );
        }
        let one_component = !tenant.is_empty()
            && tenant != "."
            && tenant != ".."
            && !tenant.contains(['/', '\\', '\0']);
        if !one_component {
            return Err("this tenant's name cannot be a directory: use env: credentials".into());
        }
        Ok(self.dir.join(tenant))
    }

    /// Whether `tenant`'s channels may read what `reference` names (before
    /// it is read: a file must also resolve inside the tenant's directory).
    pub fn admits(&self, tenant: &str, reference: &str) -> Result<(), String> {
        if let Some(path) = reference.strip_prefix("file:") {
            let own = self.tenant_dir(tenant)?;
            let path = Path::new(path);
            let inside = path.starts_with(&own)
                && !path
                    .components()
                    .any(|part| matches!(part, Component::ParentDir | Component::CurDir));
            if !inside {
                return Err(format!(
                    "{reference} is not in this tenant's credentials directory {}",
                    own.display()
                ));
            }
        } else if let Some(name) = reference.strip_prefix("env:") {
            let prefix = Self::env_prefix(tenant);
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                return Err(format!(
                    "{reference}: this tenant's variables are named {prefix}..."
                ));
            }
        }
        Ok(())
    }
}

/// Why a channel's connector could not be built (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {channel}: {reason}")]
pub struct LinkError {
    pub channel: String,
    pub reason: String,
}

/// The connector of `channel`, or why there is none.
pub fn connector_for(
    channel: &Channel,
    policy: &CredentialPolicy,
) -> Result<Box<dyn Connector>, LinkError> {
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
    config.credentials =
        read_credentials(policy, &channel.tenant, &channel.credentials_ref).map_err(failed)?;
    skuld_connectors::connect(config).map_err(|error| failed(error.to_string()))
}

/// The credentials `reference` names for `tenant`; empty for an empty
/// reference.
pub fn read_credentials(
    policy: &CredentialPolicy,
    tenant: &str,
    reference: &str,
) -> Result<Credentials, String> {
    policy.admits(tenant, reference)?;
    let raw = if reference.is_empty() {
        return Ok(Credentials::new());
    } else if let Some(path) = reference.strip_prefix("file:") {
        // Where it really is: a symlink out of the tenant's directory is
        // refused as a path outside it is.
        let own = policy
            .tenant_dir(tenant)?
            .canonicalize()
            .map_err(|error| format!("this tenant's credentials directory: {}", error.kind()))?;
        let real = Path::new(path)
            .canonicalize()
            .map_err(|error| format!("cannot read {reference}: {}", error.kind()))?;
        if !real.starts_with(&own) {
            return Err(format!(
                "{reference} leads out of this tenant's credentials directory"
            ));
        }
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
        let policy = CredentialPolicy {
            dir: dir.path().to_owned(),
        };
        std::fs::create_dir(dir.path().join("acme")).unwrap();
        let good = dir.path().join("acme/shop.json");
        std::fs::write(&good, r#"{"access_token":"shpat_secret"}"#).unwrap();
        let credentials =
            read_credentials(&policy, "acme", &format!("file:{}", good.display())).unwrap();
        assert_eq!(
            credentials
                .get("access_token")
                .map(|secret| secret.expose()),
            Some("shpat_secret")
        );
        assert!(!format!("{credentials:?}").contains("shpat_secret"));

        let bad = dir.path().join("acme/bad.json");
        std::fs::write(&bad, "shpat_secret_pasted_raw").unwrap();
        let error =
            read_credentials(&policy, "acme", &format!("file:{}", bad.display())).unwrap_err();
        assert!(!error.contains("shpat"), "{error}");
        let missing = dir.path().join("acme/missing.json");
        let error =
            read_credentials(&policy, "acme", &format!("file:{}", missing.display())).unwrap_err();
        assert!(error.contains("missing.json"), "{error}");
        let unset =
            read_credentials(&policy, "acme", "env:SKULD_CHANNEL_ACME_SURELY_UNSET").unwrap_err();
        assert!(unset.contains("not set"), "{unset}");
        assert!(read_credentials(&policy, "acme", "")
            .unwrap()
            .get("access_token")
            .is_none());
    }

    #[test]
    fn a_tenant_reads_only_its_own_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CredentialPolicy {
            dir: dir.path().to_owned(),
        };
        for tenant in ["acme", "globex"] {
            std::fs::create_dir(dir.path().join(tenant)).unwrap();
            std::fs::write(
                dir.path().join(tenant).join("shop.json"),
                r#"{"access_token":"t"}"#,
            )
            .unwrap();
        }
        let globex = format!("file:{}", dir.path().join("globex/shop.json").display());
        assert!(read_credentials(&policy, "acme", &globex).is_err());
        assert!(read_credentials(&policy, "globex", &globex).is_ok());
        let around = format!(
            "file:{}",
            dir.path().join("acme/../globex/shop.json").display()
        );
        assert!(read_credentials(&policy, "acme", &around).is_err());
        // A symlink in acme's directory to globex's file leads out of it.
        #[cfg(unix)]
        {
            let link = dir.path().join("acme/link.json");
            std::os::unix::fs::symlink(dir.path().join("globex/shop.json"), &link).unwrap();
            let error =
                read_credentials(&policy, "acme", &format!("file:{}", link.display())).unwrap_err();
            assert!(error.contains("leads out"), "{error}");
        }
        assert!(read_credentials(&policy, "acme", "env:SKULD_CHANNEL_GLOBEX_SHOP").is_err());
        assert!(read_credentials(&policy, "acme", "env:SKULD_POSTGRES_URL").is_err());
        assert!(policy.admits("acme", "env:SKULD_CHANNEL_ACME_SHOP").is_ok());
        assert_eq!(
            CredentialPolicy::env_prefix("eu-west.shop"),
            "SKULD_CHANNEL_EU_WEST_SHOP_"
        );
        // No directory configured: no file references at all.
        let none = CredentialPolicy::default();
        assert!(none.admits("acme", &globex).is_err());
        assert!(policy.admits("../etc", "file:/etc/passwd").is_err());
    }
}
