//! The node: stores, runtime, gRPC and HTTP servers, and ordered shutdown.
//!
//! Shutdown (on the `shutdown` future) runs under one deadline,
//! `drain_timeout_secs` from the signal, each step getting what is left:
//! gRPC health NOT_SERVING and /readyz 503 first, so load balancers stop
//! sending; in cluster mode every shard is then handed over (stop admitting
//! it, finish and persist what was accepted, release the claim) while the
//! node keeps forwarding; then the runtime stops admitting and waits for
//! admitted requests; background tasks stop; actors stop (concurrently);
//! new requests are then refused UNAVAILABLE. The last steps get one short
//! grace past the deadline ([`LAST_STEPS_GRACE`]): the cluster loops stop and
//! the lease is revoked; the servers stop; the group-commit writer flushes
//! and the store closes. A step that overruns is cut short and logged.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use skuld_actors::order::OrderEntity;
use skuld_actors::returns::ReturnEntity;
use skuld_actors::runtime::routing::Routing;
use skuld_actors::runtime::{Background, Entity, EntityRuntime, TimerTarget};
use skuld_cluster::tls::TlsFiles;
use skuld_cluster::{EmbeddedStore, GroupCommitWriter, Store};
use skuld_proto::internal::v1::peer_service_server::PeerServiceServer;
use skuld_proto::v1::admin_service_server::AdminServiceServer;
use skuld_proto::v1::channel_service_server::ChannelServiceServer;
use skuld_proto::v1::event_service_server::EventServiceServer;
use skuld_proto::v1::inventory_service_server::InventoryServiceServer;
use skuld_proto::v1::order_service_server::OrderServiceServer;
use skuld_proto::v1::returns_service_server::ReturnsServiceServer;
use skuld_proto::v1::routing_service_server::RoutingServiceServer;
use skuld_proto::v1::webhook_service_server::WebhookServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin_api::AdminApi;
use crate::api::InventoryApi;
use crate::census::Census;
use crate::channels::catalog::Catalog;
use crate::channels::worker::WorkerContext;
use crate::channels::Channels;
use crate::channels_api::ChannelsApi;
use crate::cluster;
use crate::config::Config;
use crate::events_api::{EventsApi, EventsSettings};
use crate::listen::{self, AcceptPolicy};
use crate::node_io::{BoxedListener, HttpKind, IncomingKind, NodeIo, Peers, PeersKind};
use crate::orders_api::OrdersApi;
use crate::peer::{CallerCheck, PeerApi, PeerChannels};
use crate::readiness::{follow_readiness, set_health, Readiness};
use crate::returns_api::{ReturnPolicies, ReturnsApi};
use crate::routing_api::RoutingApi;
use crate::shed::{ShedLayer, Shedder};
use crate::sinks::{SinkContext, Sinks};
use crate::status::to_status;
use crate::tls::{ClientAuth, PeerClientTls, Reloadable, ServerTls};
use crate::webhooks_api::WebhooksApi;

/// What the last shutdown steps (leaving the cluster, closing the servers,
/// flushing the writer) may take past `drain_timeout_secs`. Kubernetes'
/// `terminationGracePeriodSeconds` should exceed the drain by at least this.
pub const LAST_STEPS_GRACE: Duration = Duration::from_secs(1);

/// Open connections of the peer listener at most, all addresses together.
const PEER_MAX_CONNECTIONS: usize = 1_024;

/// HTTP/2 pings on idle connections: a peer that vanished (a pulled cable,
/// a paused VM) frees its connection and its budget slot within a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The sockets the node serves on, bound by the caller (tests bind port 0):
/// one per audience. Clients call `grpc`; other nodes call `peer` (cluster
/// mode only, mTLS only); probes and Prometheus read `http`.
pub struct Listeners {
    pub grpc: TcpListener,
    pub peer: Option<TcpListener>,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {}", config.server.grpc_addr))?;
        let peer = if config.is_clustered() {
            Some(
                TcpListener::bind(config.cluster.peer_addr)
                    .await
                    .with_context(|| {
                        format!("cannot listen for peers on {}", config.cluster.peer_addr)
                    })?,
            )
        } else {
            None
        };
        let http = TcpListener::bind(config.server.http_addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.server.http_addr))?;
        Ok(Self { grpc, peer, http })
    }
}

