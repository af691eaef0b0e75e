#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::controls::{validate_shares, MAX_QUANTITY, WHOLE};
use super::definition::{DEFAULT_PUSH_INTERVAL_MS, DEFAULT_REASSERT_INTERVAL_MS};
use super::*;

fn channel(id: &str, publication: Publication, controls: Vec<Control>) -> Channel {
    Channel {
        id: id.into(),
        tenant: "acme".into(),
        kind: match publication {
            Publication::PerLocation => ChannelKind::Shopify,
            Publication::PerSku => ChannelKind::Amazon,
        },
        network: vec!["DC1".into(), "STORE1".into(), "STORE2".into()],
        publication,
        priority: 1,
        controls,
        stacking: false,
        min_push_interval_ms: DEFAULT_PUSH_INTERVAL_MS,
        reassert_interval_ms: DEFAULT_REASSERT_INTERVAL_MS,
        account: BTreeMap::new(),
        credentials_ref: "env:SHOP_TOKEN".into(),
    }
}

fn control(id: &str, kind: ControlKind, scope: Scope, priority: u32) -> Control {
    Control {
        id: id.into(),
        kind,
        scope,
        priority,
    }
}

fn stock(dc1: i64, store1: i64, store2: i64) -> BTreeMap<String, i64> {
    [("DC1", dc1), ("STORE1", store1), ("STORE2", store2)]
        .into_iter()
        .map(|(location, available)| (location.to_owned(), available))
        .collect()
}

fn sku(s: &str) -> Scope {
    Scope::Sku(s.into())
}

fn at(location: &str) -> Scope {
    Scope::Location(location.into())
}

/// One row of the control table: the controls, the stock at DC1, STORE1
/// and STORE2, and the per-SKU total and per-location lines expected.
struct Case {
    name: &'static str,
    controls: Vec<Control>,
    stacking: bool,
    stock: (i64, i64, i64),
    per_sku: i64,
    per_location: [i64; 3],
}

