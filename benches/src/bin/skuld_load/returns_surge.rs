//! The returns-surge workload: many return cases through their states.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use skuld_proto::v1 as pb;
use tonic::Code;

/// Return cases through create, receive, inspect, dispose (restock),
/// process, close; each caller drives one case at a time.
pub(super) struct ReturnsSurge {
    pub(super) clients: Arc<Clients>,
    pub(super) run: String,
    pub(super) tenant: String,
    /// Per caller: (case number, next step).
    pub(super) callers: Vec<Mutex<(u64, u8)>>,
    pub(super) closed: AtomicU64,
    /// Per caller: restocks acknowledged. Each caller's cases return its
    /// own SKU, so the surge spreads over as many positions as callers.
    pub(super) restocked: Vec<AtomicI64>,
    pub(super) uncertain: AtomicBool,
}

impl Workload for ReturnsSurge {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let slot = caller % self.callers.len();
            let (case, step) = *self.callers[slot].lock();
            let return_id = format!("{}-{slot}-{case}", self.run);
            let header = |name: &str| {
                Some(pb::ReturnHeader {
                    key: Some(pb::ReturnKey {
                        tenant: self.tenant.clone(),
                        return_id: return_id.clone(),
                    }),
                    idempotency_key: format!("{return_id}-{name}"),
                    expected_version: None,
                })
            };
            let mut client = self.clients.returns(caller);
            let r = &self.clients;
            let (name, result) = match step {
                0 => {
                    let request = pb::OpenReturnRequest {
                        header: header("open"),
                        order_ref: format!("order-{return_id}"),
                        customer_ref: String::new(),
                        channel: String::new(),
                        order_lines: vec![pb::OrderLine {
                            line_id: "L1".into(),
                            sku: format!("{}-SHIRT-{slot}", self.run),
                            quantity: 1,
                            amount_paid_minor: 2_500,
                            fulfilled_at_unix_ms: 0,
                            delivered_at_unix_ms: 0,
                            location: "DC1".into(),
                        }],
                        lines: vec![pb::RequestedLine {
                            order_line_id: "L1".into(),
                            quantity: 1,
                            reason_code: "size".into(),
                            resolution: pb::Resolution::RefundOriginal.into(),
                            exchange_sku: String::new(),
                        }],
                        override_window: true,
                    };
                    (
                        "create",
                        client.create_return(r.request(request)).await.map(drop),
                    )
                }
                1 => {
                    let request = pb::ReceiveItemsRequest {
                        header: header("receive"),
                        lines: vec![pb::ReceivedLine {
                            line_id: "L1".into(),
                            quantity: 1,
                            location: String::new(),
                        }],
                        accept_surplus: false,
                    };
                    (
                        "receive",
                        client.receive_items(r.request(request)).await.map(drop),
                    )
                }
                2 => {
                    let request = pb::InspectItemsRequest {
                        header: header("inspect"),
                        lines: vec![pb::InspectedLine {
                            line_id: "L1".into(),
                            quantity: 1,
                            grade: pb::Grade::A.into(),
                        }],
                    };
                    (
                        "inspect",
                        client.inspect_items(r.request(request)).await.map(drop),
                    )
                }
                3 => {
                    let request = pb::DisposeItemsRequest {
                        header: header("dispose"),
                        line_id: "L1".into(),
                        quantity: 1,
                        disposition: pb::Disposition::Restock.into(),
                    };
                    let result = client.dispose_items(r.request(request)).await.map(drop);
                    if result.is_ok() {
                        self.restocked[slot].fetch_add(1, Ordering::Relaxed);
                    }
                    ("dispose", result)
                }
                4 => {
                    let request = pb::ProcessReturnRequest {
                        header: header("process"),
                        method: pb::RefundMethod::OriginalPayment.into(),
                    };
                    (
                        "process",
                        client.process_return(r.request(request)).await.map(drop),
                    )
                }
                _ => (
                    "close",
                    client
                        .close_return(r.request(pb::CloseReturnRequest {
                            header: header("close"),
                        }))
                        .await
                        .map(drop),
                ),
            };
            match &result {
                Ok(()) => {
                    let mut state = self.callers[slot].lock();
                    if step >= 5 {
                        self.closed.fetch_add(1, Ordering::Relaxed);
                        *state = (case + 1, 0);
                    } else {
                        state.1 = step + 1;
                    }
                }
                // Close waits for the case's inventory steps: retried.
                Err(status) if status.code() == Code::FailedPrecondition && step == 5 => {}
                Err(status) => {
                    if skuld_proto::retry::outcome_open(status.code()) {
                        self.uncertain.store(true, Ordering::Relaxed);
                    }
                    // A retry of the same step reuses its idempotency key.
                }
            }
            (name, result)
        })
    }
}