/// Runs a node until `shutdown` resolves, then drains and stops in order.
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_io(config, NodeIo::from(listeners), metrics, shutdown).await
}

/// [`run`] over injected I/O ([`NodeIo`]): the simulation's network, etcd
/// client and store, or production's listeners.
pub async fn run_with_io(
    config: Config,
    io: NodeIo,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let NodeIo {
        grpc: grpc_incoming,
        peers,
        http: http_listener,
        etcd,
        store: injected_store,
        environment,
    } = io;
    let grpc_addr = grpc_incoming.local_addr();
    let http_addr = match &http_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let peer_addr = peers.as_ref().map(Peers::local_addr);
    let mut shutdown = std::pin::pin!(shutdown);
    let peer_tls = matches!(peers, Some(Peers(PeersKind::Tls(_))));
    let security = Security::load(&config, peer_tls)?;
    if matches!(grpc_incoming.kind, IncomingKind::Stream(_)) && security.client.is_some() {
        anyhow::bail!("client API TLS is not served over injected connections");
    }
    let auth = crate::auth::start(&config)?;
    // Joining can wait long (an etcd that does not answer, migrations): a
    // stop asked for meanwhile ends it. Nothing is served yet, so there is
    // nothing to drain; a lease already taken expires with its TTL.
    let joined = if config.is_clustered() {
        let peer_channels = match (&peers, &security.peer) {
            (Some(Peers(PeersKind::Tls(_))), Some(tls)) => {
                PeerChannels::Tls(Arc::clone(&tls.client))
            }
            (Some(Peers(PeersKind::Plaintext { dialer, .. })), _) => {
                PeerChannels::Plaintext(dialer.clone())
            }
            (Some(Peers(PeersKind::Tls(_))), None) => {
                anyhow::bail!("cluster mode without peer TLS")
            }
            (None, _) => anyhow::bail!("cluster mode without a peer listener"),
        };
        let join_io = cluster::JoinIo {
            peer_addr: peer_addr.context("cluster mode without a peer listener")?,
            peers: peer_channels,
            etcd,
            store: injected_store,
        };
        tokio::select! {
            joined = cluster::join(&config, grpc_addr, join_io) => Some(joined?),
            () = &mut shutdown => {
                tracing::info!("shutdown requested while joining the cluster: stopping");
                return Ok(());
            }
        }
    } else {
        None
    };
    let store: Arc<dyn Store> = match &joined {
        Some(joined) => Arc::clone(&joined.store),
        None => Arc::new(
            EmbeddedStore::open(&config.server.data_dir).with_context(|| {
                format!(
                    "cannot open the store in {}",
                    config.server.data_dir.display()
                )
            })?,
        ),
    };
    let (writer, writer_task) = GroupCommitWriter::start(Arc::clone(&store), config.writer());
    let admission = Arc::new(config.admission());
    let routing = joined.as_ref().map(|joined| joined.routing.clone());
    let positions = config.positions();
    let holds = Arc::clone(&positions.holds);
    let runtime = Arc::new(routed(
        EntityRuntime::new(
            positions,
            Arc::clone(&store),
            writer.clone(),
            Arc::clone(&admission),
            config.runtime(environment.clock.clone()),
        ),
        routing.clone(),
    ));
    let returns = Arc::new(routed(
        EntityRuntime::new(
            ReturnEntity::new(Arc::clone(&runtime)),
            Arc::clone(&store),
            writer.clone(),
            Arc::clone(&admission),
            config.runtime(environment.clock.clone()),
        ),
        routing.clone(),
    ));
    let orders = Arc::new(routed(
        EntityRuntime::new(
            OrderEntity::new(Arc::clone(&runtime)),
            Arc::clone(&store),
            writer.clone(),
            Arc::clone(&admission),
            config.runtime(environment.clock.clone()),
        ),
        routing,
    ));
    let background = Background::start(
        Arc::clone(&store),
        vec![
            Arc::clone(&runtime) as Arc<dyn TimerTarget>,
            Arc::clone(&returns) as Arc<dyn TimerTarget>,
            Arc::clone(&orders) as Arc<dyn TimerTarget>,
        ],
        joined.as_ref().map(|joined| Arc::clone(&joined.table)),
        config.background(),
        environment.clock.clone(),
    );
    let node_id = config.effective_node_id();
    let ready = Arc::new(AtomicBool::new(false));
    let readiness = Readiness {
        started: Arc::clone(&ready),
        membership: joined.as_ref().map(|joined| Arc::clone(&joined.membership)),
        store_health: joined
            .as_ref()
            .map(|joined| Arc::clone(&joined.store_health)),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until ready (tonic-health starts the overall status at
    // SERVING).
    set_health(&health, false).await;
    // Reflection describes the client API only: the internal peer API is
    // neither listed nor resolvable on the client port.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(client_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let inventory = InventoryServiceServer::new(InventoryApi::new(Arc::clone(&runtime)))
        .max_decoding_message_size(config.server.max_message_bytes)
        .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024));
    let returns_service = ReturnsServiceServer::new(ReturnsApi::new(
        Arc::clone(&returns),
        ReturnPolicies(config.returns.policies.clone()),
    ))
    .max_decoding_message_size(config.server.max_message_bytes)
    .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024));
    let orders_service = OrderServiceServer::new(OrdersApi::new(Arc::clone(&orders)))
        .max_decoding_message_size(config.server.max_message_bytes)
        .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024));
    let admin_api = Arc::new(AdminApi {
        node_id: node_id.clone(),
        cluster: joined
            .as_ref()
            .map(|joined| (Arc::clone(&joined.membership), Arc::clone(&joined.table))),
        admission: Arc::clone(&admission),
        positions: Arc::clone(&runtime),
        returns: Arc::clone(&returns),
        readiness: readiness.clone(),
    });
    let admin = AdminServiceServer::from_arc(Arc::clone(&admin_api))
        .max_decoding_message_size(config.server.max_message_bytes);
    let routing = RoutingServiceServer::new(RoutingApi {
        node_id: node_id.clone(),
        membership: joined.as_ref().map(|joined| Arc::clone(&joined.membership)),
    })
    .max_decoding_message_size(config.server.max_message_bytes);
    // Forwarded messages carry whole commands; allow the largest a client
    // may send plus framing.
    let peer = joined.as_ref().map(|joined| {
        PeerServiceServer::new(PeerApi::new(
            node_id.clone(),
            vec![
                Arc::clone(&runtime) as _,
                Arc::clone(&returns) as _,
                Arc::clone(&orders) as _,
            ],
            joined.membership.view(),
            match &peers {
                Some(Peers(PeersKind::Plaintext { .. })) => CallerCheck::Anyone,
                _ => CallerCheck::MemberCertificate,
            },
        ))
        .max_decoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024))
        .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024))
    });

    // Servers stop last: they keep forwarding and answering while the node
    // drains. The readiness follower stops first.
    let stop_servers = CancellationToken::new();
    let stop_readiness = CancellationToken::new();
    let stop_subscriptions = CancellationToken::new();
    let events = EventServiceServer::new(EventsApi::new(
        Arc::clone(&store),
        writer.events_committed(),
        EventsSettings {
            poll_interval: Duration::from_millis(config.events.event_poll_interval_ms),
            max_subscriptions: config.events.max_subscriptions,
        },
        stop_subscriptions.clone(),
    ))
    .max_decoding_message_size(config.server.max_message_bytes)
    .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024));
    let webhooks = WebhookServiceServer::new(WebhooksApi::new(
        Arc::clone(&store),
        config.events.webhooks(),
    ))
    .max_decoding_message_size(config.server.max_message_bytes);
    // Push keys are sharded like entities: the cluster's shard count, or
    // the configured one on a single node (which owns them all).
    let push_shards = joined
        .as_ref()
        .map_or(config.cluster.shard_count, |joined| {
            joined.table.shard_count()
        });
    let channels = ChannelServiceServer::new(ChannelsApi::new(
        Arc::clone(&store),
        Arc::clone(&runtime),
        push_shards,
    ))
    .max_decoding_message_size(config.server.max_message_bytes)
    .max_encoding_message_size(config.server.max_message_bytes.max(4 * 1024 * 1024));
    let sink_context = SinkContext {
        store: Arc::clone(&store),
        shards: joined.as_ref().map(|joined| Arc::clone(&joined.table)),
        committed: writer.events_committed(),
        poll_interval: Duration::from_millis(config.events.event_poll_interval_ms),
        webhooks: config.events.webhooks(),
        nats: config.events.nats(),
        pause_before_cursor: Config::failpoint_ms("SINK_PAUSE_BEFORE_CURSOR_MS"),
    };
    let sinks = Sinks::start(sink_context.clone());
    let channel_tasks = Channels::start(
        sink_context,
        WorkerContext {
            store: Arc::clone(&store),
            positions: Arc::clone(&runtime),
            catalog: Arc::new(Catalog::new(Arc::clone(&store))),
            shards: joined.as_ref().map(|joined| Arc::clone(&joined.table)),
            shard_count: push_shards,
            marked: Arc::new(crate::channels::marks::MarkFeed::default()),
            settings: config.channels.worker(),
            credentials: config.channels.credentials(),
        },
    );
    // Inbound webhooks (docs/inbound-webhooks.md): taken in on the HTTP
    // port, applied by the owner of each resource's shard.
    let inbound = crate::inbound::Inbound::start(
        Arc::clone(&store),
        joined.as_ref().map(|joined| Arc::clone(&joined.table)),
        push_shards,
        config.channels.credentials(),
        crate::inbound::shopify::Applier {
            store: Arc::clone(&store),
            orders: OrdersApi::new(Arc::clone(&orders)),
            inventory: InventoryApi::new(Arc::clone(&runtime)),
            returns: ReturnsApi::new(
                Arc::clone(&returns),
                ReturnPolicies(config.returns.policies.clone()),
            ),
        },
    );
    crate::census::describe_business_metrics();
    let stop_census = CancellationToken::new();
    let census = tokio::spawn(
        Census {
            store: Arc::clone(&store),
            shards: joined.as_ref().map(|joined| Arc::clone(&joined.table)),
            holds,
            interval: Duration::from_secs(config.runtime.census_interval_secs),
        }
        .run(stop_census.clone()),
    );
    // The ERP worker (docs/erp.md) stops with the census: its work is
    // derived from the cases again, by this node after a restart or by the
    // shards' next owners.
    let erp_worker = config.erp.enabled().then(|| {
        tokio::spawn(
            crate::erp::ErpWorker {
                store: Arc::clone(&store),
                shards: joined.as_ref().map(|joined| Arc::clone(&joined.table)),
                returns: Arc::clone(&returns),
                settings: config.erp.clone(),
            }
            .run(stop_census.clone()),
        )
    });
    let servers = TaskTracker::new();
    // Calls of the APIs the node admits are shed before they are decoded
    // when the node is at its limit, with admission's own refusal. Not the
    // order API's: a call waits for its saga (a commit per step, one after
    // another), so its time says nothing of queueing, and taken for queue
    // time it cut the limit to its floor (64 callers of 3-line orders: 91
    // ok/s and 442,519 refusals with it, 1,742 ok/s and none without);
    // each step's position mutation is still admitted.
    let shedder = Shedder::new(
        config.shed(),
        to_status(&admission.refusal("node")),
        &[
            <InventoryServiceServer<InventoryApi> as tonic::server::NamedService>::NAME,
            <ReturnsServiceServer<ReturnsApi> as tonic::server::NamedService>::NAME,
        ],
    );
    // One set of routes for the gRPC port and the JSON door (json_door.rs),
    // so every service added here is reachable through both.
    let client_routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(auth.guard(inventory))
        .add_service(auth.guard(returns_service))
        .add_service(auth.guard(orders_service))
        .add_service(auth.guard(admin))
        .add_service(auth.guard(routing))
        .add_service(auth.guard(events))
        .add_service(auth.guard(webhooks))
        .add_service(auth.guard(channels));
    let shed = ShedLayer::new(shedder);
    let json_door = config
        .server
        .json_door
        .then(|| tower::Layer::layer(&shed, client_routes.clone()));
    let client_router = tonic::transport::Server::builder()
        .layer(shed)
        .max_concurrent_streams(Some(config.server.max_concurrent_streams))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(client_routes);
    let client_policy = AcceptPolicy {
        listener: "client",
        max_per_client: config.server.max_connections_per_client,
        max_total: config.server.max_connections,
        handshake_timeout: Duration::from_millis(config.server.tls_handshake_timeout_ms),
    };
    let grpc_stop = stop_servers.clone();
    let grpc = match (grpc_incoming.kind, &security.client) {
        (IncomingKind::Listener(listener), Some(tls)) => {
            servers.spawn(client_router.serve_with_incoming_shutdown(
                listen::tls(listener, client_policy, Arc::clone(tls), grpc_stop.clone()),
                grpc_stop.cancelled_owned(),
            ))
        }
        (IncomingKind::Listener(listener), None) => {
            servers.spawn(client_router.serve_with_incoming_shutdown(
                listen::plain(listener, client_policy, grpc_stop.clone()),
                grpc_stop.cancelled_owned(),
            ))
        }
        // Refused at the start when the client API has TLS.
        (IncomingKind::Stream(connections), _) => servers.spawn(
            client_router.serve_with_incoming_shutdown(connections, grpc_stop.cancelled_owned()),
        ),
    };
    // Node-to-node: its own port, mTLS only. A node keeps one channel per
    // peer (two while its certificate rotates), so the budget before the
    // handshake stays small: anyone who reaches the port gets it.
    let peer_policy = AcceptPolicy {
        listener: "peer",
        max_per_client: config.cluster.peer_max_connections_per_client,
        max_total: PEER_MAX_CONNECTIONS,
        handshake_timeout: Duration::from_millis(config.server.tls_handshake_timeout_ms),
    };
    let peer_stop = stop_servers.clone();
    let peer_router = peer.map(|peer| {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(config.server.max_concurrent_streams.max(1_024)))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(peer)
    });
    let peer_server = match (peer_router, peers.map(|peers| peers.0), &security.peer) {
        (Some(router), Some(PeersKind::Tls(listener)), Some(tls)) => {
            Some(servers.spawn(router.serve_with_incoming_shutdown(
                listen::tls(
                    listener,
                    peer_policy,
                    Arc::clone(&tls.server),
                    peer_stop.clone(),
                ),
                peer_stop.cancelled_owned(),
            )))
        }
        (Some(router), Some(PeersKind::Plaintext { incoming, .. }), _) => match incoming.kind {
            IncomingKind::Listener(listener) => {
                Some(servers.spawn(router.serve_with_incoming_shutdown(
                    listen::plain(listener, peer_policy, peer_stop.clone()),
                    peer_stop.cancelled_owned(),
                )))
            }
            IncomingKind::Stream(connections) => Some(servers.spawn(
                router.serve_with_incoming_shutdown(connections, peer_stop.cancelled_owned()),
            )),
        },
        _ => None,
    };
    let stop_reload = CancellationToken::new();
    let reload = tokio::spawn(crate::tls::watch(
        security.reloadables(),
        Duration::from_secs(config.server.tls_reload_interval_secs),
        stop_reload.clone(),
    ));

    let mut app =
        crate::http::router(readiness.clone(), metrics, admin_api).merge(inbound.routes());
    if let Some(api) = json_door {
        app = app.merge(
            crate::json_door::routes(
                skuld_proto::FILE_DESCRIPTOR_SET,
                api,
                config.server.max_message_bytes,
            )
            .context("cannot build the JSON door")?,
        );
    }
    let http_stop = stop_servers.clone().cancelled_owned();
    let http = http_listener.map(|listener| {
        servers.spawn(async move {
            match listener.0 {
                HttpKind::Tcp(listener) => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(http_stop)
                        .await
                }
                HttpKind::Injected(listener) => {
                    axum::serve(BoxedListener(listener), app)
                        .with_graceful_shutdown(http_stop)
                        .await
                }
            }
        })
    });

    let mut running = joined.as_ref().map(|joined| {
        cluster::start(
            &config,
            joined,
            Arc::clone(&runtime),
            Arc::clone(&returns),
            Arc::clone(&orders),
        )
    });
    ready.store(true, Ordering::Release);
    // gRPC health agrees with /readyz before anyone is told the node is up
    // (the ports file, the log line); the follower keeps it so from here.
    set_health(&health, readiness.check().is_ok()).await;
    let readiness_task = tokio::spawn(follow_readiness(
        readiness,
        health.clone(),
        stop_readiness.clone(),
    ));
    if !config.server.ports_file.as_os_str().is_empty() {
        write_ports_file(&config.server.ports_file, grpc_addr, peer_addr, http_addr)?;
    }
    metrics::gauge!("skuld_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    if config.is_clustered() {
        tracing::info!(%grpc_addr, ?http_addr, node = %node_id, "skuld node ready (cluster mode)");
    } else {
        tracing::info!(%grpc_addr, ?http_addr, data_dir = %config.server.data_dir.display(), "skuld node ready");
    }

    // Another process taking this node id (this one was paused or cut off
    // past its lease) ends the process at once, without a handoff: the
    // claims under this id are the other process's now.
    let displaced = async {
        match &joined {
            Some(joined) => {
                let mut displaced = joined.membership.displaced();
                // The watch's read guard ends with this statement: it must
                // not be held across an await (the future must be Send).
                let reason = displaced
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .map(|reason| reason.clone().unwrap_or_default());
                match reason {
                    Some(reason) => reason,
                    // The membership outlives this task: never in practice.
                    None => std::future::pending().await,
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown => {}
        reason = displaced => {
            tracing::error!(%reason, "this node id is another process's now: stopping without a handoff");
            anyhow::bail!("stopped: {reason}");
        }
    }
    // One deadline for the whole drain: each step gets what is left.
    let deadline = Instant::now() + Duration::from_secs(config.server.drain_timeout_secs);
    let left = || deadline.saturating_duration_since(Instant::now());
    tracing::info!(
        drain_timeout_secs = config.server.drain_timeout_secs,
        "shutdown requested: draining"
    );
    ready.store(false, Ordering::Release);
    stop_readiness.cancel();
    stop_census.cancel();
    // Subscriptions end first (their streams would hold the servers' own
    // graceful stop open); subscribers resume elsewhere with their tokens.
    stop_subscriptions.cancel();
    let _ = readiness_task.await;
    let _ = tokio::time::timeout(left(), census).await;
    if let Some(erp_worker) = erp_worker {
        let _ = tokio::time::timeout(left(), erp_worker).await;
    }
    set_health(&health, false).await;
    // Sinks stop before the handoff: the next owner goes on from their
    // durable cursors (a window cut short is delivered again).
    if tokio::time::timeout(left(), sinks.stop()).await.is_err() {
        tracing::warn!("sinks still stopping at the drain deadline; going on");
    }
    // The channel worker too: the dirty records it leaves are the next
    // owner's work.
    if tokio::time::timeout(left(), channel_tasks.stop())
        .await
        .is_err()
    {
        tracing::warn!("channel tasks still stopping at the drain deadline; going on");
    }
    // The webhook processor too: what it had not applied stays in the
    // inbox for the shards' next owners.
    if tokio::time::timeout(left(), inbound.stop()).await.is_err() {
        tracing::warn!("the webhook processor still stopping at the drain deadline; going on");
    }
    if let Some(running) = running.as_mut() {
        running.hand_over(deadline).await;
    }
    admission.drain(left()).await;
    if tokio::time::timeout(left(), background.stop())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still stopping at the drain deadline; going on");
    }
    // Orders and return cases first: their steps act on positions.
    if tokio::time::timeout(left() / 3, orders.stop())
        .await
        .is_err()
    {
        tracing::warn!("order actors still stopping at the drain deadline; going on");
    }
    // Each runtime stops its actors concurrently; positions always get their turn (their
    // queued callers are answered), even when returns used up the budget.
    if tokio::time::timeout(left() / 2, returns.stop())
        .await
        .is_err()
    {
        tracing::warn!("return actors still stopping at the drain deadline; going on");
    }
    if tokio::time::timeout(left(), runtime.stop()).await.is_err() {
        tracing::warn!("position actors still stopping at the drain deadline; going on");
    }
    // The last steps (revoking the lease, closing the servers, flushing
    // abandoned writes) share one short grace past the deadline, so that a
    // drain which used it all still tells etcd it is gone.
    let grace_deadline = deadline + LAST_STEPS_GRACE;
    let left = || grace_deadline.saturating_duration_since(Instant::now());
    if let Some(running) = running {
        running.leave(left()).await;
    }
    stop_servers.cancel();
    servers.close();
    if tokio::time::timeout(left(), servers.wait()).await.is_err() {
        tracing::warn!("servers still open at the drain deadline");
    }
    stop_reload.cancel();
    let _ = reload.await;
    if grpc.is_finished() {
        if let Ok(Err(error)) = grpc.await {
            tracing::warn!(%error, "gRPC server stopped with an error");
        }
    }
    if let Some(peer_server) = peer_server {
        if peer_server.is_finished() {
            if let Ok(Err(error)) = peer_server.await {
                tracing::warn!(%error, "peer gRPC server stopped with an error");
            }
        }
    }
    if let Some(http) = http {
        if http.is_finished() {
            if let Ok(Err(error)) = http.await {
                tracing::warn!(%error, "HTTP server stopped with an error");
            }
        }
    }
    // The writer ends once the last handle (held by the runtime) is gone and
    // its queue is flushed: what was acknowledged is already durable, this
    // only waits for writes of requests that were abandoned.
    drop(returns);
    drop(orders);
    drop(runtime);
    drop(writer);
    if tokio::time::timeout(left(), writer_task).await.is_err() {
        tracing::warn!("group-commit writer still flushing at the drain deadline");
    }
    tracing::info!("skuld node stopped");
    Ok(())
}

/// In cluster mode, a runtime serves its own shards and forwards the rest.
fn routed<E: Entity>(runtime: EntityRuntime<E>, routing: Option<Routing>) -> EntityRuntime<E> {
    match routing {
        Some(routing) => runtime.with_routing(routing),
        None => runtime,
    }
}

/// Writes `{"grpc": ..., "peer": ..., "http": ...}` atomically, for
/// harnesses that bind port 0 and need to learn the ports (`peer` is null
/// outside cluster mode, `http` without an HTTP listener).
fn write_ports_file(
    path: &Path,
    grpc: SocketAddr,
    peer: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "grpc": grpc.to_string(),
        "peer": peer.map(|peer| peer.to_string()),
        "http": http.map(|http| http.to_string()),
    });
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, body.to_string())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The TLS of the node's listeners and peer client, read at start.
struct Security {
    /// The client API's, when it has TLS.
    client: Option<Arc<ServerTls>>,
    /// Cluster mode's: the peer listener's and the peer client's.
    peer: Option<PeerTls>,
}

