//! The `skuld.v1.OrderService` implementation and its conversions.
//!
//! A mutation is decided by the order's actor (which records the saga's
//! first steps); the reply then waits for the saga to come to rest (HELD,
//! COMMITTED or RELEASED), handed over by the order's actor when it runs on
//! this node and read back otherwise, or until the call's deadline (at most
//! [`MAX_WAIT`]), when it answers with the order as it is.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use skuld_actors::order::{
    step_key_for, Failure, HoldState, LineSpec, Order, OrderCommand, OrderEntity, OrderMutation,
    OrderStatus, Shortfall, TransferSpec,
};
use skuld_actors::runtime::{EntityRuntime, RequestMeta};
use skuld_actors::{Error, OrderKey, Refusal};
use skuld_proto::v1 as pb;
use skuld_proto::v1::order_service_server::OrderService;
use tonic::{Request, Response, Status};

use crate::rpc;

/// Longest a mutation waits for its saga to come to rest.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

pub struct OrdersApi {
    runtime: Arc<EntityRuntime<OrderEntity>>,
}

impl OrdersApi {
    pub fn new(runtime: Arc<EntityRuntime<OrderEntity>>) -> Self {
        Self { runtime }
    }

    /// Applies the mutation, then waits for the order to come to rest.
    async fn mutate(
        &self,
        mutation: Result<OrderMutation, Error>,
        meta: RequestMeta,
    ) -> Result<(pb::Order, bool), Error> {
        let (key, order, replayed) = self.mutate_until_at_rest(mutation, meta).await?;
        Ok((proto_order(&key, &order), replayed))
    }

    /// A transfer's mutation (the same saga), answered as a transfer.
    async fn mutate_transfer(
        &self,
        mutation: Result<OrderMutation, Error>,
        meta: RequestMeta,
    ) -> Result<(pb::Transfer, bool), Error> {
        let (key, order, replayed) = self.mutate_until_at_rest(mutation, meta).await?;
        Ok((proto_transfer(&key, &order)?, replayed))
    }

    async fn mutate_until_at_rest(
        &self,
        mutation: Result<OrderMutation, Error>,
        meta: RequestMeta,
    ) -> Result<(OrderKey, Order, bool), Error> {
        let mutation = mutation?;
        let key = mutation.key.clone();
        let started = Instant::now();
        let deadline = meta
            .deadline
            .map_or(started + MAX_WAIT, |d| d.min(started + MAX_WAIT));
        let mutated = self.runtime.mutate(mutation, meta.clone()).await?;
        let mut order = mutated.reply;
        // Woken by the write that brings the order to rest when it runs on
        // this node; the polls below cover an order run by another node
        // and a rest reached before the watch was registered.
        let mut rest = self.runtime.entity().watch_rest(&key, order.version);
        let mut pause = Duration::from_millis(2);
        while order.status.is_some_and(|status| !status.at_rest()) {
            // Stop a little before the caller's deadline, so the reply
            // still reaches it.
            let now = Instant::now();
            if now + pause + Duration::from_millis(20) >= deadline {
                break;
            }
            let rested = tokio::select! {
                // A watch already spent disables this branch: just sleep.
                Some(rested) = rest.rested() => Some(rested),
                () = tokio::time::sleep(pause) => None,
            };
            if let Some(rested) = rested {
                order = rested;
                continue;
            }
            pause = (pause * 2).min(Duration::from_millis(50));
            let read_meta = RequestMeta {
                deadline: Some(deadline),
                ..meta.clone()
            };
            match self.runtime.read(&key, read_meta).await {
                Ok(now) => order = now,
                // The change is durable; the order as last seen is a
                // truthful answer, and GetOrder tells how it ends.
                Err(error) if error.is_retryable() => break,
                Err(error) => return Err(error),
            }
        }
        Ok((key, order, mutated.replayed))
    }
}

fn transfer_key(key: Option<pb::TransferKey>) -> Result<OrderKey, Error> {
    let key = key.ok_or_else(|| Error::invalid("key", "is required"))?;
    Ok(OrderKey::new(key.tenant, key.transfer_id)?)
}

fn transfer_mutation(
    key: Option<pb::TransferKey>,
    idempotency_key: String,
    command: OrderCommand,
) -> Result<OrderMutation, Error> {
    Ok(OrderMutation {
        key: transfer_key(key)?,
        idempotency_key,
        expected_version: None,
        command,
    })
}