#[test]
fn each_control_type_and_priority_shapes_the_quantity_as_the_table_says() {
    use ControlKind::*;
    let cases = vec![
        Case {
            name: "no controls: the network's available, backorders count as none",
            controls: vec![],
            stacking: false,
            stock: (10, 3, -4),
            per_sku: 13,
            per_location: [10, 3, 0],
        },
        Case {
            name: "a quantity buffer on the SKU",
            controls: vec![control("b", QuantityBuffer { units: 5 }, sku("TEE"), 1)],
            stacking: false,
            stock: (10, 3, 0),
            per_sku: 8,
            per_location: [5, 0, 0],
        },
        Case {
            name: "a percent buffer holds back its share rounded up",
            controls: vec![control(
                "p",
                PercentBuffer {
                    basis_points: 2_500,
                },
                Scope::All,
                1,
            )],
            stacking: false,
            stock: (10, 3, 1),
            // 14 - ceil(3.5) = 10; per line 10 - 3, 3 - 1, 1 - 1.
            per_sku: 10,
            per_location: [7, 2, 0],
        },
        Case {
            name: "a location excluded from the channel",
            controls: vec![control("x", Exclusion, at("STORE1"), 1)],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 12,
            per_location: [10, 0, 2],
        },
        Case {
            name: "a SKU excluded",
            controls: vec![control("x", Exclusion, sku("TEE"), 1)],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 0,
            per_location: [0, 0, 0],
        },
        Case {
            name: "a ring-fence cap",
            controls: vec![control("c", RingFenceCap { units: 4 }, Scope::All, 1)],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 4,
            per_location: [4, 3, 2],
        },
        Case {
            name: "below the minimum the channel is shown 0",
            controls: vec![control("m", Minimum { units: 4 }, Scope::All, 1)],
            stacking: false,
            stock: (3, 3, 0),
            per_sku: 6,
            per_location: [0, 0, 0],
        },
        Case {
            name: "a SKU-location buffer shapes its line only",
            controls: vec![control(
                "sl",
                QuantityBuffer { units: 2 },
                Scope::SkuLocation {
                    sku: "TEE".into(),
                    location: "STORE1".into(),
                },
                1,
            )],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 13,
            per_location: [10, 1, 2],
        },
        Case {
            name: "another SKU's control does not apply",
            controls: vec![control("x", Exclusion, sku("MUG"), 1)],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 15,
            per_location: [10, 3, 2],
        },
        Case {
            name: "no stacking: only the first by priority applies",
            controls: vec![
                control("cap", RingFenceCap { units: 4 }, Scope::All, 2),
                control("buffer", QuantityBuffer { units: 1 }, sku("TEE"), 1),
            ],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 14,
            per_location: [9, 2, 1],
        },
        Case {
            name: "no stacking, one priority: the more specific scope applies",
            controls: vec![
                control("all", QuantityBuffer { units: 9 }, Scope::All, 1),
                control("tee", QuantityBuffer { units: 1 }, sku("TEE"), 1),
            ],
            stacking: false,
            stock: (10, 3, 2),
            per_sku: 14,
            per_location: [9, 2, 1],
        },
        Case {
            name: "stacking: every matching control, in priority order",
            controls: vec![
                control("cap", RingFenceCap { units: 4 }, Scope::All, 2),
                control("buffer", QuantityBuffer { units: 1 }, sku("TEE"), 1),
            ],
            stacking: true,
            stock: (10, 3, 2),
            // per SKU: 15 - 1 = 14, capped to 4; per line: min(v - 1, 4).
            per_sku: 4,
            per_location: [4, 2, 1],
        },
        Case {
            name: "a per-SKU channel: a location control shapes the line, a SKU control the sum",
            controls: vec![
                control("x", Exclusion, at("DC1"), 1),
                control("cap", RingFenceCap { units: 4 }, sku("TEE"), 1),
            ],
            stacking: false,
            stock: (10, 3, 2),
            // Per SKU: DC1 out, 3 + 2 = 5, capped to 4. Per location both
            // compete for DC1's line, and at one priority the SKU's cap,
            // the more specific scope, wins.
            per_sku: 4,
            per_location: [4, 3, 2],
        },
        Case {
            name: "a share alone takes its part of the pool, rounded down",
            controls: vec![control(
                "s",
                AllocationShare {
                    basis_points: 3_333,
                },
                Scope::All,
                1,
            )],
            stacking: false,
            stock: (10, 3, 2),
            // floor(15 / 3) = 4 (a third of 3_333 basis points is 4.9995).
            per_sku: 4,
            per_location: [3, 0, 0],
        },
    ];
    for case in cases {
        for publication in [Publication::PerSku, Publication::PerLocation] {
            let mut own = channel("web", publication, case.controls.clone());
            own.stacking = case.stacking;
            assert_eq!(own.validate(), Ok(()), "{}", case.name);
            let (dc1, store1, store2) = case.stock;
            let availability = available_to_sell(&own, &[], "TEE", &stock(dc1, store1, store2));
            match publication {
                Publication::PerSku => {
                    assert_eq!(availability.total, case.per_sku, "{} (per SKU)", case.name)
                }
                Publication::PerLocation => {
                    let lines: Vec<i64> = availability.lines.iter().map(|l| l.value).collect();
                    assert_eq!(lines, case.per_location, "{} (per location)", case.name);
                    assert_eq!(availability.total, lines.iter().sum::<i64>());
                }
            }
        }
    }
}

