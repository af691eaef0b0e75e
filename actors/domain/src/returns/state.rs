//! Types of the return case: state, lines, policy, effects, events, commands.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Where a return case stands (docs/domain.md 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReturnState {
    Requested,
    InReview,
    Approved,
    InTransit,
    Received,
    Inspected,
    Processed,
    Declined,
    Canceled,
    Expired,
    Closed,
}

impl ReturnState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ReturnState::Declined
                | ReturnState::Canceled
                | ReturnState::Expired
                | ReturnState::Closed
        )
    }
}

impl ReturnState {
    /// Every state, in lifecycle order.
    pub const ALL: [ReturnState; 11] = [
        ReturnState::Requested,
        ReturnState::InReview,
        ReturnState::Approved,
        ReturnState::InTransit,
        ReturnState::Received,
        ReturnState::Inspected,
        ReturnState::Processed,
        ReturnState::Declined,
        ReturnState::Canceled,
        ReturnState::Expired,
        ReturnState::Closed,
    ];

    /// The state's name as the API spells it (`IN_REVIEW`).
    pub fn name(self) -> &'static str {
        match self {
            ReturnState::Requested => "REQUESTED",
            ReturnState::InReview => "IN_REVIEW",
            ReturnState::Approved => "APPROVED",
            ReturnState::InTransit => "IN_TRANSIT",
            ReturnState::Received => "RECEIVED",
            ReturnState::Inspected => "INSPECTED",
            ReturnState::Processed => "PROCESSED",
            ReturnState::Declined => "DECLINED",
            ReturnState::Canceled => "CANCELED",
            ReturnState::Expired => "EXPIRED",
            ReturnState::Closed => "CLOSED",
        }
    }
}

impl std::fmt::Display for ReturnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requester {
    Customer,
    Agent,
    Api,
}

/// When a refund may be released (docs/domain.md 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundGate {
    Immediate,
    OnLabelCreated,
    OnFirstScan,
    OnOutForDelivery,
    OnDelivered,
    OnReceipt,
    OnInspectionPass,
    Manual,
    /// Finance confirms the credit memo through `ConfirmErp`.
    ErpValidation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowStart {
    Delivered,
    Fulfilled,
}

/// The policy in force when the case opened; later policy changes do not
/// alter open cases. In the node's TOML configuration every field is
/// optional (the defaults below apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReturnPolicy {
    pub window_days: u32,
    pub window_start: WindowStart,
    pub final_sale_skus: BTreeSet<String>,
    /// Restocking fee in basis points of the refunded amount (1000 = 10%).
    pub restocking_fee_bps: u32,
    /// Charged once per case on refunds, in minor units.
    pub return_shipping_fee_minor: i64,
    pub refund_gate: RefundGate,
    /// A customer request worth more than this goes to review.
    pub review_threshold_minor: Option<i64>,
    /// Days after approval by which the parcel must be scanned.
    pub ship_by_days: u32,
    /// Hours after "delivered" by which the warehouse must receive.
    pub receipt_overdue_hours: u32,
    /// Hours after processing by which finance must confirm (ERP gate).
    pub erp_overdue_hours: u32,
}

impl Default for ReturnPolicy {
    fn default() -> Self {
        Self {
            window_days: 30,
            window_start: WindowStart::Delivered,
            final_sale_skus: BTreeSet::new(),
            restocking_fee_bps: 0,
            return_shipping_fee_minor: 0,
            refund_gate: RefundGate::OnReceipt,
            review_threshold_minor: None,
            ship_by_days: 14,
            receipt_overdue_hours: 48,
            erp_overdue_hours: 24,
        }
    }
}

/// A line of the order the return is against; skuld does not own orders, so
/// the case keeps what it was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub line_id: String,
    pub sku: String,
    pub quantity: i64,
    /// Paid for the whole line, in minor units.
    pub amount_paid_minor: i64,
    pub fulfilled_at_ms: i64,
    pub delivered_at_ms: i64,
    /// Where the units were shipped from; the default receiving location.
    pub location: String,
}

