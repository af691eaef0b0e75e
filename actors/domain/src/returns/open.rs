//! Opening a case: the order lines, what is asked back, the policy's window
//! and review threshold, exchange holds.

use std::collections::BTreeSet;

use super::builder::{Builder, DAY_MS};
use super::decide::ReturnContext;
use super::state::*;
use super::validation::{
    free_text, optional_token, positive, refuse, MAX_AMOUNT_MINOR, MAX_RETURN_LINES,
};
use crate::key::validate_token;
use crate::Refusal;

pub(super) fn open(
    case: &ReturnCase,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<Vec<ReturnEvent>, Refusal> {
    let ReturnCommand::Open {
        order_ref,
        customer_ref,
        channel,
        requester,
        order_lines,
        lines,
        pre_approved,
        override_window,
        policy,
    } = command
    else {
        return Err(refuse("not an open command"));
    };
    validate_token("return_id", &context.return_id)?;
    validate_token("order_ref", order_ref)?;
    optional_token("customer_ref", customer_ref)?;
    optional_token("channel", channel)?;
    if order_lines.is_empty() || order_lines.len() > MAX_RETURN_LINES {
        return Err(Refusal::invalid(
            "order_lines",
            format!("1 to {MAX_RETURN_LINES} order lines required"),
        ));
    }
    if lines.is_empty() || lines.len() > MAX_RETURN_LINES {
        return Err(Refusal::invalid(
            "lines",
            format!("1 to {MAX_RETURN_LINES} lines required"),
        ));
    }
    check_order_lines(order_lines)?;
    let may_override = *override_window && *requester != Requester::Customer;
    let mut requested_lines = BTreeSet::new();
    let mut return_lines = Vec::with_capacity(lines.len());
    let mut exchanges = Vec::new();
    let mut value_minor: i64 = 0;
    for requested in lines {
        let order_line = order_lines
            .iter()
            .find(|l| l.line_id == requested.order_line_id)
            .ok_or_else(|| {
                Refusal::invalid(
                    "lines.order_line_id",
                    format!(
                        "{:?} is not a line of order {order_ref:?}",
                        requested.order_line_id
                    ),
                )
            })?;
        if !requested_lines.insert(requested.order_line_id.as_str()) {
            return Err(Refusal::invalid(
                "lines.order_line_id",
                format!("{:?} appears twice", requested.order_line_id),
            ));
        }
        check_requested(requested, order_line, policy, may_override, context.now_ms)?;
        if let Some(hold) = exchange_hold(requested, order_line, context)? {
            exchanges.push(hold);
        }
        value_minor = value_minor.saturating_add(order_line.paid_for(requested.quantity));
        return_lines.push(ReturnLine {
            line_id: order_line.line_id.clone(),
            sku: order_line.sku.clone(),
            reason_code: requested.reason_code.clone(),
            resolution: Some(requested.resolution),
            requested: requested.quantity,
            receiving_location: order_line.location.clone(),
            ..ReturnLine::default()
        });
    }
    let mut b = Builder::new(case, context.now_ms);
    b.push(ReturnEvent::Opened {
        return_id: context.return_id.clone(),
        order_ref: order_ref.clone(),
        customer_ref: customer_ref.clone(),
        channel: channel.clone(),
        requester: *requester,
        order_lines: order_lines.clone(),
        lines: return_lines,
        exchanges,
        policy: policy.clone(),
        state: ReturnState::Requested,
        at_ms: context.now_ms,
    });
    if *pre_approved {
        b.approve();
    } else if policy
        .review_threshold_minor
        .is_some_and(|threshold| value_minor > threshold)
    {
        b.push(ReturnEvent::FlaggedForReview {
            reason: format!("value {value_minor} above the review threshold"),
        });
        b.transition(ReturnState::InReview);
    }
    Ok(b.finish())
}

/// Each order line well formed, paid within bounds, named once.
fn check_order_lines(order_lines: &[OrderLine]) -> Result<(), Refusal> {
    let mut seen = BTreeSet::new();
    for order_line in order_lines {
        validate_token("order_lines.line_id", &order_line.line_id)?;
        validate_token("order_lines.sku", &order_line.sku)?;
        validate_token("order_lines.location", &order_line.location)?;
        positive("order_lines.quantity", order_line.quantity)?;
        if !(0..=MAX_AMOUNT_MINOR).contains(&order_line.amount_paid_minor) {
            return Err(Refusal::invalid(
                "order_lines.amount_paid_minor",
                format!(
                    "must be 0 to {MAX_AMOUNT_MINOR}, got {}",
                    order_line.amount_paid_minor
                ),
            ));
        }
        if !seen.insert(order_line.line_id.as_str()) {
            return Err(Refusal::invalid(
                "order_lines.line_id",
                format!("{:?} appears twice", order_line.line_id),
            ));
        }
    }
    Ok(())
}

/// A requested line: no more than was bought, not final sale, within the
/// policy's window (unless an agent or the API overrides it).
fn check_requested(
    requested: &RequestedLine,
    order_line: &OrderLine,
    policy: &ReturnPolicy,
    may_override: bool,
    now_ms: i64,
) -> Result<(), Refusal> {
    positive("lines.quantity", requested.quantity)?;
    if requested.quantity > order_line.quantity {
        return Err(Refusal::invalid(
            "lines.quantity",
            format!(
                "line {:?}: {} requested but {} bought",
                order_line.line_id, requested.quantity, order_line.quantity
            ),
        ));
    }
    free_text("lines.reason_code", &requested.reason_code)?;
    if policy.final_sale_skus.contains(&order_line.sku) {
        return Err(refuse(format!(
            "sku {:?} is final sale and cannot be returned",
            order_line.sku
        )));
    }
    let window_start = match policy.window_start {
        WindowStart::Delivered => order_line.delivered_at_ms,
        WindowStart::Fulfilled => order_line.fulfilled_at_ms,
    };
    let window_end = window_start + i64::from(policy.window_days) * DAY_MS;
    if now_ms > window_end && !may_override {
        return Err(refuse(format!(
            "line {:?}: the {}-day return window ended at {window_end} ms",
            order_line.line_id, policy.window_days
        )));
    }
    Ok(())
}

/// The hold of an exchange's replacement, for a line resolved by exchange.
fn exchange_hold(
    requested: &RequestedLine,
    order_line: &OrderLine,
    context: &ReturnContext,
) -> Result<Option<ExchangeHold>, Refusal> {
    if requested.resolution != Resolution::Exchange {
        return Ok(None);
    }
    let sku = requested
        .exchange_sku
        .as_deref()
        .ok_or_else(|| Refusal::invalid("lines.exchange_sku", "required for an exchange"))?;
    validate_token("lines.exchange_sku", sku)?;
    Ok(Some(ExchangeHold {
        line_id: order_line.line_id.clone(),
        sku: sku.to_owned(),
        location: order_line.location.clone(),
        quantity: requested.quantity,
        reservation_id: format!(
            "return:{}:exchange:{}",
            context.return_id, order_line.line_id
        ),
        state: ExchangeState::Requested,
    }))
}
