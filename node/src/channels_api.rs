//! The `skuld.v1.ChannelService`: channel definitions and their controls,
//! kept in the store's records (`channels::definitions`) so every node reads
//! them, and a channel's available-to-sell, computed from the network's
//! positions (each read from its owner) with the domain's rules
//! (`skuld_domain::channel`).
//!
//! Every request names its tenant, so the auth layer admits or refuses the
//! caller before anything is looked up: a caller without the tenant gets
//! the same PERMISSION_DENIED whether or not the channel exists, and only a
//! caller of the tenant learns NOT_FOUND.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skuld_actors::channel::controls::{validate_shares, Line};
use skuld_actors::channel::definition::{DEFAULT_PUSH_INTERVAL_MS, DEFAULT_REASSERT_INTERVAL_MS};
use skuld_actors::channel::{
    available_to_sell, Channel, ChannelKind, Control, ControlKind, Publication, Scope,
};
use skuld_actors::key::{validate_tenant, validate_token, MAX_TOKEN_BYTES};
use skuld_actors::position::PositionEntity;
use skuld_actors::runtime::EntityRuntime;
use skuld_actors::{Error, PositionKey, Refusal};
use skuld_cluster::Store;
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_server::ChannelService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::channels::definitions::{self, validate_channel_id, StoredChannel};
use crate::channels::operations;
use crate::rpc::{self, Failure};

/// SKUs one GetChannelAvailability names at most.
pub const MAX_AVAILABILITY_SKUS: usize = 100;
/// Positions one GetChannelAvailability reads at most (SKUs times the
/// network's locations): a wide network takes fewer SKUs per call.
pub const MAX_AVAILABILITY_POSITIONS: usize = 10_000;
/// Channels one tenant defines at most: each availability call and each
/// change reads all of them (shares, allocation remainders).
pub const MAX_CHANNELS_PER_TENANT: usize = 1_000;
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1_000;

pub struct ChannelsApi {
    store: Arc<dyn Store>,
    positions: Arc<EntityRuntime<PositionEntity>>,
    /// Shards of push keys (the cluster's, or the single node's): a replay
    /// names the key's record in its shard.
    shard_count: u32,
    /// Serializes this node's read-check-write of definitions, so two
    /// changes on one node cannot both pass one revision or one share
    /// check. Records have no conditional write: two nodes changing the
    /// same tenant's channels at the same instant are not serialized.
    changes: tokio::sync::Mutex<()>,
}

