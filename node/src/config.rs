//! Node configuration, layered: built-in defaults, then a TOML file
//! (`--config`), then `SKULD_*` environment variables, then flags.
//! `skuld config --dump` prints the effective result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every server option. In the TOML file, keys are the field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /metrics, /healthz and /readyz.
    pub http_addr: SocketAddr,
    /// When set, the bound addresses are written here as JSON once listening.
    pub ports_file: Option<PathBuf>,
    /// Commands queued per position at most.
    pub mailbox_capacity: usize,
    /// Requests in flight on the node at most. Admitted requests wait at
    /// most about max_in_flight / throughput, so this bounds accepted
    /// latency under overload: about capacity x target latency (16k/s x
    /// 25 ms = 400 on a 2-core machine); beyond it RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Reads are admitted only below this share (%) of max_in_flight.
    pub read_admission_percent: usize,
    /// Retry hint sent with RESOURCE_EXHAUSTED, in milliseconds.
    pub retry_after_ms: u64,
    /// Idle time after which a position actor stops, in seconds.
    pub idle_timeout_secs: u64,
    /// Journal entries between snapshots of a position.
    pub snapshot_every: u64,
    /// TTL of a reservation that asks for none, in seconds.
    pub default_reservation_ttl_secs: u64,
    /// Longest reservation TTL or extension, in seconds.
    pub max_reservation_ttl_secs: u64,
    /// How long idempotency keys are remembered, in seconds (>= 24 h advised).
    pub idempotency_retention_secs: u64,
    /// How often idempotency records past the retention are purged, in
    /// seconds. The retention is measured by the store's clock (PostgreSQL's
    /// in cluster mode), never by a node's wall clock.
    pub idempotency_purge_interval_secs: u64,
    /// How often due reservation timers are looked up, in milliseconds.
    pub timer_scan_interval_ms: u64,
    /// Writes waiting for the group commit at most.
    pub writer_queue_capacity: usize,
    /// Entity writes merged into one commit at most.
    pub writer_max_batch: usize,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Time SIGTERM gives in-flight requests before the node stops, in seconds.
    pub drain_timeout_secs: u64,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Log filter (tracing EnvFilter syntax), e.g. "info,skuld=debug".
    pub log_filter: String,
    /// etcd endpoints (`http://host:2379`). Empty: single node on the
    /// embedded store. Set: cluster mode (needs `postgres_url`).
    pub etcd_endpoints: Vec<String>,
    /// PostgreSQL connection URL of the cluster store (cluster mode).
    pub postgres_url: Option<SecretUrl>,
    /// PostgreSQL connections per node at most.
    pub postgres_pool_size: usize,
    /// Group commits in flight at once on PostgreSQL (cluster mode; the
    /// embedded store commits one at a time).
    pub postgres_concurrent_commits: usize,
    /// Namespace of this cluster's keys in etcd.
    pub cluster_name: String,
    /// This node's id in the cluster; the host name when empty.
    pub node_id: String,
    /// The gRPC endpoint other nodes reach this one at, e.g.
    /// `http://skuld-0.skuld-peers:7070`; `http://<grpc_addr>` when empty.
    pub advertise_endpoint: String,
    /// Shard count of a new cluster (fixed once the cluster exists).
    pub shard_count: u32,
    /// etcd lease TTL in seconds: how long a dead node's shards stay
    /// unavailable before others take them.
    pub lease_ttl_secs: u64,
    /// How long a request waits for a moving shard before UNAVAILABLE, in ms.
    pub handoff_wait_ms: u64,
    /// Shards this node hands over at once at most (scale-out, drain).
    pub max_concurrent_moves: usize,
    /// A node whose store has failed every call for this long (cluster mode)
    /// reports itself unhealthy in etcd, so its shards move to nodes that
    /// can reach the store, and takes shards again once its store answers;
    /// in seconds.
    pub store_failover_secs: u64,
    /// The largest difference allowed between this node's wall clock and
    /// PostgreSQL's (cluster mode), in milliseconds; a node further off
    /// serves no shards (it would expire reservations and decide return
    /// windows by a wrong clock) until its clock is fixed. 0 turns the
    /// check off.
    pub max_clock_offset_ms: u64,
    /// Return policies by scope (file only): `[return_policies.default]`,
    /// `[return_policies.<tenant>]`, `[return_policies."<tenant>/<channel>"]`.
    /// The most specific applies; a case keeps the policy it opened with.
    pub return_policies: std::collections::BTreeMap<String, skuld_actors::returns::ReturnPolicy>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("skuld-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            ports_file: None,
            mailbox_capacity: 1_024,
            max_in_flight: 512,
            read_admission_percent: 80,
            retry_after_ms: 100,
            idle_timeout_secs: 60,
            snapshot_every: 200,
            default_reservation_ttl_secs: 15 * 60,
            max_reservation_ttl_secs: 4 * 60 * 60,
            idempotency_retention_secs: 24 * 60 * 60,
            idempotency_purge_interval_secs: 60,
            timer_scan_interval_ms: 500,
            writer_queue_capacity: 16_384,
            writer_max_batch: 4_096,
            max_message_bytes: 1024 * 1024,
            drain_timeout_secs: 20,
            log_format: "text".into(),
            log_filter: "info".into(),
            etcd_endpoints: Vec::new(),
            postgres_url: None,
            postgres_pool_size: 16,
            postgres_concurrent_commits: 4,
            cluster_name: "skuld".into(),
            node_id: String::new(),
            advertise_endpoint: String::new(),
            shard_count: 1_024,
            lease_ttl_secs: 5,
            handoff_wait_ms: 2_000,
            max_concurrent_moves: 64,
            store_failover_secs: 10,
            max_clock_offset_ms: 1_000,
            return_policies: std::collections::BTreeMap::new(),
        }
    }
}

