//! The `skuld.v1.InventoryService` implementation: decode, run through the
//! position runtime, encode; plus per-RPC metrics, correlation ids and
//! deadlines.

use std::sync::Arc;

use skuld_actors::position::MutationRequest;
use skuld_actors::position::PositionEntity;
use skuld_actors::runtime::{EntityRuntime, RequestMeta};
use skuld_actors::{Error, Refusal};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_server::InventoryService;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::rpc;

pub struct InventoryApi {
    runtime: Arc<EntityRuntime<PositionEntity>>,
}

impl InventoryApi {
    pub fn new(runtime: Arc<EntityRuntime<PositionEntity>>) -> Self {
        crate::import_api::describe_metrics();
        Self { runtime }
    }

    async fn mutate(
        &self,
        request: MutationRequest,
        meta: RequestMeta,
    ) -> Result<pb::MutationResponse, Error> {
        let key = request.key.clone();
        let mutated = self.runtime.mutate(request, meta).await?;
        Ok(convert::mutation_response(&key, &mutated))
    }
}

type MutationResult = Result<Response<pb::MutationResponse>, Status>;

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    type ImportPositionsStream = crate::import_api::ImportStream;

    async fn adjust(&self, request: Request<pb::AdjustRequest>) -> MutationResult {
        rpc::serve("Adjust", request, |message, meta| async move {
            self.mutate(convert::adjust(message)?, meta).await
        })
        .await
    }

    async fn set_on_hand(&self, request: Request<pb::SetOnHandRequest>) -> MutationResult {
        rpc::serve("SetOnHand", request, |message, meta| async move {
            self.mutate(convert::set_on_hand(message)?, meta).await
        })
        .await
    }

    async fn r#move(&self, request: Request<pb::MoveRequest>) -> MutationResult {
        rpc::serve("Move", request, |message, meta| async move {
            self.mutate(convert::move_quantity(message)?, meta).await
        })
        .await
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> MutationResult {
        rpc::serve("Reserve", request, |message, meta| async move {
            self.mutate(convert::reserve(message)?, meta).await
        })
        .await
    }

    async fn extend_reservation(
        &self,
        request: Request<pb::ExtendReservationRequest>,
    ) -> MutationResult {
        rpc::serve("ExtendReservation", request, |message, meta| async move {
            self.mutate(convert::extend(message)?, meta).await
        })
        .await
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> MutationResult {
        rpc::serve("ReleaseReservation", request, |message, meta| async move {
            self.mutate(convert::release(message)?, meta).await
        })
        .await
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> MutationResult {
        rpc::serve("CommitReservation", request, |message, meta| async move {
            self.mutate(convert::commit(message)?, meta).await
        })
        .await
    }

    async fn fulfill(&self, request: Request<pb::FulfillRequest>) -> MutationResult {
        rpc::serve("Fulfill", request, |message, meta| async move {
            self.mutate(convert::fulfill(message)?, meta).await
        })
        .await
    }

    async fn cancel_commitment(
        &self,
        request: Request<pb::CancelCommitmentRequest>,
    ) -> MutationResult {
        rpc::serve("CancelCommitment", request, |message, meta| async move {
            self.mutate(convert::cancel_commitment(message)?, meta)
                .await
        })
        .await
    }

    async fn get_position(
        &self,
        request: Request<pb::GetPositionRequest>,
    ) -> Result<Response<pb::GetPositionResponse>, Status> {
        rpc::serve("GetPosition", request, |message, meta| async move {
            let key = convert::position_key(message.key)?;
            let state = self.runtime.read(&key, meta).await?;
            if state.version == 0 {
                return Err(Error::Refused(Refusal::PositionNotFound));
            }
            Ok(pb::GetPositionResponse {
                position: Some(convert::position(
                    &key,
                    &state,
                    message.reservations_page_size,
                    &message.reservations_page_token,
                )?),
            })
        })
        .await
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::GetAvailabilityResponse>, Status> {
        rpc::serve("GetAvailability", request, |message, meta| async move {
            let keys = convert::availability_keys(message)?;
            let states = self.runtime.read_many(&keys, meta).await?;
            let locations: Vec<_> = keys
                .iter()
                .zip(&states)
                .map(|(key, state)| convert::location_availability(key, state))
                .collect();
            let total_available = locations.iter().map(|l| l.available.max(0)).sum();
            Ok(pb::GetAvailabilityResponse {
                locations,
                total_available,
            })
        })
        .await
    }

    async fn import_positions(
        &self,
        request: Request<tonic::Streaming<pb::ImportPositionsRequest>>,
    ) -> Result<Response<Self::ImportPositionsStream>, Status> {
        crate::import_api::serve(Arc::clone(&self.runtime), request).await
    }
}