fn transfer_status(status: Option<OrderStatus>) -> pb::TransferStatus {
    match status {
        None => pb::TransferStatus::Unspecified,
        Some(OrderStatus::Reserving) => pb::TransferStatus::Moving,
        Some(OrderStatus::Held) => pb::TransferStatus::InTransit,
        Some(OrderStatus::Committing) => pb::TransferStatus::Receiving,
        Some(OrderStatus::Committed) => pb::TransferStatus::Received,
        Some(OrderStatus::Releasing) => pb::TransferStatus::Returning,
        Some(OrderStatus::Released) => pb::TransferStatus::NotTransferred,
    }
}

fn proto_failure(failure: &Failure) -> pb::OrderFailure {
    pb::OrderFailure {
        line_id: failure.line_id.clone(),
        sku: failure.sku.clone(),
        requested: failure.requested,
        shortfalls: failure.shortfalls.iter().map(shortfall).collect(),
        reason: failure.reason.clone(),
    }
}

/// The transfer behind an order actor; NOT_FOUND for none, or an order.
pub fn proto_transfer(key: &OrderKey, order: &Order) -> Result<pb::Transfer, Error> {
    let Some(transfer) = order.transfer.as_ref().filter(|_| order.status.is_some()) else {
        return Err(Error::Refused(Refusal::OrderNotFound(key.order_id.clone())));
    };
    Ok(pb::Transfer {
        key: Some(pb::TransferKey {
            tenant: key.tenant.clone(),
            transfer_id: key.order_id.clone(),
        }),
        sku: transfer.spec.sku.clone(),
        from_location: transfer.spec.from.clone(),
        to_location: transfer.spec.to.clone(),
        quantity: transfer.spec.quantity,
        status: transfer_status(order.status) as i32,
        failure: order.failure.as_ref().map(proto_failure),
        version: order.version,
        pending_step: order.pending.first().map_or(0, |step| step.number),
    })
}

fn order_key(key: Option<pb::OrderKey>) -> Result<OrderKey, Error> {
    let key = key.ok_or_else(|| Error::invalid("key", "is required"))?;
    Ok(OrderKey::new(key.tenant, key.order_id)?)
}

fn mutation(
    key: Option<pb::OrderKey>,
    idempotency_key: String,
    command: OrderCommand,
) -> Result<OrderMutation, Error> {
    Ok(OrderMutation {
        key: order_key(key)?,
        idempotency_key,
        expected_version: None,
        command,
    })
}

fn reserve_command(message: &pb::ReserveOrderRequest) -> Result<OrderCommand, Error> {
    let ttl_ms = message
        .ttl_seconds
        .checked_mul(1_000)
        .ok_or_else(|| Error::invalid("ttl_seconds", "is too large"))?;
    let lines = message
        .lines
        .iter()
        .map(|line| LineSpec {
            line_id: line.line_id.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
            locations: line.locations.clone(),
            split: line.allow_split,
        })
        .collect();
    Ok(OrderCommand::Reserve {
        lines,
        ttl_ms,
        channel: message.channel.clone(),
    })
}

fn status(status: Option<OrderStatus>) -> pb::OrderStatus {
    match status {
        None => pb::OrderStatus::Unspecified,
        Some(OrderStatus::Reserving) => pb::OrderStatus::Reserving,
        Some(OrderStatus::Held) => pb::OrderStatus::Held,
        Some(OrderStatus::Committing) => pb::OrderStatus::Committing,
        Some(OrderStatus::Committed) => pb::OrderStatus::Committed,
        Some(OrderStatus::Releasing) => pb::OrderStatus::Releasing,
        Some(OrderStatus::Released) => pb::OrderStatus::Released,
    }
}

fn shortfall(shortfall: &Shortfall) -> pb::OrderShortfall {
    pb::OrderShortfall {
        location: shortfall.location.clone(),
        available: shortfall.available,
        reason: shortfall.reason.clone(),
    }
}

