//! The router: picks the channel for each request from the shard map,
//! learns from what replies say, and refreshes the map when it misses.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use skuld_proto::v1 as pb;
use skuld_proto::v1::routing_service_client::RoutingServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Response, Status};

use crate::map::{RouteKey, ShardMap};
use crate::pool::{ChannelPool, Channels};
use crate::refresh::RefreshGate;
use crate::{ClientError, OWNER_METADATA};

/// Metadata a node echoes on every answer it gives; a failure without it
/// never reached a node (a refused or broken connection).
const CORRELATION_ID: &str = "x-correlation-id";

/// Where requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// To the owner of the request's key when the map names it, else any node.
    Owner,
    /// Always to any node (round robin over the given endpoints), which
    /// forwards to the owner: what every other client does.
    Any,
}

/// How a [`Router`] connects.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// The nodes (or a load balancer) to start from and to fall back to.
    pub endpoints: Vec<String>,
    pub routing: Routing,
    /// For https:// endpoints: the CA of the nodes' client API certificates
    /// and an optional client identity, used for every node.
    pub tls: Option<ClientTlsConfig>,
    /// HTTP/2 connections per node.
    pub channels_per_endpoint: usize,
    pub connect_timeout: Duration,
    /// Deadline of one `GetShardMap`.
    pub map_timeout: Duration,
    /// Fetches of the map start at most this often.
    pub refresh_interval: Duration,
    /// `Bearer <token>` for `GetShardMap` when the nodes want a token.
    pub authorization: Option<AsciiMetadataValue>,
}

impl RouterOptions {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            routing: Routing::Owner,
            tls: None,
            channels_per_endpoint: 1,
            connect_timeout: Duration::from_secs(5),
            map_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_millis(500),
            authorization: None,
        }
    }
}

/// Where one request is sent.
#[derive(Debug, Clone)]
pub struct Route {
    pub channel: Channel,
    endpoint: Arc<str>,
    shard: Option<u32>,
    /// The owner the map named; `None` for any node.
    owner: Option<Arc<str>>,
}

impl Route {
    /// The node the map says owns the key, when the request goes to it.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Counts since the router was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Requests sent to the owner the map named.
    pub to_owner: u64,
    /// Requests sent to any node (no map, no owner known, or `Routing::Any`).
    pub to_any: u64,
    /// Requests sent to an owner that another node served, or that could
    /// not be reached.
    pub misses: u64,
    /// Requests sent again to another node after the owner could not be
    /// reached.
    pub retried: u64,
    /// Maps fetched.
    pub refreshes: u64,
}

#[derive(Default)]
struct Counters {
    to_owner: AtomicU64,
    to_any: AtomicU64,
    misses: AtomicU64,
    retried: AtomicU64,
    refreshes: AtomicU64,
}

struct Inner {
    options: RouterOptions,
    seeds: Vec<(Arc<str>, Arc<Channels>)>,
    next_seed: AtomicUsize,
    pool: ChannelPool,
    map: RwLock<Arc<ShardMap>>,
    gate: RefreshGate,
    counters: Counters,
}