#[test]
fn shares_split_a_pool_and_the_first_channel_by_priority_takes_the_remainder() {
    let share = |id: &str, priority: u32, basis_points: u32| {
        let mut own = channel(
            id,
            Publication::PerSku,
            vec![control(
                "share",
                ControlKind::AllocationShare { basis_points },
                Scope::All,
                1,
            )],
        );
        own.priority = priority;
        own
    };
    let channels = vec![share("amazon", 2, 5_000), share("walmart", 1, 5_000)];
    assert_eq!(validate_shares(&channels), Ok(()));
    let stock = stock(4, 3, 0);
    let totals: Vec<i64> = channels
        .iter()
        .map(|own| available_to_sell(own, &channels, "TEE", &stock).total)
        .collect();
    // 7 units: 3 each, and the odd unit to walmart (priority 1).
    assert_eq!(totals, [3, 4]);

    // A third channel taking 10 % more than what is left is refused.
    let mut too_much = channels.clone();
    too_much.push(share("ebay", 3, 1));
    let refusal = validate_shares(&too_much).unwrap_err();
    assert!(refusal.to_string().contains("100.01 %"), "{refusal}");

    // A channel with another network is another pool.
    let mut elsewhere = share("outlet", 3, 9_000);
    elsewhere.network = vec!["OUTLET".into()];
    let mut separate = channels.clone();
    separate.push(elsewhere);
    assert_eq!(validate_shares(&separate), Ok(()));
}

#[test]
fn bad_definitions_are_refused_naming_the_field() {
    let good = channel("web", Publication::PerLocation, vec![]);
    assert_eq!(good.validate(), Ok(()));
    let field = |edit: &dyn Fn(&mut Channel)| {
        let mut bad = good.clone();
        edit(&mut bad);
        match bad.validate() {
            Err(Refusal::InvalidArgument { field, .. }) => field.into_owned(),
            other => panic!("{other:?}"),
        }
    };
    use crate::Refusal;
    assert_eq!(field(&|c| c.network.clear()), "network");
    assert_eq!(field(&|c| c.network.push("DC1".into())), "network");
    assert_eq!(field(&|c| c.tenant = "*".into()), "tenant");
    assert_eq!(
        field(&|c| c.min_push_interval_ms = 10),
        "min_push_interval_ms"
    );
    assert_eq!(
        field(&|c| c.reassert_interval_ms = 500),
        "reassert_interval_ms"
    );
    assert_eq!(
        field(&|c| c.credentials_ref = "shpat_0123456789".into()),
        "credentials_ref"
    );
    assert_eq!(
        field(&|c| c.credentials_ref = "file:relative".into()),
        "credentials_ref"
    );
    assert_eq!(
        field(&|c| c.controls = vec![control(
            "p",
            ControlKind::PercentBuffer {
                basis_points: WHOLE + 1
            },
            Scope::All,
            1
        )]),
        "controls.value"
    );
    assert_eq!(
        field(&|c| c.controls = vec![control(
            "q",
            ControlKind::QuantityBuffer { units: -1 },
            Scope::All,
            1
        )]),
        "controls.value"
    );
    assert_eq!(
        field(&|c| c.controls = vec![control("x", ControlKind::Exclusion, Scope::All, 0)]),
        "controls.priority"
    );
    assert_eq!(
        field(&|c| {
            c.controls = vec![
                control("x", ControlKind::Exclusion, Scope::All, 1),
                control("x", ControlKind::Exclusion, Scope::All, 2),
            ]
        }),
        "controls.id"
    );
    assert_eq!(
        field(&|c| {
            c.kind = ChannelKind::Webhook;
            c.publication = Publication::PerSku;
        }),
        "publication"
    );
    // The refusal never echoes what was pasted into credentials_ref.
    let mut pasted = good.clone();
    pasted.credentials_ref = "shpat_0123456789".into();
    assert!(!pasted.validate().unwrap_err().to_string().contains("shpat"));
}

fn any_scope() -> impl Strategy<Value = Scope> {
    let sku = prop_oneof![Just("TEE".to_owned()), Just("MUG".to_owned())];
    let location = prop_oneof![
        Just("DC1".to_owned()),
        Just("STORE1".to_owned()),
        Just("NOWHERE".to_owned())
    ];
    prop_oneof![
        Just(Scope::All),
        sku.clone().prop_map(Scope::Sku),
        location.clone().prop_map(Scope::Location),
        (sku, location).prop_map(|(sku, location)| Scope::SkuLocation { sku, location }),
    ]
}

