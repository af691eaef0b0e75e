//! The checks every command's fields go through, and the bounds that keep
//! every sum of client numbers far from overflow.

use super::state::*;
use crate::key::{validate_token, MAX_TOKEN_BYTES};
use crate::position::MAX_QUANTITY;
use crate::Refusal;

/// Lines of one return at most, and lines one receipt or inspection names
/// at most.
pub const MAX_RETURN_LINES: usize = 200;
/// Longest free text accepted (a note, a reason, a label URL), in bytes.
pub const MAX_TEXT_BYTES: usize = 1_024;
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
    if value.len() > MAX_TEXT_BYTES || value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            field,
            format!("at most {MAX_TEXT_BYTES} bytes, no control characters"),
        ));
    }
    Ok(())
}

fn at_most(field: &'static str, value: &str, limit: usize) -> Result<(), Refusal> {
    if value.len() > limit {
        return Err(Refusal::invalid(
            field,
            format!("is {} bytes; at most {limit} allowed", value.len()),
        ));
    }
    Ok(())
}

fn token(field: &'static str, value: &str) -> Result<(), Refusal> {
    at_most(field, value, MAX_TOKEN_BYTES)
}

fn text(field: &'static str, value: &str) -> Result<(), Refusal> {
    at_most(field, value, MAX_TEXT_BYTES)
}

fn lines<T>(field: &'static str, lines: &[T]) -> Result<(), Refusal> {
    if lines.len() > MAX_RETURN_LINES {
        return Err(Refusal::invalid(
            field,
            format!(
                "at most {MAX_RETURN_LINES} per request, got {}",
                lines.len()
            ),
        ));
    }
    Ok(())
}