/// An owner-aware client of a skuld cluster; cheap to clone, shared by
/// every caller.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    /// A router without a map yet: requests go to any node until the
    /// first reply triggers a fetch. Needs a Tokio runtime.
    pub fn new(options: RouterOptions) -> Result<Self, ClientError> {
        let pool = ChannelPool::new(
            options.channels_per_endpoint,
            options.tls.clone(),
            options.connect_timeout,
        );
        let seeds = options
            .endpoints
            .iter()
            .map(|endpoint| endpoint.trim())
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| {
                let endpoint: Arc<str> = Arc::from(endpoint);
                let channels = pool.channels(&endpoint)?;
                Ok((endpoint, channels))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        if seeds.is_empty() {
            return Err(ClientError::NoEndpoint);
        }
        let gate = RefreshGate::new(options.refresh_interval);
        if options.routing == Routing::Owner {
            gate.mark_stale();
        }
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                seeds,
                next_seed: AtomicUsize::new(0),
                pool,
                map: RwLock::new(Arc::new(ShardMap::default())),
                gate,
                counters: Counters::default(),
            }),
        })
    }

    /// [`Router::new`], then the map fetched once (with owner routing). A
    /// cluster that cannot answer it (down, or too old for
    /// `GetShardMap`) still gets every request, through any node.
    pub async fn connect(options: RouterOptions) -> Result<Self, ClientError> {
        let router = Self::new(options)?;
        if router.inner.options.routing == Routing::Owner
            && router.inner.gate.try_start(Instant::now())
        {
            let fetched = router.refresh().await;
            router.inner.gate.finish(fetched);
        }
        Ok(router)
    }

    pub fn routing(&self) -> Routing {
        self.inner.options.routing
    }

    /// The map in use.
    pub fn map(&self) -> Arc<ShardMap> {
        Arc::clone(&self.inner.map.read())
    }

    pub fn stats(&self) -> RouterStats {
        let counters = &self.inner.counters;
        RouterStats {
            to_owner: counters.to_owner.load(Ordering::Relaxed),
            to_any: counters.to_any.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            refreshes: counters.refreshes.load(Ordering::Relaxed),
        }
    }

    /// Where a request for `key` goes.
    pub fn route(&self, key: RouteKey<'_>) -> Route {
        if self.inner.options.routing == Routing::Any {
            return self.any(None, None);
        }
        let map = self.map();
        let shard = map.shard_of(key);
        if let Some((owner, endpoint)) = shard.and_then(|shard| map.owner(shard)) {
            // A map naming an endpoint that is no URI: use any node.
            if let Ok(channel) = self.inner.pool.channel(endpoint) {
                self.inner.counters.to_owner.fetch_add(1, Ordering::Relaxed);
                return Route {
                    channel,
                    endpoint: Arc::clone(endpoint),
                    shard,
                    owner: Some(Arc::clone(owner)),
                };
            }
        }
        self.any(shard, None)
    }

    /// Any node, round robin over the given endpoints, `avoid` if another
    /// one is given.
    fn any(&self, shard: Option<u32>, avoid: Option<&str>) -> Route {
        self.inner.counters.to_any.fetch_add(1, Ordering::Relaxed);
        let seeds = &self.inner.seeds;
        let mut at = self.inner.next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len();
        if seeds.len() > 1 && avoid == Some(&*seeds[at].0) {
            at = (at + 1) % seeds.len();
        }
        let (endpoint, channels) = &seeds[at];
        Route {
            channel: channels.pick(),
            endpoint: Arc::clone(endpoint),
            shard,
            owner: None,
        }
    }

    /// Sends a request for `key` with `send` to its owner, and once more
    /// to any node when the owner could not be reached at all (every
    /// mutation carries its idempotency key, so that is safe). What the
    /// reply says updates the map.
    pub async fn call<T, F, Fut>(&self, key: RouteKey<'_>, send: F) -> Result<Response<T>, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let route = self.route(key);
        let result = send(route.channel.clone()).await;
        if !self.observe(&route, &result) || route.owner.is_none() {
            return result;
        }
        self.inner.counters.retried.fetch_add(1, Ordering::Relaxed);
        let fallback = self.any(route.shard, Some(&route.endpoint));
        let result = send(fallback.channel.clone()).await;
        self.observe(&fallback, &result);
        result
    }

    /// Learns from the outcome of a request sent on `route`: a reply
    /// served by another node than the owner the map named, or an owner
    /// that could not be reached, makes the map stale (patched at once
    /// where the reply says enough). Returns whether the request never
    /// reached a node.
    pub fn observe<T>(&self, route: &Route, result: &Result<Response<T>, Status>) -> bool {
        let (metadata, failure): (&MetadataMap, Option<&Status>) = match result {
            Ok(response) => (response.metadata(), None),
            Err(status) => (status.metadata(), Some(status)),
        };
        let unreachable = failure.is_some_and(|status| {
            status.code() == Code::Unavailable
                && status.metadata().get(CORRELATION_ID).is_none()
                && status.metadata().get(OWNER_METADATA).is_none()
        });
        if self.inner.options.routing == Routing::Any {
            return unreachable;
        }
        let served_by = metadata
            .get(OWNER_METADATA)
            .and_then(|value| value.to_str().ok());
        match (&route.owner, served_by) {
            (Some(owner), _) if unreachable => {
                self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%owner, endpoint = %route.endpoint, "owner unreachable; any node until the map is fetched again");
                self.patch(|map| map.without_endpoint_of(owner));
                self.inner.gate.mark_stale();
            }
            (Some(owner), Some(served)) if **owner == *served => {}
            (owner, Some(served)) => {
                if owner.is_some() {
                    self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                    self.inner.gate.mark_stale();
                }
                if let Some(shard) = route.shard {
                    if !self.patch(|map| map.with_owner(shard, served)) && owner.is_none() {
                        // Served by a node the map has no endpoint for.
                        self.inner.gate.mark_stale();
                    }
                }
            }
            // Single node (no owner named), or a failure before any node
            // answered on an any-node route.
            (_, None) => {}
        }
        self.maybe_refresh();
        unreachable
    }

    /// Installs `change(map)` when it returns a new map.
    fn patch(&self, change: impl Fn(&ShardMap) -> Option<ShardMap>) -> bool {
        let mut map = self.inner.map.write();
        match change(&map) {
            Some(patched) => {
                *map = Arc::new(patched);
                true
            }
            None => false,
        }
    }

    /// Starts a background fetch of the map when it is stale and the gate
    /// allows one now.
    fn maybe_refresh(&self) {
        if !self.inner.gate.is_stale() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.inner.gate.try_start(Instant::now()) {
            return;
        }
        let router = self.clone();
        runtime.spawn(async move {
            let fetched = router.refresh().await;
            router.inner.gate.finish(fetched);
        });
    }

    /// Fetches the map from the first node that answers (the given
    /// endpoints first, then every node the map knows) and installs it
    /// unless it is older than the one in use. Returns whether one was
    /// fetched.
    pub async fn refresh(&self) -> bool {
        let known = self.map();
        let mut candidates: Vec<Arc<str>> = self
            .inner
            .seeds
            .iter()
            .map(|(endpoint, _)| Arc::clone(endpoint))
            .collect();
        for endpoint in known.endpoints() {
            if !candidates.contains(endpoint) {
                candidates.push(Arc::clone(endpoint));
            }
        }
        for endpoint in candidates {
            let Ok(channel) = self.inner.pool.channel(&endpoint) else {
                continue;
            };
            let mut request = tonic::Request::new(pb::GetShardMapRequest {});
            request.set_timeout(self.inner.options.map_timeout);
            if let Some(authorization) = &self.inner.options.authorization {
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
            }
            let mut client = RoutingServiceClient::new(channel);
            let call = client.get_shard_map(request);
            let reply = match tokio::time::timeout(self.inner.options.map_timeout, call).await {
                Ok(Ok(reply)) => reply.into_inner(),
                Ok(Err(status)) => {
                    tracing::debug!(%endpoint, code = ?status.code(), "GetShardMap failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%endpoint, "GetShardMap timed out");
                    continue;
                }
            };
            let Some(fetched) = ShardMap::from_reply(&reply) else {
                tracing::debug!(%endpoint, function = %reply.shard_function, "shard map not usable");
                continue;
            };
            self.install(fetched);
            self.inner
                .counters
                .refreshes
                .fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Replaces the map unless `fetched` is older than the one in use (a
    /// node whose view of etcd lags).
    fn install(&self, fetched: ShardMap) {
        let mut map = self.inner.map.write();
        if map.shard_count() == 0 || fetched.version() >= map.version() {
            *map = Arc::new(fetched);
        }
    }

    #[cfg(test)]
    fn install_reply(&self, reply: &pb::GetShardMapResponse) {
        if let Some(map) = ShardMap::from_reply(reply) {
            self.install(map);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::map::tests::{position, reply};
    use tonic::metadata::MetadataValue;

    fn served_by<T: Default>(node: &str) -> Result<Response<T>, Status> {
        let mut response = Response::new(T::default());
        response
            .metadata_mut()
            .insert(OWNER_METADATA, MetadataValue::try_from(node).unwrap());
        Ok(response)
    }

    fn router(routing: Routing) -> Router {
        let mut options = RouterOptions::new(["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        options.routing = routing;
        // No background fetch during the test: nothing answers on these ports.
        options.refresh_interval = Duration::from_secs(3600);
        let router = Router::new(options).unwrap();
        if routing == Routing::Owner {
            // Taken as fetched at the start.
            assert!(router.inner.gate.try_start(Instant::now()));
            router.inner.gate.finish(true);
        }
        router
    }

    #[tokio::test]
    async fn without_a_map_every_request_goes_to_any_node() {
        let router = router(Routing::Owner);
        let key = position("SKU-1");
        let route = router.route(RouteKey::Position(&key));
        assert_eq!(route.owner(), None);
        assert!(route.endpoint().starts_with("http://127.0.0.1:"));
        assert_eq!(router.stats().to_any, 1);
    }

    #[tokio::test]
    async fn with_a_map_a_key_goes_to_its_owner_and_any_routing_ignores_it() {
        let nodes = [
            ("a", "http://a:7070"),
            ("b", "http://b:7070"),
            ("c", "http://c:7070"),
        ];
        let map = reply(5, 64, &nodes);
        let owner = Router::new(RouterOptions::new(["http://seed:7070"])).unwrap();
        owner.install_reply(&map);
        let any = router(Routing::Any);
        any.install_reply(&map);
        for sku in ["SKU-1", "SKU-2", "SKU-3", "SKU-4"] {
            let key = position(sku);
            let shard = owner.map().shard_of(RouteKey::Position(&key)).unwrap();
            let (expected, endpoint) = nodes[shard as usize % 3];
            let route = owner.route(RouteKey::Position(&key));
            assert_eq!(route.owner(), Some(expected));
            assert_eq!(route.endpoint(), endpoint);
            assert_eq!(any.route(RouteKey::Position(&key)).owner(), None);
        }
        assert_eq!(owner.route(RouteKey::Any).owner(), None);
    }

    #[tokio::test]
    async fn a_reply_from_another_node_moves_the_shard_and_marks_the_map_stale() {
        let router = router(Routing::Owner);
        router.install_reply(&reply(
            5,
            8,
            &[("a", "http://a:7070"), ("b", "http://b:7070")],
        ));
        let key = position("SKU-1");
        let route = router.route(RouteKey::Position(&key));
        let first = route.owner().unwrap().to_owned();
        let other = if first == "a" { "b" } else { "a" };
        router.observe(&route, &served_by::<()>(&first));
        assert!(!router.inner.gate.is_stale(), "a hit changes nothing");
        assert_eq!(router.stats().misses, 0);
        router.observe(&route, &served_by::<()>(other));
        assert!(router.inner.gate.is_stale());
        assert_eq!(router.stats().misses, 1);
        assert_eq!(router.route(RouteKey::Position(&key)).owner(), Some(other));
        // A newer map wins over the patch; an older one is ignored.
        let mut newer = reply(6, 8, &[("a", "http://a:7070"), ("b", "http://b:7070")]);
        let shard = route.shard.unwrap() as usize;
        newer.shards[shard].owner = first.clone();
        router.install_reply(&reply(4, 8, &[("c", "http://c:7070")]));
        assert_eq!(router.map().version(), 5);
        router.install_reply(&newer);
        assert_eq!(
            router.route(RouteKey::Position(&key)).owner(),
            Some(first.as_str())
        );
    }

    #[tokio::test]
    async fn an_unreachable_owner_sends_its_shards_to_any_node() {
        let router = router(Routing::Owner);
        router.install_reply(&reply(5, 8, &[("a", "http://a:7070")]));
        let key = position("SKU-1");
        let route = router.route(RouteKey::Position(&key));
        assert_eq!(route.owner(), Some("a"));
        // What tonic returns when the connection is refused: no metadata.
        let refused: Result<Response<()>, Status> = Err(Status::unavailable("tcp connect error"));
        assert!(router.observe(&route, &refused));
        assert!(router.inner.gate.is_stale());
        assert_eq!(router.route(RouteKey::Position(&key)).owner(), None);
        // A node's own UNAVAILABLE (a shard moving) reached a node.
        let mut moving = Status::unavailable("shard moving");
        moving
            .metadata_mut()
            .insert(CORRELATION_ID, MetadataValue::from_static("c-1"));
        assert!(!router.observe(&route, &Err::<Response<()>, _>(moving)));
    }

    #[tokio::test]
    async fn an_any_node_reply_teaches_the_owner() {
        let router = router(Routing::Owner);
        let mut map = reply(5, 8, &[("a", "http://a:7070"), ("b", "http://b:7070")]);
        for shard in &mut map.shards {
            shard.owner.clear();
        }
        router.install_reply(&map);
        let key = position("SKU-1");
        let route = router.route(RouteKey::Position(&key));
        assert_eq!(route.owner(), None);
        router.observe(&route, &served_by::<()>("b"));
        assert!(!router.inner.gate.is_stale(), "learned, nothing missed");
        assert_eq!(router.route(RouteKey::Position(&key)).owner(), Some("b"));
        // A node the map does not know: only a fetch tells its endpoint.
        let other = position("SKU-2");
        let route = router.route(RouteKey::Position(&other));
        if route.owner().is_none() {
            router.observe(&route, &served_by::<()>("new-node"));
            assert!(router.inner.gate.is_stale());
        }
    }

    #[tokio::test]
    async fn call_sends_once_more_to_another_node_when_the_owner_is_unreachable() {
        let router = router(Routing::Owner);
        router.install_reply(&reply(5, 8, &[("a", "http://127.0.0.1:3")]));
        let key = position("SKU-1");
        let attempts = std::sync::Mutex::new(Vec::new());
        let result = router
            .call(RouteKey::Position(&key), |channel| {
                let _ = channel;
                let attempt = {
                    let mut attempts = attempts.lock().unwrap();
                    attempts.push(());
                    attempts.len()
                };
                async move {
                    if attempt == 1 {
                        Err(Status::unavailable("tcp connect error"))
                    } else {
                        served_by::<()>("a")
                    }
                }
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(attempts.lock().unwrap().len(), 2);
        let stats = router.stats();
        assert_eq!((stats.to_owner, stats.to_any, stats.retried), (1, 1, 1));
    }
}