struct PeerTls {
    server: Arc<ServerTls>,
    client: Arc<PeerClientTls>,
}

impl Security {
    /// `peer_tls`: the peer hop is production's mTLS (not injected
    /// plaintext), so cluster mode reads the peer TLS files.
    fn load(config: &Config, peer_tls: bool) -> anyhow::Result<Self> {
        let server = &config.server;
        let client = if server.tls_cert_file.as_os_str().is_empty() {
            None
        } else {
            let client_auth = match (
                server.tls_client_ca_file.as_os_str().is_empty(),
                server.tls_require_client_cert,
            ) {
                (true, _) => ClientAuth::None,
                (false, false) => ClientAuth::Optional,
                (false, true) => ClientAuth::Required,
            };
            let files = TlsFiles::new(
                &server.tls_cert_file,
                &server.tls_key_file,
                &server.tls_client_ca_file,
            );
            Some(ServerTls::load("client", files, client_auth).context("client API TLS")?)
        };
        let peer = if config.is_clustered() && peer_tls {
            let cluster = &config.cluster;
            let files = TlsFiles::new(
                &cluster.peer_tls_cert_file,
                &cluster.peer_tls_key_file,
                &cluster.peer_tls_ca_file,
            );
            Some(PeerTls {
                server: ServerTls::load("peer", files.clone(), ClientAuth::Required)
                    .context("peer TLS")?,
                client: PeerClientTls::load(files).context("peer TLS")?,
            })
        } else {
            None
        };
        Ok(Self { client, peer })
    }

    fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        let mut reloadables: Vec<Arc<dyn Reloadable>> = Vec::new();
        if let Some(client) = &self.client {
            reloadables.push(Arc::clone(client) as _);
        }
        if let Some(peer) = &self.peer {
            reloadables.push(Arc::clone(&peer.server) as _);
            reloadables.push(Arc::clone(&peer.client) as _);
        }
        reloadables
    }
}

/// The descriptors of the client API (skuld.v1), without the internal
/// peer API's.
fn client_descriptors() -> anyhow::Result<prost_types::FileDescriptorSet> {
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(skuld_proto::FILE_DESCRIPTOR_SET)
        .context("cannot read the API's descriptors")?;
    set.file
        .retain(|file| !file.package().starts_with("skuld.internal"));
    Ok(set)
}
