//! Node configuration, layered: built-in defaults, then a TOML file
//! (`--config`), then `SKULD_*` environment variables, then flags. The file
//! has one section per part of the node (`[server]`, `[runtime]`,
//! `[events]`, `[writer]`, `[cluster]`, `[postgres]`, `[telemetry]`,
//! `[returns]`); every option is declared once in [`options`], with the doc
//! comment that `--help`, `skuld config` and the README show. `skuld
//! config` prints the effective result, secrets redacted.

mod erp;
mod options;
mod secret;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skuld_cluster::tls::TlsFiles;

pub use erp::Erp;
pub use options::{
    described, markdown_table, Auth, Channels, Cluster, Events, OptionDoc, Postgres, Runtime,
    ServeArgs, Server, Telemetry, Writer,
};
pub use secret::SecretUrl;

/// Every server option, by section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub runtime: Runtime,
    pub events: Events,
    pub channels: Channels,
    pub writer: Writer,
    pub cluster: Cluster,
    pub postgres: Postgres,
    pub telemetry: Telemetry,
    pub auth: Auth,
    pub returns: Returns,
    /// The ERP that posts credit memos for the `ERP_VALIDATION` refund
    /// gate (file only, see [`Erp`]).
    pub erp: Erp,
    /// Client certificate identities (file only): `[identities."svc-oms"]`
    /// with `tenants` and `roles`, keyed by a DNS name (or the common name)
    /// of the certificate a service presents on the client API.
    pub identities: BTreeMap<String, Identity>,
}

/// What a service that authenticates with a client certificate may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// Tenants it acts for; `"*"` is every tenant.
    pub tenants: Vec<String>,
    /// `reader`, `writer` (implies reader) and `admin`.
    pub roles: Vec<String>,
}