fn any_kind() -> impl Strategy<Value = ControlKind> {
    prop_oneof![
        (0..=MAX_QUANTITY).prop_map(|units| ControlKind::QuantityBuffer { units }),
        (0..=WHOLE).prop_map(|basis_points| ControlKind::PercentBuffer { basis_points }),
        Just(ControlKind::Exclusion),
        (0..=50i64).prop_map(|units| ControlKind::RingFenceCap { units }),
        (0..=50i64).prop_map(|units| ControlKind::Minimum { units }),
        (1..=WHOLE).prop_map(|basis_points| ControlKind::AllocationShare { basis_points }),
    ]
}

fn any_channel(id: &'static str) -> impl Strategy<Value = Channel> {
    (
        proptest::collection::vec((any_kind(), any_scope(), 1..4u32), 0..6),
        any::<bool>(),
        any::<bool>(),
        1..4u32,
    )
        .prop_map(move |(controls, stacking, per_sku, priority)| {
            let controls = controls
                .into_iter()
                .enumerate()
                .map(|(n, (kind, scope, priority))| {
                    control(&format!("c{n}"), kind, scope, priority)
                })
                .collect();
            let publication = if per_sku {
                Publication::PerSku
            } else {
                Publication::PerLocation
            };
            let mut own = channel(id, publication, controls);
            own.stacking = stacking;
            own.priority = priority;
            own
        })
}

proptest! {
    /// Whatever the controls and the stock, a channel is never shown a
    /// negative quantity nor more than its network has available, per
    /// line and in total.
    #[test]
    fn available_to_sell_is_never_negative_nor_above_the_network(
        own in any_channel("web"),
        peer in any_channel("marketplace"),
        dc1 in -1_000i64..=MAX_QUANTITY,
        store1 in -5i64..=100,
        store2 in -5i64..=100,
        sku in prop_oneof![Just("TEE"), Just("MUG")],
    ) {
        let peers = vec![own.clone(), peer];
        let stock = stock(dc1, store1, store2);
        let availability = available_to_sell(&own, &peers, sku, &stock);
        let network: i64 = [dc1, store1, store2].iter().map(|v| (*v).max(0)).sum();
        prop_assert_eq!(availability.network_available, network);
        prop_assert!(availability.total >= 0);
        prop_assert!(availability.total <= network, "{availability:?}");
        for line in &availability.lines {
            prop_assert!(line.value >= 0 && line.value <= line.network_available, "{line:?}");
        }
    }

    /// Channels whose shares pass validation never take more than the
    /// pool between them, remainders included.
    #[test]
    fn valid_shares_never_hand_out_more_than_the_pool(
        shares in proptest::collection::vec((1..=WHOLE, 1..4u32), 1..5),
        dc1 in 0i64..1_000,
        store1 in 0i64..10,
    ) {
        let channels: Vec<Channel> = shares
            .iter()
            .enumerate()
            .map(|(n, (basis_points, priority))| {
                let mut own = channel(
                    ["a", "b", "c", "d", "e"][n],
                    Publication::PerSku,
                    vec![control("s", ControlKind::AllocationShare { basis_points: *basis_points }, Scope::All, 1)],
                );
                own.priority = *priority;
                own
            })
            .collect();
        prop_assume!(validate_shares(&channels).is_ok());
        let stock = stock(dc1, store1, 0);
        let handed_out: i64 = channels
            .iter()
            .map(|own| available_to_sell(own, &channels, "TEE", &stock).total)
            .sum();
        let shared: u32 = shares.iter().map(|(basis_points, _)| basis_points).sum();
        prop_assert!(handed_out <= dc1 + store1);
        // Rounding loses nothing of the shared part.
        prop_assert_eq!(handed_out, (dc1 + store1) * i64::from(shared) / i64::from(WHOLE));
    }
}

const POLICY: PushPolicy = PushPolicy {
    min_interval_ms: 1_000,
    reassert_interval_ms: 60_000,
};

/// A channel answering every push after `latency_ms`, driven by a clock
/// stepping 1 ms: what the scheduler would do for one key.
struct OneKey {
    state: PushState,
    now: u64,
    flying: Option<(Push, u64)>,
    pushes: Vec<Push>,
    version: u64,
    latency_ms: u64,
}

