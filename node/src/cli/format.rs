//! Readable text of replies: tables, fields, times and labels.

use super::*;
pub(super) use crate::timestamp::format_unix_ms;

use skuld_proto::v1::{
    Buckets, Commitment, GetAvailabilityResponse, LocationAvailability, MutationResponse,
    OwnerType, Position, PositionKey, Reservation, ReservationOwner, ReservationState,
};

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Align {
    Left,
    Right,
}

/// Formats `rows` under `columns` as a plain-text table, two spaces between
/// columns, no trailing spaces.
pub(super) fn format_table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(title, _)| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns
        .iter()
        .map(|(title, _)| (*title).to_owned())
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => line.push_str(&format!("{cell:<width$}")),
                Align::Right => line.push_str(&format!("{cell:>width$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Formats `label  value` lines with the values aligned.
pub(super) fn format_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}").trim_end().to_owned() + "\n")
        .collect()
}

/// `tenant/sku@location`.
pub(super) fn format_key(key: &PositionKey) -> String {
    format!("{}/{}@{}", key.tenant, key.sku, key.location)
}

/// The buckets as a two-column table, on_hand first.
pub(super) fn format_buckets(buckets: &Buckets) -> String {
    let rows = buckets
        .named()
        .map(|(name, quantity)| vec![name.to_owned(), quantity.to_string()]);
    format_table(
        &[("BUCKET", Align::Left), ("QUANTITY", Align::Right)],
        &rows,
    )
}

/// A duration in milliseconds as its two largest units: `2d 3h`, `14m 5s`, `9s`.
pub(super) fn format_duration_ms(ms: i64) -> String {
    let seconds = ms.unsigned_abs() / 1000;
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `at` relative to `now`: `in 14m 5s`, `3s ago`.
pub(super) fn format_relative(at_ms: i64, now_ms: i64) -> String {
    let delta = at_ms.saturating_sub(now_ms);
    if delta >= 0 {
        format!("in {}", format_duration_ms(delta))
    } else {
        format!("{} ago", format_duration_ms(delta))
    }
}

/// When a reservation expires: only an active one does (a committed,
/// released or expired one has nothing left to expire).
pub(super) fn expiry(reservation: &Reservation, now_ms: i64) -> String {
    if reservation.state == ReservationState::Active as i32 {
        format_timestamp(reservation.expires_at_unix_ms, now_ms)
    } else {
        "-".to_owned()
    }
}

/// A timestamp with its distance from now, or `-` when unset (0).
pub(super) fn format_timestamp(at_ms: i64, now_ms: i64) -> String {
    if at_ms == 0 {
        "-".to_owned()
    } else {
        format!(
            "{} ({})",
            format_unix_ms(at_ms),
            format_relative(at_ms, now_ms)
        )
    }
}

/// The enum value's proto name without its type prefix, e.g. `ACTIVE`.
pub(super) fn enum_label(name: Option<&'static str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_owned(),
        None => format!("UNKNOWN({raw})"),
    }
}

pub(super) fn state_label(raw: i32) -> String {
    let name = ReservationState::try_from(raw)
        .ok()
        .map(|s| s.as_str_name());
    enum_label(name, "RESERVATION_STATE_", raw)
}

