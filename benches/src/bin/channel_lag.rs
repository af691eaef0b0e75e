//! `channel-lag`: how far behind skuld the four sales channels are (issue 16,
//! "Numbers for the closing note").
//!
//! Starts the Shopify, Amazon, Walmart and Adobe Commerce emulators in this
//! process with their default configurations (the production budgets:
//! Shopify Standard plan, 100 points/s, bucket 2,000; Amazon listings 5/s
//! burst 10; Walmart 200 inventory calls a minute, 10 feeds an hour; Adobe
//! without a host limit), seeds them with `--skus` SKUs at every location
//! of the network, starts a release `skuld serve` and defines one channel
//! per kind through the ChannelService (Shopify and Adobe per location,
//! Amazon and Walmart per SKU, all on the same network). It stocks every
//! position, waits until the push worker has looked at every target, then
//! runs a closed loop of position changes spread uniformly over SKU x
//! location for `--duration` seconds, waits until every emulator shows what
//! skuld's `GetChannelAvailability` says, and reports per channel:
//!
//! - end-to-end push lag: from a change's OK to the first moment the
//!   emulator's remote state shows it (sampled every `--poll-ms`). Every
//!   change is a decrease (a reservation of 1 or a sale of 1), so each
//!   target's value only falls and "the channel shows this change" is
//!   exact: the remote figure is at or below the value the change left.
//! - the node's own `skuld_channel_push_lag_seconds` (desired value seen by
//!   the worker to acknowledgement), as histogram bucket bounds;
//! - write calls and items (the emulators' recorders), read calls, pushes
//!   per 1,000 position changes, budget violations (requests an emulator
//!   refused for a rate limit), time to converge after the load stopped;
//! - node CPU per change (`/proc/<pid>/stat`, over the load window).
//!
//! ```text
//! cargo build --release -p skuld-node -p skuld-benches --bin channel-lag
//! target/release/channel-lag                         # all four, 1,000 SKUs x 2 locations, 30 s
//! target/release/channel-lag --channels shopify --rate 0 --json
//! ```

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use skuld_benches::node::{cpu_seconds, default_binary, SpawnedNode};
use skuld_emulators::adobe::{AdobeConfig, Stock};
use skuld_emulators::shopify::Levels;
use skuld_emulators::{Emulators, EmulatorsConfig, RecordedRequest};
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Channel, Endpoint};

const TENANT: &str = "bench";
/// Shopify item ids (and so skuld's SKU names: a SKU that is a number is
/// its own inventory item id, so 1,000 SKUs need no 1,000 mapping
/// settings; an account holds at most 32).
const FIRST_ITEM: u64 = 100_001;
/// The Adobe source of the first location (the stock's reservation source).
const ADOBE_DEFAULT_SOURCE: &str = "default";

/// std's Mutex, taking over a poisoned lock (a benchmark reports rather
/// than aborts).
struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Shopify,
    Amazon,
    Walmart,
    Adobe,
}

