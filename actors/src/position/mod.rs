//! The inventory position as an entity of the actor runtime: the pure rules
//! are `skuld_domain::position` (re-exported here).

mod entity;
mod holds;

pub use entity::{MutationRequest, PositionEntity, PositionFigures};
pub use holds::OldestHolds;
pub use skuld_domain::position::*;