/// Return policies (file only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Returns {
    /// By scope: `[returns.policies.default]`, `[returns.policies.<tenant>]`,
    /// `[returns.policies."<tenant>/<channel>"]`. The most specific applies;
    /// a case keeps the policy it opened with.
    pub policies: BTreeMap<String, skuld_actors::returns::ReturnPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid")]
    Parse {
        path: std::path::PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file, then environment and flags; then validation.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.overlay(args);
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Each section's checks, then those across sections.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.runtime.validate()?;
        self.events.validate()?;
        self.channels.validate()?;
        self.writer.validate()?;
        self.cluster.validate()?;
        self.postgres.validate()?;
        self.telemetry.validate()?;
        self.auth.validate()?;
        self.validate_identities()?;
        self.erp.validate()?;
        if self.is_clustered() {
            self.cluster.validate_peer_tls()?;
        }
        if self.is_clustered()
            && self.postgres.postgres_url.is_empty()
            && self.postgres.postgres_url_file.as_os_str().is_empty()
        {
            return Err(ConfigError::Invalid(
                "cluster mode (etcd_endpoints set) needs postgres_url or postgres_url_file: shards move between nodes, so their data must live in the shared store".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, each option under its doc
    /// comment, secrets redacted (`skuld config`).
    pub fn to_commented_toml(&self) -> Result<String, toml::ser::Error> {
        let plain = toml::to_string_pretty(self)?;
        let docs: BTreeMap<(&str, &str), String> = described()
            .into_iter()
            .map(|option| ((option.section, option.name), option.doc))
            .collect();
        let mut section = String::new();
        let mut out = String::new();
        for line in plain.lines() {
            if let Some(name) = line
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
            {
                section = name.to_owned();
            } else if let Some((key, _)) = line.split_once(" = ") {
                if let Some(doc) = docs.get(&(section.as_str(), key.trim())) {
                    out.push_str(&format!("# {doc}\n"));
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }

    /// Cluster mode: etcd membership and the PostgreSQL store.
    pub fn is_clustered(&self) -> bool {
        !self.cluster.etcd_endpoints.is_empty()
    }

    /// The node id: configured, else the host name, else "skuld".
    pub fn effective_node_id(&self) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "skuld".into())
    }

    /// The runtime's options, its decisions stamped by `clock` (the node's
    /// environment's).
    pub fn runtime(&self, clock: skuld_cluster::WallClock) -> skuld_actors::runtime::RuntimeConfig {
        skuld_actors::runtime::RuntimeConfig {
            mailbox_capacity: self.runtime.mailbox_capacity,
            idle_timeout: Duration::from_secs(self.runtime.idle_timeout_secs),
            snapshot_every: self.runtime.snapshot_every,
            clock,
        }
    }

    pub fn admission(&self) -> skuld_actors::runtime::Admission {
        skuld_actors::runtime::Admission::new(
            self.runtime.max_in_flight,
            self.runtime.read_admission_percent,
            Duration::from_millis(self.runtime.retry_after_ms),
        )
    }

    pub fn shed(&self) -> crate::shed::ShedSettings {
        crate::shed::ShedSettings {
            max_in_flight: self.runtime.max_in_flight,
            target: Duration::from_millis(self.runtime.shed_target_ms),
            interval: Duration::from_millis(self.runtime.shed_interval_ms),
        }
    }

    pub fn positions(&self) -> skuld_actors::position::PositionEntity {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX);
        skuld_actors::position::PositionEntity {
            default_ttl_ms: ms(self.runtime.default_reservation_ttl_secs),
            max_ttl_ms: ms(self.runtime.max_reservation_ttl_secs),
            ..skuld_actors::position::PositionEntity::default()
        }
    }

    pub fn background(&self) -> skuld_actors::runtime::BackgroundTiming {
        skuld_actors::runtime::BackgroundTiming {
            timer_scan_interval: Duration::from_millis(self.runtime.timer_scan_interval_ms),
            idempotency_retention: Duration::from_secs(self.runtime.idempotency_retention_secs),
            event_retention: Duration::from_secs(self.events.event_retention_secs),
            purge_interval: Duration::from_secs(self.runtime.idempotency_purge_interval_secs),
        }
    }

    /// Fault injection for the end-to-end tests, deliberately not a
    /// documented option: `SKULD_FAILPOINT_<name>` as a number of
    /// milliseconds, read only by a build with the `failpoints` feature.
    pub fn failpoint_ms(name: &str) -> Option<Duration> {
        if !cfg!(feature = "failpoints") {
            return None;
        }
        std::env::var(format!("SKULD_FAILPOINT_{name}"))
            .ok()
            .and_then(|value| value.parse().ok())
            .map(Duration::from_millis)
    }

    pub fn writer(&self) -> skuld_cluster::WriterConfig {
        skuld_cluster::WriterConfig {
            queue_capacity: self.writer.writer_queue_capacity,
            max_batch_entities: self.writer.writer_max_batch,
            concurrent_commits: if self.is_clustered() {
                self.postgres.postgres_concurrent_commits
            } else {
                1
            },
            commit_delay: Self::failpoint_ms("COMMIT_DELAY_MS"),
        }
    }
}

/// Refuses a zero where the option must be positive.
fn positive(options: &[(&str, u64)]) -> Result<(), ConfigError> {
    match options.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(ConfigError::Invalid(format!(
            "{name} must be greater than 0"
        ))),
        None => Ok(()),
    }
}

impl Server {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("max_message_bytes", self.max_message_bytes as u64),
            ("tls_reload_interval_secs", self.tls_reload_interval_secs),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            (
                "max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
        ])?;
        let set = |path: &Path| !path.as_os_str().is_empty();
        if set(&self.tls_cert_file) != set(&self.tls_key_file) {
            return Err(ConfigError::Invalid(
                "tls_cert_file and tls_key_file go together: the client API's certificate needs its key".into(),
            ));
        }
        if set(&self.tls_client_ca_file) && !set(&self.tls_cert_file) {
            return Err(ConfigError::Invalid(
                "tls_client_ca_file needs tls_cert_file: client certificates are asked for in a TLS handshake".into(),
            ));
        }
        if self.tls_require_client_cert && !set(&self.tls_client_ca_file) {
            return Err(ConfigError::Invalid(
                "tls_require_client_cert needs tls_client_ca_file, the CA client certificates must chain to".into(),
            ));
        }
        Ok(())
    }
}

