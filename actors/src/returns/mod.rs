//! Return cases as an entity of the actor runtime, and the executor of their
//! inventory steps: the pure rules are `skuld_domain::returns` (re-exported
//! here).

mod entity;

pub use entity::{effect_mutation, summary_scope, ReturnEntity, ReturnMutation, ReturnSummary};
pub use skuld_domain::returns::*;

#[cfg(test)]
mod runtime_tests;