/// The bounds of a client's command that need no state: how many lines it
/// names and how long each string is. The runtime checks them before the
/// command is queued (on the node that took the request and again on the
/// owner it is forwarded to), so an oversized command never holds a mailbox
/// slot, and `decide` checks them first, so no rule below ever walks an
/// unbounded list or stores an unbounded string. Each field's content
/// (empty, control characters) is checked where it is used.
pub fn check_bounds(command: &ReturnCommand) -> Result<(), Refusal> {
    match command {
        ReturnCommand::Open {
            order_ref,
            customer_ref,
            channel,
            order_lines,
            lines: requested,
            ..
        } => {
            token("order_ref", order_ref)?;
            token("customer_ref", customer_ref)?;
            token("channel", channel)?;
            lines("order_lines", order_lines)?;
            for line in order_lines {
                token("order_lines.line_id", &line.line_id)?;
                token("order_lines.sku", &line.sku)?;
                token("order_lines.location", &line.location)?;
            }
            lines("lines", requested)?;
            for line in requested {
                token("lines.order_line_id", &line.order_line_id)?;
                text("lines.reason_code", &line.reason_code)?;
                if let Some(sku) = &line.exchange_sku {
                    token("lines.exchange_sku", sku)?;
                }
            }
            Ok(())
        }
        ReturnCommand::FlagForReview { reason } | ReturnCommand::Cancel { reason } => {
            text("reason", reason)
        }
        ReturnCommand::Reopen { reason } => token("reason", reason),
        ReturnCommand::Approve { approved_by } | ReturnCommand::ApproveRefund { approved_by } => {
            token("approved_by", approved_by)
        }
        ReturnCommand::Decline { note, .. } => text("note", note),
        ReturnCommand::AttachLabel { label } => {
            token("label.carrier", &label.carrier)?;
            token("label.tracking_number", &label.tracking_number)?;
            text("label.label_url", &label.label_url)
        }
        ReturnCommand::Receive {
            lines: received, ..
        } => {
            lines("lines", received)?;
            for line in received {
                token("lines.line_id", &line.line_id)?;
                token("lines.location", &line.location)?;
            }
            Ok(())
        }
        ReturnCommand::Inspect { lines: inspected } => {
            lines("lines", inspected)?;
            for line in inspected {
                token("lines.line_id", &line.line_id)?;
            }
            Ok(())
        }
        ReturnCommand::Dispose { line_id, .. } => token("line_id", line_id),
        ReturnCommand::ConfirmErp { credit_memo } => token("credit_memo", credit_memo),
        ReturnCommand::ResolveException {
            resolved_by, note, ..
        } => {
            token("resolved_by", resolved_by)?;
            text("note", note)
        }
        // The node's own commands, never a client's (the runtime refuses
        // them from outside).
        ReturnCommand::CompleteEffect { .. } | ReturnCommand::Tick => Ok(()),
        ReturnCommand::ErpReport {
            report: ErpReport::Overdue { note },
        } => text("note", note),
        ReturnCommand::ErpReport {
            report: ErpReport::Refused { code, message },
        } => {
            text("code", code)?;
            text("message", message)
        }
        ReturnCommand::CarrierMilestone { .. }
        | ReturnCommand::Process { .. }
        | ReturnCommand::Close => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::returns::{decide, ReturnContext};

    fn field_of(result: Result<(), Refusal>) -> String {
        match result {
            Err(Refusal::InvalidArgument { field, .. }) => field.into_owned(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn received(count: usize) -> ReturnCommand {
        ReturnCommand::Receive {
            lines: vec![
                ReceivedLine {
                    line_id: "L1".into(),
                    quantity: 1,
                    location: String::new(),
                };
                count
            ],
            accept_surplus: true,
        }
    }

    #[test]
    fn every_list_and_string_of_a_command_is_bounded() {
        assert!(check_bounds(&received(MAX_RETURN_LINES)).is_ok());
        assert_eq!(
            field_of(check_bounds(&received(MAX_RETURN_LINES + 1))),
            "lines"
        );
        let inspected = InspectedLine {
            line_id: "L1".into(),
            quantity: 1,
            grade: Grade::A,
        };
        let inspect = ReturnCommand::Inspect {
            lines: vec![inspected; MAX_RETURN_LINES + 1],
        };
        assert_eq!(field_of(check_bounds(&inspect)), "lines");
        let order_line = OrderLine {
            line_id: "L1".into(),
            sku: "SKU".into(),
            quantity: 1,
            amount_paid_minor: 100,
            fulfilled_at_ms: 0,
            delivered_at_ms: 0,
            location: "DC1".into(),
        };
        let open = |order_lines: Vec<OrderLine>, reason_code: String| ReturnCommand::Open {
            order_ref: "O1".into(),
            customer_ref: String::new(),
            channel: String::new(),
            requester: Requester::Customer,
            order_lines,
            lines: vec![RequestedLine {
                order_line_id: "L1".into(),
                quantity: 1,
                reason_code,
                resolution: Resolution::RefundOriginal,
                exchange_sku: None,
            }],
            pre_approved: false,
            override_window: false,
            policy: ReturnPolicy::default(),
        };
        assert!(check_bounds(&open(vec![order_line.clone()], "r".repeat(MAX_TEXT_BYTES))).is_ok());
        assert_eq!(
            field_of(check_bounds(&open(
                vec![order_line.clone(); MAX_RETURN_LINES + 1],
                String::new()
            ))),
            "order_lines"
        );
        assert_eq!(
            field_of(check_bounds(&open(
                vec![order_line],
                "r".repeat(MAX_TEXT_BYTES + 1)
            ))),
            "lines.reason_code"
        );
        let label = ReturnCommand::AttachLabel {
            label: Label {
                carrier: "ups".into(),
                tracking_number: "1".repeat(MAX_TOKEN_BYTES + 1),
                label_url: String::new(),
            },
        };
        assert_eq!(field_of(check_bounds(&label)), "label.tracking_number");
        let note = ReturnCommand::ResolveException {
            exception_id: 1,
            resolved_by: "ops".into(),
            note: "n".repeat(MAX_TEXT_BYTES + 1),
        };
        assert_eq!(field_of(check_bounds(&note)), "note");
    }

    #[test]
    fn decide_checks_the_bounds_before_anything_else() {
        // Even where the command could never apply (no such case), the
        // oversized command is refused as such, before any list is walked.
        let context = ReturnContext {
            now_ms: 0,
            return_id: "R-1".into(),
        };
        let refused = decide(
            &ReturnCase::default(),
            None,
            &received(MAX_RETURN_LINES + 1),
            &context,
        )
        .map(drop);
        assert_eq!(field_of(refused), "lines");
    }
}
