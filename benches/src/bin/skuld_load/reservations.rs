//! Reserve-only workloads: spread, hot, zipf, overload.

use super::*;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use skuld_benches::pick::Picker;
use skuld_proto::v1 as pb;

pub(super) struct Reservations {
    pub(super) clients: Arc<Clients>,
    pub(super) run: String,
    pub(super) positions: Vec<pb::PositionKey>,
    pub(super) picker: Picker,
    /// Sum of granted quantities of OK replies, per position.
    pub(super) acknowledged: Vec<AtomicI64>,
    /// Reservations with an unknown outcome, per position.
    pub(super) unknown: Vec<AtomicI64>,
    /// Key numbers of the acknowledged reservations, per position, to name
    /// the missing ones when a check fails.
    pub(super) acknowledged_keys: Vec<Mutex<Vec<u64>>>,
    /// OK replies marked `replayed`: impossible with unique keys.
    pub(super) replayed: AtomicU64,
    /// Idempotency keys are numbered across every phase of a run.
    pub(super) next_key: AtomicU64,
}

impl Reservations {
    pub(super) fn new(clients: &Arc<Clients>, args: &Args, run: &str, picker: Picker) -> Self {
        let count = picker.positions();
        let positions: Vec<pb::PositionKey> = if count == 1 {
            vec![pkey(&args.tenant, &format!("{run}-hot"), "DC1")]
        } else {
            (0..count)
                .map(|i| pkey(&args.tenant, &format!("{run}-sku-{i}"), "DC1"))
                .collect()
        };
        Self {
            clients: Arc::clone(clients),
            run: run.to_owned(),
            positions,
            picker,
            acknowledged: (0..count).map(|_| AtomicI64::new(0)).collect(),
            unknown: (0..count).map(|_| AtomicI64::new(0)).collect(),
            acknowledged_keys: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
            replayed: AtomicU64::new(0),
            next_key: AtomicU64::new(0),
        }
    }

    pub(super) fn key(&self, number: u64) -> String {
        format!("{}-r{number}", self.run)
    }
}

impl Workload for Reservations {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let index = self.picker.pick(&mut rand::rng());
            let number = self.next_key.fetch_add(1, Ordering::Relaxed);
            let key = &self.positions[index];
            let request = reserve_request(key, self.key(number));
            let result = self
                .clients
                .on_position(caller, key, |mut client| {
                    let request = self.clients.request(request.clone());
                    async move { client.reserve(request).await }
                })
                .await;
            match result {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if reply.replayed {
                        self.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    self.acknowledged[index].fetch_add(reply.granted_quantity, Ordering::Relaxed);
                    self.acknowledged_keys[index].lock().push(number);
                    ("reserve", Ok(()))
                }
                Err(status) => {
                    if skuld_proto::retry::outcome_open(status.code()) {
                        self.unknown[index].fetch_add(1, Ordering::Relaxed);
                    }
                    ("reserve", Err(status))
                }
            }
        })
    }
}
