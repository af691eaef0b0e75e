//! The `skuld.v1.RoutingService`: the shard map, so that owner-aware
//! clients (`skuld-client`) send each request to its key's owner and save
//! the forwarding hop.

use std::sync::Arc;

use skuld_cluster::membership::Membership;
use skuld_proto::v1 as pb;
use skuld_proto::v1::routing_service_server::RoutingService;
use tonic::{Request, Response, Status};

use crate::rpc;

pub struct RoutingApi {
    pub node_id: String,
    /// `None` on a single node.
    pub membership: Option<Arc<Membership>>,
}

impl RoutingApi {
    /// What `GetShardMap` answers: the claims and members as this node's
    /// view of etcd has them, or one shard this node owns on a single node.
    pub fn shard_map(&self) -> pb::GetShardMapResponse {
        let Some(membership) = &self.membership else {
            return pb::GetShardMapResponse {
                version: 0,
                shard_count: 1,
                shard_function: skuld_proto::shard::SHARD_FUNCTION.into(),
                shards: vec![pb::ShardOwner {
                    shard: 0,
                    owner: self.node_id.clone(),
                    epoch: 0,
                }],
                // No endpoint: the one the client called is the node.
                nodes: vec![pb::RoutingNode {
                    node_id: self.node_id.clone(),
                    client_endpoint: String::new(),
                }],
                node_id: self.node_id.clone(),
            };
        };
        let view = Arc::clone(&membership.view().borrow());
        let shards = crate::admin_api::shard_owners_in(&view, membership.shard_count());
        let nodes = view
            .members
            .values()
            .map(|member| pb::RoutingNode {
                node_id: member.node_id.clone(),
                client_endpoint: member.client_endpoint.clone(),
            })
            .collect();
        pb::GetShardMapResponse {
            version: view.revision,
            shard_count: membership.shard_count(),
            shard_function: skuld_proto::shard::SHARD_FUNCTION.into(),
            shards,
            nodes,
            node_id: self.node_id.clone(),
        }
    }
}

#[tonic::async_trait]
impl RoutingService for RoutingApi {
    async fn get_shard_map(
        &self,
        request: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::GetShardMapResponse>, Status> {
        rpc::serve("GetShardMap", request, |_, _| async move {
            Ok(self.shard_map())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_owns_its_one_shard_and_names_no_endpoint() {
        let api = RoutingApi {
            node_id: "solo".into(),
            membership: None,
        };
        let map = api.shard_map();
        assert_eq!(map.shard_count, 1);
        assert_eq!(map.shards.len(), 1);
        assert_eq!(map.shards[0].owner, "solo");
        assert_eq!(map.nodes[0].client_endpoint, "");
        assert_eq!(map.shard_function, skuld_proto::shard::SHARD_FUNCTION);
    }
}
