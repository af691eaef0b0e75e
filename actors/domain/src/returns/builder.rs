//! The working copy a decision builds its events on.

use super::apply::apply;
use super::lifecycle::gate_satisfied;
use super::state::*;

pub(super) const DAY_MS: i64 = 86_400_000;

/// Collects the events of one decision on a working copy of the case, so
/// each step sees the effect of the previous ones.
pub(super) struct Builder<'c> {
    pub(super) case: ReturnCase,
    original: &'c ReturnCase,
    events: Vec<ReturnEvent>,
    pub(super) now_ms: i64,
}

impl<'c> Builder<'c> {
    pub(super) fn new(case: &'c ReturnCase, now_ms: i64) -> Self {
        Self {
            case: case.clone(),
            original: case,
            events: Vec::new(),
            now_ms,
        }
    }

    pub(super) fn push(&mut self, event: ReturnEvent) {
        apply(&mut self.case, &event);
        self.events.push(event);
    }

    pub(super) fn transition(&mut self, to: ReturnState) {
        if let Some(from) = self.case.state {
            if from != to {
                self.push(ReturnEvent::StateChanged { from, to });
            }
        }
    }

    pub(super) fn effect(&mut self, kind: EffectKind) {
        let step = self.case.next_step;
        self.push(ReturnEvent::EffectScheduled {
            effect: Effect {
                step,
                kind,
                attempts: 0,
                last_error: String::new(),
                retry_at_ms: self.now_ms,
            },
        });
    }

    pub(super) fn raise(&mut self, kind: ExceptionKind, note: String) {
        if self.case.has_open_exception(kind) {
            return;
        }
        let exception_id = u32::try_from(self.case.exceptions.len()).unwrap_or(u32::MAX) + 1;
        self.push(ReturnEvent::ExceptionRaised {
            exception: CaseException {
                exception_id,
                kind,
                owner: kind.owner(),
                raised_at_ms: self.now_ms,
                note,
                resolved_by: None,
                resolved_at_ms: None,
                resolution_note: String::new(),
            },
        });
    }

    pub(super) fn release_exchange_holds(&mut self) {
        let holds: Vec<ExchangeHold> = self.case.exchanges.clone();
        for hold in holds {
            if matches!(hold.state, ExchangeState::Requested | ExchangeState::Held) {
                self.effect(EffectKind::ReleaseExchange {
                    sku: hold.sku.clone(),
                    location: hold.location.clone(),
                    reservation_id: hold.reservation_id.clone(),
                });
                self.push(ReturnEvent::ExchangeUpdated {
                    line_id: hold.line_id.clone(),
                    state: ExchangeState::Released,
                });
            }
        }
    }

    pub(super) fn approve(&mut self) {
        let ship_by_ms = self.now_ms + i64::from(self.case.policy.ship_by_days) * DAY_MS;
        self.push(ReturnEvent::Approved {
            ship_by_ms,
            at_ms: self.now_ms,
        });
        self.transition(ReturnState::Approved);
        let holds: Vec<ExchangeHold> = self.case.exchanges.clone();
        for hold in holds {
            if hold.state == ExchangeState::Requested {
                self.effect(EffectKind::HoldExchange {
                    sku: hold.sku,
                    location: hold.location,
                    quantity: hold.quantity,
                    reservation_id: hold.reservation_id,
                });
            }
        }
    }

    /// Releases refunds waiting for a gate that is now satisfied.
    pub(super) fn release_refunds(&mut self) {
        if !gate_satisfied(&self.case) {
            return;
        }
        let pending: Vec<String> = self
            .case
            .refunds
            .iter()
            .filter(|r| r.state == RefundState::PendingGate)
            .map(|r| r.refund_id.clone())
            .collect();
        for refund_id in pending {
            self.push(ReturnEvent::RefundReleased {
                refund_id,
                at_ms: self.now_ms,
            });
        }
    }

    pub(super) fn finish(mut self) -> Vec<ReturnEvent> {
        if self
            .original
            .refunds
            .iter()
            .any(|r| r.state == RefundState::PendingGate)
            || self
                .case
                .refunds
                .iter()
                .any(|r| r.state == RefundState::PendingGate)
        {
            self.release_refunds();
        }
        self.events
    }
}