pub fn proto_order(key: &OrderKey, order: &Order) -> pb::Order {
    pb::Order {
        key: Some(pb::OrderKey {
            tenant: key.tenant.clone(),
            order_id: key.order_id.clone(),
        }),
        status: status(order.status) as i32,
        lines: order
            .lines
            .iter()
            .map(|line| pb::OrderLineState {
                line: Some(pb::OrderLineSpec {
                    line_id: line.spec.line_id.clone(),
                    sku: line.spec.sku.clone(),
                    quantity: line.spec.quantity,
                    locations: line.spec.locations.clone(),
                    allow_split: line.spec.split,
                }),
                holds: line
                    .holds
                    .iter()
                    .map(|hold| pb::OrderHold {
                        location: hold.location.clone(),
                        quantity: hold.quantity,
                        reservation_id: step_key_for(&key.order_id, &line.spec.line_id, hold.step),
                        state: match hold.state {
                            HoldState::Held => pb::OrderHoldState::Held,
                            HoldState::Committed => pb::OrderHoldState::Committed,
                            HoldState::Released => pb::OrderHoldState::Released,
                        } as i32,
                        in_doubt: hold.in_doubt,
                    })
                    .collect(),
                shortfalls: line.shortfalls.iter().map(shortfall).collect(),
            })
            .collect(),
        failure: order.failure.as_ref().map(proto_failure),
        version: order.version,
        pending_step: order.pending.first().map_or(0, |step| step.number),
    }
}

#[tonic::async_trait]
impl OrderService for OrdersApi {
    async fn reserve_order(
        &self,
        request: Request<pb::ReserveOrderRequest>,
    ) -> Result<Response<pb::ReserveOrderResponse>, Status> {
        rpc::serve("ReserveOrder", request, |m, meta| async move {
            let command = reserve_command(&m);
            let (order, replayed) = self
                .mutate(
                    command.and_then(|c| mutation(m.key, m.idempotency_key, c)),
                    meta,
                )
                .await?;
            Ok(pb::ReserveOrderResponse {
                order: Some(order),
                replayed,
            })
        })
        .await
    }

    async fn commit_order(
        &self,
        request: Request<pb::CommitOrderRequest>,
    ) -> Result<Response<pb::CommitOrderResponse>, Status> {
        rpc::serve("CommitOrder", request, |m, meta| async move {
            let (order, replayed) = self
                .mutate(
                    mutation(m.key, m.idempotency_key, OrderCommand::Commit),
                    meta,
                )
                .await?;
            Ok(pb::CommitOrderResponse {
                order: Some(order),
                replayed,
            })
        })
        .await
    }

    async fn release_order(
        &self,
        request: Request<pb::ReleaseOrderRequest>,
    ) -> Result<Response<pb::ReleaseOrderResponse>, Status> {
        rpc::serve("ReleaseOrder", request, |m, meta| async move {
            let (order, replayed) = self
                .mutate(
                    mutation(m.key, m.idempotency_key, OrderCommand::Release),
                    meta,
                )
                .await?;
            Ok(pb::ReleaseOrderResponse {
                order: Some(order),
                replayed,
            })
        })
        .await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        rpc::serve("GetOrder", request, |m, meta| async move {
            let key = order_key(m.key)?;
            let order = self.runtime.read(&key, meta).await?;
            if order.status.is_none() {
                return Err(Error::Refused(Refusal::OrderNotFound(key.order_id.clone())));
            }
            Ok(pb::GetOrderResponse {
                order: Some(proto_order(&key, &order)),
            })
        })
        .await
    }

    async fn transfer_stock(
        &self,
        request: Request<pb::TransferStockRequest>,
    ) -> Result<Response<pb::TransferStockResponse>, Status> {
        rpc::serve("TransferStock", request, |m, meta| async move {
            let command = OrderCommand::Transfer {
                spec: TransferSpec {
                    sku: m.sku,
                    from: m.from_location,
                    to: m.to_location,
                    quantity: m.quantity,
                },
            };
            let (transfer, replayed) = self
                .mutate_transfer(transfer_mutation(m.key, m.idempotency_key, command), meta)
                .await?;
            Ok(pb::TransferStockResponse {
                transfer: Some(transfer),
                replayed,
            })
        })
        .await
    }

    async fn receive_transfer(
        &self,
        request: Request<pb::ReceiveTransferRequest>,
    ) -> Result<Response<pb::ReceiveTransferResponse>, Status> {
        rpc::serve("ReceiveTransfer", request, |m, meta| async move {
            let (transfer, replayed) = self
                .mutate_transfer(
                    transfer_mutation(m.key, m.idempotency_key, OrderCommand::ReceiveTransfer),
                    meta,
                )
                .await?;
            Ok(pb::ReceiveTransferResponse {
                transfer: Some(transfer),
                replayed,
            })
        })
        .await
    }

    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::GetTransferResponse>, Status> {
        rpc::serve("GetTransfer", request, |m, meta| async move {
            let key = transfer_key(m.key)?;
            let order = self.runtime.read(&key, meta).await?;
            Ok(pb::GetTransferResponse {
                transfer: Some(proto_transfer(&key, &order)?),
            })
        })
        .await
    }
}