/// Flags and `SKULD_*` variables of `skuld serve`; each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SKULD_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "SKULD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "SKULD_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    #[arg(long, env = "SKULD_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    #[arg(long, env = "SKULD_PORTS_FILE")]
    pub ports_file: Option<PathBuf>,
    #[arg(long, env = "SKULD_MAILBOX_CAPACITY")]
    pub mailbox_capacity: Option<usize>,
    #[arg(long, env = "SKULD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    #[arg(long, env = "SKULD_READ_ADMISSION_PERCENT")]
    pub read_admission_percent: Option<usize>,
    #[arg(long, env = "SKULD_RETRY_AFTER_MS")]
    pub retry_after_ms: Option<u64>,
    #[arg(long, env = "SKULD_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    #[arg(long, env = "SKULD_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    #[arg(long, env = "SKULD_DEFAULT_RESERVATION_TTL_SECS")]
    pub default_reservation_ttl_secs: Option<u64>,
    #[arg(long, env = "SKULD_MAX_RESERVATION_TTL_SECS")]
    pub max_reservation_ttl_secs: Option<u64>,
    #[arg(long, env = "SKULD_IDEMPOTENCY_RETENTION_SECS")]
    pub idempotency_retention_secs: Option<u64>,
    #[arg(long, env = "SKULD_IDEMPOTENCY_PURGE_INTERVAL_SECS")]
    pub idempotency_purge_interval_secs: Option<u64>,
    #[arg(long, env = "SKULD_TIMER_SCAN_INTERVAL_MS")]
    pub timer_scan_interval_ms: Option<u64>,
    #[arg(long, env = "SKULD_WRITER_QUEUE_CAPACITY")]
    pub writer_queue_capacity: Option<usize>,
    #[arg(long, env = "SKULD_WRITER_MAX_BATCH")]
    pub writer_max_batch: Option<usize>,
    #[arg(long, env = "SKULD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[arg(long, env = "SKULD_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    #[arg(long, env = "SKULD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[arg(long, env = "SKULD_LOG", alias = "log-level")]
    pub log_filter: Option<String>,
    /// Comma-separated etcd endpoints; enables cluster mode.
    #[arg(long, env = "SKULD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    #[arg(long, env = "SKULD_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<SecretUrl>,
    #[arg(long, env = "SKULD_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
    #[arg(long, env = "SKULD_POSTGRES_CONCURRENT_COMMITS")]
    pub postgres_concurrent_commits: Option<usize>,
    #[arg(long, env = "SKULD_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    #[arg(long, env = "SKULD_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "SKULD_ADVERTISE_ENDPOINT")]
    pub advertise_endpoint: Option<String>,
    #[arg(long, env = "SKULD_SHARD_COUNT")]
    pub shard_count: Option<u32>,
    #[arg(long, env = "SKULD_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<u64>,
    #[arg(long, env = "SKULD_HANDOFF_WAIT_MS")]
    pub handoff_wait_ms: Option<u64>,
    #[arg(long, env = "SKULD_MAX_CONCURRENT_MOVES")]
    pub max_concurrent_moves: Option<usize>,
    #[arg(long, env = "SKULD_STORE_FAILOVER_SECS")]
    pub store_failover_secs: Option<u64>,
    #[arg(long, env = "SKULD_MAX_CLOCK_OFFSET_MS")]
    pub max_clock_offset_ms: Option<u64>,
}