impl Kind {
    /// The channel id in skuld (also its metrics label).
    fn id(self) -> &'static str {
        match self {
            Kind::Shopify => "shopify",
            Kind::Amazon => "amazon",
            Kind::Walmart => "walmart",
            Kind::Adobe => "adobe",
        }
    }

    fn per_location(self) -> bool {
        matches!(self, Kind::Shopify | Kind::Adobe)
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "channel-lag",
    about = "Push lag of skuld's channel worker against the four channel emulators (issue 16)"
)]
struct Args {
    /// SKUs (each at every location of the network).
    #[arg(long, default_value_t = 1_000)]
    skus: usize,
    /// Locations of the network (DC1, DC2, ...).
    #[arg(long, default_value_t = 2)]
    locations: usize,
    /// The channels to define (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "shopify,amazon,walmart,adobe"
    )]
    channels: Vec<Kind>,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Closed-loop callers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Position changes per second over all callers (0: as fast as the node
    /// answers).
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Units stocked per position before the load (every change takes 1).
    #[arg(long, default_value_t = 1_000)]
    stock: i64,
    /// Seconds to wait for the worker to look at every target before the load.
    #[arg(long, default_value_t = 600.0)]
    warm_timeout: f64,
    /// Seconds to wait after the load for every channel to show skuld's figures.
    #[arg(long, default_value_t = 600.0)]
    converge_timeout: f64,
    /// How often the emulators' remote state is sampled, in milliseconds.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// `min_push_interval_ms` of every channel (0: skuld's default, 1,000).
    #[arg(long, default_value_t = 0)]
    min_push_interval_ms: u64,
    /// The skuld binary (default target/release/skuld of this workspace).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Extra arguments for `skuld serve` (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Random seed of the load.
    #[arg(long, default_value_t = 16)]
    seed: u64,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// The benchmark's names for things.
#[derive(Clone)]
struct Layout {
    skus: Vec<String>,
    locations: Vec<String>,
    kinds: Vec<Kind>,
}

impl Layout {
    fn position(&self, sku: usize, location: usize) -> usize {
        sku * self.locations.len() + location
    }

    /// A channel's targets: (sku, location) per location, else (sku, None).
    fn targets(&self, kind: Kind) -> Vec<(usize, Option<usize>)> {
        let mut targets = Vec::new();
        for sku in 0..self.skus.len() {
            if kind.per_location() {
                targets.extend((0..self.locations.len()).map(|location| (sku, Some(location))));
            } else {
                targets.push((sku, None));
            }
        }
        targets
    }

    fn target_index(&self, kind: Kind, sku: usize, location: usize) -> usize {
        if kind.per_location() {
            self.position(sku, location)
        } else {
            sku
        }
    }

    fn item_id(sku: usize) -> u64 {
        FIRST_ITEM + sku as u64
    }

    fn adobe_source(location: usize) -> String {
        if location == 0 {
            ADOBE_DEFAULT_SOURCE.to_owned()
        } else {
            format!("dc{}", location + 1)
        }
    }
}

/// What the emulator of `kind` shows for a target now.
fn remote(
    emulators: &Emulators,
    layout: &Layout,
    kind: Kind,
    target: (usize, Option<usize>),
) -> Option<i64> {
    let (sku, location) = target;
    let name = &layout.skus[sku];
    match kind {
        Kind::Shopify => emulators
            .shopify()
            .level(Layout::item_id(sku), location? as u64 + 1)
            .map(|levels| levels.available),
        Kind::Adobe => emulators
            .adobe()
            .source_item(name, &Layout::adobe_source(location?))
            .map(|item| item.quantity.round() as i64),
        Kind::Amazon => emulators.amazon().quantity(name),
        Kind::Walmart => {
            let node = emulators.walmart().default_ship_node().to_owned();
            emulators.walmart().quantity(name, &node)
        }
    }
}

/// Changes not yet shown by a channel, per target: (value the change left,
/// when it was acknowledged).
struct Pending {
    targets: Vec<Mutex<VecDeque<(i64, Instant)>>>,
    /// End-to-end lags, milliseconds.
    lags_ms: Mutex<Vec<f64>>,
}

struct Shared {
    layout: Layout,
    /// The lowest available acknowledged per position (values only fall).
    latest: Vec<AtomicI64>,
    pending: BTreeMap<Kind, Pending>,
    changes: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    /// A change at (sku, location) left `available` there.
    fn changed(&self, sku: usize, location: usize, available: i64, at: Instant) {
        let position = self.layout.position(sku, location);
        self.latest[position].fetch_min(available, Ordering::Relaxed);
        let sku_total: i64 = (0..self.layout.locations.len())
            .map(|l| {
                self.latest[self.layout.position(sku, l)]
                    .load(Ordering::Relaxed)
                    .max(0)
            })
            .sum();
        for (kind, pending) in &self.pending {
            let value = if kind.per_location() {
                available.max(0)
            } else {
                sku_total
            };
            let index = self.layout.target_index(*kind, sku, location);
            pending.targets[index].lock().push_back((value, at));
        }
    }
}

/// Looks at every emulator every `poll` and settles the pending changes a
/// target's remote figure shows; ends when `stop` is set.
async fn sample_remotes(
    emulators: Arc<Emulators>,
    shared: Arc<Shared>,
    poll: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let targets: BTreeMap<Kind, Vec<(usize, Option<usize>)>> = shared
        .pending
        .keys()
        .map(|kind| (*kind, shared.layout.targets(*kind)))
        .collect();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        for (kind, pending) in &shared.pending {
            let Some(list) = targets.get(kind) else {
                continue;
            };
            let mut lags = Vec::new();
            for (index, target) in list.iter().enumerate() {
                let mut queue = pending.targets[index].lock();
                if queue.is_empty() {
                    continue;
                }
                let Some(shown) = remote(&emulators, &shared.layout, *kind, *target) else {
                    continue;
                };
                queue.retain(|(value, at)| {
                    if *value >= shown {
                        lags.push(now.saturating_duration_since(*at).as_secs_f64() * 1_000.0);
                        false
                    } else {
                        true
                    }
                });
            }
            if !lags.is_empty() {
                pending.lags_ms.lock().extend(lags);
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .context("bad endpoint")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

fn pkey(sku: &str, location: &str) -> pb::PositionKey {
    pb::PositionKey {
        tenant: TENANT.into(),
        sku: sku.into(),
        location: location.into(),
    }
}

fn header(key: &pb::PositionKey, id: String) -> Option<pb::MutationHeader> {
    Some(pb::MutationHeader {
        key: Some(key.clone()),
        idempotency_key: id,
        expected_version: None,
    })
}

fn adjust_request(
    key: &pb::PositionKey,
    id: String,
    delta: i64,
    reason: pb::AdjustmentReason,
) -> pb::AdjustRequest {
    pb::AdjustRequest {
        header: header(key, id),
        bucket: pb::Bucket::Available.into(),
        delta,
        reason: reason.into(),
        change_from: None,
        reference_document_uri: String::new(),
    }
}

fn reserve_request(key: &pb::PositionKey, id: String) -> pb::ReserveRequest {
    pb::ReserveRequest {
        header: header(key, id),
        reservation_id: String::new(),
        quantity: 1,
        owner: Some(pb::ReservationOwner {
            r#type: pb::OwnerType::Cart.into(),
            id: "channel-lag".into(),
            line_id: String::new(),
        }),
        channel: "web".into(),
        ttl_seconds: 3_600,
        allow_partial: false,
    }
}

/// The wait a refusal hints, else 50 ms.
fn retry_hint(status: &tonic::Status) -> Duration {
    let ms = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(50);
    Duration::from_millis(ms.clamp(5, 1_000))
}

/// Stocks every position with `stock` units (retrying refusals).
async fn stock_positions(channel: Channel, layout: &Layout, stock: i64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let workers = 16;
    for worker in 0..workers {
        let mut client = InventoryServiceClient::new(channel.clone());
        let layout = layout.clone();
        tasks.push(tokio::spawn(async move {
            let count = layout.skus.len() * layout.locations.len();
            for position in (worker..count).step_by(workers) {
                let sku = position / layout.locations.len();
                let location = position % layout.locations.len();
                let key = pkey(&layout.skus[sku], &layout.locations[location]);
                let request = adjust_request(
                    &key,
                    format!("stock-{sku}-{location}"),
                    stock,
                    pb::AdjustmentReason::Receipt,
                );
                loop {
                    match client.adjust(request.clone()).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(retry_hint(&status)).await;
                        }
                        Err(status) => bail!("stocking {key:?}: {status}"),
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a stocking task panicked")??;
    }
    Ok(())
}

/// One closed-loop caller: a reservation of 1 or a sale of 1 on a uniformly
/// random position, paced at `interval` when set.
async fn caller(
    index: usize,
    channel: Channel,
    shared: Arc<Shared>,
    seed: u64,
    until: Instant,
    interval: Option<Duration>,
) {
    let mut client = InventoryServiceClient::new(channel);
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let skus = shared.layout.skus.len();
    let locations = shared.layout.locations.len();
    let mut next =
        Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(rng.random::<f64>()));
    let mut n = 0u64;
    while Instant::now() < until {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
        }
        let sku = rng.random_range(0..skus);
        let location = rng.random_range(0..locations);
        let key = pkey(&shared.layout.skus[sku], &shared.layout.locations[location]);
        let id = format!("lag-{index}-{n}");
        n += 1;
        let reply = if rng.random_bool(0.5) {
            client.reserve(reserve_request(&key, id)).await
        } else {
            client
                .adjust(adjust_request(&key, id, -1, pb::AdjustmentReason::Sale))
                .await
        };
        match reply {
            Ok(reply) => {
                let at = Instant::now();
                let available = reply
                    .into_inner()
                    .buckets
                    .map_or(0, |buckets| buckets.available);
                shared.changes.fetch_add(1, Ordering::Relaxed);
                shared.changed(sku, location, available, at);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(retry_hint(&status)).await;
            }
            Err(status) => {
                if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("change refused: {status}");
                }
            }
        }
    }
}

/// GET `path` from the node's HTTP address: the body.
async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// One `/metrics` page (Prometheus text).
struct Scrape(String);

impl Scrape {
    fn samples<'a>(
        &'a self,
        name: &'a str,
        channel: &'a str,
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        let wanted = format!("channel=\"{channel}\"");
        self.0.lines().filter_map(move |line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name || !labels.split(',').any(|pair| pair == wanted) {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
    }

    fn sum(&self, name: &str, channel: &str) -> Option<f64> {
        self.samples(name, channel)
            .map(|(_, value)| value)
            .reduce(|a, b| a + b)
    }

    /// Per `outcome` label.
    fn by_outcome(&self, name: &str, channel: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, value) in self.samples(name, channel) {
            let outcome = labels
                .split(',')
                .find_map(|pair| pair.strip_prefix("outcome=\""))
                .map(|rest| rest.trim_end_matches('"').to_owned())
                .unwrap_or_default();
            *out.entry(outcome).or_insert(0.0) += value;
        }
        out
    }

    /// The upper bound of the bucket holding quantile `q` of histogram `name`.
    fn quantile_bound(&self, name: &str, channel: &str, q: f64) -> Option<f64> {
        let series = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples(&series, channel)
            .filter_map(|(labels, count)| {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    }
}

async fn scrape(node: &SpawnedNode) -> anyhow::Result<Scrape> {
    Ok(Scrape(http_get(&node.http, "/metrics").await?))
}

/// Defines the channel of `kind` on the network.
async fn define(
    client: &mut ChannelServiceClient<Channel>,
    emulators: &Emulators,
    layout: &Layout,
    kind: Kind,
    dir: &std::path::Path,
    min_push_interval_ms: u64,
) -> anyhow::Result<()> {
    let mut account: HashMap<String, String> = HashMap::new();
    let credentials = match kind {
        Kind::Shopify => {
            account.insert("base_url".into(), emulators.shopify().base_url().to_owned());
            for (index, location) in layout.locations.iter().enumerate() {
                account.insert(format!("location_id.{location}"), (index + 1).to_string());
            }
            serde_json::json!({ "access_token": emulators.shopify().access_token() })
        }
        Kind::Amazon => {
            let amazon = emulators.amazon();
            account.insert("base_url".into(), amazon.base_url().to_owned());
            account.insert("seller_id".into(), amazon.seller_id().to_owned());
            account.insert("marketplace_id".into(), amazon.marketplace_id().to_owned());
            let config = amazon.config();
            serde_json::json!({
                "client_id": config.client_id,
                "client_secret": config.client_secret,
                "refresh_token": config.refresh_token,
            })
        }
        Kind::Walmart => {
            let walmart = emulators.walmart();
            account.insert("base_url".into(), walmart.base_url().to_owned());
            let config = walmart.config();
            serde_json::json!({
                "client_id": config.client_id,
                "client_secret": config.client_secret,
            })
        }
        Kind::Adobe => {
            let adobe = emulators.adobe();
            account.insert("base_url".into(), adobe.base_url().to_owned());
            let sources: Vec<String> = (0..layout.locations.len())
                .map(Layout::adobe_source)
                .collect();
            for (index, location) in layout.locations.iter().enumerate() {
                account.insert(
                    format!("source_code.{location}"),
                    Layout::adobe_source(index),
                );
            }
            account.insert("stock_sources".into(), sources.join(","));
            account.insert("reservation_source".into(), ADOBE_DEFAULT_SOURCE.into());
            let config = adobe.config();
            serde_json::json!({ "username": config.username, "password": config.password })
        }
    };
    let path = dir.join(format!("{}.json", kind.id()));
    std::fs::write(&path, credentials.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let kind_pb = match kind {
        Kind::Shopify => pb::ChannelKind::Shopify,
        Kind::Amazon => pb::ChannelKind::Amazon,
        Kind::Walmart => pb::ChannelKind::Walmart,
        Kind::Adobe => pb::ChannelKind::AdobeCommerce,
    };
    client
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: TENANT.into(),
                id: kind.id().into(),
                kind: kind_pb.into(),
                network: layout.locations.clone(),
                priority: 1,
                min_push_interval_ms,
                account,
                credentials_ref: format!("file:{}", path.display()),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("CreateChannel {}", kind.id()))?;
    Ok(())
}

/// Seeds every emulator with every SKU at `stock` per location.
fn seed_emulators(emulators: &Emulators, layout: &Layout, stock: i64) {
    let shop = emulators.shopify();
    for (index, location) in layout.locations.iter().enumerate() {
        shop.add_location(index as u64 + 1, location);
    }
    let total = stock * layout.locations.len() as i64;
    for (sku, name) in layout.skus.iter().enumerate() {
        shop.add_item(Layout::item_id(sku), name);
        for location in 0..layout.locations.len() {
            shop.seed_level(
                Layout::item_id(sku),
                location as u64 + 1,
                Levels::with_available(stock),
            );
            emulators.adobe().set_source_item(
                name,
                &Layout::adobe_source(location),
                stock as f64,
                true,
            );
        }
        emulators.amazon().add_listing(name, "PRODUCT", total);
        emulators.walmart().add_item(name, total);
    }
}

/// skuld's figure per target of `kind` (GetChannelAvailability).
async fn skuld_figures(
    client: &mut ChannelServiceClient<Channel>,
    layout: &Layout,
    kind: Kind,
) -> anyhow::Result<HashMap<(usize, Option<usize>), i64>> {
    let mut figures = HashMap::new();
    let per_call = (10_000 / layout.locations.len().max(1)).clamp(1, 100);
    for (chunk_index, chunk) in layout.skus.chunks(per_call).enumerate() {
        let reply = client
            .get_channel_availability(pb::GetChannelAvailabilityRequest {
                tenant: TENANT.into(),
                channel_id: kind.id().into(),
                skus: chunk.to_vec(),
                per_location: kind.per_location(),
            })
            .await
            .context("GetChannelAvailability")?
            .into_inner();
        for (offset, sku) in reply.skus.iter().enumerate() {
            let index = chunk_index * per_call + offset;
            if layout.skus.get(index) != Some(&sku.sku) {
                bail!("GetChannelAvailability answered {} out of order", sku.sku);
            }
            if kind.per_location() {
                for (location, line) in sku.locations.iter().enumerate() {
                    figures.insert((index, Some(location)), line.available_to_sell);
                }
            } else {
                figures.insert((index, None), sku.available_to_sell);
            }
        }
    }
    Ok(figures)
}

/// Targets whose remote figure differs from skuld's.
fn differing(
    emulators: &Emulators,
    layout: &Layout,
    kind: Kind,
    figures: &HashMap<(usize, Option<usize>), i64>,
) -> usize {
    figures
        .iter()
        .filter(|(target, value)| remote(emulators, layout, kind, **target) != Some(**value))
        .count()
}

/// The emulator recorder's view of one channel's traffic.
#[derive(Debug, Default, Clone, Serialize)]
struct Traffic {
    /// Write calls (a patch, a put, a mutation, a save, a feed).
    write_calls: u64,
    /// Values written (lines of a mutation, messages of a feed, ...).
    write_items: u64,
    /// Read calls (read-backs, Adobe's salable quantity per SKU, feed status).
    read_calls: u64,
    /// Token grants.
    auth_calls: u64,
    /// Requests refused for a rate limit.
    budget_violations: u64,
}

fn count(body: &str, needle: &str) -> u64 {
    body.matches(needle).count() as u64
}

fn traffic(kind: Kind, requests: &[RecordedRequest]) -> Traffic {
    let mut traffic = Traffic::default();
    for request in requests {
        if request.throttled {
            traffic.budget_violations += 1;
            continue;
        }
        let method = request.method.as_str();
        let path = request.path.as_str();
        match kind {
            Kind::Shopify => {
                if request.body.contains("inventorySetQuantities") {
                    traffic.write_calls += 1;
                    traffic.write_items += count(&request.body, "\"inventoryItemId\"");
                } else {
                    traffic.read_calls += 1;
                }
            }
            Kind::Amazon => {
                if path.contains("/auth/o2/token") {
                    traffic.auth_calls += 1;
                } else if method == "PATCH" {
                    traffic.write_calls += 1;
                    traffic.write_items += 1;
                } else if method == "PUT" {
                    // A feed document upload: its messages.
                    traffic.write_items += count(&request.body, "\"messageId\"");
                } else if method == "POST" && path.ends_with("/feeds") {
                    traffic.write_calls += 1;
                } else {
                    traffic.read_calls += 1;
                }
            }
            Kind::Walmart => {
                if path.contains("/v3/token") {
                    traffic.auth_calls += 1;
                } else if method == "PUT" {
                    traffic.write_calls += 1;
                    traffic.write_items += 1;
                } else if method == "POST" && path.contains("/v3/feeds") {
                    traffic.write_calls += 1;
                    traffic.write_items += count(&request.body, "\"sku\"");
                } else {
                    traffic.read_calls += 1;
                }
            }
            Kind::Adobe => {
                if path.contains("/token") {
                    traffic.auth_calls += 1;
                } else if method == "POST" && path.ends_with("/V1/inventory/source-items") {
                    traffic.write_calls += 1;
                    traffic.write_items += count(&request.body, "\"source_code\"");
                } else {
                    traffic.read_calls += 1;
                }
            }
        }
    }
    traffic
}

fn requests_of(emulators: &Emulators, kind: Kind) -> Vec<RecordedRequest> {
    match kind {
        Kind::Shopify => emulators.shopify().recorder().requests(),
        Kind::Amazon => emulators.amazon().recorder().requests(),
        Kind::Walmart => emulators.walmart().recorder().requests(),
        Kind::Adobe => emulators.adobe().recorder().requests(),
    }
}

fn violations_of(emulators: &Emulators, kind: Kind) -> u64 {
    match kind {
        Kind::Shopify => emulators.shopify().budget_violations(),
        Kind::Amazon => emulators.amazon().budget_violations(),
        Kind::Walmart => emulators.walmart().budget_violations(),
        Kind::Adobe => emulators.adobe().budget_violations(),
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Debug, Serialize)]
struct ChannelReport {
    channel: Kind,
    publication: &'static str,
    targets: usize,
    /// End to end, change OK to remote state, milliseconds.
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
    lag_max_ms: Option<f64>,
    lag_samples: usize,
    /// Changes the channel never showed before the benchmark gave up.
    never_shown: usize,
    /// `skuld_channel_push_lag_seconds`: upper bound of the bucket.
    node_lag_p50_bound_s: Option<f64>,
    node_lag_p99_bound_s: Option<f64>,
    /// From the load's start to convergence (recorder).
    traffic: Traffic,
    write_calls_per_1000_changes: f64,
    write_items_per_1000_changes: f64,
    /// Over the whole run, warm-up included.
    budget_violations_total: u64,
    /// After the load stopped; `None`: not within the timeout.
    converged_after_s: Option<f64>,
    differing_at_end: usize,
    /// `skuld_channel_pushes_total` per outcome (items).
    node_pushes: BTreeMap<String, f64>,
    node_coalesced_changes: f64,
    node_conflicts: f64,
    warm_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    skus: usize,
    locations: usize,
    concurrency: usize,
    target_rate: f64,
    duration_s: f64,
    changes: u64,
    changes_per_s: f64,
    refused: u64,
    errors: u64,
    node_cpu_us_per_change: Option<f64>,
    node_cpu_cores_during_load: Option<f64>,
    node_cpu_s_load_to_converged: Option<f64>,
    warm_s: f64,
    channels: Vec<ChannelReport>,
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |ms| {
        if ms >= 10_000.0 {
            format!("{:.1} s", ms / 1_000.0)
        } else {
            format!("{ms:.0} ms")
        }
    })
}

fn fmt_bound(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| {
        if s.is_infinite() {
            "> 120 s".into()
        } else {
            format!("<= {s} s")
        }
    })
}

fn print_table(report: &Report) {
    eprintln!(
        "\n{} SKUs x {} locations; {} callers, target {} changes/s; {} changes in {:.1} s ({:.0}/s), {} refused, {} errors; node CPU {} us per change ({} cores during the load)",
        report.skus,
        report.locations,
        report.concurrency,
        if report.target_rate > 0.0 { format!("{:.0}", report.target_rate) } else { "unpaced".into() },
        report.changes,
        report.duration_s,
        report.changes_per_s,
        report.refused,
        report.errors,
        report.node_cpu_us_per_change.map_or("-".into(), |us| format!("{us:.1}")),
        report.node_cpu_cores_during_load.map_or("-".into(), |c| format!("{c:.2}")),
    );
    eprintln!("| channel | targets | lag p50 | lag p99 | lag max | node lag p50 / p99 | write calls | items | calls / 1k changes | items / 1k changes | reads | budget violations | converged after | warm-up |");
    eprintln!("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for channel in &report.channels {
        eprintln!(
            "| {} ({}) | {} | {} | {} | {} | {} / {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {:.0} s |",
            channel.channel.id(),
            channel.publication,
            channel.targets,
            fmt_ms(channel.lag_p50_ms),
            fmt_ms(channel.lag_p99_ms),
            fmt_ms(channel.lag_max_ms),
            fmt_bound(channel.node_lag_p50_bound_s),
            fmt_bound(channel.node_lag_p99_bound_s),
            channel.traffic.write_calls,
            channel.traffic.write_items,
            channel.write_calls_per_1000_changes,
            channel.write_items_per_1000_changes,
            channel.traffic.read_calls,
            channel.budget_violations_total,
            channel.converged_after_s.map_or_else(
                || format!("not in time ({} differ)", channel.differing_at_end),
                |s| format!("{s:.1} s")
            ),
            channel.warm_s,
        );
    }
    for channel in &report.channels {
        if channel.never_shown > 0 {
            eprintln!(
                "{}: {} changes were never shown before the benchmark gave up",
                channel.channel.id(),
                channel.never_shown
            );
        }
        eprintln!(
            "{}: node pushes {:?}, coalesced {}, conflicts {}",
            channel.channel.id(),
            channel.node_pushes,
            channel.node_coalesced_changes,
            channel.node_conflicts
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.skus == 0 || args.locations == 0 || args.concurrency == 0 || args.channels.is_empty() {
        bail!("--skus, --locations, --concurrency and --channels must not be empty");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut kinds = args.channels.clone();
    kinds.sort();
    kinds.dedup();
    let layout = Layout {
        skus: (0..args.skus)
            .map(|sku| Layout::item_id(sku).to_string())
            .collect(),
        locations: (1..=args.locations).map(|l| format!("DC{l}")).collect(),
        kinds: kinds.clone(),
    };

    // Emulators: default budgets; Adobe gets one source per location.
    let mut config = EmulatorsConfig::default();
    let sources: Vec<String> = (0..args.locations).map(Layout::adobe_source).collect();
    config.adobe = AdobeConfig {
        source_codes: sources.clone(),
        stocks: vec![Stock {
            stock_id: 1,
            name: "Default Stock".into(),
            source_codes: sources,
        }],
        ..AdobeConfig::default()
    };
    let emulators = Arc::new(
        Emulators::start(config)
            .await
            .context("starting the emulators")?,
    );
    seed_emulators(&emulators, &layout, args.stock);

    // The node reads a tenant's credentials files only from
    // <channel_credentials_dir>/<tenant>/.
    let dir = tempfile::tempdir().context("temp dir for the credentials")?;
    let tenant_dir = dir.path().join(TENANT);
    std::fs::create_dir_all(&tenant_dir)
        .with_context(|| format!("cannot create {}", tenant_dir.display()))?;
    let mut node_args = vec![
        "--channel-credentials-dir".to_owned(),
        dir.path().display().to_string(),
    ];
    node_args.extend(args.node_args.iter().cloned());
    let binary = args.node_binary.clone().unwrap_or_else(default_binary);
    let node = SpawnedNode::start(&binary, &node_args).await?;
    let channel = connect(&node.grpc).await?;
    let mut channels = ChannelServiceClient::new(channel.clone());
    for kind in &layout.kinds {
        define(
            &mut channels,
            &emulators,
            &layout,
            *kind,
            &tenant_dir,
            args.min_push_interval_ms,
        )
        .await?;
    }
    let started = Instant::now();
    stock_positions(channel.clone(), &layout, args.stock).await?;
    eprintln!(
        "stocked {} positions in {:.1} s; waiting for the worker to look at every target",
        layout.skus.len() * layout.locations.len(),
        started.elapsed().as_secs_f64()
    );

    // Warm: every channel's worker state settled (pending 0 three times in
    // a row) and the remote figures equal skuld's.
    let mut warm_s: BTreeMap<Kind, f64> = BTreeMap::new();
    let mut calm: BTreeMap<Kind, u32> = BTreeMap::new();
    let mut figures: BTreeMap<Kind, HashMap<(usize, Option<usize>), i64>> = BTreeMap::new();
    for kind in &layout.kinds {
        figures.insert(*kind, skuld_figures(&mut channels, &layout, *kind).await?);
    }
    loop {
        let page = scrape(&node).await?;
        for kind in &layout.kinds {
            if warm_s.contains_key(kind) {
                continue;
            }
            let pending = page.sum("skuld_channel_pending_targets", kind.id());
            let settled = pending == Some(0.0)
                && figures
                    .get(kind)
                    .is_some_and(|f| differing(&emulators, &layout, *kind, f) == 0);
            let streak = calm.entry(*kind).or_insert(0);
            *streak = if settled { *streak + 1 } else { 0 };
            if *streak >= 3 {
                warm_s.insert(*kind, started.elapsed().as_secs_f64());
                eprintln!(
                    "{} warm after {:.1} s",
                    kind.id(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if warm_s.len() == layout.kinds.len() {
            break;
        }
        if started.elapsed().as_secs_f64() > args.warm_timeout {
            let cold: Vec<&str> = layout
                .kinds
                .iter()
                .filter(|kind| !warm_s.contains_key(kind))
                .map(|kind| kind.id())
                .collect();
            eprintln!(
                "not warm after {:.0} s: {cold:?}; starting the load anyway",
                args.warm_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let warm_total = started.elapsed().as_secs_f64();

    // The load.
    let pending: BTreeMap<Kind, Pending> = layout
        .kinds
        .iter()
        .map(|kind| {
            let count = layout.targets(*kind).len();
            (
                *kind,
                Pending {
                    targets: (0..count).map(|_| Mutex::new(VecDeque::new())).collect(),
                    lags_ms: Mutex::new(Vec::new()),
                },
            )
        })
        .collect();
    let shared = Arc::new(Shared {
        latest: (0..layout.skus.len() * layout.locations.len())
            .map(|_| AtomicI64::new(args.stock))
            .collect(),
        layout: layout.clone(),
        pending,
        changes: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let start_seq: BTreeMap<Kind, usize> = layout
        .kinds
        .iter()
        .map(|kind| (*kind, requests_of(&emulators, *kind).len()))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_remotes(
        Arc::clone(&emulators),
        Arc::clone(&shared),
        Duration::from_millis(args.poll_ms.max(1)),
        Arc::clone(&stop),
    ));
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
    let cpu_before = cpu_seconds(node.pid());
    let load_start = Instant::now();
    let until = load_start + Duration::from_secs_f64(args.duration);
    // A few connections, as a storefront's servers would hold.
    let mut connections = vec![channel.clone()];
    for _ in 1..4 {
        connections.push(connect(&node.grpc).await?);
    }
    let callers: Vec<_> = (0..args.concurrency)
        .map(|index| {
            tokio::spawn(caller(
                index,
                connections[index % connections.len()].clone(),
                Arc::clone(&shared),
                args.seed,
                until,
                interval,
            ))
        })
        .collect();
    for task in callers {
        task.await.context("a caller panicked")?;
    }
    let load_end = Instant::now();
    let load_s = load_end.duration_since(load_start).as_secs_f64();
    let cpu_after_load = cpu_seconds(node.pid());
    let changes = shared.changes.load(Ordering::Relaxed);
    eprintln!(
        "load done: {changes} changes in {load_s:.1} s; waiting for the channels to converge"
    );

    // Convergence: every remote figure equals skuld's.
    for kind in &layout.kinds {
        figures.insert(*kind, skuld_figures(&mut channels, &layout, *kind).await?);
    }
    let mut converged: BTreeMap<Kind, f64> = BTreeMap::new();
    let mut differ: BTreeMap<Kind, usize> = BTreeMap::new();
    loop {
        for kind in &layout.kinds {
            if converged.contains_key(kind) {
                continue;
            }
            let Some(f) = figures.get(kind) else { continue };
            let left = differing(&emulators, &layout, *kind, f);
            differ.insert(*kind, left);
            if left == 0 {
                let after = load_end.elapsed().as_secs_f64();
                converged.insert(*kind, after);
                eprintln!("{} converged {after:.1} s after the load", kind.id());
            }
        }
        if converged.len() == layout.kinds.len()
            || load_end.elapsed().as_secs_f64() > args.converge_timeout
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms.max(1))).await;
    }
    let cpu_end = cpu_seconds(node.pid());
    // One more sample, then stop the sampler.
    tokio::time::sleep(Duration::from_millis(args.poll_ms.max(1) * 2)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.context("the sampler panicked")?;

    let page = scrape(&node).await?;
    let mut reports = Vec::new();
    for kind in &layout.kinds {
        let Some(pending) = shared.pending.get(kind) else {
            continue;
        };
        let mut lags = pending.lags_ms.lock().clone();
        lags.sort_by(f64::total_cmp);
        let never_shown: usize = pending.targets.iter().map(|queue| queue.lock().len()).sum();
        let requests = requests_of(&emulators, *kind);
        let from = start_seq
            .get(kind)
            .copied()
            .unwrap_or(0)
            .min(requests.len());
        let traffic = traffic(*kind, &requests[from..]);
        let per_1000 = |n: u64| {
            if changes == 0 {
                0.0
            } else {
                n as f64 * 1_000.0 / changes as f64
            }
        };
        reports.push(ChannelReport {
            channel: *kind,
            publication: if kind.per_location() {
                "per location"
            } else {
                "per SKU"
            },
            targets: layout.targets(*kind).len(),
            lag_p50_ms: percentile(&lags, 0.5),
            lag_p99_ms: percentile(&lags, 0.99),
            lag_max_ms: lags.last().copied(),
            lag_samples: lags.len(),
            never_shown,
            node_lag_p50_bound_s: page.quantile_bound(
                "skuld_channel_push_lag_seconds",
                kind.id(),
                0.5,
            ),
            node_lag_p99_bound_s: page.quantile_bound(
                "skuld_channel_push_lag_seconds",
                kind.id(),
                0.99,
            ),
            write_calls_per_1000_changes: per_1000(traffic.write_calls),
            write_items_per_1000_changes: per_1000(traffic.write_items),
            traffic,
            budget_violations_total: violations_of(&emulators, *kind),
            converged_after_s: converged.get(kind).copied(),
            differing_at_end: differ.get(kind).copied().unwrap_or(0),
            node_pushes: page.by_outcome("skuld_channel_pushes_total", kind.id()),
            node_coalesced_changes: page
                .sum("skuld_channel_coalesced_changes_total", kind.id())
                .unwrap_or(0.0),
            node_conflicts: page
                .sum("skuld_channel_conflicts_total", kind.id())
                .unwrap_or(0.0),
            warm_s: warm_s.get(kind).copied().unwrap_or(warm_total),
        });
    }
    let load_cpu = match (cpu_before, cpu_after_load) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let report = Report {
        skus: layout.skus.len(),
        locations: layout.locations.len(),
        concurrency: args.concurrency,
        target_rate: args.rate,
        duration_s: load_s,
        changes,
        changes_per_s: changes as f64 / load_s.max(1e-9),
        refused: shared.refused.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        node_cpu_us_per_change: load_cpu
            .filter(|_| changes > 0)
            .map(|cpu| cpu * 1e6 / changes as f64),
        node_cpu_cores_during_load: load_cpu.map(|cpu| cpu / load_s.max(1e-9)),
        node_cpu_s_load_to_converged: match (cpu_before, cpu_end) {
            (Some(before), Some(end)) => Some(end - before),
            _ => None,
        },
        warm_s: warm_total,
        channels: reports,
    };
    print_table(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    drop(node);
    match Arc::try_unwrap(emulators) {
        Ok(emulators) => emulators.shutdown().await,
        Err(_) => eprintln!("the emulators are still shared; leaving them to the runtime"),
    }
    Ok(())
}
