//! The checks every command's fields go through, and the bounds that keep
//! every sum of client numbers far from overflow.

use super::state::*;
use crate::key::validate_token;
use crate::position::MAX_QUANTITY;
use crate::Refusal;

/// Lines of one return at most.
pub const MAX_RETURN_LINES: usize = 200;
/// Largest amount paid for one order line, in minor units (10^15: ten
/// trillion in a currency of cents). With at most [`MAX_RETURN_LINES`]
/// lines, every total of a return fits an i64 many times over.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

pub(super) fn refuse(message: impl Into<String>) -> Refusal {
    Refusal::FailedPrecondition(message.into())
}

pub(super) fn line<'a>(case: &'a ReturnCase, line_id: &str) -> Result<&'a ReturnLine, Refusal> {
    case.lines.get(line_id).ok_or_else(|| {
        Refusal::invalid(
            "line_id",
            format!("{line_id:?} is not a line of this return"),
        )
    })
}

/// Client quantities are bounded like a position's, so every sum of them
/// (received + inspected + ..., per line) stays far from overflow.
pub(super) fn positive(field: &'static str, value: i64) -> Result<(), Refusal> {
    if value <= 0 {
        return Err(Refusal::invalid(field, format!("must be > 0, got {value}")));
    }
    if value > MAX_QUANTITY {
        return Err(Refusal::invalid(
            field,
            format!("must be at most {MAX_QUANTITY}, got {value}"),
        ));
    }
    Ok(())
}

pub(super) fn optional_token(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        Ok(())
    } else {
        validate_token(field, value)
    }
}

pub(super) fn free_text(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.len() > 1_024 || value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            field,
            "at most 1024 bytes, no control characters",
        ));
    }
    Ok(())
}
