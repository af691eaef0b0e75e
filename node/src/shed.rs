//! Load shedding in front of the client API: a call of a guarded service
//! (the inventory and returns APIs, whose calls the node admits) is refused
//! RESOURCE_EXHAUSTED with the node's retry hint, before its body is
//! decoded and before any handler, tracing span or authentication runs,
//! when the calls already past this layer are at the node's limit.
//!
//! Refused this early a call costs the node little more than its HTTP/2
//! frames, so an overloaded node keeps its CPU for the calls it accepted.
//! The limit is set by queue time, not by queue length alone: it starts at
//! `max_in_flight` and, every `interval`, shrinks when even the fastest call
//! that finished in that interval waited more than `target` (CoDel's test
//! for a standing queue: a burst drains within an interval, a queue that
//! never drains does not), and grows back when the fastest was within it.
//! A call's wait is its time in the node beyond the node's own pace: the
//! fastest call of any interval in the last [`FLOOR_HORIZON`] (the time an
//! unqueued call takes, one fsync of the group commit; BBR's minimum RTT),
//! so a slow disk is not taken for a queue. Accepted calls thus wait about
//! `target` at most, whatever the offered load; the excess is refused at
//! once instead of queueing.
//!
//! A refused call did nothing: no handler ran, so a retry with the same
//! idempotency key is its first attempt.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use futures::future::{BoxFuture, Either, Ready};
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

/// The limit never shrinks below this: a few calls are always admitted, so
/// the node keeps measuring how long calls take and can open up again.
const MIN_LIMIT: usize = 8;

/// The node's pace (the fastest call of an interval) is taken again after
/// this, so that a disk that became slower for good is learned, not taken
/// for a queue forever.
const FLOOR_HORIZON: Duration = Duration::from_secs(10);

/// How the limit follows queue time.
#[derive(Debug, Clone, Copy)]
pub struct ShedSettings {
    /// Calls past the layer at once at most (the node's `max_in_flight`).
    pub max_in_flight: usize,
    /// The queue-time target; zero: the limit stays at `max_in_flight`.
    pub target: Duration,
    /// The window over which the fastest call is compared with `target`.
    pub interval: Duration,
}

/// The shared state of every connection's copy of the layer.
pub struct Shedder {
    settings: ShedSettings,
    /// Guarded calls past the layer, not yet answered.
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Times are nanoseconds since `epoch`, so that they fit atomics.
    epoch: Instant,
    window_start: AtomicU64,
    /// The fastest call that finished in the current window.
    window_fastest: AtomicU64,
    /// The fastest call of any window since `floor_at`: the node's pace.
    floor: AtomicU64,
    floor_at: AtomicU64,
    /// `/package.Service/` of every guarded service.
    guarded: Vec<String>,
    /// The refusal's headers (a trailers-only gRPC response), built once:
    /// a refusal must cost next to nothing.
    refusal: HeaderMap,
    refused: metrics::Counter,
}

impl Shedder {
    /// `refusal`: the status every refused call gets (the admission's own,
    /// so that a client sees one kind of overload); `services`: the
    /// guarded services' full names (`skuld.v1.InventoryService`).
    pub fn new(settings: ShedSettings, refusal: tonic::Status, services: &[&str]) -> Arc<Self> {
        let settings = ShedSettings {
            max_in_flight: settings.max_in_flight.max(1),
            ..settings
        };
        Arc::new(Self {
            settings,
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(settings.max_in_flight),
            epoch: Instant::now(),
            window_start: AtomicU64::new(0),
            window_fastest: AtomicU64::new(u64::MAX),
            floor: AtomicU64::new(u64::MAX),
            floor_at: AtomicU64::new(0),
            guarded: services
                .iter()
                .map(|service| format!("/{service}/"))
                .collect(),
            refusal: refusal.into_http::<()>().into_parts().0.headers,
            refused: metrics::counter!("skuld_rejections_total", "queue" => "shed"),
        })
    }

    /// The current limit on guarded calls in flight.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    fn guards(&self, path: &str) -> bool {
        self.guarded.iter().any(|prefix| path.starts_with(prefix))
    }

    /// Lets a call through, or refuses it (`None`) at the limit.
    fn enter(self: &Arc<Self>) -> Option<Passed> {
        let limit = self.limit.load(Ordering::Relaxed);
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.refused.increment(1);
            return None;
        }
        Some(Passed {
            shedder: Arc::clone(self),
            since: Instant::now(),
        })
    }

    fn nanos_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A call that passed has been answered (or abandoned) after `took`.
    fn finished(&self, took: Duration) {
        let in_flight = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.settings.target.is_zero() {
            return;
        }
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.window_fastest.fetch_min(took, Ordering::AcqRel);
        let now = self.nanos_since_epoch();
        let start = self.window_start.load(Ordering::Acquire);
        let interval = u64::try_from(self.settings.interval.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) < interval
            || self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        // This call closed the window (one caller wins the exchange, so
        // the rest of this runs for one window at a time).
        let fastest = self.window_fastest.swap(u64::MAX, Ordering::AcqRel);
        let mut floor = self.floor.load(Ordering::Relaxed);
        let horizon = u64::try_from(FLOOR_HORIZON.as_nanos()).unwrap_or(u64::MAX);
        if fastest <= floor || now.saturating_sub(self.floor_at.load(Ordering::Relaxed)) > horizon {
            floor = fastest;
            self.floor.store(floor, Ordering::Relaxed);
            self.floor_at.store(now, Ordering::Relaxed);
        }
        let target = u64::try_from(self.settings.target.as_nanos()).unwrap_or(u64::MAX);
        let waited = fastest.saturating_sub(floor);
        let limit = self.limit.load(Ordering::Relaxed);
        let next = next_limit(
            limit,
            in_flight,
            waited > target,
            self.settings.max_in_flight,
        );
        if next != limit {
            self.limit.store(next, Ordering::Relaxed);
            metrics::gauge!("skuld_shed_limit").set(next as f64);
        }
    }
}