impl Channels {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("channel_poll_interval_ms", self.channel_poll_interval_ms),
            (
                "channel_reconcile_interval_secs",
                self.channel_reconcile_interval_secs,
            ),
            ("channel_confirm_after_ms", self.channel_confirm_after_ms),
            (
                "channel_confirm_within_secs",
                self.channel_confirm_within_secs,
            ),
            ("channel_push_deadline_ms", self.channel_push_deadline_ms),
        ])
    }

    pub fn credentials(&self) -> crate::channels::credentials::CredentialPolicy {
        crate::channels::credentials::CredentialPolicy {
            dir: self.channel_credentials_dir.clone(),
        }
    }

    pub fn worker(&self) -> crate::channels::worker::WorkerSettings {
        crate::channels::worker::WorkerSettings {
            poll_interval: Duration::from_millis(self.channel_poll_interval_ms),
            reconcile_interval: Duration::from_secs(self.channel_reconcile_interval_secs),
            confirm_after: Duration::from_millis(self.channel_confirm_after_ms),
            confirm_within: Duration::from_secs(self.channel_confirm_within_secs),
            push_deadline: Duration::from_millis(self.channel_push_deadline_ms),
        }
    }
}

impl Events {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("event_retention_secs", self.event_retention_secs),
            ("event_poll_interval_ms", self.event_poll_interval_ms),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("webhook_timeout_ms", self.webhook_timeout_ms),
            ("webhook_retry_base_ms", self.webhook_retry_base_ms),
            ("webhook_retry_cap_secs", self.webhook_retry_cap_secs),
            (
                "webhook_retry_horizon_secs",
                self.webhook_retry_horizon_secs,
            ),
        ])?;
        if !self
            .nats_stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::Invalid(
                "nats_stream must be letters, digits, '_' or '-'".into(),
            ));
        }
        Ok(())
    }

    pub fn webhooks(&self) -> crate::sinks::webhook::WebhookSettings {
        crate::sinks::webhook::WebhookSettings {
            request_timeout: Duration::from_millis(self.webhook_timeout_ms),
            retry_base: Duration::from_millis(self.webhook_retry_base_ms),
            retry_cap: Duration::from_secs(self.webhook_retry_cap_secs),
            retry_horizon: Duration::from_secs(self.webhook_retry_horizon_secs),
        }
    }

    pub fn nats(&self) -> Option<crate::sinks::nats::NatsSettings> {
        (!self.nats_url.is_empty()).then(|| crate::sinks::nats::NatsSettings {
            url: self.nats_url.expose().to_owned(),
            stream: self.nats_stream.clone(),
        })
    }
}

impl Runtime {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("mailbox_capacity", self.mailbox_capacity as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("snapshot_every", self.snapshot_every),
            (
                "default_reservation_ttl_secs",
                self.default_reservation_ttl_secs,
            ),
            ("max_reservation_ttl_secs", self.max_reservation_ttl_secs),
            ("timer_scan_interval_ms", self.timer_scan_interval_ms),
            ("shed_interval_ms", self.shed_interval_ms),
            ("census_interval_secs", self.census_interval_secs),
            (
                "idempotency_purge_interval_secs",
                self.idempotency_purge_interval_secs,
            ),
        ])?;
        if self.read_admission_percent == 0 || self.read_admission_percent > 100 {
            return Err(ConfigError::Invalid(
                "read_admission_percent must be 1 to 100".into(),
            ));
        }
        if self.default_reservation_ttl_secs > self.max_reservation_ttl_secs {
            return Err(ConfigError::Invalid(
                "default_reservation_ttl_secs must not exceed max_reservation_ttl_secs".into(),
            ));
        }
        Ok(())
    }
}

