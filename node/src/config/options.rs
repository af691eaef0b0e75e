//! Every option of `skuld serve`, declared once: its section in the TOML
//! file, its type, default, environment variable and the one doc comment
//! that becomes the field's documentation, its `--help` text, its line in
//! `skuld config` and its row in the README's table (`skuld config
//! --describe`, checked against the README by a test).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::SecretUrl;

/// One option as `skuld config --describe` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionDoc {
    pub section: &'static str,
    pub name: &'static str,
    pub env: &'static str,
    pub doc: String,
}

macro_rules! options {
    ($(
        $(#[doc = $section_doc:literal])*
        [$section:ident] $Section:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $default:expr, env $env:literal $(, arg($($arg:tt)*))?;
            )*
        }
    )*) => {
        $(
            $(#[doc = $section_doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(default, deny_unknown_fields)]
            pub struct $Section {
                $( $(#[doc = $doc])* pub $field: $ty, )*
            }

            impl Default for $Section {
                fn default() -> Self {
                    Self { $( $field: $default, )* }
                }
            }
        )*

        /// Flags and `SKULD_*` variables of `skuld serve`; each overrides
        /// the file (which overrides the defaults).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct ServeArgs {
            /// TOML configuration file (sections as `skuld config` prints them).
            #[arg(long, env = "SKULD_CONFIG")]
            pub config: Option<PathBuf>,
            $($(
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $($arg)*)?)]
                pub $field: Option<$ty>,
            )*)*
        }

        impl super::Config {
            /// Flags and environment over what the file and the defaults
            /// said.
            pub(super) fn overlay(&mut self, args: &ServeArgs) {
                $($(
                    if let Some(value) = &args.$field {
                        self.$section.$field = value.clone();
                    }
                )*)*
            }
        }

        /// Every option, in order, with its documentation.
        pub fn described() -> Vec<OptionDoc> {
            vec![$($(
                OptionDoc {
                    section: stringify!($section),
                    name: stringify!($field),
                    env: $env,
                    doc: [$($doc),*].iter().map(|line| line.trim()).collect::<Vec<_>>().join(" "),
                },
            )*)*]
        }
    };
}

