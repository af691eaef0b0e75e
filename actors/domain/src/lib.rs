//! skuld's domain: the rules of inventory positions and return cases as
//! pure state machines, with nothing of storage, network or time in them.
//!
//! * [`position`]: a SKU at a location: `decide(state, command, context) ->
//!   events | refusal` and `apply(state, event)`.
//! * [`returns`]: a return case, the same way; its inventory side effects are
//!   scheduled as numbered steps for the runtime to perform.
//! * [`channel`]: sales channels: allocation controls, available-to-sell,
//!   and the coalescing rule for pushing it.
//! * [`key`]: entity keys and their byte encoding; [`journal`]: the journal
//!   entry every accepted change becomes; [`refusal`]: why a request is refused.
//!
//! Time comes in as an argument (`now_ms` in each context), so every
//! decision replays the same. This crate depends on serde and thiserror only
//! (`scripts/test` checks it); the actor runtime in `skuld-actors` wraps it.

pub mod channel;
pub mod journal;
pub mod key;
pub mod order;
pub mod position;
pub mod refusal;
pub mod returns;

pub use key::{PositionKey, ReturnKey};
pub use order::OrderKey;
pub use refusal::Refusal;
