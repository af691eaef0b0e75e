//! Snapshots and journal entries written by an older build must still
//! decode, and a state must encode to the same bytes as before: the
//! in-memory form of a position may change, its stored form may not (or
//! only under an explicit new version, with this fixture kept for the old).
//!
//! `tests/fixtures/position_state_v1.hex` was written by the code before
//! the compact in-memory form (commit e9e6bb2), with
//! `SKULD_WRITE_FIXTURE=1 cargo test -p skuld-domain --test snapshot_fixture`.
//! Never regenerate it to make this test pass: a failure means stored
//! positions would no longer read back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use skuld_domain::journal::JournalEntry;
use skuld_domain::position::{
    apply_entry, decide, AdjustmentReason, Bucket, Command, Context, Event, LedgerEntry, Owner,
    OwnerType, PositionState,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/position_state_v1.hex"
);
const JOURNAL_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/position_journal_v1.hex"
);

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn context(now_ms: i64) -> Context {
    Context {
        now_ms,
        default_ttl_ms: 15 * 60_000,
        max_ttl_ms: 4 * 3_600_000,
    }
}

fn reserve(
    id: &str,
    quantity: i64,
    kind: OwnerType,
    owner: &str,
    line: &str,
    channel: &str,
) -> Command {
    Command::Reserve {
        reservation_id: id.into(),
        quantity,
        owner: Owner {
            kind,
            id: owner.into(),
            line_id: line.into(),
        },
        channel: channel.into(),
        ttl_ms: 0,
        allow_partial: true,
    }
}

/// Every kind of reservation history a position keeps: active holds with
/// and without line ids and channels, one extended, one partly committed,
/// and ended ones (released, expired, fully committed), with commitments
/// and a count. Built through `decide`, so it is what a node would store.
fn commands() -> Vec<(i64, Command)> {
    let t = 1_764_633_600_000; // 2025-12-02, unix ms
    vec![
        (
            t,
            Command::Adjust {
                bucket: Bucket::Available,
                delta: 1_000,
                reason: AdjustmentReason::Receipt,
                change_from: None,
                reference: "asn-77".into(),
            },
        ),
        (
            t + 1,
            reserve(
                "0193a8f2-6c1e-7b3a-9d4e-5f6a7b8c9d0e",
                3,
                OwnerType::Cart,
                "cart-5f0c2a9e8b7d6c5b4a39281f",
                "line-1",
                "web",
            ),
        ),
        (
            t + 2,
            reserve("r-2", 5, OwnerType::Checkout, "chk-1", "", "store-123"),
        ),
        (
            t + 3,
            reserve("r-3", 7, OwnerType::Order, "ord-9", "l-2", ""),
        ),
        (
            t + 4,
            reserve("r-4", 2, OwnerType::ReturnExchange, "ret-1", "", ""),
        ),
        (
            t + 5,
            reserve("r-5", 4, OwnerType::Draft, "draft-é", "line-ü", "app"),
        ),
        (
            t + 6,
            reserve("r-6", 1, OwnerType::Manual, "ops", "", "web"),
        ),
        (
            t + 7,
            Command::ExtendReservation {
                reservation_id: "r-2".into(),
                ttl_ms: 3_600_000,
            },
        ),
        (
            t + 8,
            Command::CommitReservation {
                reservation_id: "r-3".into(),
                quantity: 2,
                order_ref: "order-1".into(),
            },
        ),
        (
            t + 9,
            Command::CommitReservation {
                reservation_id: "r-6".into(),
                quantity: 0,
                order_ref: "order-2".into(),
            },
        ),
        (
            t + 10,
            Command::ReleaseReservation {
                reservation_id: "r-4".into(),
            },
        ),
        (
            t + 11,
            Command::Fulfill {
                order_ref: "order-1".into(),
                quantity: 1,
            },
        ),
        (
            t + 12,
            Command::SetOnHand {
                on_hand: 990,
                reason: AdjustmentReason::CycleCount,
                counted_at_ms: t + 12,
                change_from: None,
                reference: String::new(),
            },
        ),
        // r-1 (15 minutes) and r-5 expire; r-2 was extended to an hour.
        (t + 20 * 60_000, Command::ExpireDue),
        (
            t + 20 * 60_000 + 1,
            reserve("r-7", 1_000_000, OwnerType::Fulfillment, "f-1", "", "web"),
        ),
    ]
}

/// The state and the journal that `commands` build.
fn build() -> (PositionState, Vec<LedgerEntry>) {
    let mut state = PositionState::default();
    let mut journal = Vec::new();
    for (now_ms, command) in commands() {
        let decision = decide(&state, None, &command, &context(now_ms)).unwrap();
        let entry = JournalEntry {
            version: state.version + 1,
            recorded_at_ms: now_ms,
            idempotency_key: Some(format!("idem-{}", state.version + 1)),
            correlation_id: String::new(),
            events: decision.events,
        };
        apply_entry(&mut state, &entry);
        journal.push(entry);
    }
    (state, journal)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2 + bytes.len() / 32 + 1);
    for (index, byte) in bytes.iter().enumerate() {
        if index > 0 && index % 32 == 0 {
            hex.push('\n');
        }
        hex.push_str(&format!("{byte:02x}"));
    }
    hex.push('\n');
    hex
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn fixture(path: &str, written_now: &[u8]) -> Vec<u8> {
    if std::env::var_os("SKULD_WRITE_FIXTURE").is_some() {
        std::fs::write(path, to_hex(written_now)).unwrap();
    }
    from_hex(&std::fs::read_to_string(path).expect("the fixture is committed"))
}

#[test]
fn a_snapshot_written_by_the_old_code_decodes_and_encodes_the_same() {
    let (state, _) = build();
    let encoded = bincode::serde::encode_to_vec(&state, config()).unwrap();
    let old = fixture(FIXTURE, &encoded);

    let (decoded, used): (PositionState, usize) =
        bincode::serde::decode_from_slice(&old, config()).unwrap();
    assert_eq!(used, old.len(), "the whole snapshot is read");
    assert_eq!(decoded, state, "the old snapshot decodes to today's state");
    assert_eq!(
        bincode::serde::encode_to_vec(&decoded, config()).unwrap(),
        old,
        "a decoded snapshot encodes to the very bytes it came from"
    );
    assert_eq!(encoded, old, "today's encoding is the stored format");

    assert_eq!(decoded.version, 15);
    // r-2 (5), what r-3 still holds (5) and r-7's partial grant.
    assert_eq!(decoded.buckets.reserved, 988);
    assert_eq!(decoded.commitments.get("order-1"), Some(&1));
    assert_eq!(decoded.commitments.get("order-2"), Some(&1));
}

#[test]
fn journal_entries_written_by_the_old_code_decode_and_replay() {
    let (state, journal) = build();
    let encoded = bincode::serde::encode_to_vec(&journal, config()).unwrap();
    let old = fixture(JOURNAL_FIXTURE, &encoded);
    let (decoded, used): (Vec<JournalEntry<Event>>, usize) =
        bincode::serde::decode_from_slice(&old, config()).unwrap();
    assert_eq!(used, old.len());
    assert_eq!(encoded, old, "journal entries keep their stored format");
    let mut replayed = PositionState::default();
    for entry in &decoded {
        apply_entry(&mut replayed, entry);
    }
    assert_eq!(
        replayed, state,
        "replaying the old journal rebuilds the state"
    );
}
