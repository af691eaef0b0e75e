//! Whether the node is ready to serve: one answer for `/readyz`, gRPC
//! health and `skuld status`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::ownership::OwnershipConfig;
use skuld_cluster::store::health::{StoreHealth, Verdict};
use skuld_proto::v1::event_service_server::EventServiceServer;
use skuld_proto::v1::inventory_service_server::InventoryServiceServer;
use skuld_proto::v1::returns_service_server::ReturnsServiceServer;
use tokio_util::sync::CancellationToken;

use crate::api::InventoryApi;
use crate::events_api::EventsApi;
use crate::returns_api::ReturnsApi;

/// What the node's readiness is made of; `/readyz` and gRPC health answer
/// from the same [`Readiness::check`].
#[derive(Clone)]
pub struct Readiness {
    /// Set once serving, cleared when the shutdown begins.
    pub started: Arc<AtomicBool>,
    /// Cluster mode: ready also needs a loaded view of the cluster, a lease
    /// etcd confirmed recently (else this node's routing is stale) and a
    /// store that answers.
    pub membership: Option<Arc<skuld_cluster::membership::Membership>>,
    pub store_health: Option<Arc<StoreHealth>>,
}

impl Readiness {
    pub fn check(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Acquire) {
            return Err("not ready".into());
        }
        if let Some(membership) = &self.membership {
            if membership.view().borrow().revision == 0 {
                return Err("cluster view not loaded yet".into());
            }
            // The same window in which the ownership manager serves shards:
            // past it the node serves none, so it is not ready either.
            let ttl = membership.lease_ttl();
            let window = OwnershipConfig::for_ttl(ttl).serving_window(ttl);
            let unconfirmed = membership.lease().borrow().confirmed_at.elapsed();
            if unconfirmed >= window {
                return Err(format!(
                    "etcd has not confirmed the lease for {} ms; shards are served for {} ms after a confirmation",
                    unconfirmed.as_millis(),
                    window.as_millis()
                ));
            }
        }
        if let Some(health) = &self.store_health {
            let verdict = health.verdict();
            if verdict != Verdict::Healthy {
                return Err(format!(
                    "{verdict}: this node's shards are served by others"
                ));
            }
        }
        Ok(())
    }
}

/// Keeps gRPC health (the overall status and each client service) equal to
/// [`Readiness::check`] until `stop`, so a kubelet's gRPC probe and the HTTP
/// probe never disagree.
pub async fn follow_readiness(
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut serving = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let ready = readiness.check().is_ok();
        if serving == Some(ready) {
            continue;
        }
        serving = Some(ready);
        set_health(&health, ready).await;
    }
}

pub async fn set_health(health: &tonic_health::server::HealthReporter, ready: bool) {
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in [
        "",
        <InventoryServiceServer<InventoryApi> as tonic::server::NamedService>::NAME,
        <ReturnsServiceServer<ReturnsApi> as tonic::server::NamedService>::NAME,
        <EventServiceServer<EventsApi> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}
