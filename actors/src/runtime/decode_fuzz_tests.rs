//! Every decoder of bytes that cross a process boundary, fed garbage: the
//! payloads another node forwards (commands and keys, and the answers it
//! sends back) and the records read back from a store (journal entries,
//! snapshots, stored answers, listing summaries). Each must return a value
//! or an error; none may panic, and none may allocate what a length prefix
//! claims before the bytes are there (the 2^62-byte string of the report
//! would abort the test process, failing the whole run).
//!
//! Inputs are random bytes, and real encodings with bytes flipped, cut off
//! or overwritten by a huge varint length. The case count is bounded for CI
//! (`PROPTEST_CASES` raises it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde::de::DeserializeOwned;

use super::codec::{decode, decode_payload, encode};
use crate::journal::JournalEntry;
use crate::position::{
    decide as decide_position, AdjustmentReason, Bucket, Command, Context, Event, MutationReply,
    Owner, OwnerType, PositionState,
};
use crate::returns::{
    decide as decide_return, OrderLine, RequestedLine, Requester, Resolution, ReturnCase,
    ReturnCommand, ReturnContext, ReturnEvent, ReturnPolicy, ReturnSummary,
};
use crate::{Error, PositionKey, Refusal, ReturnKey};

const NOW: i64 = 1_800_000_000_000;

/// The report's payload: varint marker 0xfd, 2^62 little-endian, 8 bytes.
fn huge_length() -> Vec<u8> {
    let mut bytes = vec![0xfd];
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    bytes
}

fn position_commands() -> Vec<Command> {
    vec![
        Command::Adjust {
            bucket: Bucket::Available,
            delta: 100,
            reason: AdjustmentReason::Receipt,
            change_from: None,
            reference: "asn-1".into(),
        },
        Command::Reserve {
            reservation_id: "r-1".into(),
            quantity: 3,
            owner: Owner {
                kind: OwnerType::Cart,
                id: "cart-9".into(),
                line_id: String::new(),
            },
            channel: "web".into(),
            ttl_ms: 60_000,
            allow_partial: false,
        },
        Command::CommitReservation {
            reservation_id: "r-1".into(),
            quantity: 0,
            order_ref: "o-1".into(),
        },
        Command::Move {
            from: Bucket::Available,
            to: Bucket::Damaged,
            quantity: 2,
            reason: AdjustmentReason::Damage,
            from_change_from: None,
            to_change_from: None,
            reference: String::new(),
        },
    ]
}

/// Real encodings of everything a position's actor stores or forwards.
fn position_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let context = Context {
        now_ms: NOW,
        default_ttl_ms: 60_000,
        max_ttl_ms: 3_600_000,
    };
    let mut state = PositionState::default();
    let mut encodings = Vec::new();
    let key = PositionKey::new("acme", "SKU-1", "DC1").unwrap();
    for command in position_commands() {
        let decision = decide_position(&state, None, &command, &context).unwrap();
        let entry = JournalEntry {
            version: state.version + 1,
            recorded_at_ms: NOW,
            idempotency_key: Some("k".into()),
            correlation_id: "c".into(),
            events: decision.events,
        };
        crate::position::apply_entry(&mut state, &entry);
        encodings.push(("journal entry", encode(&entry).unwrap()));
        encodings.push((
            "forwarded mutation",
            encode(&(&key, "idem-1".to_owned(), Some(3u64), &command)).unwrap(),
        ));
    }
    encodings.push(("snapshot", encode(&state).unwrap()));
    encodings.push(("forwarded key", encode(&key).unwrap()));
    encodings
}

fn return_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let key = ReturnKey::new("acme", "R-1").unwrap();
    let open = ReturnCommand::Open {
        order_ref: "O1".into(),
        customer_ref: "C1".into(),
        channel: "web".into(),
        requester: Requester::Customer,
        order_lines: vec![OrderLine {
            line_id: "L1".into(),
            sku: "SHIRT".into(),
            quantity: 3,
            amount_paid_minor: 9_000,
            fulfilled_at_ms: NOW - 86_400_000,
            delivered_at_ms: NOW - 3_600_000,
            location: "DC1".into(),
        }],
        lines: vec![RequestedLine {
            order_line_id: "L1".into(),
            quantity: 2,
            reason_code: "too_small".into(),
            resolution: Resolution::RefundOriginal,
            exchange_sku: None,
        }],
        pre_approved: true,
        override_window: false,
        policy: ReturnPolicy::default(),
    };
    let context = ReturnContext {
        now_ms: NOW,
        return_id: key.return_id.clone(),
    };
    let mut case = ReturnCase::default();
    let events = decide_return(&case, None, &open, &context).unwrap();
    let entry = JournalEntry {
        version: 1,
        recorded_at_ms: NOW,
        idempotency_key: Some("open".into()),
        correlation_id: "c".into(),
        events,
    };
    crate::returns::apply_entry(&mut case, &entry);
    vec![
        ("return journal entry", encode(&entry).unwrap()),
        ("return snapshot", encode(&case).unwrap()),
        (
            "forwarded return mutation",
            encode(&(&key, "open".to_owned(), None::<u64>, &open)).unwrap(),
        ),
        ("forwarded return key", encode(&key).unwrap()),
        ("return summary", encode(&ReturnSummary::of(&case)).unwrap()),
        ("forwarded return answer", encode(&(&case, false)).unwrap()),
    ]
}