/// A connection URL whose password is never printed: its `Debug`, its
/// `Display` and its serialization (what `skuld config` shows) replace the
/// password with `***`; only [`SecretUrl::expose`] gives it whole, to the
/// code that connects.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password of its user info (`scheme://user:pass@`)
    /// and any `password=` parameter (URL query or key=value form) masked.
    pub fn redacted(&self) -> String {
        let mut text = self.0.clone();
        if let Some(scheme_end) = text.find("://") {
            let rest = scheme_end + 3;
            let authority_end = text[rest..]
                .find(['/', '?'])
                .map_or(text.len(), |end| rest + end);
            if let Some(at) = text[rest..authority_end].rfind('@') {
                let user_info = rest..rest + at;
                if let Some(colon) = text[user_info.clone()].find(':') {
                    text.replace_range(user_info.start + colon + 1..user_info.end, "***");
                }
            }
        }
        let mut redacted = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(found) = rest.find("password=") {
            let value = found + "password=".len();
            redacted.push_str(&rest[..value]);
            redacted.push_str("***");
            let end = rest[value..]
                .find(['&', ' '])
                .map_or(rest.len(), |end| value + end);
            rest = &rest[end..];
        }
        redacted.push_str(rest);
        redacted
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

macro_rules! overlay {
    ($config:ident, $args:ident, $($field:ident),+) => {
        $( if let Some(value) = $args.$field.clone() { $config.$field = value; } )+
    };
}

impl Config {
    /// Defaults, then the file, then environment and flags; then validation.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        overlay!(
            config,
            args,
            data_dir,
            grpc_addr,
            http_addr,
            mailbox_capacity,
            max_in_flight,
            read_admission_percent,
            retry_after_ms,
            idle_timeout_secs,
            snapshot_every,
            default_reservation_ttl_secs,
            max_reservation_ttl_secs,
            idempotency_retention_secs,
            idempotency_purge_interval_secs,
            timer_scan_interval_ms,
            writer_queue_capacity,
            writer_max_batch,
            max_message_bytes,
            drain_timeout_secs,
            log_format,
            log_filter,
            etcd_endpoints,
            postgres_pool_size,
            postgres_concurrent_commits,
            cluster_name,
            node_id,
            advertise_endpoint,
            shard_count,
            lease_ttl_secs,
            handoff_wait_ms,
            max_concurrent_moves,
            store_failover_secs,
            max_clock_offset_ms
        );
        if args.ports_file.is_some() {
            config.ports_file = args.ports_file.clone();
        }
        if args.postgres_url.is_some() {
            config.postgres_url = args.postgres_url.clone();
        }
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

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
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
            (
                "idempotency_purge_interval_secs",
                self.idempotency_purge_interval_secs,
            ),
            ("store_failover_secs", self.store_failover_secs),
            ("writer_queue_capacity", self.writer_queue_capacity as u64),
            ("writer_max_batch", self.writer_max_batch as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("postgres_pool_size", self.postgres_pool_size as u64),
            (
                "postgres_concurrent_commits",
                self.postgres_concurrent_commits as u64,
            ),
            ("shard_count", u64::from(self.shard_count)),
            ("lease_ttl_secs", self.lease_ttl_secs),
            ("max_concurrent_moves", self.max_concurrent_moves as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be greater than 0"
            )));
        }
        if self.read_admission_percent == 0 || self.read_admission_percent > 100 {
            return Err(ConfigError::Invalid(
                "read_admission_percent must be 1 to 100".into(),
            ));
        }
        if self.is_clustered() && self.postgres_url.is_none() {
            return Err(ConfigError::Invalid(
                "cluster mode (etcd_endpoints set) needs postgres_url: shards move between nodes, so their data must live in the shared store".into(),
            ));
        }
        if self.lease_ttl_secs < 2 {
            return Err(ConfigError::Invalid(
                "lease_ttl_secs must be at least 2 (the node stops serving a third of the TTL before its lease can expire)".into(),
            ));
        }
        if self.default_reservation_ttl_secs > self.max_reservation_ttl_secs {
            return Err(ConfigError::Invalid(
                "default_reservation_ttl_secs must not exceed max_reservation_ttl_secs".into(),
            ));
        }
        Ok(())
    }

    /// Cluster mode: etcd membership and the PostgreSQL store.
    pub fn is_clustered(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// The node id: configured, else the host name, else "skuld".
    pub fn effective_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "skuld".into())
    }

    pub fn runtime(&self) -> skuld_actors::runtime::RuntimeConfig {
        skuld_actors::runtime::RuntimeConfig {
            mailbox_capacity: self.mailbox_capacity,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            snapshot_every: self.snapshot_every,
        }
    }

    pub fn admission(&self) -> skuld_actors::runtime::Admission {
        skuld_actors::runtime::Admission::new(
            self.max_in_flight,
            self.read_admission_percent,
            Duration::from_millis(self.retry_after_ms),
        )
    }

    pub fn positions(&self) -> skuld_actors::position::PositionEntity {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX);
        skuld_actors::position::PositionEntity {
            default_ttl_ms: ms(self.default_reservation_ttl_secs),
            max_ttl_ms: ms(self.max_reservation_ttl_secs),
            ..skuld_actors::position::PositionEntity::default()
        }
    }

    pub fn background(&self) -> skuld_actors::runtime::BackgroundTiming {
        skuld_actors::runtime::BackgroundTiming {
            timer_scan_interval: Duration::from_millis(self.timer_scan_interval_ms),
            idempotency_retention: Duration::from_secs(self.idempotency_retention_secs),
            purge_interval: Duration::from_secs(self.idempotency_purge_interval_secs),
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
            queue_capacity: self.writer_queue_capacity,
            max_batch_entities: self.writer_max_batch,
            concurrent_commits: if self.is_clustered() {
                self.postgres_concurrent_commits
            } else {
                1
            },
            commit_delay: Self::failpoint_ms("COMMIT_DELAY_MS"),
        }
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
        std::fs::write(&path, "mailbox_capacity = 7\nmax_in_flight = 99\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_in_flight: Some(5),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.mailbox_capacity, 7);
        assert_eq!(config.max_in_flight, 5);
        assert_eq!(config.snapshot_every, Config::default().snapshot_every);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skuld.toml");
        std::fs::write(&path, "mailbox_capacty = 7\n").unwrap();
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
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        let dumped = toml::to_string_pretty(&config).unwrap();
        assert!(!dumped.contains("s3cret"), "{dumped}");
        assert!(dumped.contains("postgres://skuld:***@pg/skuld"), "{dumped}");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{args:?}").contains("s3cret"));
    }
}
