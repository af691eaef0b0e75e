//! The operations page on the HTTP port, for SREs: `/ops` (one static page,
//! no external assets) and `/ops/cluster.json`, the members and shard map it
//! shows beside what it reads from `/metrics` and `/readyz`.
//!
//! The page computes rates in the browser from two scrapes of `/metrics`.
//! It divides by [`ClusterSnapshot::monotonic_ms`], the node's own
//! monotonic clock, not by the browser's: browsers throttle timers in
//! background tabs, headless tests run them on virtual time, and the wall
//! clock can jump.

use std::sync::Arc;
use tokio::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use skuld_proto::v1 as pb;

use crate::admin_api::AdminApi;

/// The page: HTML, CSS and the refresh script in one file.
const PAGE: &str = include_str!("ops_page.html");

/// Nothing but the page's own inline script and style, and requests to
/// this node; no framing. The page renders data with `textContent` only, so
/// this is a second line, not the first.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct OpsState {
    admin: Arc<AdminApi>,
    started: Instant,
}

/// `/` (a redirect), `/ops` and `/ops/cluster.json`, answered from the same
/// sources as the AdminService.
pub fn routes<S>(admin: Arc<AdminApi>) -> Router<S> {
    Router::new()
        // Relative, so the page is found behind a proxy's path prefix too.
        .route("/", get(|| async { Redirect::to("ops") }))
        .route("/ops", get(page))
        .route("/ops/cluster.json", get(cluster))
        .with_state(OpsState {
            admin,
            started: Instant::now(),
        })
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// What `/ops/cluster.json` answers.
#[derive(Debug, Serialize)]
pub struct ClusterSnapshot {
    /// Milliseconds on the node's monotonic clock since the page's routes
    /// were built: the denominator of the page's rates.
    pub monotonic_ms: u64,
    pub node: NodeRow,
    /// `None` on a single node (embedded store): there is no membership.
    pub members: Option<Vec<MemberRow>>,
    /// Owner of each shard by index, empty while the shard moves; `None`
    /// on a single node.
    pub shard_owners: Option<Vec<String>>,
}

/// This node, as `NodeStatus` reports it.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node_id: String,
    /// `embedded` or `cluster`.
    pub mode: String,
    pub version: String,
    pub ready: bool,
    pub shard_count: u32,
    pub shards_served: u32,
    pub in_flight: u64,
    pub active_actors: u64,
    pub lease_confirmed_ms_ago: u64,
}

/// A member, as `ListMembers` reports it.
#[derive(Debug, Serialize)]
pub struct MemberRow {
    pub node_id: String,
    pub endpoint: String,
    pub version: String,
    /// `active` or `draining`.
    pub state: String,
    pub started_at_ms: i64,
    pub shards_owned: u32,
    pub drain_requested: bool,
    pub store_healthy: bool,
}

impl From<pb::NodeStatusResponse> for NodeRow {
    fn from(status: pb::NodeStatusResponse) -> Self {
        Self {
            node_id: status.node_id,
            mode: status.mode,
            version: status.version,
            ready: status.ready,
            shard_count: status.shard_count,
            shards_served: status.shards_served,
            in_flight: status.in_flight,
            active_actors: status.active_actors,
            lease_confirmed_ms_ago: status.lease_confirmed_ms_ago,
        }
    }
}

impl From<pb::Member> for MemberRow {
    fn from(member: pb::Member) -> Self {
        Self {
            node_id: member.node_id,
            endpoint: member.endpoint,
            version: member.version,
            state: member.state,
            started_at_ms: member.started_at_ms,
            shards_owned: member.shards_owned,
            drain_requested: member.drain_requested,
            store_healthy: member.store_healthy,
        }
    }
}

/// The snapshot `/ops/cluster.json` answers with.
pub fn snapshot(admin: &AdminApi, started: Instant) -> ClusterSnapshot {
    // Both refuse only on a single node, which has no membership to show.
    let members = admin
        .members()
        .ok()
        .map(|members| members.into_iter().map(MemberRow::from).collect());
    let shard_owners = admin.shard_owners().ok().map(|shards| {
        shards
            .into_iter()
            .map(|shard| shard.owner)
            .collect::<Vec<_>>()
    });
    ClusterSnapshot {
        monotonic_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        node: admin.status().into(),
        members,
        shard_owners,
    }
}

async fn cluster(State(state): State<OpsState>) -> impl IntoResponse {
    // axum's `json` feature is off in this workspace; serde_json is not.
    match serde_json::to_string(&snapshot(&state.admin, state.started)) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            format!("cannot encode the cluster snapshot: {error}\n"),
        ),
    }
}
