//! Orders as an entity of the actor runtime, and the driver of their saga:
//! the pure rules are `skuld_domain::order` (re-exported here).

mod entity;
mod rest;

pub use entity::{step_mutation, OrderEntity, OrderMutation};
pub use rest::RestWatch;
pub use skuld_domain::order::*;
