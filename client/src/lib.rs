//! `skuld-client`: an owner-aware client for a skuld cluster.
//!
//! Any node accepts any request and forwards it to the owner of its key's
//! shard, at the cost of a hop. A [`Router`] saves that hop: it asks a node
//! for the shard map (`skuld.v1.RoutingService/GetShardMap`), hashes each
//! request's key as the nodes do, and sends it to the owner's client API.
//! When it misses (the owner is unreachable, or a reply's `skuld-owner`
//! names another node) it marks the map stale, refreshes it in the
//! background (at most once per [`RouterOptions::refresh_interval`]) and
//! uses any node meanwhile, which forwards as before. A request that could
//! not reach the owner at all is sent once more to any node: every mutation
//! carries an idempotency key, so the retry is safe.
//!
//! ```no_run
//! # async fn example() -> Result<(), skuld_client::ClientError> {
//! use skuld_client::{RouteKey, Router, RouterOptions};
//! use skuld_proto::v1 as pb;
//! use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
//!
//! let router = Router::connect(RouterOptions::new(["http://skuld-0:7070"])).await?;
//! let key = pb::PositionKey { tenant: "acme".into(), sku: "SKU-1".into(), location: "DC1".into() };
//! let reply = router
//!     .call(RouteKey::Position(&key), |channel| {
//!         let key = key.clone();
//!         async move {
//!             InventoryServiceClient::new(channel)
//!                 .get_position(pb::GetPositionRequest { key: Some(key), ..Default::default() })
//!                 .await
//!         }
//!     })
//!     .await;
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```

mod error;
mod map;
mod pool;
mod refresh;
mod router;

pub use error::ClientError;
pub use map::{RouteKey, ShardMap};
pub use pool::ChannelPool;
pub use router::{Route, Router, RouterOptions, RouterStats, Routing};

/// Reply metadata naming the node that served a request (the node's
/// `rpc::OWNER`).
pub const OWNER_METADATA: &str = "skuld-owner";