/// Every decoder of the node, on one input: each must answer, not panic.
fn decode_everything(bytes: &[u8]) {
    fn both<T: DeserializeOwned>(bytes: &[u8]) {
        let stored = decode::<T>(bytes);
        let sent = decode_payload::<T>(bytes);
        // A malformed record is a clear error of the right kind.
        if let Err(error) = &stored {
            assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
        }
        if let Err(error) = &sent {
            assert!(
                matches!(error, Error::Refused(Refusal::InvalidArgument { .. })),
                "{error:?}"
            );
        }
        assert_eq!(stored.is_ok(), sent.is_ok());
    }
    both::<(PositionKey, String, Option<u64>, Command)>(bytes);
    both::<PositionKey>(bytes);
    both::<(MutationReply, bool)>(bytes);
    both::<PositionState>(bytes);
    both::<JournalEntry<Event>>(bytes);
    both::<(ReturnKey, String, Option<u64>, ReturnCommand)>(bytes);
    both::<ReturnKey>(bytes);
    both::<(ReturnCase, bool)>(bytes);
    both::<ReturnCase>(bytes);
    both::<JournalEntry<ReturnEvent>>(bytes);
    both::<ReturnSummary>(bytes);
    both::<super::actor::StoredAnswer<MutationReply>>(bytes);
    both::<super::actor::StoredAnswer<ReturnCase>>(bytes);
    both::<Error>(bytes);
    let _ = PositionKey::decode(bytes);
    let _ = ReturnKey::decode(bytes);
}

fn seeds() -> Vec<Vec<u8>> {
    position_encodings()
        .into_iter()
        .chain(return_encodings())
        .map(|(_, bytes)| bytes)
        .collect()
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    HugeLength { at: usize },
    Insert { at: usize, byte: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        any::<usize>().prop_map(|at| Damage::Truncate { at }),
        any::<usize>().prop_map(|at| Damage::HugeLength { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert { at, byte }),
    ]
}

fn damaged(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for damage in damages {
        let len = bytes.len().max(1);
        match *damage {
            Damage::Flip { at, mask } => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= mask;
                }
            }
            Damage::Truncate { at } => bytes.truncate(at % len),
            Damage::HugeLength { at } => {
                let at = (at % len).min(bytes.len());
                let end = (at + 9).min(bytes.len());
                bytes.splice(at..end, huge_length());
            }
            Damage::Insert { at, byte } => {
                let at = (at % len).min(bytes.len());
                bytes.insert(at, byte);
            }
        }
    }
    bytes
}

#[test]
fn the_seeds_decode_as_what_they_are() {
    // The damaged inputs start from real encodings, not from garbage.
    for (what, bytes) in position_encodings().into_iter().chain(return_encodings()) {
        let accepted = match what {
            "journal entry" => decode::<JournalEntry<Event>>(&bytes).is_ok(),
            "forwarded mutation" => {
                decode_payload::<(PositionKey, String, Option<u64>, Command)>(&bytes).is_ok()
            }
            "snapshot" => decode::<PositionState>(&bytes).is_ok(),
            "forwarded key" => decode_payload::<PositionKey>(&bytes).is_ok(),
            "return journal entry" => decode::<JournalEntry<ReturnEvent>>(&bytes).is_ok(),
            "return snapshot" => decode::<ReturnCase>(&bytes).is_ok(),
            "forwarded return mutation" => {
                decode_payload::<(ReturnKey, String, Option<u64>, ReturnCommand)>(&bytes).is_ok()
            }
            "forwarded return key" => decode_payload::<ReturnKey>(&bytes).is_ok(),
            "return summary" => ReturnSummary::decode(&bytes).is_ok(),
            "forwarded return answer" => decode::<(ReturnCase, bool)>(&bytes).is_ok(),
            other => panic!("no check for {other}"),
        };
        assert!(accepted, "{what} does not decode");
    }
}

#[test]
fn the_reported_payload_is_refused_by_every_decoder() {
    let mut payload = huge_length();
    payload.extend_from_slice(&[0; 8]);
    decode_everything(&payload);
    assert!(decode_payload::<(PositionKey, String, Option<u64>, Command)>(&payload).is_err());
    assert!(decode_payload::<PositionKey>(&payload).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn damaged_encodings_never_panic_a_decoder(
        seed in any::<prop::sample::Index>(),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let seeds = seeds();
        let bytes = damaged(seed.get(&seeds).clone(), &damages);
        decode_everything(&bytes);
    }
}
