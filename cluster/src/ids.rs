//! The ids a node makes up (its incarnation, request correlation ids),
//! injected.
//!
//! Production draws them at random as before; the deterministic
//! simulation passes `Ids::seeded`, so one seed gives the same ids on
//! every run and a failing seed replays exactly. Each simulated node needs
//! its own seed: two nodes seeded alike would share an incarnation.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a node's ids come from.
#[derive(Clone)]
pub struct Ids(Source);

#[derive(Clone)]
enum Source {
    Random,
    Seeded {
        seed: u64,
        // Shared by the clones, so no two clones hand out one id.
        drawn: Arc<AtomicU64>,
    },
}

impl Ids {
    /// Random ids (uuid v4, and v7 where the id should sort by time).
    pub fn random() -> Self {
        Self(Source::Random)
    }

    /// The same sequence of ids for the same seed, another for another
    /// seed.
    pub fn seeded(seed: u64) -> Self {
        Self(Source::Seeded {
            seed,
            drawn: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A unique id (random: uuid v4).
    pub fn unique(&self) -> uuid::Uuid {
        match &self.0 {
            Source::Random => uuid::Uuid::new_v4(),
            Source::Seeded { seed, drawn } => seeded_uuid(*seed, drawn),
        }
    }

    /// A unique id that sorts by the time it was made (random: uuid v7;
    /// seeded: by the order it was drawn).
    pub fn time_ordered(&self) -> uuid::Uuid {
        match &self.0 {
            Source::Random => uuid::Uuid::now_v7(),
            Source::Seeded { seed, drawn } => seeded_uuid(*seed, drawn),
        }
    }
}

/// The next id of a seeded sequence: the draw's number in the high half
/// (so the sequence sorts in the order drawn), a hash of seed and number
/// in the low half (so seeds differ), shaped as a uuid v8.
fn seeded_uuid(seed: u64, drawn: &AtomicU64) -> uuid::Uuid {
    let number = drawn.fetch_add(1, Ordering::Relaxed);
    let mut input = [0_u8; 16];
    input[..8].copy_from_slice(&seed.to_be_bytes());
    input[8..].copy_from_slice(&number.to_be_bytes());
    let mixed = xxhash_rust::xxh3::xxh3_64(&input);
    let mut bytes = [0_u8; 16];
    bytes[..8].copy_from_slice(&number.to_be_bytes());
    bytes[8..].copy_from_slice(&mixed.to_be_bytes());
    uuid::Uuid::new_v8(bytes)
}

impl Default for Ids {
    fn default() -> Self {
        Self::random()
    }
}

impl fmt::Debug for Ids {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Random => formatter.write_str("Ids::random"),
            Source::Seeded { seed, .. } => write!(formatter, "Ids::seeded({seed})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(ids: &Ids, count: usize) -> Vec<uuid::Uuid> {
        (0..count)
            .map(|turn| {
                if turn % 2 == 0 {
                    ids.unique()
                } else {
                    ids.time_ordered()
                }
            })
            .collect()
    }

    #[test]
    fn one_seed_gives_one_sequence_and_another_seed_another() {
        let first = draw(&Ids::seeded(7), 100);
        assert_eq!(first, draw(&Ids::seeded(7), 100));
        let other = draw(&Ids::seeded(8), 100);
        assert!(first.iter().all(|id| !other.contains(id)));
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), first.len());
        // Drawn in order, sorted in order.
        assert_eq!(distinct, first);
    }

    #[test]
    fn clones_of_a_seeded_source_share_its_sequence() {
        let ids = Ids::seeded(3);
        let clone = ids.clone();
        let drawn = [ids.unique(), clone.unique(), ids.unique()];
        assert_eq!(drawn.to_vec(), draw(&Ids::seeded(3), 3));
    }

    #[test]
    fn random_ids_are_uuids_of_the_versions_used_before() {
        let ids = Ids::random();
        assert_eq!(ids.unique().get_version_num(), 4);
        assert_eq!(ids.time_ordered().get_version_num(), 7);
        assert_ne!(ids.unique(), ids.unique());
    }
}
