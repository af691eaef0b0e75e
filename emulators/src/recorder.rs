//! What each emulator saw: every request with its status, and the counters
//! connector tests assert on, above all the budget violations (requests the
//! emulator refused for a rate limit; "no emulator budget was exceeded" in the
//! issue's tests means this counter stayed at zero).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Bodies longer than this are cut in the record (a feed can be megabytes).
const RECORDED_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordedRequest {
    /// Order of arrival, from 0.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The body as text (lossy UTF-8), cut at 64 KiB.
    pub body: String,
    pub status: u16,
    /// Refused for a rate limit (Shopify's THROTTLED comes with HTTP 200).
    pub throttled: bool,
    /// Answered by an injected fault (5xx) instead of the emulator.
    pub fault_injected: bool,
    /// The reply was dropped after the request was applied.
    pub reply_dropped: bool,
    /// Milliseconds since the emulator started.
    pub at_ms: u64,
    /// Wall-clock time, Unix milliseconds.
    pub unix_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    /// Requests refused for a rate limit: the budget violations.
    pub throttled: u64,
    pub faults_injected: u64,
    pub replies_dropped: u64,
    pub duplicates_applied: u64,
}

#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    requests: Mutex<Vec<RecordedRequest>>,
    next_seq: AtomicU64,
    throttled: AtomicU64,
    faults_injected: AtomicU64,
    replies_dropped: AtomicU64,
    duplicates_applied: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// The parts of a finished request the recorder keeps.
#[derive(Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub status: u16,
    pub throttled: bool,
    pub fault_injected: bool,
    pub reply_dropped: bool,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            replies_dropped: AtomicU64::new(0),
            duplicates_applied: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, exchange: Exchange<'_>) {
        if exchange.throttled {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        if exchange.fault_injected {
            self.faults_injected.fetch_add(1, Ordering::Relaxed);
        }
        if exchange.reply_dropped {
            self.replies_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let body = &exchange.body[..exchange.body.len().min(RECORDED_BODY_LIMIT)];
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        let mut requests = self.requests.lock();
        requests.push(RecordedRequest {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            method: exchange.method.to_owned(),
            path: exchange.path.to_owned(),
            query: exchange.query.map(str::to_owned),
            body: String::from_utf8_lossy(body).into_owned(),
            status: exchange.status,
            throttled: exchange.throttled,
            fault_injected: exchange.fault_injected,
            reply_dropped: exchange.reply_dropped,
            at_ms: self.started.elapsed().as_millis() as u64,
            unix_ms,
        });
    }

    pub(crate) fn count_duplicate(&self) {
        self.duplicates_applied.fetch_add(1, Ordering::Relaxed);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().clone()
    }

    /// The requests whose path contains `fragment`.
    pub fn requests_to(&self, fragment: &str) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .iter()
            .filter(|request| request.path.contains(fragment))
            .cloned()
            .collect()
    }

    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.next_seq.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            faults_injected: self.faults_injected.load(Ordering::Relaxed),
            replies_dropped: self.replies_dropped.load(Ordering::Relaxed),
            duplicates_applied: self.duplicates_applied.load(Ordering::Relaxed),
        }
    }

    /// Requests refused for a rate limit; zero means no budget was exceeded.
    pub fn budget_violations(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Forgets the requests and zeroes the counters.
    pub fn clear(&self) {
        self.requests.lock().clear();
        self.next_seq.store(0, Ordering::Relaxed);
        self.throttled.store(0, Ordering::Relaxed);
        self.faults_injected.store(0, Ordering::Relaxed);
        self.replies_dropped.store(0, Ordering::Relaxed);
        self.duplicates_applied.store(0, Ordering::Relaxed);
    }
}