impl ChannelsApi {
    pub fn new(
        store: Arc<dyn Store>,
        positions: Arc<EntityRuntime<PositionEntity>>,
        shard_count: u32,
    ) -> Self {
        Self {
            store,
            positions,
            shard_count,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    async fn existing(&self, tenant: &str, id: &str) -> Result<StoredChannel, Failure> {
        definitions::load(self.store.as_ref(), tenant, id)
            .await?
            .ok_or_else(|| not_found(tenant, id))
    }

    /// Checks `candidate` against the tenant's other channels (shares of
    /// one pool at most 100 %) and stores it at the next revision after
    /// `current` (1 for a new channel).
    async fn store_checked(
        &self,
        candidate: Channel,
        current: Option<&StoredChannel>,
    ) -> Result<StoredChannel, Failure> {
        let others: Vec<Channel> =
            definitions::tenant_channels(self.store.as_ref(), &candidate.tenant)
                .await?
                .into_iter()
                .map(|stored| stored.channel)
                .filter(|other| other.id != candidate.id)
                .collect();
        if current.is_none() && others.len() >= MAX_CHANNELS_PER_TENANT {
            return Err(Error::Refused(Refusal::FailedPrecondition(format!(
                "tenant {:?} has {MAX_CHANNELS_PER_TENANT} channels, the most allowed",
                candidate.tenant
            )))
            .into());
        }
        let mut pool = others;
        pool.push(candidate.clone());
        validate_shares(&pool)?;
        let now = skuld_cluster::now_ms();
        let stored = StoredChannel {
            channel: candidate,
            revision: current.map_or(1, |current| current.revision.saturating_add(1)),
            created_at_ms: current.map_or(now, |current| current.created_at_ms),
            updated_at_ms: now,
        };
        definitions::save(self.store.as_ref(), &stored).await?;
        tracing::info!(
            tenant = %stored.channel.tenant,
            channel = %stored.channel.id,
            kind = stored.channel.kind.name(),
            revision = stored.revision,
            "channel definition stored"
        );
        Ok(stored)
    }
}

fn not_found(tenant: &str, id: &str) -> Failure {
    Status::not_found(format!("tenant {tenant:?} has no channel {id:?}")).into()
}

/// FAILED_PRECONDITION, as a stale `expected_version` of a position is.
fn check_revision(expected: Option<u64>, current: u64) -> Result<(), Failure> {
    match expected {
        Some(expected) if expected != current => {
            let message =
                format!("revision mismatch: expected {expected}, the channel is at {current}");
            let details = ErrorDetails::with_precondition_failure_violation(
                "REVISION_MISMATCH",
                "expected_revision",
                message.clone(),
            );
            Err(Status::with_error_details(Code::FailedPrecondition, message, details).into())
        }
        _ => Ok(()),
    }
}

fn kind_from_proto(raw: i32) -> Result<ChannelKind, Refusal> {
    match pb::ChannelKind::try_from(raw) {
        Ok(pb::ChannelKind::Shopify) => Ok(ChannelKind::Shopify),
        Ok(pb::ChannelKind::Amazon) => Ok(ChannelKind::Amazon),
        Ok(pb::ChannelKind::Walmart) => Ok(ChannelKind::Walmart),
        Ok(pb::ChannelKind::AdobeCommerce) => Ok(ChannelKind::AdobeCommerce),
        Ok(pb::ChannelKind::Webhook) => Ok(ChannelKind::Webhook),
        Ok(pb::ChannelKind::Unspecified) => Err(Refusal::invalid(
            "kind",
            "must be set: shopify, amazon, walmart, adobe_commerce or webhook",
        )),
        Err(_) => Err(Refusal::invalid("kind", format!("unknown value {raw}"))),
    }
}

fn kind_to_proto(kind: ChannelKind) -> pb::ChannelKind {
    match kind {
        ChannelKind::Shopify => pb::ChannelKind::Shopify,
        ChannelKind::Amazon => pb::ChannelKind::Amazon,
        ChannelKind::Walmart => pb::ChannelKind::Walmart,
        ChannelKind::AdobeCommerce => pb::ChannelKind::AdobeCommerce,
        ChannelKind::Webhook => pb::ChannelKind::Webhook,
    }
}

fn publication_from_proto(raw: i32, kind: ChannelKind) -> Result<Publication, Refusal> {
    match pb::ChannelPublication::try_from(raw) {
        Ok(pb::ChannelPublication::Unspecified) => Ok(kind.default_publication()),
        Ok(pb::ChannelPublication::PerLocation) => Ok(Publication::PerLocation),
        Ok(pb::ChannelPublication::PerSku) => Ok(Publication::PerSku),
        Err(_) => Err(Refusal::invalid(
            "publication",
            format!("unknown value {raw}"),
        )),
    }
}

fn publication_to_proto(publication: Publication) -> pb::ChannelPublication {
    match publication {
        Publication::PerLocation => pb::ChannelPublication::PerLocation,
        Publication::PerSku => pb::ChannelPublication::PerSku,
    }
}

fn scope_from_proto(scope: Option<pb::ControlScope>) -> Scope {
    let scope = scope.unwrap_or_default();
    match (scope.sku.is_empty(), scope.location.is_empty()) {
        (true, true) => Scope::All,
        (false, true) => Scope::Sku(scope.sku),
        (true, false) => Scope::Location(scope.location),
        (false, false) => Scope::SkuLocation {
            sku: scope.sku,
            location: scope.location,
        },
    }
}

fn scope_to_proto(scope: &Scope) -> pb::ControlScope {
    let (sku, location) = match scope {
        Scope::All => (String::new(), String::new()),
        Scope::Sku(sku) => (sku.clone(), String::new()),
        Scope::Location(location) => (String::new(), location.clone()),
        Scope::SkuLocation { sku, location } => (sku.clone(), location.clone()),
    };
    pb::ControlScope { sku, location }
}

/// The domain's controls; their values are checked by
/// `validate_controls`, here only that each says what it does.
pub fn controls_from_proto(controls: Vec<pb::ChannelControl>) -> Result<Vec<Control>, Refusal> {
    use pb::channel_control::Kind;
    controls
        .into_iter()
        .enumerate()
        .map(|(index, control)| {
            let kind = match control.kind {
                Some(Kind::QuantityBuffer(buffer)) => ControlKind::QuantityBuffer {
                    units: buffer.units,
                },
                Some(Kind::PercentBuffer(buffer)) => ControlKind::PercentBuffer {
                    basis_points: buffer.basis_points,
                },
                Some(Kind::Exclusion(_)) => ControlKind::Exclusion,
                Some(Kind::RingFenceCap(cap)) => ControlKind::RingFenceCap { units: cap.units },
                Some(Kind::Minimum(minimum)) => ControlKind::Minimum {
                    units: minimum.units,
                },
                Some(Kind::AllocationShare(share)) => ControlKind::AllocationShare {
                    basis_points: share.basis_points,
                },
                None => {
                    return Err(Refusal::invalid(
                        "controls.kind",
                        format!(
                            "control {index} names no kind: one of quantity_buffer, percent_buffer, exclusion, ring_fence_cap, minimum, allocation_share"
                        ),
                    ))
                }
            };
            Ok(Control {
                id: control.id,
                kind,
                scope: scope_from_proto(control.scope),
                priority: control.priority,
            })
        })
        .collect()
}

pub fn control_to_proto(control: &Control) -> pb::ChannelControl {
    use pb::channel_control::{self as control_pb, Kind};
    let kind = match control.kind {
        ControlKind::QuantityBuffer { units } => {
            Kind::QuantityBuffer(control_pb::QuantityBuffer { units })
        }
        ControlKind::PercentBuffer { basis_points } => {
            Kind::PercentBuffer(control_pb::PercentBuffer { basis_points })
        }
        ControlKind::Exclusion => Kind::Exclusion(control_pb::Exclusion {}),
        ControlKind::RingFenceCap { units } => {
            Kind::RingFenceCap(control_pb::RingFenceCap { units })
        }
        ControlKind::Minimum { units } => Kind::Minimum(control_pb::Minimum { units }),
        ControlKind::AllocationShare { basis_points } => {
            Kind::AllocationShare(control_pb::AllocationShare { basis_points })
        }
    };
    pb::ChannelControl {
        id: control.id.clone(),
        priority: control.priority,
        scope: Some(scope_to_proto(&control.scope)),
        kind: Some(kind),
    }
}

/// A channel from the API, checked whole: the domain's rules, the id's
/// separator, and that location-scoped controls name a location of the
/// network (elsewhere they would never apply).
pub fn channel_from_proto(channel: Option<pb::Channel>) -> Result<Channel, Refusal> {
    let channel = channel.ok_or_else(|| Refusal::invalid("channel", "must be set"))?;
    validate_tenant("tenant", &channel.tenant)?;
    validate_channel_id("id", &channel.id)?;
    let kind = kind_from_proto(channel.kind)?;
    let candidate = Channel {
        publication: publication_from_proto(channel.publication, kind)?,
        id: channel.id,
        tenant: channel.tenant,
        kind,
        network: channel.network,
        priority: channel.priority,
        controls: controls_from_proto(channel.controls)?,
        stacking: channel.stacking,
        min_push_interval_ms: match channel.min_push_interval_ms {
            0 => DEFAULT_PUSH_INTERVAL_MS,
            interval => interval,
        },
        reassert_interval_ms: match channel.reassert_interval_ms {
            0 => DEFAULT_REASSERT_INTERVAL_MS,
            interval => interval,
        },
        account: channel.account.into_iter().collect(),
        credentials_ref: channel.credentials_ref,
    };
    validate_channel(&candidate)?;
    Ok(candidate)
}

fn validate_channel(channel: &Channel) -> Result<(), Refusal> {
    channel.validate()?;
    for control in &channel.controls {
        let location = match &control.scope {
            Scope::Location(location) | Scope::SkuLocation { location, .. } => location,
            Scope::All | Scope::Sku(_) => continue,
        };
        if !channel.sells_from(location) {
            return Err(Refusal::invalid(
                "controls.scope.location",
                format!(
                    "control {:?} names {location:?}, which is not in the channel's network",
                    control.id
                ),
            ));
        }
    }
    Ok(())
}

pub fn channel_to_proto(stored: &StoredChannel) -> pb::Channel {
    let channel = &stored.channel;
    pb::Channel {
        tenant: channel.tenant.clone(),
        id: channel.id.clone(),
        kind: kind_to_proto(channel.kind).into(),
        network: channel.network.clone(),
        publication: publication_to_proto(channel.publication).into(),
        priority: channel.priority,
        controls: channel.controls.iter().map(control_to_proto).collect(),
        stacking: channel.stacking,
        min_push_interval_ms: channel.min_push_interval_ms,
        reassert_interval_ms: channel.reassert_interval_ms,
        account: channel
            .account
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        credentials_ref: channel.credentials_ref.clone(),
        revision: stored.revision,
        created_at_ms: stored.created_at_ms,
        updated_at_ms: stored.updated_at_ms,
    }
}

fn page_size(requested: u32) -> Result<usize, Refusal> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        size if size <= MAX_PAGE_SIZE => Ok(size as usize),
        _ => Err(Refusal::invalid(
            "page_size",
            format!("1 to {MAX_PAGE_SIZE}"),
        )),
    }
}

