//! Cluster mode: which node serves a key, and how a request reaches it.
//!
//! Every mutation and read consults the node's [`ShardTable`]: served here
//! when this node owns the key's shard, forwarded to the owner otherwise
//! (one hop: the owner never forwards again), and held back for a bounded
//! time while the shard is moving. Forwarding carries the domain command
//! itself (the same bytes the node would decide on), so any caller, the
//! public API or a return's effect on a position, routes the same way.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use skuld_cluster::shards::{Peer, Route, Serving, ShardTable};

use super::RequestMeta;
use crate::Error;

/// What a forwarded request asks of the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Mutate,
    Read,
}

/// Sends a request to the node that owns its key (implemented over gRPC by
/// the node).
#[async_trait]
pub trait Forwarder: Send + Sync + 'static {
    /// Runs `operation` of entity `kind` on `peer` and returns its encoded
    /// answer, or the error the owner answered with.
    async fn forward(
        &self,
        peer: &Peer,
        kind: &'static str,
        operation: Operation,
        payload: Vec<u8>,
        meta: &RequestMeta,
    ) -> Result<Vec<u8>, Error>;
}

/// Serves requests other nodes forwarded here (implemented by every
/// runtime; the node dispatches on `kind`).
#[async_trait]
pub trait ForwardTarget: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn serve_forwarded(
        &self,
        operation: Operation,
        payload: Vec<u8>,
        meta: RequestMeta,
    ) -> Result<Vec<u8>, ForwardError>;
}

/// Why a forwarded request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// The payload did not decode or validate. The sender validated it
    /// before forwarding, so it is not a skuld node's request (or a broken
    /// one): refused as a whole, never decided.
    Malformed(Error),
    /// Served here and refused, or not servable here now: the sender gets
    /// this error typed, so its client sees what this node said.
    Failed(Error),
}

impl From<Error> for ForwardError {
    fn from(error: Error) -> Self {
        ForwardError::Failed(error)
    }
}

/// Cluster-mode routing of one runtime.
#[derive(Clone)]
pub struct Routing {
    pub table: Arc<ShardTable>,
    pub forwarder: Arc<dyn Forwarder>,
    /// This node's id, named in replies it serves.
    pub node_id: Arc<str>,
    /// How long a request waits for a moving shard before UNAVAILABLE.
    pub handoff_wait: Duration,
}

/// Fills the `served_by` slot of a request's meta once.
#[derive(Debug, Clone, Default)]
pub struct ServedBy(Arc<OnceLock<String>>);

impl ServedBy {
    pub fn set(&self, node: &str) {
        let _ = self.0.set(node.to_owned());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Where a request goes after any wait for a handoff.
pub(crate) enum Destination {
    Here(Serving),
    There(Arc<Peer>),
}

impl Routing {
    /// Finds where `shard` is served, waiting out a handoff until `give_up`
    /// (see [`Routing::give_up`]). With `local_only` (a request another node
    /// forwarded) a remote owner is an answer too: the shard moved on, and
    /// the sender must look again.
    pub(crate) async fn destination(
        &self,
        shard: u32,
        give_up: Instant,
        local_only: bool,
    ) -> Result<Destination, Error> {
        let mut changes = self.table.subscribe();
        loop {
            if let Some(serving) = self.table.serve(shard) {
                return Ok(Destination::Here(serving));
            }
            if let Route::Remote(peer) = self.table.route(shard) {
                // A forwarded request that finds the shard owned elsewhere
                // goes back at once: the sender looks the owner up again.
                if local_only {
                    return Err(self.moving(shard));
                }
                return Ok(Destination::There(peer));
            }
            let now = Instant::now();
            if now >= give_up {
                metrics::counter!("skuld_handoff_refusals_total").increment(1);
                return Err(self.moving(shard));
            }
            // Any route change may be ours; re-check then.
            if tokio::time::timeout(give_up - now, changes.changed())
                .await
                .is_err()
            {
                continue;
            }
        }
    }

    /// When a request stops waiting for its shard: after `handoff_wait`, or
    /// at the caller's deadline if that is sooner.
    pub(crate) fn give_up(&self, deadline: Option<Instant>) -> Instant {
        let wait = Instant::now() + self.handoff_wait;
        deadline.map_or(wait, |deadline| deadline.min(wait))
    }

    /// Errors after which a forwarded request goes to the shard's owner as
    /// routing sees it next: the owner no longer serves the shard, or it
    /// could not be reached. (Narrower than [`Error::is_retryable`]: a full
    /// queue or a passed deadline is the caller's to retry, not routing's.)
    pub(crate) fn look_again(&self, error: &Error) -> bool {
        matches!(error, Error::ShardMoving { .. } | Error::Unavailable(_))
    }

    /// Waits until the shard's route is no longer `peer`; `error` if that
    /// does not happen by `give_up`.
    pub(crate) async fn wait_for_change(
        &self,
        peer: &Arc<Peer>,
        shard: u32,
        give_up: Instant,
        error: Error,
    ) -> Result<(), Error> {
        let mut changes = self.table.subscribe();
        loop {
            match self.table.route(shard) {
                Route::Remote(current) if current == *peer => {}
                _ => return Ok(()),
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(error);
            }
            let _ = tokio::time::timeout(give_up - now, changes.changed()).await;
        }
    }

    pub(crate) fn moving(&self, shard: u32) -> Error {
        Error::ShardMoving {
            shard,
            retry_after_ms: 100,
        }
    }
}