impl Writer {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("writer_queue_capacity", self.writer_queue_capacity as u64),
            ("writer_max_batch", self.writer_max_batch as u64),
        ])
    }
}

/// The checks of one client's TLS files, named by their options
/// (`<prefix>_ca_file`, `_cert_file`, `_key_file`): a certificate needs its
/// key and the reverse, and presenting one without checking the server
/// against a CA would be TLS that trusts any server.
fn check_client_tls(prefix: &str, files: &TlsFiles) -> Result<(), ConfigError> {
    if files.cert.as_os_str().is_empty() != files.key.as_os_str().is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{prefix}_cert_file and {prefix}_key_file go together: set both or neither"
        )));
    }
    if files.has_identity() && !files.has_ca() {
        return Err(ConfigError::Invalid(format!(
            "{prefix}_cert_file needs {prefix}_ca_file (the CA that signs the server's certificate)"
        )));
    }
    Ok(())
}

impl Cluster {
    /// The TLS files of the etcd client; no CA file: plaintext.
    pub fn etcd_tls(&self) -> TlsFiles {
        TlsFiles::new(
            &self.etcd_tls_cert_file,
            &self.etcd_tls_key_file,
            &self.etcd_tls_ca_file,
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let tls = self.etcd_tls();
        check_client_tls("etcd_tls", &tls)?;
        // The scheme says what etcd speaks; a mismatch would fail at the
        // first call, as a timeout.
        for endpoint in &self.etcd_endpoints {
            let https = endpoint.starts_with("https://");
            if https && !tls.has_ca() {
                return Err(ConfigError::Invalid(format!(
                    "etcd endpoint {endpoint} is https:// but etcd_tls_ca_file is not set"
                )));
            }
            if endpoint.starts_with("http://") && tls.has_ca() {
                return Err(ConfigError::Invalid(format!(
                    "etcd endpoint {endpoint} is http:// but etcd_tls_ca_file is set (use https://)"
                )));
            }
        }
        positive(&[
            ("shard_count", u64::from(self.shard_count)),
            ("lease_ttl_secs", self.lease_ttl_secs),
            ("max_concurrent_moves", self.max_concurrent_moves as u64),
            ("store_failover_secs", self.store_failover_secs),
            (
                "peer_max_connections_per_client",
                self.peer_max_connections_per_client as u64,
            ),
        ])?;
        self.validate_lease()?;
        Ok(())
    }

    /// Cluster mode's peer API is mTLS only: a node without its certificate
    /// cannot join (a forwarded payload is a whole domain command).
    fn validate_peer_tls(&self) -> Result<(), ConfigError> {
        let missing: Vec<&str> = [
            ("peer_tls_cert_file", &self.peer_tls_cert_file),
            ("peer_tls_key_file", &self.peer_tls_key_file),
            ("peer_tls_ca_file", &self.peer_tls_ca_file),
        ]
        .into_iter()
        .filter(|(_, path)| path.as_os_str().is_empty())
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "cluster mode needs {}: the peer API between nodes is mTLS only (docs/security.md)",
                missing.join(", ")
            )));
        }
        if !self.advertise_endpoint.is_empty() {
            let host = crate::tls::endpoint_host(&self.advertise_endpoint);
            if !self.advertise_endpoint.starts_with("https://") || host.is_none() {
                return Err(ConfigError::Invalid(
                    "advertise_endpoint must be an https:// URL with the host of this node's peer port (peer_addr)"
                        .into(),
                ));
            }
        } else if self.peer_addr.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "peer_addr {} listens on every address, which no other node can dial: set advertise_endpoint (https://<this node's name>:{})",
                self.peer_addr,
                self.peer_addr.port()
            )));
        }
        if !self.advertise_client_endpoint.is_empty() {
            let endpoint = &self.advertise_client_endpoint;
            let scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme || crate::tls::endpoint_host(endpoint).is_none() {
                return Err(ConfigError::Invalid(
                    "advertise_client_endpoint must be an http:// or https:// URL with the host of this node's client API (grpc_addr)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_lease(&self) -> Result<(), ConfigError> {
        if self.lease_ttl_secs < 2 {
            return Err(ConfigError::Invalid(
                "lease_ttl_secs must be at least 2 (the node stops serving a third of the TTL before its lease can expire)".into(),
            ));
        }
        Ok(())
    }
}

impl Postgres {
    /// The TLS files of the PostgreSQL client; no CA file: plaintext.
    pub fn postgres_tls(&self) -> TlsFiles {
        TlsFiles::new(
            &self.postgres_tls_cert_file,
            &self.postgres_tls_key_file,
            &self.postgres_tls_ca_file,
        )
    }

    /// The connection URL: postgres_url, or the contents of
    /// postgres_url_file (trimmed), read once, here. An error names the
    /// file and never says what is in it.
    pub fn resolved_url(&self) -> Result<SecretUrl, ConfigError> {
        if self.postgres_url_file.as_os_str().is_empty() {
            return Ok(self.postgres_url.clone());
        }
        let path = &self.postgres_url_file;
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::Invalid(format!(
                "cannot read postgres_url_file {}: {error}",
                path.display()
            ))
        })?;
        let url = text.trim();
        if url.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "postgres_url_file {} is empty",
                path.display()
            )));
        }
        Ok(url.parse().unwrap_or_default())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.postgres_url.is_empty() && !self.postgres_url_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "postgres_url and postgres_url_file are both set: give the URL one way".into(),
            ));
        }
        check_client_tls("postgres_tls", &self.postgres_tls())?;
        positive(&[
            ("postgres_pool_size", self.postgres_pool_size as u64),
            (
                "postgres_concurrent_commits",
                self.postgres_concurrent_commits as u64,
            ),
        ])
    }
}

