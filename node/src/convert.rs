//! Conversions between the `skuld.v1` messages and the domain types, with
//! the validation that belongs to the wire format (required fields, enum
//! values, units). Domain rules are checked by the state machine.

use skuld_actors::position::{
    AdjustmentReason, Bucket, Buckets, Command, MutationReply, MutationRequest, Owner, OwnerType,
    PositionState, Reservation, ReservationState,
};
use skuld_actors::runtime::Mutated;
use skuld_actors::{Error, PositionKey, ReturnKey};
use skuld_proto::v1 as pb;

pub fn position_key(key: Option<pb::PositionKey>) -> Result<PositionKey, Error> {
    let key = key.ok_or_else(|| Error::invalid("key", "is required"))?;
    Ok(PositionKey::new(key.tenant, key.sku, key.location)?)
}

pub fn return_key(key: Option<pb::ReturnKey>) -> Result<ReturnKey, Error> {
    let key = key.ok_or_else(|| Error::invalid("key", "is required"))?;
    Ok(ReturnKey::new(key.tenant, key.return_id)?)
}

fn header(header: Option<pb::MutationHeader>) -> Result<(PositionKey, String, Option<u64>), Error> {
    let header = header.ok_or_else(|| Error::invalid("header", "is required"))?;
    Ok((
        position_key(header.key)?,
        header.idempotency_key,
        header.expected_version,
    ))
}

fn request(
    header_fields: Option<pb::MutationHeader>,
    command: Command,
) -> Result<MutationRequest, Error> {
    let (key, idempotency_key, expected_version) = header(header_fields)?;
    let request = MutationRequest {
        key,
        idempotency_key,
        expected_version,
        command,
    };
    request.validate()?;
    Ok(request)
}

fn bucket(field: &'static str, value: i32) -> Result<Bucket, Error> {
    match pb::Bucket::try_from(value) {
        Ok(pb::Bucket::OnHand) => Ok(Bucket::OnHand),
        Ok(pb::Bucket::Available) => Ok(Bucket::Available),
        Ok(pb::Bucket::Reserved) => Ok(Bucket::Reserved),
        Ok(pb::Bucket::Committed) => Ok(Bucket::Committed),
        Ok(pb::Bucket::Damaged) => Ok(Bucket::Damaged),
        Ok(pb::Bucket::QualityControl) => Ok(Bucket::QualityControl),
        Ok(pb::Bucket::SafetyStock) => Ok(Bucket::SafetyStock),
        Ok(pb::Bucket::Incoming) => Ok(Bucket::Incoming),
        Ok(pb::Bucket::Unspecified) => Err(Error::invalid(field, "must be set")),
        Err(_) => Err(Error::invalid(field, format!("unknown bucket {value}"))),
    }
}

/// An unspecified reason is recorded as OTHER; an unknown value is refused.
fn reason(value: i32) -> Result<AdjustmentReason, Error> {
    match pb::AdjustmentReason::try_from(value) {
        Ok(pb::AdjustmentReason::Unspecified | pb::AdjustmentReason::Other) => {
            Ok(AdjustmentReason::Other)
        }
        Ok(pb::AdjustmentReason::Receipt) => Ok(AdjustmentReason::Receipt),
        Ok(pb::AdjustmentReason::Sale) => Ok(AdjustmentReason::Sale),
        Ok(pb::AdjustmentReason::CycleCount) => Ok(AdjustmentReason::CycleCount),
        Ok(pb::AdjustmentReason::Damage) => Ok(AdjustmentReason::Damage),
        Ok(pb::AdjustmentReason::ReturnRestock) => Ok(AdjustmentReason::ReturnRestock),
        Ok(pb::AdjustmentReason::Transfer) => Ok(AdjustmentReason::Transfer),
        Ok(pb::AdjustmentReason::Correction) => Ok(AdjustmentReason::Correction),
        Ok(pb::AdjustmentReason::Shrinkage) => Ok(AdjustmentReason::Shrinkage),
        Err(_) => Err(Error::invalid("reason", format!("unknown reason {value}"))),
    }
}

