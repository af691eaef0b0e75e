//! Inbound channel deliveries (Shopify webhooks, CHANNELS.md A.5): which of
//! them a resource applies. Pure rules, no I/O.
//!
//! Shopify retries a delivery with the same webhook id, fires one event
//! through several subscriptions with the same event id, delivers late (up
//! to a day) and out of order. Each resource (an order, a refund, an
//! inventory level) keeps the mark of the last delivery it applied; a
//! delivery is then applied, a duplicate of that one, or superseded by it
//! ([`judge`]). The payload's `updated_at` orders, not the arrival, and
//! only deliveries of state a newer one replaces ([`replaces_state`]): an
//! event (an order created, a refund, a return requested) happens once and
//! is never superseded by another topic's delivery about the same resource.

use serde::{Deserialize, Serialize};

/// What a resource last applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceMark {
    /// The applied delivery's `updated_at`, unix milliseconds.
    pub updated_at_ms: i64,
    /// Its `X-Shopify-Event-Id`.
    pub event_id: String,
}

/// What becomes of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than (or as new as) anything the resource applied: apply it.
    Apply,
    /// The event the resource applied last, delivered again.
    Duplicate,
    /// Older than what the resource applied: recorded, not applied.
    Superseded,
}

/// Whether a `topic`'s delivery carries state that a newer delivery of the
/// resource replaces (an inventory level's figure), so an older one is
/// superseded. Every other topic is an event: all of its deliveries count,
/// whatever arrived before them (an `orders/updated` landing before its
/// `orders/create` must not drop the sale).
pub fn replaces_state(topic: &str) -> bool {
    topic == "inventory_levels/update"
}

/// The verdict on a delivery of `topic`'s event `event_id`, updated at
/// `updated_at_ms`, for a resource whose last applied delivery is `last`.
///
/// Only a topic that [`replaces_state`] is superseded. Two different events
/// of one `updated_at` are both applied: Shopify's timestamps have second
/// precision, so the tie says nothing about their order, and every topic's
/// effect is idempotent or a read-back.
pub fn judge(
    last: Option<&ResourceMark>,
    topic: &str,
    event_id: &str,
    updated_at_ms: i64,
) -> Verdict {
    match last {
        None => Verdict::Apply,
        Some(last) if last.event_id == event_id => Verdict::Duplicate,
        Some(last) if replaces_state(topic) && updated_at_ms < last.updated_at_ms => {
            Verdict::Superseded
        }
        Some(_) => Verdict::Apply,
    }
}

/// The mark a resource keeps after applying (or after judging) a delivery:
/// the newer of the two, so a superseded delivery never moves it back.
pub fn advance(last: Option<ResourceMark>, event_id: &str, updated_at_ms: i64) -> ResourceMark {
    match last {
        Some(last) if last.updated_at_ms > updated_at_ms => last,
        _ => ResourceMark {
            updated_at_ms,
            event_id: event_id.to_owned(),
        },
    }
}

/// An RFC 3339 timestamp (`2026-12-02T03:48:37Z`, `...37.123-05:00`) as
/// unix milliseconds; `None` for anything else.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators
        .iter()
        .any(|&(at, expected)| bytes[at] != expected)
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scaled = 0i64;
        for (index, digit) in fraction.bytes().take(digits).enumerate() {
            if index < 3 {
                scaled = scaled * 10 + i64::from(digit - b'0');
            }
        }
        for _ in digits..3 {
            scaled *= 10;
        }
        millis = scaled;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL: &str = "inventory_levels/update";

    fn mark(updated_at_ms: i64, event_id: &str) -> ResourceMark {
        ResourceMark {
            updated_at_ms,
            event_id: event_id.into(),
        }
    }

    #[test]
    fn the_first_delivery_of_a_resource_applies() {
        assert_eq!(judge(None, LEVEL, "e1", 5), Verdict::Apply);
    }

    #[test]
    fn the_applied_event_again_is_a_duplicate_whatever_its_timestamp() {
        let last = mark(5, "e1");
        assert_eq!(judge(Some(&last), LEVEL, "e1", 5), Verdict::Duplicate);
        assert_eq!(judge(Some(&last), LEVEL, "e1", 1), Verdict::Duplicate);
    }

    #[test]
    fn an_older_update_after_a_newer_one_is_superseded_and_leaves_the_mark() {
        let last = mark(5_000, "newer");
        assert_eq!(
            judge(Some(&last), LEVEL, "older", 4_000),
            Verdict::Superseded
        );
        assert_eq!(advance(Some(last.clone()), "older", 4_000), last);
        assert_eq!(judge(Some(&last), LEVEL, "tie", 5_000), Verdict::Apply);
        assert_eq!(judge(Some(&last), LEVEL, "newest", 6_000), Verdict::Apply);
        assert_eq!(advance(Some(last), "newest", 6_000), mark(6_000, "newest"));
    }

    #[test]
    fn an_event_is_never_superseded_by_a_newer_delivery_of_another_topic() {
        // An orders/updated (or returns/approve) landed first with a later
        // updated_at; the create (request, refund) arriving after it is
        // still the sale and applies.
        let last = mark(9_000, "updated");
        for event_topic in ["orders/create", "refunds/create", "returns/request"] {
            assert!(!replaces_state(event_topic), "{event_topic}");
            assert_eq!(
                judge(Some(&last), event_topic, "created", 1_000),
                Verdict::Apply,
                "{event_topic}"
            );
        }
        assert!(replaces_state(LEVEL));
        assert_eq!(
            judge(Some(&last), LEVEL, "older", 1_000),
            Verdict::Superseded
        );
    }

    #[test]
    fn any_arrival_order_ends_at_the_newest_mark_and_applies_it() {
        // Every permutation of three updates: the newest is applied in all.
        let updates = [("a", 1_000), ("b", 2_000), ("c", 3_000)];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let mut last: Option<ResourceMark> = None;
            let mut applied = Vec::new();
            for &index in &order {
                let (event, at) = updates[index];
                if judge(last.as_ref(), LEVEL, event, at) == Verdict::Apply {
                    applied.push(event);
                }
                last = Some(advance(last, event, at));
            }
            assert_eq!(last, Some(mark(3_000, "c")), "{order:?}");
            assert_eq!(applied.last(), Some(&"c"), "{order:?}");
        }
    }

    #[test]
    fn rfc3339_timestamps_parse_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-12-02T03:48:37Z"),
            Some(1_796_183_317_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-01T22:48:37-05:00"),
            Some(1_796_183_317_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-02T03:48:37.25Z"),
            Some(1_796_183_317_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00+00:00"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-13-02T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-02T00:00:00",
            "2026-12-02T00:00:00+5:00",
            "2026-12-02T00:00:00.Z",
            "２０２６-12-02T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