/// The limit after a window: a standing queue (even the fastest call over
/// the target) cuts it to three quarters of what was in flight, so that it
/// bites at once even when the limit was far above use; otherwise it grows
/// by an eighth, back to `max` within a few dozen windows.
fn next_limit(limit: usize, in_flight: usize, standing_queue: bool, max: usize) -> usize {
    if standing_queue {
        (limit.min(in_flight) * 3 / 4).max(MIN_LIMIT).min(max)
    } else {
        limit.saturating_add(limit / 8 + 1).min(max)
    }
}

/// A call past the layer; dropping it (answered, failed or abandoned by
/// the client) frees its place and reports how long it took.
struct Passed {
    shedder: Arc<Shedder>,
    since: Instant,
}

impl Drop for Passed {
    fn drop(&mut self) {
        self.shedder.finished(self.since.elapsed());
    }
}

/// Wraps the client API's services (`Server::builder().layer(...)`).
#[derive(Clone)]
pub struct ShedLayer {
    shedder: Arc<Shedder>,
}

impl ShedLayer {
    pub fn new(shedder: Arc<Shedder>) -> Self {
        Self { shedder }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            shedder: Arc::clone(&self.shedder),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    shedder: Arc<Shedder>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Shed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    #[allow(clippy::type_complexity)]
    type Future = Either<
        Ready<Result<Response<ResBody>, S::Error>>,
        Either<S::Future, BoxFuture<'static, Result<Response<ResBody>, S::Error>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.shedder.guards(request.uri().path()) {
            return Either::Right(Either::Left(self.inner.call(request)));
        }
        match self.shedder.enter() {
            None => {
                let mut refusal = Response::new(ResBody::default());
                *refusal.headers_mut() = self.shedder.refusal.clone();
                Either::Left(futures::future::ready(Ok(refusal)))
            }
            Some(passed) => {
                let answer = self.inner.call(request);
                Either::Right(Either::Right(Box::pin(async move {
                    let answer = answer.await;
                    drop(passed);
                    answer
                })))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_standing_queue_cuts_the_limit_to_what_was_in_flight() {
        assert_eq!(next_limit(512, 100, true, 512), 75);
        assert_eq!(next_limit(75, 80, true, 512), 56);
        assert_eq!(next_limit(10, 10, true, 512), MIN_LIMIT);
        assert_eq!(next_limit(4, 4, true, 4), 4, "never above max");
    }

    #[test]
    fn without_one_it_grows_back_to_max() {
        assert_eq!(next_limit(64, 64, false, 512), 73);
        assert_eq!(next_limit(500, 10, false, 512), 512);
        let mut limit = MIN_LIMIT;
        let mut windows = 0;
        while limit < 512 {
            limit = next_limit(limit, limit, false, 512);
            windows += 1;
        }
        assert!(windows <= 40, "{windows} windows to grow back");
    }

    fn shedder(max: usize, target_ms: u64) -> Arc<Shedder> {
        Shedder::new(
            ShedSettings {
                max_in_flight: max,
                target: Duration::from_millis(target_ms),
                interval: Duration::from_millis(1),
            },
            tonic::Status::resource_exhausted("overloaded"),
            &["skuld.v1.InventoryService"],
        )
    }

    #[test]
    fn refuses_at_the_limit_and_frees_places_when_answered() {
        let shedder = shedder(2, 0);
        let first = shedder.enter().unwrap();
        let _second = shedder.enter().unwrap();
        assert!(shedder.enter().is_none());
        drop(first);
        assert!(shedder.enter().is_some());
        assert!(shedder.guards("/skuld.v1.InventoryService/Reserve"));
        assert!(!shedder.guards("/grpc.health.v1.Health/Check"));
        assert!(!shedder.guards("/skuld.v1.InventoryServiceX/Reserve"));
    }

    /// `calls` enter together and leave one by one, the n-th after
    /// `n * step` (the later ones queued behind the first), each in a
    /// window of its own. The times are set, not slept: a loaded machine's
    /// sleep overshoots by milliseconds, which the test would take for a
    /// queue; only the windows' closing needs the real clock (2 ms apart,
    /// twice the interval).
    fn wave(shedder: &Arc<Shedder>, calls: usize, step: Duration) {
        let passed: Vec<_> = (0..calls).map(|_| shedder.enter().unwrap()).collect();
        for (n, mut call) in (1u32..).zip(passed) {
            std::thread::sleep(Duration::from_millis(2));
            call.since = Instant::now().checked_sub(step * n).unwrap();
            drop(call);
        }
    }

    #[test]
    fn a_queue_shrinks_the_limit_and_a_slow_pace_does_not() {
        let shedder = shedder(512, 1);
        // Alone, each call slow: that is the node's pace, not a queue.
        for _ in 0..5 {
            wave(&shedder, 1, Duration::from_millis(3));
        }
        assert_eq!(shedder.limit(), 512);
        // Calls queued behind one another: the fastest of a window waited.
        wave(&shedder, 100, Duration::from_millis(3));
        assert!(shedder.limit() < 100, "limit {}", shedder.limit());
    }
}
