//! The shard map as a client holds it: who owns each shard and where each
//! node takes client calls. Pure data: no network, no clock.

use std::collections::HashMap;
use std::sync::Arc;

use skuld_proto::v1 as pb;

/// What a request is routed by: the entity key the node will hash.
#[derive(Debug, Clone, Copy)]
pub enum RouteKey<'a> {
    Position(&'a pb::PositionKey),
    Return(&'a pb::ReturnKey),
    /// A request of no single key (availability over locations, lists,
    /// admin calls): any node.
    Any,
}

impl RouteKey<'_> {
    /// The key's storage encoding, as the nodes hash it. Not validated: a
    /// malformed key is refused by whichever node gets it.
    pub fn encode(&self) -> Option<Vec<u8>> {
        match self {
            Self::Position(key) => Some(
                skuld_domain::PositionKey {
                    tenant: key.tenant.clone(),
                    sku: key.sku.clone(),
                    location: key.location.clone(),
                }
                .encode(),
            ),
            Self::Return(key) => Some(
                skuld_domain::ReturnKey {
                    tenant: key.tenant.clone(),
                    return_id: key.return_id.clone(),
                }
                .encode(),
            ),
            Self::Any => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    id: Arc<str>,
    /// `None`: the node does not say (older version, single node).
    endpoint: Option<Arc<str>>,
}

/// A shard map from `GetShardMap`, possibly patched by what replies said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    version: i64,
    shard_count: u32,
    /// By shard: index into `nodes`; `None` while the shard moves or its
    /// owner is not a listed node.
    owners: Vec<Option<usize>>,
    nodes: Vec<Node>,
}

impl ShardMap {
    /// The map a node sent, or `None` when it cannot be used: a shard
    /// function this client does not know, or no shards.
    pub fn from_reply(reply: &pb::GetShardMapResponse) -> Option<Self> {
        if reply.shard_function != skuld_proto::shard::SHARD_FUNCTION || reply.shard_count == 0 {
            return None;
        }
        let nodes: Vec<Node> = reply
            .nodes
            .iter()
            .map(|node| Node {
                id: Arc::from(node.node_id.as_str()),
                endpoint: (!node.client_endpoint.is_empty())
                    .then(|| Arc::from(node.client_endpoint.as_str())),
            })
            .collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(at, node)| (&*node.id, at))
            .collect();
        let mut owners = vec![None; usize::try_from(reply.shard_count).ok()?];
        for shard in &reply.shards {
            let slot = usize::try_from(shard.shard)
                .ok()
                .and_then(|at| owners.get_mut(at));
            if let Some(slot) = slot {
                *slot = index.get(shard.owner.as_str()).copied();
            }
        }
        Some(Self {
            version: reply.version,
            shard_count: reply.shard_count,
            owners,
            nodes,
        })
    }

    /// The etcd revision the map reflects (0: none, or a single node).
    pub fn version(&self) -> i64 {
        self.version
    }

    /// 0 for an empty map (none fetched yet).
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The shard of `key`, or `None` without a key or a map.
    pub fn shard_of(&self, key: RouteKey<'_>) -> Option<u32> {
        if self.shard_count == 0 {
            return None;
        }
        key.encode()
            .map(|encoded| skuld_proto::shard::shard_of(&encoded, self.shard_count))
    }

    /// The owner of `shard` and its client endpoint, when both are known.
    pub fn owner(&self, shard: u32) -> Option<(&Arc<str>, &Arc<str>)> {
        let node = &self.nodes[(*self.owners.get(usize::try_from(shard).ok()?)?)?];
        Some((&node.id, node.endpoint.as_ref()?))
    }

    /// Every client endpoint the map names.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<str>> {
        self.nodes.iter().filter_map(|node| node.endpoint.as_ref())
    }

    /// This map with `node` as the owner of `shard`, as a reply said; `None`
    /// when nothing changes or the node is not in the map (its endpoint
    /// unknown: only a refresh helps).
    pub fn with_owner(&self, shard: u32, node: &str) -> Option<Self> {
        let at = self.nodes.iter().position(|known| &*known.id == node)?;
        let slot = usize::try_from(shard).ok()?;
        if *self.owners.get(slot)? == Some(at) {
            return None;
        }
        let mut patched = self.clone();
        patched.owners[slot] = Some(at);
        Some(patched)
    }

    /// This map without `node`'s endpoint, after it could not be reached:
    /// its shards go to any node until a refresh says more. `None` when
    /// the map has no endpoint for it.
    pub fn without_endpoint_of(&self, node: &str) -> Option<Self> {
        let at = self
            .nodes
            .iter()
            .position(|known| &*known.id == node && known.endpoint.is_some())?;
        let mut patched = self.clone();
        patched.nodes[at].endpoint = None;
        Some(patched)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// A reply of `shard_count` shards owned round robin by `nodes` (id,
    /// endpoint; an empty endpoint is none).
    pub(crate) fn reply(
        version: i64,
        shard_count: u32,
        nodes: &[(&str, &str)],
    ) -> pb::GetShardMapResponse {
        pb::GetShardMapResponse {
            version,
            shard_count,
            shard_function: skuld_proto::shard::SHARD_FUNCTION.into(),
            shards: (0..shard_count)
                .map(|shard| pb::ShardOwner {
                    shard,
                    owner: nodes[shard as usize % nodes.len()].0.into(),
                    epoch: u64::from(shard) + 1,
                })
                .collect(),
            nodes: nodes
                .iter()
                .map(|(id, endpoint)| pb::RoutingNode {
                    node_id: (*id).into(),
                    client_endpoint: (*endpoint).into(),
                })
                .collect(),
            node_id: nodes[0].0.into(),
        }
    }

    pub(crate) fn position(sku: &str) -> pb::PositionKey {
        pb::PositionKey {
            tenant: "acme".into(),
            sku: sku.into(),
            location: "DC1".into(),
        }
    }

    #[test]
    fn a_key_goes_to_the_owner_of_the_shard_the_nodes_compute() {
        let map = ShardMap::from_reply(&reply(
            7,
            64,
            &[("a", "http://a:7070"), ("b", "http://b:7070")],
        ))
        .unwrap();
        let key = position("SKU-1");
        let encoded = skuld_domain::PositionKey::new("acme", "SKU-1", "DC1")
            .unwrap()
            .encode();
        let shard = map.shard_of(RouteKey::Position(&key)).unwrap();
        assert_eq!(shard, skuld_proto::shard::shard_of(&encoded, 64));
        let (owner, endpoint) = map.owner(shard).unwrap();
        let expected = if shard.is_multiple_of(2) { "a" } else { "b" };
        assert_eq!(&**owner, expected);
        assert_eq!(&**endpoint, format!("http://{expected}:7070"));
        assert_eq!(map.version(), 7);
        assert_eq!(map.shard_of(RouteKey::Any), None);
    }

    #[test]
    fn no_route_without_a_usable_map_an_owner_or_its_endpoint() {
        assert_eq!(
            ShardMap::default().shard_of(RouteKey::Position(&position("x"))),
            None
        );
        let mut unknown = reply(1, 8, &[("a", "http://a:7070")]);
        unknown.shard_function = "sha256-v9".into();
        assert!(ShardMap::from_reply(&unknown).is_none());
        // An older node that names no endpoint, and a moving shard.
        let mut moving = reply(1, 2, &[("old", ""), ("b", "http://b:7070")]);
        moving.shards[1].owner.clear();
        let map = ShardMap::from_reply(&moving).unwrap();
        assert!(map.owner(0).is_none());
        assert!(map.owner(1).is_none());
        assert!(map.owner(99).is_none());
        assert_eq!(map.endpoints().count(), 1);
    }

    #[test]
    fn a_reply_naming_another_owner_patches_the_map_only_for_a_known_node() {
        let map = ShardMap::from_reply(&reply(
            3,
            4,
            &[("a", "http://a:7070"), ("b", "http://b:7070")],
        ))
        .unwrap();
        assert_eq!(&**map.owner(0).unwrap().0, "a");
        let patched = map.with_owner(0, "b").unwrap();
        assert_eq!(&**patched.owner(0).unwrap().0, "b");
        assert_eq!(patched.owner(1), map.owner(1));
        assert!(patched.with_owner(0, "b").is_none(), "nothing to change");
        assert!(map.with_owner(0, "c").is_none(), "endpoint of c unknown");
        let without_a = map.without_endpoint_of("a").unwrap();
        assert!(without_a.owner(0).is_none());
        assert_eq!(&**without_a.owner(1).unwrap().0, "b");
        assert!(without_a.without_endpoint_of("a").is_none());
    }
}