/// The record id a page token of `tenant` continues after; only tokens this
/// service gave out (record ids of the tenant's channels) are taken.
fn page_after(tenant: &str, token: &str) -> Result<Option<String>, Refusal> {
    if token.is_empty() {
        return Ok(None);
    }
    // Not just a channel id after the tenant: a page may end on the record
    // of a tenant whose name extends this one's (`<tenant>/eu/web`), which
    // is at most a tenant, a '/' and a channel id long.
    let valid = token.len() <= 2 * MAX_TOKEN_BYTES + 1
        && !token.chars().any(char::is_control)
        && token
            .strip_prefix(tenant)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty());
    if valid {
        Ok(Some(token.to_owned()))
    } else {
        Err(Refusal::invalid(
            "page_token",
            "is not a token this service gave out for this tenant",
        ))
    }
}

/// The SKUs asked, each once, in the order asked.
fn availability_skus(skus: Vec<String>) -> Result<Vec<String>, Refusal> {
    if skus.is_empty() {
        return Err(Refusal::invalid("skus", "must name at least one SKU"));
    }
    if skus.len() > MAX_AVAILABILITY_SKUS {
        return Err(Refusal::invalid(
            "skus",
            format!(
                "at most {MAX_AVAILABILITY_SKUS} per request, got {}",
                skus.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut unique = Vec::with_capacity(skus.len());
    for sku in skus {
        validate_token("skus", &sku)?;
        if seen.insert(sku.clone()) {
            unique.push(sku);
        }
    }
    Ok(unique)
}

fn line_to_proto(line: &Line, position_version: u64) -> pb::ChannelLocationLine {
    pb::ChannelLocationLine {
        location: line.location.clone(),
        network_available: line.network_available,
        available_to_sell: line.value,
        position_version,
    }
}

#[tonic::async_trait]
impl ChannelService for ChannelsApi {
    async fn create_channel(
        &self,
        request: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::CreateChannelResponse>, Status> {
        rpc::serve_checked("CreateChannel", request, |request, _| async move {
            let channel = channel_from_proto(request.channel)?;
            let _serialized = self.changes.lock().await;
            let existing =
                definitions::load(self.store.as_ref(), &channel.tenant, &channel.id).await?;
            if existing.is_some() {
                return Err(Status::already_exists(format!(
                    "tenant {:?} already has a channel {:?}",
                    channel.tenant, channel.id
                ))
                .into());
            }
            let stored = self.store_checked(channel, None).await?;
            Ok(pb::CreateChannelResponse {
                channel: Some(channel_to_proto(&stored)),
            })
        })
        .await
    }

    async fn get_channel(
        &self,
        request: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::GetChannelResponse>, Status> {
        rpc::serve_checked("GetChannel", request, |request, _| async move {
            validate_tenant("tenant", &request.tenant)?;
            validate_channel_id("id", &request.id)?;
            let stored = self.existing(&request.tenant, &request.id).await?;
            Ok(pb::GetChannelResponse {
                channel: Some(channel_to_proto(&stored)),
            })
        })
        .await
    }

    async fn list_channels(
        &self,
        request: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        rpc::serve("ListChannels", request, |request, _| async move {
            validate_tenant("tenant", &request.tenant)?;
            let limit = page_size(request.page_size)?;
            let after = page_after(&request.tenant, &request.page_token)?;
            let (page, next) =
                definitions::page_of_tenant(self.store.as_ref(), &request.tenant, after, limit)
                    .await?;
            Ok(pb::ListChannelsResponse {
                channels: page.iter().map(channel_to_proto).collect(),
                next_page_token: next.unwrap_or_default(),
            })
        })
        .await
    }

    async fn update_channel(
        &self,
        request: Request<pb::UpdateChannelRequest>,
    ) -> Result<Response<pb::UpdateChannelResponse>, Status> {
        rpc::serve_checked("UpdateChannel", request, |request, _| async move {
            let channel = channel_from_proto(request.channel)?;
            let _serialized = self.changes.lock().await;
            let current = self.existing(&channel.tenant, &channel.id).await?;
            check_revision(request.expected_revision, current.revision)?;
            if channel.kind != current.channel.kind {
                return Err(Error::Refused(Refusal::FailedPrecondition(format!(
                    "channel {:?} is a {} channel; its kind cannot change (delete it and create another)",
                    channel.id,
                    current.channel.kind.name()
                )))
                .into());
            }
            let stored = if channel == current.channel {
                current
            } else {
                self.store_checked(channel, Some(&current)).await?
            };
            Ok(pb::UpdateChannelResponse {
                channel: Some(channel_to_proto(&stored)),
            })
        })
        .await
    }

    async fn delete_channel(
        &self,
        request: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::DeleteChannelResponse>, Status> {
        rpc::serve_checked("DeleteChannel", request, |request, _| async move {
            validate_tenant("tenant", &request.tenant)?;
            validate_channel_id("id", &request.id)?;
            let _serialized = self.changes.lock().await;
            let current = self.existing(&request.tenant, &request.id).await?;
            check_revision(request.expected_revision, current.revision)?;
            definitions::remove(self.store.as_ref(), &request.tenant, &request.id).await?;
            tracing::info!(tenant = %request.tenant, channel = %request.id, "channel deleted");
            Ok(pb::DeleteChannelResponse {})
        })
        .await
    }

    async fn set_controls(
        &self,
        request: Request<pb::SetControlsRequest>,
    ) -> Result<Response<pb::SetControlsResponse>, Status> {
        rpc::serve_checked("SetControls", request, |request, _| async move {
            validate_tenant("tenant", &request.tenant)?;
            validate_channel_id("channel_id", &request.channel_id)?;
            let controls = controls_from_proto(request.controls)?;
            skuld_actors::channel::controls::validate_controls(&controls)?;
            let _serialized = self.changes.lock().await;
            let current = self.existing(&request.tenant, &request.channel_id).await?;
            check_revision(request.expected_revision, current.revision)?;
            let mut channel = current.channel.clone();
            channel.controls = controls;
            if let Some(stacking) = request.stacking {
                channel.stacking = stacking;
            }
            validate_channel(&channel)?;
            let stored = if channel == current.channel {
                current
            } else {
                self.store_checked(channel, Some(&current)).await?
            };
            Ok(pb::SetControlsResponse {
                channel: Some(channel_to_proto(&stored)),
            })
        })
        .await
    }

    async fn get_channel_availability(
        &self,
        request: Request<pb::GetChannelAvailabilityRequest>,
    ) -> Result<Response<pb::GetChannelAvailabilityResponse>, Status> {
        rpc::serve_checked(
            "GetChannelAvailability",
            request,
            |request, meta| async move {
                validate_tenant("tenant", &request.tenant)?;
                validate_channel_id("channel_id", &request.channel_id)?;
                let skus = availability_skus(request.skus)?;
                let stored = self
                    .existing(&request.tenant, &request.channel_id)
                    .await?;
                let channel = &stored.channel;
                let network = channel.network.len();
                if skus.len().saturating_mul(network) > MAX_AVAILABILITY_POSITIONS {
                    return Err(Error::Refused(Refusal::invalid(
                        "skus",
                        format!(
                            "the channel's network has {network} locations: at most {} SKUs per request ({MAX_AVAILABILITY_POSITIONS} positions)",
                            (MAX_AVAILABILITY_POSITIONS / network.max(1)).max(1)
                        ),
                    ))
                    .into());
                }
                let peers: Vec<Channel> =
                    definitions::tenant_channels(self.store.as_ref(), &channel.tenant)
                        .await?
                        .into_iter()
                        .map(|peer| peer.channel)
                        .collect();
                let mut keys = Vec::with_capacity(skus.len() * network);
                for sku in &skus {
                    for location in &channel.network {
                        keys.push(PositionKey::new(
                            channel.tenant.clone(),
                            sku.clone(),
                            location.clone(),
                        )?);
                    }
                }
                let states = self.positions.read_many(&keys, meta).await?;
                let mut answers = Vec::with_capacity(skus.len());
                for (sku, sku_states) in skus.iter().zip(states.chunks(network.max(1))) {
                    let mut stock = BTreeMap::new();
                    let mut versions = BTreeMap::new();
                    for (location, state) in channel.network.iter().zip(sku_states) {
                        stock.insert(location.clone(), state.buckets.available());
                        versions.insert(location.as_str(), state.version);
                    }
                    let availability = available_to_sell(channel, &peers, sku, &stock);
                    let locations = if request.per_location {
                        availability
                            .lines
                            .iter()
                            .map(|line| {
                                let version =
                                    versions.get(line.location.as_str()).copied().unwrap_or(0);
                                line_to_proto(line, version)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    answers.push(pb::ChannelSkuAvailability {
                        sku: availability.sku,
                        available_to_sell: availability.total,
                        network_available: availability.network_available,
                        locations,
                        revision: stored.revision,
                    });
                }
                Ok(pb::GetChannelAvailabilityResponse { skus: answers })
            },
        )
        .await
    }

    // The push worker's dead letters, drift and reconciliation: see
    // `channels::operations`.

    async fn list_channel_dead_letters(
        &self,
        request: Request<pb::ListChannelDeadLettersRequest>,
    ) -> Result<Response<pb::ListChannelDeadLettersResponse>, Status> {
        rpc::serve_checked("ListChannelDeadLetters", request, |request, _| {
            operations::list_dead_letters(self.store.as_ref(), request)
        })
        .await
    }

    async fn replay_channel_dead_letters(
        &self,
        request: Request<pb::ReplayChannelDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayChannelDeadLettersResponse>, Status> {
        rpc::serve_checked("ReplayChannelDeadLetters", request, |request, _| {
            operations::replay_dead_letters(self.store.as_ref(), self.shard_count, request)
        })
        .await
    }

    async fn list_channel_drift(
        &self,
        request: Request<pb::ListChannelDriftRequest>,
    ) -> Result<Response<pb::ListChannelDriftResponse>, Status> {
        rpc::serve_checked("ListChannelDrift", request, |request, _| {
            operations::list_drift(self.store.as_ref(), request)
        })
        .await
    }

    async fn reconcile_channel(
        &self,
        request: Request<pb::ReconcileChannelRequest>,
    ) -> Result<Response<pb::ReconcileChannelResponse>, Status> {
        rpc::serve_checked("ReconcileChannel", request, |request, _| {
            operations::reconcile(self.store.as_ref(), request)
        })
        .await
    }

    async fn sync_channel(
        &self,
        request: Request<pb::SyncChannelRequest>,
    ) -> Result<Response<pb::SyncChannelResponse>, Status> {
        rpc::serve_checked("SyncChannel", request, |request, _| {
            operations::sync(self.store.as_ref(), self.shard_count, request)
        })
        .await
    }

    /// What inbound webhooks could not apply (`inbound::exceptions`).
    async fn list_channel_webhook_exceptions(
        &self,
        request: Request<pb::ListChannelWebhookExceptionsRequest>,
    ) -> Result<Response<pb::ListChannelWebhookExceptionsResponse>, Status> {
        rpc::serve_checked("ListChannelWebhookExceptions", request, |request, _| {
            crate::inbound::exceptions::list(self.store.as_ref(), request)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn proto_channel() -> pb::Channel {
        pb::Channel {
            tenant: "acme".into(),
            id: "shop".into(),
            kind: pb::ChannelKind::Shopify.into(),
            network: vec!["DC1".into(), "DC2".into()],
            credentials_ref: "env:SHOP_TOKEN".into(),
            ..Default::default()
        }
    }

    fn field_of(refusal: Refusal) -> String {
        match refusal {
            Refusal::InvalidArgument { field, .. } => field.into_owned(),
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_out() {
        let channel = channel_from_proto(Some(proto_channel())).unwrap();
        assert_eq!(channel.publication, Publication::PerLocation);
        assert_eq!(channel.min_push_interval_ms, DEFAULT_PUSH_INTERVAL_MS);
        assert_eq!(channel.reassert_interval_ms, DEFAULT_REASSERT_INTERVAL_MS);
        let amazon = channel_from_proto(Some(pb::Channel {
            kind: pb::ChannelKind::Amazon.into(),
            ..proto_channel()
        }))
        .unwrap();
        assert_eq!(amazon.publication, Publication::PerSku);
    }

    #[test]
    fn every_bad_field_is_named() {
        let exclusion = |location: &str| pb::ChannelControl {
            id: "c1".into(),
            priority: 1,
            scope: Some(pb::ControlScope {
                sku: String::new(),
                location: location.into(),
            }),
            kind: Some(pb::channel_control::Kind::Exclusion(
                pb::channel_control::Exclusion {},
            )),
        };
        let cases: Vec<(&str, pb::Channel)> = vec![
            (
                "tenant",
                pb::Channel {
                    tenant: String::new(),
                    ..proto_channel()
                },
            ),
            (
                "id",
                pb::Channel {
                    id: "a/b".into(),
                    ..proto_channel()
                },
            ),
            (
                "kind",
                pb::Channel {
                    kind: 0,
                    ..proto_channel()
                },
            ),
            (
                "kind",
                pb::Channel {
                    kind: 99,
                    ..proto_channel()
                },
            ),
            (
                "publication",
                pb::Channel {
                    publication: 7,
                    ..proto_channel()
                },
            ),
            (
                "network",
                pb::Channel {
                    network: vec![],
                    ..proto_channel()
                },
            ),
            (
                "credentials_ref",
                pb::Channel {
                    credentials_ref: "shpat_secret".into(),
                    ..proto_channel()
                },
            ),
            (
                "controls.kind",
                pb::Channel {
                    controls: vec![pb::ChannelControl {
                        kind: None,
                        ..exclusion("DC1")
                    }],
                    ..proto_channel()
                },
            ),
            (
                "controls.scope.location",
                pb::Channel {
                    controls: vec![exclusion("DC9")],
                    ..proto_channel()
                },
            ),
            (
                "controls.priority",
                pb::Channel {
                    controls: vec![pb::ChannelControl {
                        priority: 0,
                        ..exclusion("DC1")
                    }],
                    ..proto_channel()
                },
            ),
        ];
        for (field, channel) in cases {
            let refusal = channel_from_proto(Some(channel)).unwrap_err();
            assert_eq!(field_of(refusal), field);
        }
        assert_eq!(field_of(channel_from_proto(None).unwrap_err()), "channel");
    }

    #[test]
    fn a_refused_credentials_ref_is_not_echoed() {
        let refusal = channel_from_proto(Some(pb::Channel {
            credentials_ref: "shpat_0123456789abcdef".into(),
            ..proto_channel()
        }))
        .unwrap_err();
        assert!(!refusal.to_string().contains("shpat_"), "{refusal}");
    }

    #[test]
    fn controls_round_trip_through_the_api_types() {
        let controls = vec![
            Control {
                id: "a".into(),
                kind: ControlKind::QuantityBuffer { units: 3 },
                scope: Scope::All,
                priority: 1,
            },
            Control {
                id: "b".into(),
                kind: ControlKind::PercentBuffer { basis_points: 250 },
                scope: Scope::Sku("SKU-1".into()),
                priority: 2,
            },
            Control {
                id: "c".into(),
                kind: ControlKind::Exclusion,
                scope: Scope::Location("DC1".into()),
                priority: 3,
            },
            Control {
                id: "d".into(),
                kind: ControlKind::RingFenceCap { units: 9 },
                scope: Scope::SkuLocation {
                    sku: "SKU-1".into(),
                    location: "DC2".into(),
                },
                priority: 4,
            },
            Control {
                id: "e".into(),
                kind: ControlKind::Minimum { units: 2 },
                scope: Scope::All,
                priority: 5,
            },
            Control {
                id: "f".into(),
                kind: ControlKind::AllocationShare {
                    basis_points: 5_000,
                },
                scope: Scope::All,
                priority: 6,
            },
        ];
        let api: Vec<_> = controls.iter().map(control_to_proto).collect();
        assert_eq!(controls_from_proto(api).unwrap(), controls);
    }

    #[test]
    fn page_tokens_are_the_tenants_own() {
        assert_eq!(page_after("acme", "").unwrap(), None);
        assert_eq!(
            page_after("acme", "acme/shop").unwrap(),
            Some("acme/shop".into())
        );
        assert!(page_after("acme", "globex/shop").is_err());
        assert!(page_after("acme", "acme/").is_err());
        // A page of acme's may end on a record of the tenant "acme/eu".
        assert_eq!(
            page_after("acme", "acme/eu/web").unwrap(),
            Some("acme/eu/web".into())
        );
        assert!(page_after("acme", &format!("acme/{}", "x".repeat(300))).is_err());
        assert!(page_after("acme", "acme/we\u{0}b").is_err());
    }

    #[test]
    fn availability_skus_are_bounded_and_deduplicated() {
        assert_eq!(
            availability_skus(vec!["B".into(), "A".into(), "B".into()]).unwrap(),
            vec!["B".to_owned(), "A".to_owned()]
        );
        assert_eq!(field_of(availability_skus(vec![]).unwrap_err()), "skus");
        let many = (0..=MAX_AVAILABILITY_SKUS)
            .map(|n| format!("S{n}"))
            .collect();
        assert_eq!(field_of(availability_skus(many).unwrap_err()), "skus");
        assert_eq!(
            field_of(availability_skus(vec!["".into()]).unwrap_err()),
            "skus"
        );
    }

    #[test]
    fn a_stale_revision_is_a_failed_precondition() {
        assert!(check_revision(None, 3).is_ok());
        assert!(check_revision(Some(3), 3).is_ok());
        match check_revision(Some(2), 3) {
            Err(Failure::Status(status)) => {
                assert_eq!(status.code(), Code::FailedPrecondition);
            }
            _ => panic!("a stale revision passed"),
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn arbitrary_control() -> impl Strategy<Value = pb::ChannelControl> {
            use pb::channel_control::{self as control_pb, Kind};
            let kind = prop_oneof![
                (-5i64..1_000)
                    .prop_map(|units| Kind::QuantityBuffer(control_pb::QuantityBuffer { units })),
                (0u32..11_000).prop_map(|basis_points| Kind::PercentBuffer(
                    control_pb::PercentBuffer { basis_points }
                )),
                Just(Kind::Exclusion(control_pb::Exclusion {})),
                (-5i64..1_000)
                    .prop_map(|units| Kind::RingFenceCap(control_pb::RingFenceCap { units })),
                any::<i64>().prop_map(|units| Kind::Minimum(control_pb::Minimum { units })),
                (0u32..11_000).prop_map(|basis_points| Kind::AllocationShare(
                    control_pb::AllocationShare { basis_points }
                )),
            ];
            (
                "(c[0-9]|c[0-9]|.{0,3})",
                any::<u32>(),
                "(DC[0-3])?",
                "(S[0-2])?",
                proptest::option::weighted(0.9, kind),
            )
                .prop_map(|(id, priority, location, sku, kind)| pb::ChannelControl {
                    id,
                    priority: priority % 8,
                    scope: Some(pb::ControlScope { sku, location }),
                    kind,
                })
        }

        proptest! {
            // About one case in ten is accepted: four times the default
            // cases, still a few milliseconds.
            #![proptest_config(ProptestConfig::with_cases(1_024))]

            // Arbitrary definitions never panic the conversion; whatever it
            // accepts holds the domain's rules and sells, for any stock,
            // between nothing and the network's available.
            #[test]
            fn any_definition_is_refused_or_valid_and_sells_within_the_network(
                tenant in prop_oneof![8 => Just("acme".to_owned()), 1 => Just("a/b".to_owned()), 1 => "(\\*|.{0,3})"],
                id in prop_oneof![8 => "[a-z]{1,4}", 1 => "(a/b| web|.{0,3})"],
                kind in prop_oneof![9 => 1i32..6, 1 => -1i32..7],
                publication in prop_oneof![9 => 0i32..3, 1 => -1i32..5],
                network in prop_oneof![
                    4 => proptest::sample::subsequence(vec!["DC0".to_owned(), "DC1".into(), "DC2".into(), "DC3".into()], 0..=4),
                    1 => proptest::collection::vec("(DC[0-3]|.{0,3})", 0..5),
                ],
                controls in proptest::collection::vec(arbitrary_control(), 0..4),
                stacking in any::<bool>(),
                // Mostly near the bounds, where the rules decide.
                min_push_interval_ms in prop_oneof![Just(0u64), 50u64..5_000, any::<u64>()],
                reassert_interval_ms in prop_oneof![Just(0u64), 0u64..10_000, any::<u64>()],
                credentials_ref in "(env:TOKEN|file:/run/x||.{0,6})",
                stock in proptest::collection::vec(any::<i64>(), 4),
            ) {
                let request = pb::Channel {
                    tenant, id, kind, publication, network, controls, stacking,
                    min_push_interval_ms, reassert_interval_ms, credentials_ref,
                    ..Default::default()
                };
                let Ok(channel) = channel_from_proto(Some(request)) else {
                    return Ok(());
                };
                prop_assert!(channel.validate().is_ok());
                prop_assert!(!channel.id.contains('/'));
                let stock: BTreeMap<String, i64> = (0..4).map(|n| format!("DC{n}")).zip(stock).collect();
                let availability = available_to_sell(&channel, std::slice::from_ref(&channel), "S1", &stock);
                prop_assert!(availability.total >= 0);
                prop_assert!(availability.total <= availability.network_available);
                let stored = StoredChannel { channel: channel.clone(), revision: 1, created_at_ms: 0, updated_at_ms: 0 };
                let again = channel_from_proto(Some(channel_to_proto(&stored)));
                prop_assert_eq!(again.ok(), Some(channel));
            }
        }
    }
}