options! {
    /// The node's listeners, logs and shutdown.
    [server] Server {
        /// Directory of the embedded store (single-node mode).
        data_dir: PathBuf = PathBuf::from("skuld-data"), env "SKULD_DATA_DIR";
        /// gRPC listen address (port 0 picks a free port).
        grpc_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7070)), env "SKULD_GRPC_ADDR";
        /// HTTP listen address of /metrics, /healthz and /readyz.
        http_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9090)), env "SKULD_HTTP_ADDR";
        /// Serve the client API's unary RPCs as HTTP/JSON on http_addr (POST /skuld.v1.Service/Method, see docs/json-door.md): the same authentication, limits and validation as gRPC, but plaintext.
        json_door: bool = true, env "SKULD_JSON_DOOR";
        /// When set, the bound addresses are written here as JSON once listening.
        ports_file: PathBuf = PathBuf::new(), env "SKULD_PORTS_FILE";
        /// Largest gRPC request accepted, in bytes.
        max_message_bytes: usize = 1024 * 1024, env "SKULD_MAX_MESSAGE_BYTES";
        /// PEM certificate chain of the client API (grpc_addr); empty: plaintext. Re-read when it changes on disk.
        tls_cert_file: PathBuf = PathBuf::new(), env "SKULD_TLS_CERT_FILE";
        /// PEM private key of tls_cert_file (never printed).
        tls_key_file: PathBuf = PathBuf::new(), env "SKULD_TLS_KEY_FILE";
        /// PEM CA bundle that signs client certificates (service identities, see [identities]); empty: none asked for.
        tls_client_ca_file: PathBuf = PathBuf::new(), env "SKULD_TLS_CLIENT_CA_FILE";
        /// Refuse a client API connection without a certificate of tls_client_ca_file.
        tls_require_client_cert: bool = false, env "SKULD_TLS_REQUIRE_CLIENT_CERT";
        /// How often certificate, key, CA and JWKS files are checked for changes, in seconds.
        tls_reload_interval_secs: u64 = 10, env "SKULD_TLS_RELOAD_INTERVAL_SECS";
        /// A TLS handshake not finished within this is dropped, in milliseconds.
        tls_handshake_timeout_ms: u64 = 5_000, env "SKULD_TLS_HANDSHAKE_TIMEOUT_MS";
        /// Connections one client address (an IPv6 /64 counts as one) may hold open on the client API at once.
        max_connections_per_client: usize = 256, env "SKULD_MAX_CONNECTIONS_PER_CLIENT";
        /// Connections the client API holds open at once, all clients together.
        max_connections: usize = 4_096, env "SKULD_MAX_CONNECTIONS";
        /// Concurrent HTTP/2 streams (calls) on one connection at most.
        max_concurrent_streams: u32 = 256, env "SKULD_MAX_CONCURRENT_STREAMS";
        /// Time SIGTERM gives the whole drain (handing shards over, finishing admitted requests, flushing), in seconds.
        drain_timeout_secs: u64 = 20, env "SKULD_DRAIN_TIMEOUT_SECS";
        /// Log format: text or json (stderr).
        log_format: String = "text".into(), env "SKULD_LOG_FORMAT", arg(value_parser = ["text", "json"]);
        /// Log filter (tracing syntax); a bare level sets skuld's own logs and keeps dependencies at warn.
        log_filter: String = "info".into(), env "SKULD_LOG", arg(alias = "log-level");
    }

    /// Entities, their actors and the node's admission.
    [runtime] Runtime {
        /// Commands queued per entity at most; beyond it RESOURCE_EXHAUSTED.
        mailbox_capacity: usize = 1_024, env "SKULD_MAILBOX_CAPACITY";
        /// Requests admitted on the node at once; bounds accepted latency under overload (about capacity x target latency).
        max_in_flight: usize = 512, env "SKULD_MAX_IN_FLIGHT";
        /// Reads are admitted only below this share (%) of max_in_flight.
        read_admission_percent: usize = 80, env "SKULD_READ_ADMISSION_PERCENT";
        /// Retry hint sent with RESOURCE_EXHAUSTED, in milliseconds.
        retry_after_ms: u64 = 100, env "SKULD_RETRY_AFTER_MS";
        /// Queue-time target of load shedding, in milliseconds: while even the fastest inventory or returns call of each shed_interval_ms takes this much longer than the node's unqueued pace, fewer calls are let in at once and the rest are refused RESOURCE_EXHAUSTED before they are decoded; 0: shed only at max_in_flight.
        shed_target_ms: u64 = 20, env "SKULD_SHED_TARGET_MS";
        /// The window of shed_target_ms, in milliseconds.
        shed_interval_ms: u64 = 100, env "SKULD_SHED_INTERVAL_MS";
        /// An idle entity actor stops after this, in seconds.
        idle_timeout_secs: u64 = 60, env "SKULD_IDLE_TIMEOUT_SECS";
        /// Journal entries between snapshots of an entity.
        snapshot_every: u64 = 200, env "SKULD_SNAPSHOT_EVERY";
        /// TTL of a reservation that names none, in seconds.
        default_reservation_ttl_secs: u64 = 15 * 60, env "SKULD_DEFAULT_RESERVATION_TTL_SECS";
        /// Longest reservation TTL or extension, in seconds.
        max_reservation_ttl_secs: u64 = 4 * 60 * 60, env "SKULD_MAX_RESERVATION_TTL_SECS";
        /// How long idempotency keys are kept, by the store's clock, in seconds.
        idempotency_retention_secs: u64 = 24 * 60 * 60, env "SKULD_IDEMPOTENCY_RETENTION_SECS";
        /// How often keys past the retention are purged, in seconds.
        idempotency_purge_interval_secs: u64 = 60, env "SKULD_IDEMPOTENCY_PURGE_INTERVAL_SECS";
        /// How often due timers are looked up, in milliseconds.
        timer_scan_interval_ms: u64 = 500, env "SKULD_TIMER_SCAN_INTERVAL_MS";
        /// How often the business gauges (returns by state, refund backlog, open exceptions, oldest reservation) are counted again, in seconds.
        census_interval_secs: u64 = 15, env "SKULD_CENSUS_INTERVAL_SECS";
    }

    /// The event stream: retention and subscriptions.
    [events] Events {
        /// How long events are kept, by the store's clock, in seconds; an older resume token is OUT_OF_RANGE.
        event_retention_secs: u64 = 7 * 24 * 60 * 60, env "SKULD_EVENT_RETENTION_SECS";
        /// How often a subscription looks for events other nodes committed, in milliseconds (this node's wake it at once).
        event_poll_interval_ms: u64 = 100, env "SKULD_EVENT_POLL_INTERVAL_MS";
        /// Subscriptions this node serves at once at most; beyond it RESOURCE_EXHAUSTED.
        max_subscriptions: usize = 256, env "SKULD_MAX_SUBSCRIPTIONS";
        /// A webhook attempt not answered within this fails, in milliseconds.
        webhook_timeout_ms: u64 = 15_000, env "SKULD_WEBHOOK_TIMEOUT_MS";
        /// The first webhook retry waits up to this (full jitter, doubling per retry), in milliseconds.
        webhook_retry_base_ms: u64 = 1_000, env "SKULD_WEBHOOK_RETRY_BASE_MS";
        /// Longest wait between webhook retries, in seconds.
        webhook_retry_cap_secs: u64 = 3_600, env "SKULD_WEBHOOK_RETRY_CAP_SECS";
        /// How long a webhook event is retried before it becomes a dead letter, in seconds.
        webhook_retry_horizon_secs: u64 = 3 * 24 * 60 * 60, env "SKULD_WEBHOOK_RETRY_HORIZON_SECS";
        /// NATS server URL of the JetStream sink (e.g. nats://127.0.0.1:4222); empty: no sink.
        nats_url: SecretUrl = SecretUrl::default(), env "SKULD_NATS_URL", arg(hide_env_values = true);
        /// JetStream stream the sink publishes to (created with subjects skuld.> when missing).
        nats_stream: String = "SKULD_EVENTS".into(), env "SKULD_NATS_STREAM";
    }

    /// Channel connectivity: the push worker that keeps every channel showing what it may sell.
    [channels] Channels {
        /// How often the worker lists the keys other nodes marked, in milliseconds (this node's marks wake it at once).
        channel_poll_interval_ms: u64 = 250, env "SKULD_CHANNEL_POLL_INTERVAL_MS";
        /// How often every pushed value is read back from its channel to find drift, in seconds.
        channel_reconcile_interval_secs: u64 = 15 * 60, env "SKULD_CHANNEL_RECONCILE_INTERVAL_SECS";
        /// How long after a channel accepted (not applied) a push its first read-back is, in milliseconds.
        channel_confirm_after_ms: u64 = 1_000, env "SKULD_CHANNEL_CONFIRM_AFTER_MS";
        /// How long an accepted push may take to show on the channel before it is sent again, in seconds.
        channel_confirm_within_secs: u64 = 60, env "SKULD_CHANNEL_CONFIRM_WITHIN_SECS";
        /// How long one push call to a channel may take before it is abandoned and its items tried again, in milliseconds; after taking a shard, a node waits this (plus 2 s) before writing its keys to channels without a compare, so no write of the former owner lands after its own.
        channel_push_deadline_ms: u64 = 30_000, env "SKULD_CHANNEL_PUSH_DEADLINE_MS";
        /// Directory of channel credentials, one subdirectory per tenant: a channel's file: reference must be in <dir>/<tenant>/ (env: ones are named SKULD_CHANNEL_<TENANT>_...); empty: no file references.
        channel_credentials_dir: PathBuf = PathBuf::new(), env "SKULD_CHANNEL_CREDENTIALS_DIR";
    }

    /// The group-commit writer.
    [writer] Writer {
        /// Writes waiting for the group commit at most.
        writer_queue_capacity: usize = 16_384, env "SKULD_WRITER_QUEUE_CAPACITY";
        /// Entity writes merged into one commit at most.
        writer_max_batch: usize = 4_096, env "SKULD_WRITER_MAX_BATCH";
    }

    /// Cluster mode: membership in etcd, shards and their handoffs.
    [cluster] Cluster {
        /// etcd endpoints, comma-separated; set: cluster mode (needs postgres url).
        etcd_endpoints: Vec<String> = Vec::new(), env "SKULD_ETCD_ENDPOINTS", arg(value_delimiter = ',');
        /// Namespace of this cluster's keys in etcd.
        cluster_name: String = "skuld".into(), env "SKULD_CLUSTER_NAME";
        /// This node's member id; the host name when empty.
        node_id: String = String::new(), env "SKULD_NODE_ID";
        /// Listen address of the peer API (node-to-node forwarding, mTLS only; never on grpc_addr).
        peer_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7071)), env "SKULD_PEER_ADDR";
        /// Connections one address may hold open on the peer API at once (a node needs one or two per peer).
        peer_max_connections_per_client: usize = 16, env "SKULD_PEER_MAX_CONNECTIONS_PER_CLIENT";
        /// Where other nodes reach this one's peer API (e.g. https://skuld-0.skuld-peer:7071); https://<peer_addr> when empty. Its host must be a name in peer_tls_cert_file.
        advertise_endpoint: String = String::new(), env "SKULD_ADVERTISE_ENDPOINT";
        /// Where clients reach this node's client API (e.g. https://skuld-0.skuld-peers:7070), told to owner-aware clients in the shard map; when empty: grpc_addr if it is one address, else the host of advertise_endpoint with grpc_addr's port.
        advertise_client_endpoint: String = String::new(), env "SKULD_ADVERTISE_CLIENT_ENDPOINT";
        /// PEM certificate chain this node presents to other nodes, as server and as client (required in cluster mode).
        peer_tls_cert_file: PathBuf = PathBuf::new(), env "SKULD_PEER_TLS_CERT_FILE";
        /// PEM private key of peer_tls_cert_file (never printed).
        peer_tls_key_file: PathBuf = PathBuf::new(), env "SKULD_PEER_TLS_KEY_FILE";
        /// PEM CA bundle of the cluster's own CA: the only issuer of peer certificates accepted.
        peer_tls_ca_file: PathBuf = PathBuf::new(), env "SKULD_PEER_TLS_CA_FILE";
        /// PEM CA bundle that signs etcd's server certificate (https:// endpoints); empty: the endpoints are plaintext.
        etcd_tls_ca_file: PathBuf = PathBuf::new(), env "SKULD_ETCD_TLS_CA_FILE";
        /// PEM client certificate for etcd's --client-cert-auth.
        etcd_tls_cert_file: PathBuf = PathBuf::new(), env "SKULD_ETCD_TLS_CERT_FILE";
        /// PEM private key of etcd_tls_cert_file (never printed).
        etcd_tls_key_file: PathBuf = PathBuf::new(), env "SKULD_ETCD_TLS_KEY_FILE";
        /// Shards of a new cluster (fixed for its life).
        shard_count: u32 = 1_024, env "SKULD_SHARD_COUNT";
        /// etcd lease TTL, in seconds: how long a dead node's keys stay unavailable.
        lease_ttl_secs: u64 = 5, env "SKULD_LEASE_TTL_SECS";
        /// How long a request waits for a moving shard before UNAVAILABLE, in milliseconds.
        handoff_wait_ms: u64 = 2_000, env "SKULD_HANDOFF_WAIT_MS";
        /// Shards a node hands over at once at most.
        max_concurrent_moves: usize = 64, env "SKULD_MAX_CONCURRENT_MOVES";
        /// A node whose store calls all fail this long gives its shards to nodes that reach the store, in seconds.
        store_failover_secs: u64 = 10, env "SKULD_STORE_FAILOVER_SECS";
        /// A node whose clock is further than this from PostgreSQL's serves no shards, in milliseconds (0: no check).
        max_clock_offset_ms: u64 = 1_000, env "SKULD_MAX_CLOCK_OFFSET_MS";
    }

    /// The PostgreSQL store of cluster mode.
    [postgres] Postgres {
        /// Connection URL (its password is never printed); its own options come after the safety timeouts.
        postgres_url: SecretUrl = SecretUrl::default(), env "SKULD_POSTGRES_URL", arg(hide_env_values = true);
        /// File holding the connection URL (a mounted secret); read at start instead of postgres_url.
        postgres_url_file: PathBuf = PathBuf::new(), env "SKULD_POSTGRES_URL_FILE";
        /// PEM CA bundle that signs PostgreSQL's server certificate; set: TLS with the host name checked (sslmode=verify-full).
        postgres_tls_ca_file: PathBuf = PathBuf::new(), env "SKULD_POSTGRES_TLS_CA_FILE";
        /// PEM client certificate for PostgreSQL's cert authentication (its CN is the role).
        postgres_tls_cert_file: PathBuf = PathBuf::new(), env "SKULD_POSTGRES_TLS_CERT_FILE";
        /// PEM private key of postgres_tls_cert_file (never printed).
        postgres_tls_key_file: PathBuf = PathBuf::new(), env "SKULD_POSTGRES_TLS_KEY_FILE";
        /// Connections per node at most.
        postgres_pool_size: usize = 16, env "SKULD_POSTGRES_POOL_SIZE";
        /// Group commits in flight at once.
        postgres_concurrent_commits: usize = 4, env "SKULD_POSTGRES_CONCURRENT_COMMITS";
    }

    /// Who may call the client API: bearer tokens, roles and per-tenant quotas.
    [auth] Auth {
        /// JWKS file (JSON Web Key Set) whose keys sign callers' tokens; set: every client API call needs a bearer token or a mapped client certificate. Re-read when it changes.
        jwks_file: PathBuf = PathBuf::new(), env "SKULD_JWKS_FILE";
        /// Accepted token issuers (iss), comma-separated; empty: any issuer of a key in jwks_file.
        jwt_issuers: Vec<String> = Vec::new(), env "SKULD_JWT_ISSUERS", arg(value_delimiter = ',');
        /// Audience (aud) a token must name.
        jwt_audience: String = "skuld".into(), env "SKULD_JWT_AUDIENCE";
        /// Clock skew allowed on exp and nbf, in seconds.
        jwt_leeway_secs: u64 = 30, env "SKULD_JWT_LEEWAY_SECS";
        /// Requests per second one tenant may make on this node (0: no quota); beyond it RESOURCE_EXHAUSTED with a retry hint.
        tenant_requests_per_sec: u32 = 0, env "SKULD_TENANT_REQUESTS_PER_SEC";
        /// Requests one tenant may make in a burst above its rate (0: one second's worth).
        tenant_burst: u32 = 0, env "SKULD_TENANT_BURST";
    }

    /// Traces: OpenTelemetry export over OTLP/gRPC.
    [telemetry] Telemetry {
        /// OTLP/gRPC collector that receives the node's traces (e.g. http://otel-collector:4317); empty: no export.
        otlp_endpoint: String = String::new(), env "SKULD_OTLP_ENDPOINT";
    }
}

/// The README's table of options, generated from their documentation.
pub fn markdown_table() -> String {
    let defaults =
        toml::Value::try_from(super::Config::default()).unwrap_or(toml::Value::Boolean(false));
    let mut table = String::from(
        "| option (`[section]` key) | flag | env | default | meaning |\n|---|---|---|---|---|\n",
    );
    for option in described() {
        let default = defaults
            .get(option.section)
            .and_then(|section| section.get(option.name))
            .map(|value| match value {
                toml::Value::String(text) if text.is_empty() => "none".to_owned(),
                toml::Value::Array(items) if items.is_empty() => "none".to_owned(),
                toml::Value::String(text) => format!("`{text}`"),
                other => format!("`{other}`"),
            })
            .unwrap_or_default();
        table.push_str(&format!(
            "| `[{}]` `{}` | `--{}` | `{}` | {} | {} |\n",
            option.section,
            option.name,
            option.name.replace('_', "-"),
            option.env,
            default,
            option.doc
        ));
    }
    table
}
