//! Commands a position accepts, with their structural validation.

use serde::{Deserialize, Serialize};

use super::state::{AdjustmentReason, Bucket, Owner};
use crate::key::validate_token;
use crate::Refusal;

/// Longest free-text reference (document URI) accepted, in bytes.
pub const MAX_REFERENCE_BYTES: usize = 1_024;
/// Largest quantity or delta accepted; keeps every sum far from overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;

/// The time and limits a decision is made under. Passing the clock in keeps
/// `decide` pure and replayable.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now_ms: i64,
    /// TTL of a reservation that asks for none.
    pub default_ttl_ms: i64,
    /// Longest TTL a reservation or an extension may get.
    pub max_ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Adjust {
        bucket: Bucket,
        delta: i64,
        reason: AdjustmentReason,
        change_from: Option<i64>,
        reference: String,
    },
    SetOnHand {
        on_hand: i64,
        reason: AdjustmentReason,
        /// 0 means "now".
        counted_at_ms: i64,
        change_from: Option<i64>,
        reference: String,
    },
    Move {
        from: Bucket,
        to: Bucket,
        quantity: i64,
        reason: AdjustmentReason,
        from_change_from: Option<i64>,
        to_change_from: Option<i64>,
        reference: String,
    },
    Reserve {
        reservation_id: String,
        quantity: i64,
        owner: Owner,
        channel: String,
        /// 0 means the default TTL.
        ttl_ms: i64,
        allow_partial: bool,
    },
    ExtendReservation {
        reservation_id: String,
        ttl_ms: i64,
    },
    ReleaseReservation {
        reservation_id: String,
    },
    CommitReservation {
        reservation_id: String,
        /// 0 commits everything the reservation holds.
        quantity: i64,
        order_ref: String,
    },
    Fulfill {
        order_ref: String,
        quantity: i64,
    },
    CancelCommitment {
        order_ref: String,
        quantity: i64,
        restock: bool,
    },
    /// Expires every reservation whose TTL has passed (the durable timer).
    ExpireDue,
}

fn positive(field: &'static str, value: i64) -> Result<(), Refusal> {
    if value <= 0 {
        return Err(Refusal::invalid(field, format!("must be > 0, got {value}")));
    }
    within_limit(field, value)
}

fn within_limit(field: &'static str, value: i64) -> Result<(), Refusal> {
    if value.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
        return Err(Refusal::invalid(
            field,
            format!("magnitude must be at most {MAX_QUANTITY}, got {value}"),
        ));
    }
    Ok(())
}

fn reference(value: &str) -> Result<(), Refusal> {
    if value.len() > MAX_REFERENCE_BYTES {
        return Err(Refusal::invalid(
            "reference_document_uri",
            format!(
                "is {} bytes; at most {MAX_REFERENCE_BYTES} allowed",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            "reference_document_uri",
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn optional_token(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        Ok(())
    } else {
        validate_token(field, value)
    }
}

fn ttl(field: &'static str, value: i64) -> Result<(), Refusal> {
    if value < 0 {
        return Err(Refusal::invalid(
            field,
            format!("must be >= 0, got {value}"),
        ));
    }
    within_limit(field, value)
}

fn stock_bucket(field: &'static str, bucket: Bucket) -> Result<(), Refusal> {
    match bucket {
        Bucket::Reserved | Bucket::Committed => Err(Refusal::invalid(
            field,
            format!("{bucket} changes only through reservation and commitment commands"),
        )),
        _ => Ok(()),
    }
}

impl Command {
    /// Structural checks that need no state: a command that fails here can
    /// never succeed, whatever the position holds.
    pub fn validate(&self) -> Result<(), Refusal> {
        match self {
            Command::Adjust {
                bucket,
                delta,
                change_from,
                reference: doc,
                ..
            } => {
                stock_bucket("bucket", *bucket)?;
                if *delta == 0 {
                    return Err(Refusal::invalid("delta", "must not be zero"));
                }
                within_limit("delta", *delta)?;
                if let Some(value) = change_from {
                    within_limit("change_from", *value)?;
                }
                reference(doc)
            }
            Command::SetOnHand {
                on_hand,
                counted_at_ms,
                change_from,
                reference: doc,
                ..
            } => {
                if *on_hand < 0 {
                    return Err(Refusal::invalid(
                        "on_hand",
                        format!("must be >= 0, got {on_hand}"),
                    ));
                }
                within_limit("on_hand", *on_hand)?;
                if *counted_at_ms < 0 {
                    return Err(Refusal::invalid("counted_at_unix_ms", "must be >= 0"));
                }
                if let Some(value) = change_from {
                    within_limit("change_from", *value)?;
                }
                reference(doc)
            }
            Command::Move {
                from,
                to,
                quantity,
                reference: doc,
                ..
            } => {
                stock_bucket("from_bucket", *from)?;
                stock_bucket("to_bucket", *to)?;
                if *from == Bucket::OnHand || *to == Bucket::OnHand {
                    return Err(Refusal::invalid(
                        "bucket",
                        "on_hand is the sum of the physical buckets; move between them",
                    ));
                }
                if *to == Bucket::Incoming {
                    return Err(Refusal::invalid(
                        "to_bucket",
                        "stock cannot move into incoming",
                    ));
                }
                if from == to {
                    return Err(Refusal::invalid(
                        "to_bucket",
                        "must differ from from_bucket",
                    ));
                }
                positive("quantity", *quantity)?;
                reference(doc)
            }
            Command::Reserve {
                reservation_id,
                quantity,
                owner,
                channel,
                ttl_ms,
                ..
            } => {
                validate_token("reservation_id", reservation_id)?;
                positive("quantity", *quantity)?;
                validate_token("owner.id", &owner.id)?;
                optional_token("owner.line_id", &owner.line_id)?;
                optional_token("channel", channel)?;
                ttl("ttl_seconds", *ttl_ms)
            }
            Command::ExtendReservation {
                reservation_id,
                ttl_ms,
            } => {
                validate_token("reservation_id", reservation_id)?;
                positive("ttl_seconds", *ttl_ms)
            }
            Command::ReleaseReservation { reservation_id } => {
                validate_token("reservation_id", reservation_id)
            }
            Command::CommitReservation {
                reservation_id,
                quantity,
                order_ref,
            } => {
                validate_token("reservation_id", reservation_id)?;
                validate_token("order_ref", order_ref)?;
                if *quantity < 0 {
                    return Err(Refusal::invalid(
                        "quantity",
                        format!("must be >= 0 (0 commits all), got {quantity}"),
                    ));
                }
                within_limit("quantity", *quantity)
            }
            Command::Fulfill {
                order_ref,
                quantity,
            }
            | Command::CancelCommitment {
                order_ref,
                quantity,
                ..
            } => {
                validate_token("order_ref", order_ref)?;
                positive("quantity", *quantity)
            }
            Command::ExpireDue => Ok(()),
        }
    }
}
