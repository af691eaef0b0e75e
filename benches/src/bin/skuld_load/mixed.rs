//! The mixed workload: reserve, commit, release, adjust, read, with its expectation.

use super::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use skuld_benches::check::MixedExpectation;
use skuld_proto::v1 as pb;

/// Per-position expectations of the mixed scenario.
#[derive(Default)]
pub(super) struct Expected {
    /// Any mutation was sent to this position.
    pub(super) touched: AtomicBool,
    pub(super) reserved: AtomicI64,
    pub(super) committed: AtomicI64,
    pub(super) on_hand_delta: AtomicI64,
    pub(super) unknown_reserves: AtomicI64,
    pub(super) unknown_commits: AtomicI64,
    pub(super) unknown_releases: AtomicI64,
    pub(super) unknown_fulfilled: AtomicI64,
    pub(super) unknown_adjusted: AtomicI64,
}

impl Expected {
    pub(super) fn snapshot(&self, stocked: i64) -> MixedExpectation {
        let get = |value: &AtomicI64| value.load(Ordering::Relaxed);
        MixedExpectation {
            stocked,
            on_hand_delta: get(&self.on_hand_delta),
            reserved: get(&self.reserved),
            committed: get(&self.committed),
            unknown_reserves: get(&self.unknown_reserves),
            unknown_commits: get(&self.unknown_commits),
            unknown_releases: get(&self.unknown_releases),
            unknown_fulfilled: get(&self.unknown_fulfilled),
            unknown_adjusted: get(&self.unknown_adjusted),
        }
    }
}

/// What one caller holds: its own reservations and commitments, oldest
/// first, so its commits, releases and fulfilments are always valid.
#[derive(Default)]
pub(super) struct CallerState {
    /// (position, reservation id)
    pub(super) active: VecDeque<(usize, String)>,
    /// (position, order ref, quantity)
    pub(super) commitments: VecDeque<(usize, String, i64)>,
}

pub(super) const ADJUST_UNITS: i64 = 10;

pub(super) struct Mixed {
    pub(super) clients: Arc<Clients>,
    pub(super) run: String,
    pub(super) positions: Vec<pb::PositionKey>,
    /// Index of the hot position (the last one) when a hot share is set.
    pub(super) hot: Option<usize>,
    pub(super) hot_share: f64,
    pub(super) expected: Vec<Expected>,
    pub(super) callers: Vec<Mutex<CallerState>>,
    pub(super) replayed: AtomicU64,
    pub(super) next_key: AtomicU64,
}

pub(super) enum MixedOp {
    Reserve,
    Commit(usize, String),
    Release(usize, String),
    Fulfill(usize, String, i64),
    Adjust,
    Availability,
}