pub(super) fn owner_label(owner: Option<&ReservationOwner>) -> String {
    let Some(owner) = owner else {
        return "-".to_owned();
    };
    let name = OwnerType::try_from(owner.r#type)
        .ok()
        .map(|t| t.as_str_name());
    let mut label = format!(
        "{} {}",
        enum_label(name, "OWNER_TYPE_", owner.r#type),
        owner.id
    );
    if !owner.line_id.is_empty() {
        label.push_str(&format!(" line {}", owner.line_id));
    }
    label
}

pub(super) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Readable text of a mutation's reply. `requested` names the position when
/// the reply does not; `show_granted` is set for `reserve`.
pub(super) fn format_mutation(
    reply: &MutationResponse,
    requested: &PositionKey,
    idempotency_key: &IdempotencyKey,
    show_granted: bool,
    now_ms: i64,
) -> String {
    let key = reply.key.as_ref().unwrap_or(requested);
    let mut fields = vec![
        ("position", format_key(key)),
        ("version", reply.version.to_string()),
    ];
    if show_granted {
        fields.push(("granted", reply.granted_quantity.to_string()));
    }
    if reply.replayed {
        fields.push((
            "replayed",
            "true (stored reply of an earlier request)".to_owned(),
        ));
    }
    let key_note = if idempotency_key.generated {
        " (generated; pass --idempotency-key to retry)"
    } else {
        ""
    };
    fields.push((
        "idempotency key",
        format!("{}{key_note}", idempotency_key.value),
    ));
    let mut out = format_fields(&fields);
    out.push('\n');
    out.push_str(&format_buckets(&reply.buckets.unwrap_or_default()));
    if let Some(reservation) = &reply.reservation {
        out.push('\n');
        out.push_str(&format_reservation(reservation, now_ms));
    }
    out
}

/// One reservation as labelled fields.
pub(super) fn format_reservation(reservation: &Reservation, now_ms: i64) -> String {
    let mut fields = vec![
        ("reservation", reservation.reservation_id.clone()),
        ("state", state_label(reservation.state)),
        (
            "quantity",
            format!(
                "{} (requested {}, committed {})",
                reservation.quantity,
                reservation.requested_quantity,
                reservation.committed_quantity
            ),
        ),
        ("owner", owner_label(reservation.owner.as_ref())),
    ];
    if !reservation.channel.is_empty() {
        fields.push(("channel", reservation.channel.clone()));
    }
    fields.push(("expires at", expiry(reservation, now_ms)));
    format_fields(&fields)
}

/// Readable text of a position: summary, buckets, reservations, commitments.
pub(super) fn format_position(position: &Position, requested: &PositionKey, now_ms: i64) -> String {
    let key = position.key.as_ref().unwrap_or(requested);
    let last_count = if position.last_counted_at_unix_ms == 0 {
        "never".to_owned()
    } else {
        format_timestamp(position.last_counted_at_unix_ms, now_ms)
    };
    let mut out = format_fields(&[
        ("position", format_key(key)),
        ("version", position.version.to_string()),
        (
            "backorder",
            if position.allow_backorder {
                "allowed"
            } else {
                "no"
            }
            .to_owned(),
        ),
        ("last count", last_count),
    ]);
    out.push('\n');
    out.push_str(&format_buckets(&position.buckets.unwrap_or_default()));
    out.push('\n');
    out.push_str(&format_reservations(&position.reservations, now_ms));
    let shown = position.reservations.len() as u64;
    if position.active_reservations > shown {
        out.push_str(&format!(
            "({} of {} active reservations shown)\n",
            shown, position.active_reservations
        ));
    }
    out.push('\n');
    out.push_str(&format_commitments(&position.commitments));
    out
}

pub(super) fn format_reservations(reservations: &[Reservation], now_ms: i64) -> String {
    if reservations.is_empty() {
        return "reservations: none\n".to_owned();
    }
    let rows: Vec<Vec<String>> = reservations
        .iter()
        .map(|r| {
            vec![
                r.reservation_id.clone(),
                state_label(r.state),
                r.quantity.to_string(),
                r.committed_quantity.to_string(),
                owner_label(r.owner.as_ref()),
                or_dash(&r.channel),
                expiry(r, now_ms),
            ]
        })
        .collect();
    let table = format_table(
        &[
            ("RESERVATION", Align::Left),
            ("STATE", Align::Left),
            ("QTY", Align::Right),
            ("COMMITTED", Align::Right),
            ("OWNER", Align::Left),
            ("CHANNEL", Align::Left),
            ("EXPIRES AT", Align::Left),
        ],
        &rows,
    );
    format!("reservations: {}\n{table}", reservations.len())
}

pub(super) fn format_commitments(commitments: &[Commitment]) -> String {
    if commitments.is_empty() {
        return "commitments: none\n".to_owned();
    }
    let rows: Vec<Vec<String>> = commitments
        .iter()
        .map(|c| vec![c.order_ref.clone(), c.quantity.to_string()])
        .collect();
    let table = format_table(&[("ORDER", Align::Left), ("QTY", Align::Right)], &rows);
    format!("commitments: {}\n{table}", commitments.len())
}

/// Readable text of an availability reply: one row per location and a total.
pub(super) fn format_availability(reply: &GetAvailabilityResponse) -> String {
    let mut rows: Vec<Vec<String>> = reply
        .locations
        .iter()
        .map(|l: &LocationAvailability| {
            vec![
                l.location.clone(),
                l.available.to_string(),
                l.on_hand.to_string(),
                l.version.to_string(),
            ]
        })
        .collect();
    rows.push(vec!["TOTAL".to_owned(), reply.total_available.to_string()]);
    format_table(
        &[
            ("LOCATION", Align::Left),
            ("AVAILABLE", Align::Right),
            ("ON_HAND", Align::Right),
            ("VERSION", Align::Right),
        ],
        &rows,
    )
}
