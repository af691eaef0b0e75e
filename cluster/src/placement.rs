//! Placement: which live node should own each shard.
//!
//! Rendezvous (highest random weight) hashing: every node scores every shard
//! with a hash of `(shard, node id)` and the highest score wins. It is a pure
//! function of the member set, so every node computes the same map without
//! talking to the others, and when a node joins or leaves only the shards it
//! wins or held move (about `shards / nodes`), never a reshuffle.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The shard a storage key belongs to, defined with the API because
/// owner-aware clients compute it too.
pub use skuld_proto::shard::shard_of;

fn score(shard: u32, node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), u64::from(shard))
}

/// The target owner of `shard` among `candidates` (node ids), or `None`
/// when there is no candidate.
pub fn owner_of<'a>(shard: u32, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .copied()
        // Ties (astronomically unlikely) go to the smaller id, so that the
        // answer never depends on the candidates' order.
        .max_by(|a, b| score(shard, a).cmp(&score(shard, b)).then(b.cmp(a)))
}

/// The target owner of every shard, indexed by shard.
pub fn assign<'a>(shard_count: u32, candidates: &[&'a str]) -> Vec<Option<&'a str>> {
    (0..shard_count)
        .map(|shard| owner_of(shard, candidates))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn count_by_node(map: &[Option<&str>]) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for owner in map.iter().flatten() {
            *counts.entry((*owner).to_owned()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn shards_are_spread_evenly_enough() {
        let nodes = ["node-a", "node-b", "node-c", "node-d", "node-e"];
        let map = assign(1024, &nodes);
        let counts = count_by_node(&map);
        assert_eq!(counts.len(), 5);
        for (node, count) in counts {
            // 1024 / 5 = 204.8; rendezvous hashing stays within ~25 %.
            assert!((150..=260).contains(&count), "{node} got {count} shards");
        }
    }

    #[test]
    fn the_answer_does_not_depend_on_member_order() {
        let forward = assign(256, &["a", "b", "c"]);
        let backward = assign(256, &["c", "b", "a"]);
        assert_eq!(forward, backward);
    }

    #[test]
    fn a_join_moves_only_shards_to_the_new_node() {
        let before = assign(1024, &["a", "b", "c"]);
        let after = assign(1024, &["a", "b", "c", "d"]);
        let mut moved = 0;
        for (old, new) in before.iter().zip(&after) {
            if old != new {
                assert_eq!(*new, Some("d"), "a shard moved between old nodes");
                moved += 1;
            }
        }
        // About a quarter moves, not a reshuffle.
        assert!((180..=330).contains(&moved), "{moved} shards moved");
    }

    #[test]
    fn a_leave_moves_only_the_leavers_shards() {
        let before = assign(1024, &["a", "b", "c", "d"]);
        let after = assign(1024, &["a", "b", "d"]);
        for (old, new) in before.iter().zip(&after) {
            if *old != Some("c") {
                assert_eq!(old, new, "a shard not on the leaver moved");
            } else {
                assert_ne!(*new, Some("c"));
            }
        }
    }

    #[test]
    fn no_candidates_means_no_owner() {
        assert_eq!(owner_of(7, &[]), None);
    }

    #[test]
    fn keys_map_to_stable_shards_in_range() {
        let shard = shard_of(b"P\x00sku-1\x00store-9", 1024);
        assert!(shard < 1024);
        assert_eq!(shard, shard_of(b"P\x00sku-1\x00store-9", 1024));
        assert_eq!(shard_of(b"anything", 1), 0);
        assert_eq!(shard_of(b"anything", 0), 0);
    }
}