/// Operation names; the hot position's get their own, so the other keys'
/// latency can be reported without it.
pub(super) fn op_name(base: &'static str, hot: bool) -> &'static str {
    match (base, hot) {
        ("reserve", true) => "reserve-hot",
        ("commit", true) => "commit-hot",
        ("release", true) => "release-hot",
        ("fulfill", true) => "fulfill-hot",
        ("adjust", true) => "adjust-hot",
        _ => base,
    }
}

impl Mixed {
    /// Mixed proportions: 40% reserve, 20% commit, 15% release, 10% fulfil,
    /// 5% adjust (receipt), 10% availability over 3 locations. A commit,
    /// release or fulfilment with nothing of its own to act on reserves.
    pub(super) fn choose(&self, caller: usize) -> MixedOp {
        let roll: f64 = rand::rng().random_range(0.0..100.0);
        let mut state = self.callers[caller % self.callers.len()].lock();
        let op = if roll < 40.0 {
            None
        } else if roll < 60.0 {
            state
                .active
                .pop_front()
                .map(|(index, id)| MixedOp::Commit(index, id))
        } else if roll < 75.0 {
            state
                .active
                .pop_front()
                .map(|(index, id)| MixedOp::Release(index, id))
        } else if roll < 85.0 {
            state
                .commitments
                .pop_front()
                .map(|(index, order, quantity)| MixedOp::Fulfill(index, order, quantity))
        } else if roll < 90.0 {
            Some(MixedOp::Adjust)
        } else {
            Some(MixedOp::Availability)
        };
        op.unwrap_or(MixedOp::Reserve)
    }

    pub(super) fn cold_index(&self) -> usize {
        rand::rng().random_range(0..self.hot.unwrap_or(self.positions.len()))
    }

    /// Records an answer: `ok` on OK, `unknown` when it may have applied.
    pub(super) fn settle(
        &self,
        index: usize,
        result: &Result<tonic::Response<pb::MutationResponse>, tonic::Status>,
        ok: impl FnOnce(),
        unknown: impl FnOnce(),
    ) {
        self.expected[index].touched.store(true, Ordering::Relaxed);
        match result {
            Ok(reply) => {
                if reply.get_ref().replayed {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                }
                ok();
            }
            Err(status) if skuld_proto::retry::outcome_open(status.code()) => unknown(),
            Err(_) => {}
        }
    }
}

pub(super) fn unit(
    result: Result<tonic::Response<pb::MutationResponse>, tonic::Status>,
) -> Result<(), tonic::Status> {
    result.map(drop)
}

impl Workload for Mixed {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let mut client = self.clients.inventory(caller);
            let id = format!(
                "{}-m{}",
                self.run,
                self.next_key.fetch_add(1, Ordering::Relaxed)
            );
            let is_hot = |index: usize| self.hot == Some(index);
            let add = |value: &AtomicI64, delta: i64| {
                value.fetch_add(delta, Ordering::Relaxed);
            };
            match self.choose(caller) {
                MixedOp::Commit(index, reservation_id) => {
                    let order_ref = format!("order-{id}");
                    let request = pb::CommitReservationRequest {
                        header: header(&self.positions[index], id),
                        reservation_id,
                        quantity: 0,
                        order_ref: order_ref.clone(),
                    };
                    let result = client
                        .commit_reservation(self.clients.request(request))
                        .await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || {
                            add(&e.reserved, -1);
                            add(&e.committed, 1);
                        },
                        || add(&e.unknown_commits, 1),
                    );
                    if result.is_ok() {
                        self.callers[caller % self.callers.len()]
                            .lock()
                            .commitments
                            .push_back((index, order_ref, 1));
                    }
                    (op_name("commit", is_hot(index)), unit(result))
                }
                MixedOp::Release(index, reservation_id) => {
                    let request = pb::ReleaseReservationRequest {
                        header: header(&self.positions[index], id),
                        reservation_id,
                    };
                    let result = client
                        .release_reservation(self.clients.request(request))
                        .await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.reserved, -1),
                        || add(&e.unknown_releases, 1),
                    );
                    (op_name("release", is_hot(index)), unit(result))
                }
                MixedOp::Fulfill(index, order_ref, quantity) => {
                    let request = pb::FulfillRequest {
                        header: header(&self.positions[index], id),
                        order_ref,
                        quantity,
                    };
                    let result = client.fulfill(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || {
                            add(&e.committed, -quantity);
                            add(&e.on_hand_delta, -quantity);
                        },
                        || add(&e.unknown_fulfilled, quantity),
                    );
                    (op_name("fulfill", is_hot(index)), unit(result))
                }
                MixedOp::Adjust => {
                    let index = self.cold_index();
                    let request = pb::AdjustRequest {
                        header: header(&self.positions[index], id),
                        bucket: pb::Bucket::Available.into(),
                        delta: ADJUST_UNITS,
                        reason: pb::AdjustmentReason::Receipt.into(),
                        change_from: None,
                        reference_document_uri: String::new(),
                    };
                    let result = client.adjust(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.on_hand_delta, ADJUST_UNITS),
                        || add(&e.unknown_adjusted, ADJUST_UNITS),
                    );
                    (op_name("adjust", is_hot(index)), unit(result))
                }
                MixedOp::Availability => {
                    let key = &self.positions[self.cold_index()];
                    let request = pb::GetAvailabilityRequest {
                        tenant: key.tenant.clone(),
                        sku: key.sku.clone(),
                        locations: vec![key.location.clone(), "DC2".into(), "DC3".into()],
                    };
                    let result = client
                        .get_availability(self.clients.request(request))
                        .await
                        .map(drop);
                    ("availability", result)
                }
                MixedOp::Reserve => {
                    let hot = self
                        .hot
                        .filter(|_| rand::rng().random_range(0.0..100.0) < self.hot_share);
                    let index = hot.unwrap_or_else(|| self.cold_index());
                    let request = reserve_request(&self.positions[index], id.clone());
                    let result = client.reserve(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.reserved, 1),
                        || add(&e.unknown_reserves, 1),
                    );
                    if result.is_ok() {
                        self.callers[caller % self.callers.len()]
                            .lock()
                            .active
                            .push_back((index, id));
                    }
                    (op_name("reserve", hot.is_some()), unit(result))
                }
            }
        })
    }
}