impl OneKey {
    fn new(value: i64, latency_ms: u64) -> Self {
        OneKey {
            state: PushState::new(value, 1, 0),
            now: 0,
            flying: None,
            pushes: vec![],
            version: 1,
            latency_ms,
        }
    }

    fn change(&mut self, value: i64) {
        self.version += 1;
        self.state.observe(value, self.version, self.now);
    }

    /// One millisecond: the reply lands, then a due push starts.
    fn tick(&mut self) {
        self.now += 1;
        if let Some((push, done_at)) = self.flying.take() {
            if done_at <= self.now {
                self.state.succeeded(&push, self.now);
            } else {
                self.flying = Some((push, done_at));
            }
        }
        if let Some((at, urgency)) = self.state.next_due(&POLICY) {
            if at <= self.now && urgency != Urgency::Reassert {
                let push = self.state.start(urgency, self.now);
                self.pushes.push(push.clone());
                self.flying = Some((push, self.now + self.latency_ms));
            }
        }
    }
}

#[test]
fn ten_thousand_changes_on_one_key_collapse_into_a_few_pushes_ending_on_the_final_value() {
    let mut key = OneKey::new(10_000, 50);
    // A change every millisecond for 10 s: stock sells down, restocks,
    // sells down again.
    for n in 0..10_000i64 {
        let value = if n < 5_000 { 10_000 - n } else { n - 2_000 };
        key.change(value);
        key.tick();
    }
    for _ in 0..5_000 {
        key.tick();
    }
    eprintln!("{} pushes for 10,000 changes", key.pushes.len());
    let last = key.pushes.last().unwrap();
    assert_eq!(last.value, 7_999);
    assert!(key.state.settled());
    // Decreases go one after another for the first 5 s, one per reply
    // (a push starts the millisecond after the last reply, 51 ms apart),
    // plus the first push; then the drop to 3,000 at once; then increases
    // once a second for 5 s, plus the last.
    let bound = 5_000 / 51 + 1 + 1 + 5_000 / 1_000 + 1;
    assert!(
        key.pushes.len() <= bound,
        "{} pushes, at most {bound}",
        key.pushes.len()
    );
    let coalesced: u64 = key.pushes.iter().map(|push| push.coalesced).sum();
    assert_eq!(
        coalesced, 10_000,
        "every change is accounted for in one push"
    );
    // Never two in flight: each push starts after the previous reply.
    for pair in key.pushes.windows(2) {
        assert!(pair[0].version < pair[1].version);
    }
}

#[test]
fn decreases_and_zero_crossings_go_at_once_and_increases_are_paced() {
    let mut state = PushState::new(5, 1, 0);
    let first = state.start(Urgency::Decrease, 0);
    state.succeeded(&first, 10);

    // An increase right after a push waits for the interval.
    state.observe(8, 2, 20);
    assert_eq!(state.next_due(&POLICY), Some((1_000, Urgency::Increase)));
    // A decrease below what the channel shows is due now.
    state.observe(3, 3, 30);
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::Decrease)));
    let down = state.start(Urgency::Decrease, 30);
    assert_eq!(down.change_from, Some(5));
    state.succeeded(&down, 40);

    // Out of stock, then back: both at once.
    state.observe(0, 4, 50);
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::Decrease)));
    let out = state.start(Urgency::Decrease, 50);
    state.succeeded(&out, 60);
    state.observe(2, 5, 70);
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::BackInStock)));
    assert!(Urgency::Decrease < Urgency::BackInStock && Urgency::BackInStock < Urgency::Increase);

    // Nothing differs: only a re-assertion, after its interval.
    let back = state.start(Urgency::BackInStock, 70);
    state.succeeded(&back, 80);
    assert_eq!(state.next_due(&POLICY), Some((60_080, Urgency::Reassert)));
}

