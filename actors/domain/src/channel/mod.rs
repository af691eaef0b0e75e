//! Sales channels: what each channel may sell, and when a changed quantity
//! is pushed to it. Pure rules, no I/O (docs/channels.md has the contract).
//!
//! * [`definition`]: a channel (kind, network of locations, publication,
//!   account settings by reference) and its validation.
//! * [`controls`]: the allocation controls (buffers, exclusion, ring-fence
//!   cap, minimum, allocation share) and [`controls::available_to_sell`],
//!   the channel's sellable quantity for one SKU from the network's stock.
//! * [`push`]: the coalescing rule: desired and acknowledged value per
//!   pushed key, one push in flight, decreases and zero crossings first,
//!   increases paced, re-assertion last.
//! * [`inbound`]: which webhook deliveries a resource applies (dedupe and
//!   `updated_at` order).

pub mod controls;
pub mod definition;
pub mod inbound;
pub mod listing;
pub mod push;

#[cfg(test)]
mod tests;

pub use controls::{available_to_sell, Availability, Control, ControlKind, Scope};
pub use definition::{Channel, ChannelKind, Publication};
pub use listing::{DriftDetected, ListingKey};
pub use push::{Push, PushPolicy, PushState, Urgency};
