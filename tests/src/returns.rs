//! A return case driven through the gRPC API by the tests: its key, a
//! fresh idempotency key per call, and the open request of a two-line
//! order.

use skuld_cluster::now_ms;
use skuld_proto::v1 as pb;

pub fn rkey(tenant: &str, return_id: &str) -> Option<pb::ReturnKey> {
    Some(pb::ReturnKey {
        tenant: tenant.into(),
        return_id: return_id.into(),
    })
}

pub struct Case {
    pub tenant: String,
    pub return_id: String,
    pub step: u32,
    /// Fixed per case so that a retried open is the same request.
    pub delivered_at_ms: i64,
}

impl Case {
    pub fn new(tenant: &str, return_id: &str) -> Self {
        Self {
            tenant: tenant.into(),
            return_id: return_id.into(),
            step: 0,
            delivered_at_ms: now_ms(),
        }
    }

    /// A header with a fresh idempotency key per call.
    pub fn header(&mut self) -> Option<pb::ReturnHeader> {
        self.step += 1;
        Some(pb::ReturnHeader {
            key: rkey(&self.tenant, &self.return_id),
            idempotency_key: format!("{}-{}", self.return_id, self.step),
            expected_version: None,
        })
    }

    /// Opens a return of 3 of the order's 4 shirts (line L1), and with
    /// `exchange` 1 shoe (L2) exchanged for a red one.
    pub fn open(&mut self, exchange: bool) -> pb::OpenReturnRequest {
        let now = self.delivered_at_ms;
        let line = |id: &str, sku: &str, quantity, paid| pb::OrderLine {
            line_id: id.into(),
            sku: sku.into(),
            quantity,
            amount_paid_minor: paid,
            fulfilled_at_unix_ms: now,
            delivered_at_unix_ms: now,
            location: "DC1".into(),
        };
        let mut lines = vec![pb::RequestedLine {
            order_line_id: "L1".into(),
            quantity: 3,
            reason_code: "too_small".into(),
            resolution: pb::Resolution::RefundOriginal.into(),
            exchange_sku: String::new(),
        }];
        if exchange {
            lines.push(pb::RequestedLine {
                order_line_id: "L2".into(),
                quantity: 1,
                reason_code: "wrong_color".into(),
                resolution: pb::Resolution::Exchange.into(),
                exchange_sku: "SHOE-RED".into(),
            });
        }
        pb::OpenReturnRequest {
            header: self.header(),
            order_ref: format!("O-{}", self.return_id),
            customer_ref: "C1".into(),
            channel: "web".into(),
            order_lines: vec![line("L1", "SHIRT", 4, 12_000), line("L2", "SHOE", 1, 9_000)],
            lines,
            override_window: false,
        }
    }
}

/// The requests of the lifecycle's steps, each with a fresh header.
impl Case {
    pub fn approve(&mut self) -> pb::ApproveReturnRequest {
        pb::ApproveReturnRequest {
            header: self.header(),
            approved_by: "agent-7".into(),
        }
    }

    pub fn label(&mut self) -> pb::AttachLabelRequest {
        pb::AttachLabelRequest {
            header: self.header(),
            carrier: "ups".into(),
            tracking_number: "1Z999".into(),
            label_url: String::new(),
        }
    }

    pub fn milestone(&mut self, milestone: pb::CarrierMilestone) -> pb::RecordCarrierEventRequest {
        pb::RecordCarrierEventRequest {
            header: self.header(),
            milestone: milestone.into(),
            at_unix_ms: 0,
        }
    }

    /// `quantity` units of line L1 arrive at the line's location.
    pub fn receive(&mut self, quantity: i64) -> pb::ReceiveItemsRequest {
        pb::ReceiveItemsRequest {
            header: self.header(),
            lines: vec![pb::ReceivedLine {
                line_id: "L1".into(),
                quantity,
                location: String::new(),
            }],
            accept_surplus: false,
        }
    }

    /// Line L1 inspected: `sellable` units grade A, `unsellable` units
    /// unsellable (an exception for the warehouse).
    pub fn inspect(&mut self, sellable: i64, unsellable: i64) -> pb::InspectItemsRequest {
        pb::InspectItemsRequest {
            header: self.header(),
            lines: vec![
                pb::InspectedLine {
                    line_id: "L1".into(),
                    quantity: sellable,
                    grade: pb::Grade::A.into(),
                },
                pb::InspectedLine {
                    line_id: "L1".into(),
                    quantity: unsellable,
                    grade: pb::Grade::Unsellable.into(),
                },
            ],
        }
    }

    pub fn dispose(
        &mut self,
        quantity: i64,
        disposition: pb::Disposition,
    ) -> pb::DisposeItemsRequest {
        pb::DisposeItemsRequest {
            header: self.header(),
            line_id: "L1".into(),
            quantity,
            disposition: disposition.into(),
        }
    }

    pub fn process(&mut self) -> pb::ProcessReturnRequest {
        pb::ProcessReturnRequest {
            header: self.header(),
            method: pb::RefundMethod::OriginalPayment.into(),
        }
    }
}
