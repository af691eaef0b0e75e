//! Requests to the nodes: clients per endpoint and request builders.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use skuld_client::{RouteKey, Router};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::order_service_client::OrderServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tonic::transport::Channel;

pub(super) type Outcome = Result<(), tonic::Status>;
pub(super) type Call<'a> = Pin<Box<dyn Future<Output = (&'static str, Outcome)> + Send + 'a>>;

/// What one request does; implementations record what the check needs.
pub(super) trait Workload: Send + Sync + 'static {
    /// `caller` picks the channel and, in mixed, the caller's own state.
    fn call(&self, caller: usize) -> Call<'_>;
}

pub(super) struct Clients {
    pub(super) inventory: Vec<InventoryServiceClient<Channel>>,
    pub(super) returns: Vec<ReturnsServiceClient<Channel>>,
    pub(super) orders: Vec<OrderServiceClient<Channel>>,
    pub(super) timeout: Duration,
    /// `--routing owner` against a cluster with a shard map: reservations
    /// go to their position's owner. `None`: every request to the
    /// channels above, round robin (the nodes forward).
    pub(super) router: Option<Router>,
}

impl Clients {
    pub(super) fn inventory(&self, caller: usize) -> InventoryServiceClient<Channel> {
        self.inventory[caller % self.inventory.len()].clone()
    }

    pub(super) fn returns(&self, caller: usize) -> ReturnsServiceClient<Channel> {
        self.returns[caller % self.returns.len()].clone()
    }

    /// Orders go to any node: the order's owner runs its saga.
    pub(super) fn orders(&self, caller: usize) -> OrderServiceClient<Channel> {
        self.orders[caller % self.orders.len()].clone()
    }

    /// Sends an inventory request of `key` with `send`: to the key's
    /// owner with a router, else on caller's channel.
    pub(super) async fn on_position<T, F, Fut>(
        &self,
        caller: usize,
        key: &pb::PositionKey,
        send: F,
    ) -> Result<tonic::Response<T>, tonic::Status>
    where
        F: Fn(InventoryServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match &self.router {
            Some(router) => {
                router
                    .call(RouteKey::Position(key), |channel| {
                        send(InventoryServiceClient::new(channel))
                    })
                    .await
            }
            None => send(self.inventory(caller)).await,
        }
    }

    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}

pub(super) fn pkey(tenant: &str, sku: &str, location: &str) -> pb::PositionKey {
    pb::PositionKey {
        tenant: tenant.into(),
        sku: sku.into(),
        location: location.into(),
    }
}

pub(super) fn header(key: &pb::PositionKey, idempotency_key: String) -> Option<pb::MutationHeader> {
    Some(pb::MutationHeader {
        key: Some(key.clone()),
        idempotency_key,
        expected_version: None,
    })
}

/// Reserve 1 unit; the reservation id is the idempotency key.
pub(super) fn reserve_request(key: &pb::PositionKey, id: String) -> pb::ReserveRequest {
    pb::ReserveRequest {
        header: header(key, id),
        reservation_id: String::new(),
        quantity: 1,
        owner: Some(pb::ReservationOwner {
            r#type: pb::OwnerType::Cart.into(),
            id: "load".into(),
            line_id: String::new(),
        }),
        channel: "web".into(),
        // Long enough that nothing expires during a run.
        ttl_seconds: 3_600,
        allow_partial: false,
    }
}