impl Telemetry {
    fn validate(&self) -> Result<(), ConfigError> {
        // This build speaks plaintext gRPC to the collector only: an https
        // endpoint would fail on every export, silently.
        if self.otlp_endpoint.is_empty() {
            return Ok(());
        }
        let Some(rest) = self.otlp_endpoint.strip_prefix("http://") else {
            return Err(ConfigError::Invalid(
                "otlp_endpoint must be an http:// URL (TLS to the collector is not built in)"
                    .into(),
            ));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        // Never echoed: it may hold a credential.
        if authority.contains('@') {
            return Err(ConfigError::Invalid(
                "otlp_endpoint must not carry credentials".into(),
            ));
        }
        // Without a port it would mean 80, not the collector's 4317: every
        // export would fail without a word.
        let port = authority.rsplit_once(':').map(|(_, port)| port);
        if !port.is_some_and(|port| port.parse::<u16>().is_ok_and(|port| port > 0)) {
            return Err(ConfigError::Invalid(
                "otlp_endpoint must name the collector's port (e.g. http://otel-collector:4317)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The collector to export traces to, when one is configured.
    pub fn otlp(&self) -> Option<&str> {
        (!self.otlp_endpoint.is_empty()).then_some(self.otlp_endpoint.as_str())
    }
}

impl Auth {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.jwks_file.as_os_str().is_empty() && self.jwt_audience.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "jwt_audience must not be empty: tokens must name the audience they are for".into(),
            ));
        }
        if self
            .jwt_issuers
            .iter()
            .any(|issuer| issuer.trim().is_empty())
        {
            return Err(ConfigError::Invalid(
                "jwt_issuers must not hold an empty issuer".into(),
            ));
        }
        if self.tenant_burst > 0 && self.tenant_requests_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "tenant_burst needs tenant_requests_per_sec (0 there means no quota)".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `[identities]`: known roles, no empty tenant, names that differ
    /// other than by case (certificate names are matched ignoring it), and
    /// a CA to verify the certificates they are read from.
    fn validate_identities(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (name, identity) in &self.identities {
            if name.trim().is_empty() || !names.insert(name.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "identities: {name:?} is empty or named twice (names are matched ignoring case)"
                )));
            }
            if let Some(role) = identity
                .roles
                .iter()
                .find(|role| crate::auth::Role::parse(role).is_none())
            {
                return Err(ConfigError::Invalid(format!(
                    "identities.{name}: unknown role {role:?} (reader, writer, admin)"
                )));
            }
            if identity
                .tenants
                .iter()
                .any(|tenant| tenant.trim().is_empty())
            {
                return Err(ConfigError::Invalid(format!(
                    "identities.{name}: an empty tenant (\"*\" is every tenant)"
                )));
            }
        }
        if !self.identities.is_empty() && self.server.tls_client_ca_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "[identities] need tls_client_ca_file: they are read from client certificates it verifies".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skuld.toml");
        std::fs::write(
            &path,
            "[runtime]\nmailbox_capacity = 7\nmax_in_flight = 99\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_in_flight: Some(5),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.runtime.mailbox_capacity, 7);
        assert_eq!(config.runtime.max_in_flight, 5);
        assert_eq!(
            config.runtime.snapshot_every,
            Config::default().runtime.snapshot_every
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skuld.toml");
        std::fs::write(&path, "[runtime]\nmailbox_capacty = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(&args),
            Err(ConfigError::Parse { .. })
        ));
        let args = ServeArgs {
            mailbox_capacity: Some(0),
            ..ServeArgs::default()
        };
        assert!(matches!(Config::load(&args), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn an_otlp_endpoint_turns_trace_export_on_and_is_shown() {
        assert_eq!(Config::default().telemetry.otlp(), None);
        let args = ServeArgs {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.telemetry.otlp(), Some("http://collector:4317"));
        let shown = config.to_commented_toml().unwrap();
        assert!(
            shown.contains("[telemetry]\n# OTLP/gRPC collector")
                && shown.contains("otlp_endpoint = \"http://collector:4317\""),
            "{shown}"
        );
        for refused in [
            "https://collector:4317",
            "http://user:s3cret@collector:4317",
            "http://collector",
            "http://collector:0/",
            "http://collector:port",
        ] {
            let args = ServeArgs {
                otlp_endpoint: Some(refused.into()),
                ..ServeArgs::default()
            };
            match Config::load(&args) {
                Err(ConfigError::Invalid(reason)) => {
                    assert!(!reason.contains("s3cret"), "{refused}: {reason}")
                }
                other => panic!("{refused} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn auth_settings_and_identities_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skuld.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
        };
        let tls = "[server]\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\ntls_client_ca_file = \"ca.pem\"\n";
        let good =
            format!("{tls}[identities.\"svc-oms\"]\ntenants = [\"acme\"]\nroles = [\"writer\"]\n");
        let config = load(&good).unwrap();
        assert_eq!(config.identities["svc-oms"].roles, ["writer"]);
        for bad in [
            format!("{tls}[identities.x]\ntenants = [\"acme\"]\nroles = [\"writter\"]\n"),
            format!("{tls}[identities.x]\ntenants = [\"\"]\n"),
            format!("{tls}[identities.x]\n[identities.X]\n"),
            "[identities.x]\ntenants = [\"acme\"]\n".to_owned(),
            "[auth]\ntenant_burst = 5\n".to_owned(),
            "[auth]\njwks_file = \"j.json\"\njwt_audience = \"\"\n".to_owned(),
            "[auth]\njwt_issuers = [\"\"]\n".to_owned(),
        ] {
            assert!(
                matches!(load(&bad), Err(ConfigError::Invalid(_))),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn passwords_are_never_printed() {
        let urls = [
            (
                "postgres://skuld:s3cret@pg:5432/skuld",
                "postgres://skuld:***@pg:5432/skuld",
            ),
            (
                "postgres://skuld@pg/skuld?password=s3cret&sslmode=require",
                "postgres://skuld@pg/skuld?password=***&sslmode=require",
            ),
            (
                "host=pg user=skuld password=s3cret dbname=skuld",
                "host=pg user=skuld password=*** dbname=skuld",
            ),
            ("postgres://skuld@pg/skuld", "postgres://skuld@pg/skuld"),
            ("nats://s3cret@nats:4222", "nats://***@nats:4222"),
            (
                "nats://a:s3cret@n1:4222,nats://b:s3cret@n2:4222",
                "nats://a:***@n1:4222,nats://b:***@n2:4222",
            ),
        ];
        for (url, shown) in urls {
            let secret: SecretUrl = url.parse().unwrap();
            assert_eq!(secret.expose(), url);
            assert_eq!(secret.to_string(), shown);
            assert!(!format!("{secret:?}").contains("s3cret"));
        }
        let args = ServeArgs {
            etcd_endpoints: Some(vec!["http://etcd:2379".into()]),
            postgres_url: Some("postgres://skuld:s3cret@pg/skuld".parse().unwrap()),
            peer_tls_cert_file: Some("/tls/tls.crt".into()),
            peer_tls_key_file: Some("/tls/tls.key".into()),
            peer_tls_ca_file: Some("/tls/ca.crt".into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        let dumped = config.to_commented_toml().unwrap();
        assert!(!dumped.contains("s3cret"), "{dumped}");
        assert!(dumped.contains("postgres://skuld:***@pg/skuld"), "{dumped}");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn cluster_mode_needs_its_peer_certificate_and_a_dialable_advertised_endpoint() {
        let clustered = |extra: fn(&mut ServeArgs)| {
            let mut args = ServeArgs {
                etcd_endpoints: Some(vec!["http://etcd:2379".into()]),
                postgres_url: Some("postgres://skuld@pg/skuld".parse().unwrap()),
                peer_tls_cert_file: Some("/tls/tls.crt".into()),
                peer_tls_key_file: Some("/tls/tls.key".into()),
                peer_tls_ca_file: Some("/tls/ca.crt".into()),
                ..ServeArgs::default()
            };
            extra(&mut args);
            Config::load(&args)
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        assert_eq!(clustered(|_| {}), Ok(()));
        let missing = clustered(|args| args.peer_tls_key_file = None).unwrap_err();
        assert!(missing.contains("peer_tls_key_file"), "{missing}");
        let plaintext = clustered(|args| {
            args.advertise_endpoint = Some("http://skuld-0.skuld-peers:7071".into());
        });
        assert!(plaintext.unwrap_err().contains("https://"));
        let everywhere = clustered(|args| args.peer_addr = Some("0.0.0.0:7071".parse().unwrap()));
        assert!(everywhere.unwrap_err().contains("advertise_endpoint"));
        assert_eq!(
            clustered(|args| {
                args.peer_addr = Some("0.0.0.0:7071".parse().unwrap());
                args.advertise_endpoint = Some("https://skuld-0.skuld-peers:7071".into());
            }),
            Ok(())
        );
        let client = clustered(|args| args.advertise_client_endpoint = Some("skuld-0:7070".into()));
        assert!(client.unwrap_err().contains("advertise_client_endpoint"));
        assert_eq!(
            clustered(|args| {
                args.advertise_client_endpoint = Some("https://skuld-0.skuld-peers:7070".into());
            }),
            Ok(())
        );
    }

    #[test]
    fn etcd_and_postgres_tls_files_are_checked_together() {
        let etcd = |endpoint: &str, ca: &str, cert: &str, key: &str| Cluster {
            etcd_endpoints: vec![endpoint.into()],
            etcd_tls_ca_file: ca.into(),
            etcd_tls_cert_file: cert.into(),
            etcd_tls_key_file: key.into(),
            ..Cluster::default()
        };
        assert!(etcd("https://etcd:2379", "ca.crt", "tls.crt", "tls.key")
            .validate()
            .is_ok());
        assert!(etcd("http://etcd:2379", "", "", "").validate().is_ok());
        for (cluster, expected) in [
            (
                etcd("https://etcd:2379", "", "", ""),
                "etcd endpoint https://etcd:2379 is https:// but etcd_tls_ca_file is not set",
            ),
            (
                etcd("http://etcd:2379", "ca.crt", "", ""),
                "etcd endpoint http://etcd:2379 is http:// but etcd_tls_ca_file is set",
            ),
            (
                etcd("https://etcd:2379", "ca.crt", "tls.crt", ""),
                "etcd_tls_cert_file and etcd_tls_key_file go together",
            ),
            (
                etcd("etcd:2379", "", "tls.crt", "tls.key"),
                "etcd_tls_cert_file needs etcd_tls_ca_file",
            ),
        ] {
            match cluster.validate() {
                Err(ConfigError::Invalid(reason)) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("{cluster:?} accepted: {other:?}"),
            }
        }
        let postgres = |url: &str, url_file: &str, ca: &str, cert: &str, key: &str| Postgres {
            postgres_url: url.parse().unwrap(),
            postgres_url_file: url_file.into(),
            postgres_tls_ca_file: ca.into(),
            postgres_tls_cert_file: cert.into(),
            postgres_tls_key_file: key.into(),
            ..Postgres::default()
        };
        assert!(
            postgres("postgres://pg/skuld", "", "ca.crt", "tls.crt", "tls.key")
                .validate()
                .is_ok()
        );
        for (section, expected) in [
            (
                postgres("postgres://pg/skuld", "/run/url", "", "", ""),
                "postgres_url and postgres_url_file are both set",
            ),
            (
                postgres("postgres://pg/skuld", "", "ca.crt", "", "tls.key"),
                "postgres_tls_cert_file and postgres_tls_key_file go together",
            ),
            (
                postgres("postgres://pg/skuld", "", "", "tls.crt", "tls.key"),
                "postgres_tls_cert_file needs postgres_tls_ca_file",
            ),
        ] {
            match section.validate() {
                Err(ConfigError::Invalid(reason)) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("{section:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn the_postgres_url_file_is_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgres-url");
        std::fs::write(&path, "  postgres://skuld:s3cret@pg:5432/skuld\n").unwrap();
        let section = Postgres {
            postgres_url_file: path.clone(),
            ..Postgres::default()
        };
        section.validate().unwrap();
        let url = section.resolved_url().unwrap();
        assert_eq!(url.expose(), "postgres://skuld:s3cret@pg:5432/skuld");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        // `skuld config` shows the file, not what is in it.
        let config = Config {
            postgres: section.clone(),
            ..Config::default()
        };
        let shown = config.to_commented_toml().unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        std::fs::write(&path, " \n").unwrap();
        let empty = section.resolved_url().unwrap_err().to_string();
        assert!(
            empty.contains("is empty") && empty.contains("postgres-url"),
            "{empty}"
        );
        std::fs::remove_file(&path).unwrap();
        let missing = section.resolved_url().unwrap_err().to_string();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
    }

    #[test]
    fn every_option_is_documented_and_the_readme_lists_them_as_documented() {
        for option in described() {
            assert!(
                option.doc.len() > 10,
                "{}.{} has no doc",
                option.section,
                option.name
            );
            assert!(option.env.starts_with("SKULD_"), "{}", option.name);
        }
        let readme = include_str!("../../README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "the README's option table is not what `skuld config --describe` prints:\n{table}"
        );
        // skuld config shows each option under its doc comment.
        let shown = Config::default().to_commented_toml().unwrap();
        assert!(
            shown.contains("# Commands queued per entity at most"),
            "{shown}"
        );
        assert!(shown.contains("[runtime]\n"), "{shown}");
    }
}
