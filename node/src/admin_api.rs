//! The `skuld.v1.AdminService`: what an SRE asks a node about the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use skuld_actors::position::PositionEntity;
use skuld_actors::returns::ReturnEntity;
use skuld_actors::runtime::{Admission, EntityRuntime};
use skuld_actors::{Error, Refusal};
use skuld_cluster::membership::{ClusterView, MemberState, Membership};
use skuld_cluster::shards::ShardTable;
use skuld_proto::v1 as pb;
use skuld_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::readiness::Readiness;
use crate::rpc;

pub struct AdminApi {
    pub node_id: String,
    pub cluster: Option<(Arc<Membership>, Arc<ShardTable>)>,
    pub admission: Arc<Admission>,
    pub positions: Arc<EntityRuntime<PositionEntity>>,
    pub returns: Arc<EntityRuntime<ReturnEntity>>,
    pub readiness: Readiness,
}

impl AdminApi {
    fn cluster(&self) -> Result<&(Arc<Membership>, Arc<ShardTable>), Error> {
        self.cluster.as_ref().ok_or_else(|| {
            Error::Refused(Refusal::FailedPrecondition(
                "this node runs single-node on the embedded store: there are no members, shards or drains".into(),
            ))
        })
    }

    /// What `NodeStatus` answers; the ops page shows the same.
    pub fn status(&self) -> pb::NodeStatusResponse {
        let active = self.positions.active_actors() + self.returns.active_actors();
        let mut status = pb::NodeStatusResponse {
            node_id: self.node_id.clone(),
            mode: "embedded".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            shard_count: 1,
            shards_served: 1,
            in_flight: self.admission.in_flight() as u64,
            lease_confirmed_ms_ago: 0,
            active_actors: active as u64,
            ready: self.readiness.check().is_ok(),
        };
        if let Some((membership, table)) = &self.cluster {
            status.mode = "cluster".into();
            status.shard_count = table.shard_count();
            status.shards_served = u32::try_from(table.local_shards().len()).unwrap_or(0);
            status.lease_confirmed_ms_ago = u64::try_from(
                membership
                    .lease()
                    .borrow()
                    .confirmed_at
                    .elapsed()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX);
        }
        status
    }

    /// What `ListMembers` answers: every registered member with its state
    /// and the shards its claims hold. Refused on a single node.
    pub fn members(&self) -> Result<Vec<pb::Member>, Error> {
        let (membership, _) = self.cluster()?;
        let view = Arc::clone(&membership.view().borrow());
        let mut owned: BTreeMap<&str, u32> = BTreeMap::new();
        for claim in view.owners.values() {
            *owned.entry(claim.node_id.as_str()).or_default() += 1;
        }
        Ok(view
            .members
            .values()
            .map(|member| pb::Member {
                node_id: member.node_id.clone(),
                endpoint: member.endpoint.clone(),
                version: member.version.clone(),
                state: state_name(member.state).into(),
                started_at_ms: member.started_at_ms,
                shards_owned: owned.get(member.node_id.as_str()).copied().unwrap_or(0),
                drain_requested: view.drains.contains(&member.node_id),
                store_healthy: member.store_healthy,
                client_endpoint: member.client_endpoint.clone(),
            })
            .collect())
    }

    /// What `ListShards` answers: each shard's owner (empty while it
    /// moves). Refused on a single node.
    pub fn shard_owners(&self) -> Result<Vec<pb::ShardOwner>, Error> {
        let (membership, table) = self.cluster()?;
        let view = Arc::clone(&membership.view().borrow());
        Ok(shard_owners_in(&view, table.shard_count()))
    }
}

/// Every shard's owner and epoch as `view` has them (empty and 0 while a
/// shard moves): what `ListShards` and `GetShardMap` answer.
pub(crate) fn shard_owners_in(view: &ClusterView, shard_count: u32) -> Vec<pb::ShardOwner> {
    (0..shard_count)
        .map(|shard| {
            let claim = view.owners.get(&shard);
            pb::ShardOwner {
                shard,
                owner: claim.map(|claim| claim.node_id.clone()).unwrap_or_default(),
                epoch: claim.map_or(0, |claim| claim.epoch),
            }
        })
        .collect()
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Active => "active",
        MemberState::Draining => "draining",
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        rpc::serve(
            "NodeStatus",
            request,
            |_, _| async move { Ok(self.status()) },
        )
        .await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        rpc::serve("ListMembers", request, |_, _| async move {
            let members = self.members()?;
            Ok(pb::ListMembersResponse { members })
        })
        .await
    }

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        rpc::serve("ListShards", request, |_, _| async move {
            let shards = self.shard_owners()?;
            Ok(pb::ListShardsResponse { shards })
        })
        .await
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        rpc::serve("DrainNode", request, |message, _| async move {
            let (membership, _) = self.cluster()?;
            skuld_actors::key::validate_token("node_id", &message.node_id)?;
            let known = membership
                .view()
                .borrow()
                .members
                .contains_key(&message.node_id);
            if !known {
                return Err(Error::Refused(Refusal::FailedPrecondition(format!(
                    "no member {:?} is registered",
                    message.node_id
                ))));
            }
            membership
                .request_drain(&message.node_id)
                .await
                .map_err(|error| Error::Unavailable(error.to_string()))?;
            Ok(pb::DrainNodeResponse {})
        })
        .await
    }

    async fn undrain_node(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::UndrainNodeResponse>, Status> {
        rpc::serve("UndrainNode", request, |message, _| async move {
            let (membership, _) = self.cluster()?;
            skuld_actors::key::validate_token("node_id", &message.node_id)?;
            let was_drained = membership
                .cancel_drain(&message.node_id)
                .await
                .map_err(|error| Error::Unavailable(error.to_string()))?;
            Ok(pb::UndrainNodeResponse { was_drained })
        })
        .await
    }
}
