//! The node-wide bound on admitted requests, shared by every entity kind:
//! writes (reservations, refunds, adjustments) are admitted before reads
//! when the node is saturated, and a full node refuses at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use crate::Error;

/// The node-wide bound on admitted requests, shared by every entity kind.
pub struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// Reads are admitted only below this percentage of `max_in_flight`, so
    /// that reservations, refunds and adjustments win when saturated.
    read_admission_percent: usize,
    pub(crate) retry_after: Duration,
    accepting: AtomicBool,
}

#[derive(Clone, Copy)]
pub(crate) enum Priority {
    Write,
    Read,
}

/// Releases a request's admission slots when it is answered or abandoned.
pub(crate) struct Admitted<'a> {
    in_flight: &'a AtomicUsize,
    slots: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let now = self.in_flight.fetch_sub(self.slots, Ordering::AcqRel) - self.slots;
        metrics::gauge!("skuld_inflight_requests").set(now as f64);
    }
}

/// Reads of one multi-key request (GetAvailability) run at most this many at
/// a time, and the request holds that many admission slots: far below any
/// read bound, so no request is refused by a bound it alone exceeds.
pub const READ_FAN_OUT: usize = 16;

impl Admission {
    pub fn new(max_in_flight: usize, read_admission_percent: usize, retry_after: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            read_admission_percent,
            retry_after,
            accepting: AtomicBool::new(true),
        }
    }

    pub(crate) fn overloaded(&self, queue: &'static str) -> Error {
        metrics::counter!("skuld_rejections_total", "queue" => queue).increment(1);
        self.refusal(queue)
    }

    /// What an overloaded node answers (RESOURCE_EXHAUSTED with this
    /// node's retry hint at the API edge), not counted: for the load
    /// shedding in front of the API, which builds its answer once and
    /// counts each refusal itself.
    pub fn refusal(&self, queue: &'static str) -> Error {
        Error::Overloaded {
            queue: queue.into(),
            retry_after_ms: u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Requests admitted at once at most (writes; reads fewer).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub(crate) fn admit(&self, priority: Priority) -> Result<Admitted<'_>, Error> {
        self.admit_slots(priority, 1)
    }

    /// Admits a request that holds `slots` slots. It is refused only when
    /// the node is busy with others: a request alone on an idle node is
    /// always admitted, whatever its size.
    pub(crate) fn admit_slots(
        &self,
        priority: Priority,
        slots: usize,
    ) -> Result<Admitted<'_>, Error> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::Unavailable("node is draining".into()));
        }
        let limit = match priority {
            Priority::Write => self.max_in_flight,
            Priority::Read => self.max_in_flight * self.read_admission_percent / 100,
        };
        let slots = slots.clamp(1, limit.max(1));
        let before = self.in_flight.fetch_add(slots, Ordering::AcqRel);
        let admitted = Admitted {
            in_flight: &self.in_flight,
            slots,
        };
        if before > 0 && before + slots > limit {
            return Err(self.overloaded("node"));
        }
        metrics::gauge!("skuld_inflight_requests").set((before + slots) as f64);
        Ok(admitted)
    }

    /// Requests currently admitted.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops admitting and waits up to `timeout` for admitted requests.
    pub async fn drain(&self, timeout: Duration) {
        self.accepting.store(false, Ordering::Release);
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
