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
//! Rules kept after every accepted command:
//! * per line: `received + canceled <= approved <= requested <= bought`,
//!   `disposed <= received` (KEEP_ITEM and MISSING lines excepted),
//!   `inspected <= received`, `refunded_quantity <= refundable`;
//! * refunds never exceed what was paid for the line;
//! * every unit is restocked at most once (one disposition per unit).

mod decide;
mod state;

pub use decide::{
    allowed_commands, apply, apply_entry, decide, refundable_quantity, ReturnContext,
    MAX_AMOUNT_MINOR,
};
pub use state::*;

#[cfg(test)]
mod tests;
