//! The return case: a return's lines, state machine, dispositions, refund and
//! exceptions, as a pure state machine .
//!
//! [`decide`] checks a command against the case and returns events or a
//! refusal; [`apply`] folds an event in. Side effects on inventory are not
//! performed here: accepting a receipt, a disposition or an exchange hold
//! schedules an [`Effect`] with a step number. The runtime performs each
//! pending effect against the position actor with the idempotency key
//! `ret:{return_id}:{step}` and then records its completion with
//! [`Command::CompleteEffect`], so a crash between any two steps resumes the
//! effect and never applies it twice.
//!
//! The rules are split by the stage of a case: [`open`] (the order lines,
//! window and review threshold), `review` (approval, labels, carrier
//! scans), `receiving` (receipt, inspection, dispositions), `refund`
//! (what is owed and its gates), `closing`, `effects` (the timer and the
//! results of inventory steps), `inventory` (the position command each
//! effect becomes), with `lifecycle` saying which command each
//! state allows, `validation` the checks on fields, and [`apply`] folding
//! events in.
//!
//! Rules kept after every accepted command:
//! * per line: `received + canceled <= approved <= requested <= bought`,
//!   `disposed <= received` (KEEP_ITEM and MISSING lines excepted),
//!   `inspected <= received`, `refunded_quantity <= refundable`;
//! * refunds never exceed what was paid for the line;
//! * every unit is restocked at most once (one disposition per unit).

mod apply;
mod builder;
mod closing;
mod decide;
mod effects;
mod inventory;
mod lifecycle;
mod open;
mod receiving;
mod refund;
mod review;
mod state;
mod validation;

pub use apply::{apply, apply_entry};
pub use decide::{decide, ReturnContext};
pub use effects::EFFECT_ATTEMPTS_BEFORE_EXCEPTION;
pub use inventory::{PositionCommand, EXCHANGE_HOLD_TTL_MS};
pub use lifecycle::{allowed_commands, refundable_quantity};
pub use state::*;
pub use validation::{check_bounds, MAX_AMOUNT_MINOR, MAX_RETURN_LINES, MAX_TEXT_BYTES};

#[cfg(test)]
mod tests;