fn owner(owner: Option<pb::ReservationOwner>) -> Result<Owner, Error> {
    let owner = owner.ok_or_else(|| Error::invalid("owner", "is required"))?;
    let kind = match pb::OwnerType::try_from(owner.r#type) {
        Ok(pb::OwnerType::Cart) => OwnerType::Cart,
        Ok(pb::OwnerType::Checkout) => OwnerType::Checkout,
        Ok(pb::OwnerType::Order) => OwnerType::Order,
        Ok(pb::OwnerType::Fulfillment) => OwnerType::Fulfillment,
        Ok(pb::OwnerType::ReturnExchange) => OwnerType::ReturnExchange,
        Ok(pb::OwnerType::Draft) => OwnerType::Draft,
        Ok(pb::OwnerType::Manual) => OwnerType::Manual,
        Ok(pb::OwnerType::Unspecified) => return Err(Error::invalid("owner.type", "must be set")),
        Err(_) => {
            return Err(Error::invalid(
                "owner.type",
                format!("unknown owner type {}", owner.r#type),
            ))
        }
    };
    Ok(Owner {
        kind,
        id: owner.id,
        line_id: owner.line_id,
    })
}

/// Seconds to milliseconds; the domain validates the range.
fn seconds_to_ms(field: &'static str, seconds: i64) -> Result<i64, Error> {
    seconds
        .checked_mul(1_000)
        .ok_or_else(|| Error::invalid(field, format!("{seconds} is out of range")))
}

pub fn adjust(message: pb::AdjustRequest) -> Result<MutationRequest, Error> {
    let command = Command::Adjust {
        bucket: bucket("bucket", message.bucket)?,
        delta: message.delta,
        reason: reason(message.reason)?,
        change_from: message.change_from,
        reference: message.reference_document_uri,
    };
    request(message.header, command)
}

pub fn set_on_hand(message: pb::SetOnHandRequest) -> Result<MutationRequest, Error> {
    let command = Command::SetOnHand {
        on_hand: message.on_hand,
        reason: reason(message.reason)?,
        counted_at_ms: message.counted_at_unix_ms,
        change_from: message.change_from,
        reference: message.reference_document_uri,
    };
    request(message.header, command)
}

pub fn move_quantity(message: pb::MoveRequest) -> Result<MutationRequest, Error> {
    let command = Command::Move {
        from: bucket("from_bucket", message.from_bucket)?,
        to: bucket("to_bucket", message.to_bucket)?,
        quantity: message.quantity,
        reason: reason(message.reason)?,
        from_change_from: message.from_change_from,
        to_change_from: message.to_change_from,
        reference: message.reference_document_uri,
    };
    request(message.header, command)
}

pub fn reserve(message: pb::ReserveRequest) -> Result<MutationRequest, Error> {
    let reservation_id = if message.reservation_id.is_empty() {
        message
            .header
            .as_ref()
            .map(|header| header.idempotency_key.clone())
            .unwrap_or_default()
    } else {
        message.reservation_id
    };
    let command = Command::Reserve {
        reservation_id,
        quantity: message.quantity,
        owner: owner(message.owner)?,
        channel: message.channel,
        ttl_ms: seconds_to_ms("ttl_seconds", message.ttl_seconds)?,
        allow_partial: message.allow_partial,
    };
    request(message.header, command)
}

pub fn extend(message: pb::ExtendReservationRequest) -> Result<MutationRequest, Error> {
    let command = Command::ExtendReservation {
        reservation_id: message.reservation_id,
        ttl_ms: seconds_to_ms("ttl_seconds", message.ttl_seconds)?,
    };
    request(message.header, command)
}

pub fn release(message: pb::ReleaseReservationRequest) -> Result<MutationRequest, Error> {
    let command = Command::ReleaseReservation {
        reservation_id: message.reservation_id,
    };
    request(message.header, command)
}

pub fn commit(message: pb::CommitReservationRequest) -> Result<MutationRequest, Error> {
    let command = Command::CommitReservation {
        reservation_id: message.reservation_id,
        quantity: message.quantity,
        order_ref: message.order_ref,
    };
    request(message.header, command)
}

pub fn fulfill(message: pb::FulfillRequest) -> Result<MutationRequest, Error> {
    let command = Command::Fulfill {
        order_ref: message.order_ref,
        quantity: message.quantity,
    };
    request(message.header, command)
}

pub fn cancel_commitment(message: pb::CancelCommitmentRequest) -> Result<MutationRequest, Error> {
    let command = Command::CancelCommitment {
        order_ref: message.order_ref,
        quantity: message.quantity,
        restock: message.restock,
    };
    request(message.header, command)
}

/// Most locations one availability query may name.
pub const MAX_AVAILABILITY_LOCATIONS: usize = 1_000;

/// The position keys of an availability query, validated and de-duplicated.
pub fn availability_keys(message: pb::GetAvailabilityRequest) -> Result<Vec<PositionKey>, Error> {
    if message.locations.is_empty() {
        return Err(Error::invalid(
            "locations",
            "must name at least one location",
        ));
    }
    if message.locations.len() > MAX_AVAILABILITY_LOCATIONS {
        return Err(Error::invalid(
            "locations",
            format!(
                "at most {MAX_AVAILABILITY_LOCATIONS} per request, got {}",
                message.locations.len()
            ),
        ));
    }
    let mut keys: Vec<PositionKey> = Vec::with_capacity(message.locations.len());
    for location in message.locations {
        let key = PositionKey::new(message.tenant.clone(), message.sku.clone(), location)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn proto_key(key: &PositionKey) -> pb::PositionKey {
    pb::PositionKey {
        tenant: key.tenant.clone(),
        sku: key.sku.clone(),
        location: key.location.clone(),
    }
}

fn proto_buckets(buckets: &Buckets) -> pb::Buckets {
    pb::Buckets {
        on_hand: buckets.on_hand,
        available: buckets.available(),
        reserved: buckets.reserved,
        committed: buckets.committed,
        damaged: buckets.damaged,
        quality_control: buckets.quality_control,
        safety_stock: buckets.safety_stock,
        incoming: buckets.incoming,
    }
}

fn proto_reservation(reservation: &Reservation) -> pb::Reservation {
    let owner_type = match reservation.owner.kind {
        OwnerType::Cart => pb::OwnerType::Cart,
        OwnerType::Checkout => pb::OwnerType::Checkout,
        OwnerType::Order => pb::OwnerType::Order,
        OwnerType::Fulfillment => pb::OwnerType::Fulfillment,
        OwnerType::ReturnExchange => pb::OwnerType::ReturnExchange,
        OwnerType::Draft => pb::OwnerType::Draft,
        OwnerType::Manual => pb::OwnerType::Manual,
    };
    let state = match reservation.state {
        ReservationState::Active => pb::ReservationState::Active,
        ReservationState::Committed => pb::ReservationState::Committed,
        ReservationState::Released => pb::ReservationState::Released,
        ReservationState::Expired => pb::ReservationState::Expired,
    };
    pb::Reservation {
        reservation_id: reservation.id.clone(),
        owner: Some(pb::ReservationOwner {
            r#type: owner_type.into(),
            id: reservation.owner.id.clone(),
            line_id: reservation.owner.line_id.clone(),
        }),
        channel: reservation.channel.clone(),
        quantity: reservation.quantity,
        requested_quantity: reservation.requested_quantity,
        committed_quantity: reservation.committed_quantity,
        state: state.into(),
        created_at_unix_ms: reservation.created_at_ms,
        expires_at_unix_ms: reservation.expires_at_ms,
    }
}

pub fn mutation_response(
    key: &PositionKey,
    mutated: &Mutated<MutationReply>,
) -> pb::MutationResponse {
    let reply = &mutated.reply;
    pb::MutationResponse {
        key: Some(proto_key(key)),
        version: reply.version,
        buckets: Some(proto_buckets(&reply.buckets)),
        reservation: reply.reservation.as_ref().map(proto_reservation),
        granted_quantity: reply.granted_quantity,
        replayed: mutated.replayed,
    }
}

/// Reservations listed per page by default, and at most.
pub const DEFAULT_RESERVATIONS_PAGE: usize = 100;
pub const MAX_RESERVATIONS_PAGE: usize = 1_000;

/// A position with one page of its active reservations.
pub fn position(
    key: &PositionKey,
    state: &PositionState,
    page_size: u32,
    page_token: &str,
) -> Result<pb::Position, Error> {
    let page_size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_RESERVATIONS_PAGE,
        size if size > MAX_RESERVATIONS_PAGE => {
            return Err(Error::invalid(
                "reservations_page_size",
                format!("at most {MAX_RESERVATIONS_PAGE}"),
            ))
        }
        size => size,
    };
    // A token is the last reservation id of the page before: a token.
    if page_token.len() > skuld_actors::key::MAX_TOKEN_BYTES {
        return Err(Error::invalid(
            "reservations_page_token",
            "is not a token this service gave out",
        ));
    }
    // An empty token (the first page) is before every id.
    let mut page: Vec<pb::Reservation> = state
        .active_reservations_after(page_token)
        .take(page_size + 1)
        .map(|reservation| proto_reservation(&reservation.to_reservation()))
        .collect();
    let next_reservations_page_token = if page.len() > page_size {
        page.truncate(page_size);
        page.last()
            .map(|r| r.reservation_id.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::Position {
        key: Some(proto_key(key)),
        version: state.version,
        buckets: Some(proto_buckets(&state.buckets)),
        allow_backorder: state.allow_backorder,
        reservations: page,
        commitments: state
            .commitments
            .iter()
            .map(|(order_ref, quantity)| pb::Commitment {
                order_ref: order_ref.clone(),
                quantity: *quantity,
            })
            .collect(),
        last_counted_at_unix_ms: state.last_counted_at_ms,
        active_reservations: state.active_reservation_count() as u64,
        next_reservations_page_token,
    })
}

pub fn location_availability(key: &PositionKey, state: &PositionState) -> pb::LocationAvailability {
    pb::LocationAvailability {
        location: key.location.clone(),
        available: state.buckets.available(),
        on_hand: state.buckets.on_hand,
        version: state.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(tenant: String, sku: String, idempotency_key: String) -> Option<pb::MutationHeader> {
        Some(pb::MutationHeader {
            key: Some(pb::PositionKey {
                tenant,
                sku,
                location: "DC1".into(),
            }),
            idempotency_key,
            expected_version: None,
        })
    }

    proptest! {
        // The fuzz target of request validation: arbitrary field values and
        // raw bytes decoded as requests never panic, and whatever passes
        // validation is within the documented limits.
        #[test]
        fn reserve_validation_never_panics(
            tenant in ".{0,140}", sku in ".{0,140}", idem in ".{0,140}",
            quantity in any::<i64>(), ttl in any::<i64>(), owner_type in any::<i32>(),
        ) {
            let message = pb::ReserveRequest {
                header: header(tenant, sku, idem),
                reservation_id: String::new(),
                quantity,
                owner: Some(pb::ReservationOwner { r#type: owner_type, id: "cart".into(), line_id: String::new() }),
                channel: String::new(),
                ttl_seconds: ttl,
                allow_partial: false,
            };
            if let Ok(request) = reserve(message) {
                prop_assert!(request.key.sku.len() <= 128 && !request.key.sku.is_empty());
                prop_assert!(!request.idempotency_key.chars().any(char::is_control));
                if let Command::Reserve { quantity, ttl_ms, .. } = request.command {
                    prop_assert!(quantity > 0);
                    prop_assert!(ttl_ms >= 0);
                }
            }
        }

        #[test]
        fn raw_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            use prost::Message;
            if let Ok(message) = pb::AdjustRequest::decode(bytes.as_slice()) {
                let _ = adjust(message);
            }
            if let Ok(message) = pb::MoveRequest::decode(bytes.as_slice()) {
                let _ = move_quantity(message);
            }
            if let Ok(message) = pb::CommitReservationRequest::decode(bytes.as_slice()) {
                let _ = commit(message);
            }
            if let Ok(message) = pb::GetAvailabilityRequest::decode(bytes.as_slice()) {
                let _ = availability_keys(message);
            }
        }

        #[test]
        fn adjust_accepts_only_sane_deltas(delta in any::<i64>(), bucket_value in -2i32..12) {
            let message = pb::AdjustRequest {
                header: header("t".into(), "s".into(), "k".into()),
                bucket: bucket_value,
                delta,
                reason: 0,
                change_from: None,
                reference_document_uri: String::new(),
            };
            if let Ok(request) = adjust(message) {
                if let Command::Adjust { delta, bucket, .. } = request.command {
                    prop_assert!(delta != 0);
                    prop_assert!(!matches!(bucket, Bucket::Reserved | Bucket::Committed));
                }
            }
        }
    }
}