impl OrderLine {
    /// Paid for `quantity` units, never more than the line's total.
    pub fn paid_for(&self, quantity: i64) -> i64 {
        if self.quantity <= 0 {
            return 0;
        }
        let amount =
            i128::from(self.amount_paid_minor) * i128::from(quantity) / i128::from(self.quantity);
        i64::try_from(amount)
            .unwrap_or(i64::MAX)
            .min(self.amount_paid_minor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    RefundOriginal,
    StoreCredit,
    Exchange,
    /// Refund without a physical return.
    KeepItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// quality_control -> available.
    Restock,
    /// Stays in quality_control for a later disposition.
    RestockAfterProcessing,
    /// quality_control -> damaged.
    DamagedHold,
    /// quality_control -> out of on_hand.
    Scrap,
    /// quality_control -> out of on_hand (a supplier return).
    ReturnToVendor,
    /// Expected units never arrived; no inventory effect.
    Missing,
    /// No physical return; no inventory effect.
    KeepItem,
}

impl Disposition {
    /// Whether the disposition takes units that were received.
    pub fn takes_received_units(self) -> bool {
        !matches!(self, Disposition::Missing | Disposition::KeepItem)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grade {
    A,
    B,
    C,
    Unsellable,
}

/// One line of the return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    pub line_id: String,
    pub sku: String,
    pub reason_code: String,
    pub resolution: Option<Resolution>,
    pub requested: i64,
    pub approved: i64,
    pub received: i64,
    pub canceled: i64,
    pub inspected: i64,
    /// Inspected units graded UNSELLABLE.
    pub unsellable: i64,
    /// Units given a disposition other than RESTOCK_AFTER_PROCESSING.
    pub disposed: i64,
    /// Units held by RESTOCK_AFTER_PROCESSING, awaiting a second disposition.
    pub awaiting_processing: i64,
    /// Units declared MISSING or KEEP_ITEM (no physical return).
    pub not_returned: i64,
    pub refunded_quantity: i64,
    pub refunded_minor: i64,
    /// Where received units of this line are.
    pub receiving_location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Milestone {
    LabelCreated,
    InTransit,
    OutForDelivery,
    Delivered,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub carrier: String,
    pub tracking_number: String,
    pub label_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeState {
    /// The hold is being placed (an effect is pending).
    Requested,
    Held,
    OutOfStock,
    Released,
    /// Committed into the replacement order at processing.
    Confirmed,
}

/// A replacement held for an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeHold {
    pub line_id: String,
    pub sku: String,
    pub location: String,
    pub quantity: i64,
    pub reservation_id: String,
    pub state: ExchangeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundMethod {
    OriginalPayment,
    StoreCredit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundState {
    /// Decided, waiting for the policy's gate.
    PendingGate,
    /// Released to the payment system.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    pub line_id: String,
    pub quantity: i64,
    pub gross_minor: i64,
}

/// The financial outcome of processing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub method: RefundMethod,
    pub lines: Vec<RefundLine>,
    pub restocking_fee_minor: i64,
    pub shipping_fee_minor: i64,
    pub total_minor: i64,
    pub state: RefundState,
    pub decided_at_ms: i64,
    pub released_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExceptionKind {
    /// Delivered, but no receipt within the policy's time.
    ReceiptOverdue,
    ReceivedMoreThanApproved,
    DamagedOnArrival,
    /// Finance did not confirm the credit memo in time.
    ErpConfirmationOverdue,
    /// An inventory side effect failed and keeps failing.
    EffectFailing,
    /// The ERP refused the credit memo request for good (a validation
    /// error, an amount that does not match, a cancelled credit memo): the
    /// node's ERP worker stops until finance resolves it.
    ErpRefused,
}

impl ExceptionKind {
    pub const ALL: [ExceptionKind; 6] = [
        ExceptionKind::ReceiptOverdue,
        ExceptionKind::ReceivedMoreThanApproved,
        ExceptionKind::DamagedOnArrival,
        ExceptionKind::ErpConfirmationOverdue,
        ExceptionKind::EffectFailing,
        ExceptionKind::ErpRefused,
    ];

    /// A short fixed name (`receipt_overdue`), for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ExceptionKind::ReceiptOverdue => "receipt_overdue",
            ExceptionKind::ReceivedMoreThanApproved => "received_more_than_approved",
            ExceptionKind::DamagedOnArrival => "damaged_on_arrival",
            ExceptionKind::ErpConfirmationOverdue => "erp_confirmation_overdue",
            ExceptionKind::EffectFailing => "effect_failing",
            ExceptionKind::ErpRefused => "erp_refused",
        }
    }

    /// The team that owns an exception of this kind.
    pub fn owner(self) -> Team {
        match self {
            ExceptionKind::ReceiptOverdue
            | ExceptionKind::ReceivedMoreThanApproved
            | ExceptionKind::DamagedOnArrival
            | ExceptionKind::EffectFailing => Team::Warehouse,
            ExceptionKind::ErpConfirmationOverdue | ExceptionKind::ErpRefused => Team::Finance,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Team {
    Warehouse,
    Finance,
    CustomerService,
}

impl Team {
    /// A short fixed name (`customer_service`), for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Team::Warehouse => "warehouse",
            Team::Finance => "finance",
            Team::CustomerService => "customer_service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseException {
    pub exception_id: u32,
    pub kind: ExceptionKind,
    pub owner: Team,
    pub raised_at_ms: i64,
    pub note: String,
    pub resolved_by: Option<String>,
    pub resolved_at_ms: Option<i64>,
    pub resolution_note: String,
}

/// An inventory change the case asks of a position actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectKind {
    /// Received units go into quality_control at `location`.
    ReceiveIntoInspection {
        sku: String,
        location: String,
        quantity: i64,
    },
    /// Units leave quality_control by their disposition.
    Dispose {
        sku: String,
        location: String,
        quantity: i64,
        disposition: Disposition,
    },
    /// Reserve the exchange replacement.
    HoldExchange {
        sku: String,
        location: String,
        quantity: i64,
        reservation_id: String,
    },
    /// Release the exchange replacement's hold.
    ReleaseExchange {
        sku: String,
        location: String,
        reservation_id: String,
    },
    /// Commit the exchange replacement into the replacement order.
    ConfirmExchange {
        sku: String,
        location: String,
        reservation_id: String,
        order_ref: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectOutcome {
    Applied,
    /// The position refused for good (e.g. no stock for an exchange hold).
    Refused,
    /// A transient failure (overload, store unavailable): retry later.
    Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub step: u32,
    pub kind: EffectKind,
    pub attempts: u32,
    pub last_error: String,
    /// When the runtime should (re)try it; scheduled effects are due at once.
    pub retry_at_ms: i64,
}

/// The whole case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnCase {
    /// 0 until opened.
    pub version: u64,
    pub return_id: String,
    pub order_ref: String,
    pub customer_ref: String,
    pub channel: String,
    pub requester: Option<Requester>,
    pub state: Option<ReturnState>,
    /// The active state the case was in when processed; a reopened case
    /// returns to it.
    pub state_before_processing: Option<ReturnState>,
    pub policy: ReturnPolicy,
    pub order_lines: BTreeMap<String, OrderLine>,
    pub lines: BTreeMap<String, ReturnLine>,
    pub label: Option<Label>,
    pub milestones: BTreeMap<String, i64>,
    pub ship_by_ms: Option<i64>,
    pub exchanges: Vec<ExchangeHold>,
    pub refunds: Vec<Refund>,
    pub manual_refund_approved_by: Option<String>,
    pub erp_credit_memo: Option<String>,
    pub exceptions: Vec<CaseException>,
    /// Effects scheduled and not yet completed, by step.
    pub pending_effects: BTreeMap<u32, Effect>,
    pub next_step: u32,
    pub opened_at_ms: i64,
    pub processed_at_ms: Option<i64>,
    pub closed_at_ms: Option<i64>,
    pub decline_reason: Option<String>,
}

impl ReturnCase {
    pub fn milestone(&self, milestone: Milestone) -> Option<i64> {
        self.milestones.get(milestone_name(milestone)).copied()
    }

    pub fn open_exceptions(&self) -> impl Iterator<Item = &CaseException> {
        self.exceptions
            .iter()
            .filter(|e| e.resolved_at_ms.is_none())
    }

    pub fn has_open_exception(&self, kind: ExceptionKind) -> bool {
        self.open_exceptions().any(|e| e.kind == kind)
    }

    /// Whether the case's refund is held by the ERP gate and no credit memo
    /// is confirmed yet: what the node's ERP worker posts a credit memo
    /// request for (it also stops while an `ErpRefused` exception is open).
    pub fn awaits_erp(&self) -> bool {
        self.policy.refund_gate == RefundGate::ErpValidation
            && self.erp_credit_memo.is_none()
            && self
                .refunds
                .iter()
                .any(|refund| refund.state == RefundState::PendingGate)
            && !self.state.is_some_and(ReturnState::is_terminal)
    }

    /// The earliest time the case must be woken: a pending effect to retry,
    /// the ship-by date, a receipt or ERP confirmation overdue.
    pub fn next_timer_ms(&self) -> Option<i64> {
        let mut due: Vec<i64> = self
            .pending_effects
            .values()
            .map(|e| e.retry_at_ms)
            .collect();
        match self.state {
            Some(ReturnState::Approved) if self.milestone(Milestone::InTransit).is_none() => {
                due.extend(self.ship_by_ms);
            }
            _ => {}
        }
        if let Some(delivered) = self.milestone(Milestone::Delivered) {
            if self.lines.values().all(|l| l.received == 0)
                && !self.has_open_exception(ExceptionKind::ReceiptOverdue)
                && !self.state.is_some_and(ReturnState::is_terminal)
            {
                due.push(delivered + i64::from(self.policy.receipt_overdue_hours) * 3_600_000);
            }
        }
        if self.policy.refund_gate == RefundGate::ErpValidation
            && self.erp_credit_memo.is_none()
            && !self.has_open_exception(ExceptionKind::ErpConfirmationOverdue)
        {
            if let Some(processed) = self.processed_at_ms {
                due.push(processed + i64::from(self.policy.erp_overdue_hours) * 3_600_000);
            }
        }
        due.into_iter().min()
    }
}

pub(crate) fn milestone_name(milestone: Milestone) -> &'static str {
    match milestone {
        Milestone::LabelCreated => "label_created",
        Milestone::InTransit => "in_transit",
        Milestone::OutForDelivery => "out_for_delivery",
        Milestone::Delivered => "delivered",
    }
}

/// A line of a request to open a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedLine {
    pub order_line_id: String,
    pub quantity: i64,
    pub reason_code: String,
    pub resolution: Resolution,
    /// For EXCHANGE: the replacement SKU (at the order line's location).
    pub exchange_sku: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeclineReason {
    WindowEnded,
    FinalSale,
    Policy,
    Fraud,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedLine {
    pub line_id: String,
    pub quantity: i64,
    /// Empty: the order line's location.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectedLine {
    pub line_id: String,
    pub quantity: i64,
    pub grade: Grade,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnCommand {
    /// Customer request (`pre_approved = false`) or agent/API creation
    /// (`pre_approved = true`).
    Open {
        order_ref: String,
        customer_ref: String,
        channel: String,
        requester: Requester,
        order_lines: Vec<OrderLine>,
        lines: Vec<RequestedLine>,
        pre_approved: bool,
        /// Agents may accept a return outside the window.
        override_window: bool,
        policy: ReturnPolicy,
    },
    FlagForReview {
        reason: String,
    },
    Approve {
        approved_by: String,
    },
    Decline {
        reason: DeclineReason,
        note: String,
    },
    AttachLabel {
        label: Label,
    },
    CarrierMilestone {
        milestone: Milestone,
        at_ms: i64,
    },
    Receive {
        lines: Vec<ReceivedLine>,
        accept_surplus: bool,
    },
    Inspect {
        lines: Vec<InspectedLine>,
    },
    Dispose {
        line_id: String,
        quantity: i64,
        disposition: Disposition,
    },
    Process {
        method: RefundMethod,
    },
    ApproveRefund {
        approved_by: String,
    },
    ConfirmErp {
        credit_memo: String,
    },
    Close,
    Reopen {
        reason: String,
    },
    Cancel {
        reason: String,
    },
    ResolveException {
        exception_id: u32,
        resolved_by: String,
        note: String,
    },
    /// The runtime reports an effect's result.
    CompleteEffect {
        step: u32,
        outcome: EffectOutcome,
        error: String,
    },
    /// The runtime's timer: expire, raise overdue exceptions.
    Tick,
    /// The node's ERP worker reports what it found (docs/erp.md); the
    /// credit memo itself arrives as `ConfirmErp`.
    ErpReport {
        report: ErpReport,
    },
}

/// What the node's ERP worker tells a case waiting for the ERP gate: raised
/// as an exception the finance team owns, so an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErpReport {
    /// The ERP has not posted the credit memo within the node's timeout.
    Overdue { note: String },
    /// The ERP refused the credit memo request for good.
    Refused { code: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnEvent {
    Opened {
        return_id: String,
        order_ref: String,
        customer_ref: String,
        channel: String,
        requester: Requester,
        order_lines: Vec<OrderLine>,
        lines: Vec<ReturnLine>,
        exchanges: Vec<ExchangeHold>,
        policy: ReturnPolicy,
        state: ReturnState,
        at_ms: i64,
    },
    FlaggedForReview {
        reason: String,
    },
    Approved {
        ship_by_ms: i64,
        at_ms: i64,
    },
    Declined {
        reason: DeclineReason,
        note: String,
    },
    LabelAttached {
        label: Label,
        at_ms: i64,
    },
    MilestoneReached {
        milestone: Milestone,
        at_ms: i64,
    },
    ItemsReceived {
        line_id: String,
        quantity: i64,
        location: String,
    },
    ItemsInspected {
        line_id: String,
        quantity: i64,
        grade: Grade,
    },
    ItemsDisposed {
        line_id: String,
        quantity: i64,
        disposition: Disposition,
    },
    StateChanged {
        from: ReturnState,
        to: ReturnState,
    },
    RefundDecided {
        refund: Refund,
    },
    RefundReleased {
        refund_id: String,
        at_ms: i64,
    },
    RefundManuallyApproved {
        approved_by: String,
    },
    ErpConfirmed {
        credit_memo: String,
    },
    Closed {
        at_ms: i64,
    },
    Reopened {
        to: ReturnState,
        reason: String,
    },
    Canceled {
        reason: String,
    },
    Expired {
        at_ms: i64,
    },
    ExceptionRaised {
        exception: CaseException,
    },
    ExceptionResolved {
        exception_id: u32,
        resolved_by: String,
        note: String,
        at_ms: i64,
    },
    ExchangeUpdated {
        line_id: String,
        state: ExchangeState,
    },
    EffectScheduled {
        effect: Effect,
    },
    EffectCompleted {
        step: u32,
        outcome: EffectOutcome,
    },
    EffectFailed {
        step: u32,
        error: String,
        retry_at_ms: i64,
    },
}

impl ReturnEvent {
    /// The event's name for consumers (the event names of docs/domain.md).
    pub fn name(&self) -> &'static str {
        match self {
            ReturnEvent::Opened {
                requester: Requester::Customer,
                ..
            } => "return.requested",
            ReturnEvent::Opened { .. } => "return.created",
            ReturnEvent::FlaggedForReview { .. } => "return.flagged_for_review",
            ReturnEvent::Approved { .. } => "return.approved",
            ReturnEvent::Declined { .. } => "return.declined",
            ReturnEvent::LabelAttached { .. } => "return.label.created",
            ReturnEvent::MilestoneReached { milestone, .. } => match milestone {
                Milestone::LabelCreated => "return.label.created",
                Milestone::InTransit => "return.shipment.in_transit",
                Milestone::OutForDelivery => "return.shipment.out_for_delivery",
                Milestone::Delivered => "return.shipment.delivered",
            },
            ReturnEvent::ItemsReceived { .. } => "return.items.received",
            ReturnEvent::ItemsInspected { .. } => "return.items.inspected",
            ReturnEvent::ItemsDisposed { .. } => "return.items.disposed",
            ReturnEvent::StateChanged { .. } => "return.state_changed",
            ReturnEvent::RefundDecided { .. } => "return.refund.pending_gate",
            ReturnEvent::RefundReleased { .. } => "return.refund.released",
            ReturnEvent::RefundManuallyApproved { .. } => "return.refund.manually_approved",
            ReturnEvent::ErpConfirmed { .. } => "return.erp.confirmed",
            ReturnEvent::Closed { .. } => "return.closed",
            ReturnEvent::Reopened { .. } => "return.reopened",
            ReturnEvent::Canceled { .. } => "return.canceled",
            ReturnEvent::Expired { .. } => "return.expired",
            ReturnEvent::ExceptionRaised { .. } => "return.exception.raised",
            ReturnEvent::ExceptionResolved { .. } => "return.exception.resolved",
            ReturnEvent::ExchangeUpdated { state, .. } => match state {
                ExchangeState::Requested => "return.exchange.requested",
                ExchangeState::Held => "return.exchange.reserved",
                ExchangeState::OutOfStock => "return.exchange.out_of_stock",
                ExchangeState::Released => "return.exchange.released",
                ExchangeState::Confirmed => "return.exchange.confirmed",
            },
            ReturnEvent::EffectScheduled { .. } => "return.step.scheduled",
            ReturnEvent::EffectCompleted { .. } => "return.step.completed",
            ReturnEvent::EffectFailed { .. } => "return.step.failed",
        }
    }
}

/// One accepted command in the case's journal (its history).
pub type ReturnEntry = crate::journal::JournalEntry<ReturnEvent>;