#[test]
fn a_late_reply_never_acknowledges_an_older_value_over_a_newer_one() {
    let mut state = PushState::new(5, 1, 0);
    let old = state.start(Urgency::Decrease, 0);
    // The reply is lost; the push is retried after its backoff.
    state.failed(&old, 500);
    assert_eq!(state.next_due(&POLICY), Some((500, Urgency::Decrease)));
    state.observe(4, 2, 100);
    let new = state.start(Urgency::Decrease, 500);
    state.succeeded(&new, 510);
    // The first attempt's reply turns up after all.
    state.succeeded(&old, 520);
    assert_eq!(
        state.acked.map(|acked| (acked.value, acked.version)),
        Some((4, 2))
    );
    // A replayed (older) desired version changes nothing.
    assert!(!state.observe(9, 1, 530));
    assert!(state.settled());
}

#[test]
fn a_stale_compare_recomputes_against_what_the_channel_shows() {
    let mut state = PushState::new(5, 1, 0);
    let first = state.start(Urgency::Decrease, 0);
    state.succeeded(&first, 10);
    state.observe(3, 2, 20);
    let push = state.start(Urgency::Decrease, 20);
    assert_eq!(push.change_from, Some(5));
    // A storefront sold one meanwhile: the channel shows 4.
    state.conflicted(&push, 4, 30);
    let (at, urgency) = state.next_due(&POLICY).unwrap();
    assert_eq!((at, urgency), (0, Urgency::Decrease));
    let again = state.start(urgency, 30);
    assert_eq!(
        (again.value, again.version, again.change_from),
        (3, 2, Some(4))
    );
}

#[test]
fn a_dead_lettered_key_waits_for_a_new_value_or_a_replay() {
    let mut state = PushState::new(5, 1, 0);
    let push = state.start(Urgency::Decrease, 0);
    state.abandoned(&push);
    assert_eq!(state.next_due(&POLICY), None);
    state.replay();
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::Decrease)));
    let push = state.start(Urgency::Decrease, 0);
    state.abandoned(&push);
    assert!(state.observe(6, 2, 10));
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::Decrease)));
}

#[test]
fn a_read_back_that_differs_makes_the_key_due_again() {
    let mut state = PushState::new(5, 1, 0);
    let push = state.start(Urgency::Decrease, 0);
    state.succeeded(&push, 10);
    assert!(!state.reconciled(5, 20));
    assert!(
        state.reconciled(7, 30),
        "accepted but never applied, or edited on the channel"
    );
    assert_eq!(state.next_due(&POLICY), Some((0, Urgency::Decrease)));
}

#[test]
fn a_newer_value_supersedes_an_accepted_push_without_counting_an_attempt() {
    let mut state = PushState::new(5, 1, 0);
    let accepted = state.start(Urgency::Decrease, 0);
    assert_eq!(state.next_due(&POLICY), None, "in flight until confirmed");
    state.observe(2, 2, 10);
    state.superseded(&accepted);
    assert_eq!(state.attempts, 0);
    let (at, urgency) = state.next_due(&POLICY).unwrap();
    assert_eq!((at, urgency), (0, Urgency::Decrease));
    let newer = state.start(urgency, 10);
    assert_eq!((newer.value, newer.version), (2, 2));
    state.succeeded(&newer, 20);
    // The old value shows up late: it is not taken over the newer one.
    state.succeeded(&accepted, 30);
    assert_eq!(state.acked.map(|acked| acked.value), Some(2));
}

#[test]
fn a_push_carries_the_time_of_its_oldest_change_until_one_is_acknowledged() {
    let mut state = PushState::new(5, 1, 0);
    let first = state.start(Urgency::Decrease, 0);
    state.succeeded(&first, 5);
    state.observe(4, 2, 100);
    state.observe(3, 3, 200);
    let push = state.start(Urgency::Decrease, 200);
    assert_eq!(push.oldest_change_ms, 100);
    state.observe(2, 4, 250);
    // Lost: the next push carries the older changes too.
    state.failed(&push, 300);
    let again = state.start(Urgency::Decrease, 300);
    assert_eq!((again.value, again.oldest_change_ms), (2, 100));
    state.succeeded(&again, 320);
    state.observe(1, 5, 400);
    assert_eq!(state.start(Urgency::Decrease, 400).oldest_change_ms, 400);
}
