//! `--subscribers N`: event-stream subscribers beside the load, and the
//! delivery lag they see.
//!
//! Every accepted change writes its events (the outbox) in the same durable
//! commit (issue 12). Two questions follow for a benchmark: what that costs
//! the writers, and how soon a subscriber sees a change. The first is the
//! normal ok/s and CPU per OK against a node without events; this module
//! answers the second. Before the load starts it opens N subscriptions
//! `from: now`, each on its own HTTP/2 connection (a real consumer is
//! another process, and its stream should not queue behind the callers'
//! requests on their connections), and for every event received in the
//! measured window records
//!
//! ```text
//! lag = this machine's wall clock at receipt - event.recorded_at_ms
//! ```
//!
//! On one node `recorded_at_ms` is this machine's wall clock too, so no
//! skew enters. It has millisecond resolution (stamped when the commit is
//! put together, before its fsync) and the receipt time is read in
//! microseconds: a lag reads up to 1 ms longer than it was, never shorter.
//! The subscribers run on the generator's own runtime, so the lag includes
//! the time a received message waits for a generator thread: on cores the
//! generator shares with the node that is part of what a consumer there
//! would see.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use skuld_benches::stats::{histogram, Percentiles};
use skuld_proto::v1 as pb;
use skuld_proto::v1::event_service_client::EventServiceClient;
use tonic::transport::Channel;
use tonic::Streaming;

use super::drive::record_micros;

/// The measured window, by this process's monotonic clock: events received
/// before `from` (warmup) or after `to` do not count.
#[derive(Debug, Clone, Copy)]
pub(super) struct MeasuredWindow {
    pub(super) from: Instant,
    pub(super) to: Instant,
}

/// Subscriptions opened and positioned at `now`, not yet read.
pub(super) struct OpenedSubscribers {
    streams: Vec<Streaming<pb::SubscribeResponse>>,
}

/// The subscribers' tasks, reading until the window ends.
pub(super) struct RunningSubscribers {
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

/// What one subscriber saw in the measured window.
struct Tally {
    events: u64,
    /// Delivery lag per event, in microseconds.
    lag: Histogram<u64>,
    /// Events stamped after their receipt by this machine's clock (only
    /// possible when the node's clock is not this one's).
    ahead_of_clock: u64,
    /// Why the stream ended before the window did, if it did.
    ended: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            events: 0,
            lag: histogram(),
            ahead_of_clock: 0,
            ended: None,
        }
    }

    /// One event received at `received_unix_us`.
    fn record(&mut self, received_unix_us: i64, recorded_at_ms: i64) {
        self.events += 1;
        match lag_micros(received_unix_us, recorded_at_ms) {
            Some(lag) => record_micros(&mut self.lag, Duration::from_micros(lag)),
            None => self.ahead_of_clock += 1,
        }
    }
}

/// The subscribers' part of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct SubscriberReport {
    pub(super) subscribers: usize,
    /// Events received in the measured window, fewest and most of any one
    /// subscriber (every subscriber gets every event: they should agree).
    pub(super) events_min: u64,
    pub(super) events_max: u64,
    pub(super) events_total: u64,
    /// Delivery lag over all subscribers' events (`count` is the events
    /// whose lag was recorded).
    pub(super) lag: Percentiles,
    pub(super) ahead_of_clock: u64,
    /// Subscribers whose stream ended early, and why.
    pub(super) errors: Vec<String>,
}

/// Delivery lag in microseconds: receipt (unix us) minus the commit stamp
/// (unix ms). None when the stamp is later than the receipt.
fn lag_micros(received_unix_us: i64, recorded_at_ms: i64) -> Option<u64> {
    let recorded_us = recorded_at_ms.checked_mul(1_000)?;
    u64::try_from(received_unix_us.checked_sub(recorded_us)?).ok()
}

/// This machine's wall clock in unix microseconds.
fn wall_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

/// Opens `count` subscriptions from `now`, subscriber i on its own
/// connection to endpoint i (round robin over a cluster's endpoints). It
/// returns once the node has answered every one, that is once each has its
/// starting position: events of load sent after this are all delivered.
pub(super) async fn open_subscribers(
    endpoints: &str,
    tls_ca_file: Option<&std::path::Path>,
    count: usize,
) -> anyhow::Result<OpenedSubscribers> {
    let endpoints: Vec<&str> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .collect();
    let mut streams = Vec::with_capacity(count);
    for index in 0..count {
        let endpoint = endpoints
            .get(index % endpoints.len().max(1))
            .context("no endpoint to subscribe to")?;
        let channel: Channel = super::open_channel(endpoint, tls_ca_file)
            .await
            .with_context(|| format!("subscriber {index}"))?;
        let request = pb::SubscribeRequest {
            from: Some(pb::subscribe_request::From::Now(true)),
            filter: None,
            subscriber: format!("bench-{index}"),
            max_batch: 0,
        };
        let stream = EventServiceClient::new(channel)
            .subscribe(request)
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "subscriber {index}: Subscribe at {endpoint} failed: {} {}",
                    skuld_proto::code_name(status.code()),
                    status.message()
                )
            })?
            .into_inner();
        streams.push(stream);
    }
    Ok(OpenedSubscribers { streams })
}

impl OpenedSubscribers {
    /// Starts reading; each task stops on its own when the window ends.
    pub(super) fn start(self, window: MeasuredWindow) -> RunningSubscribers {
        RunningSubscribers {
            tasks: self
                .streams
                .into_iter()
                .map(|stream| tokio::spawn(receive(stream, window)))
                .collect(),
        }
    }
}

impl RunningSubscribers {
    /// Waits for every subscriber (each ends with the window at the latest).
    pub(super) async fn finish(self) -> SubscriberReport {
        let mut tallies = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            tallies.push(task.await.unwrap_or_else(|error| {
                let mut tally = Tally::new();
                tally.ended = Some(format!("subscriber task failed: {error}"));
                tally
            }));
        }
        summarize(&tallies)
    }
}

/// Reads one subscription until the window ends (or the stream does).
async fn receive(mut stream: Streaming<pb::SubscribeResponse>, window: MeasuredWindow) -> Tally {
    let mut tally = Tally::new();
    loop {
        // The deadline ends the task at the window's end even when no
        // message comes; dropping the stream then cancels the call.
        let message = match tokio::time::timeout_at(window.to.into(), stream.message()).await {
            Err(_window_over) => break,
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => {
                tally.ended = Some("the node ended the stream".to_owned());
                break;
            }
            Ok(Err(status)) => {
                tally.ended = Some(format!(
                    "{}: {}",
                    skuld_proto::code_name(status.code()),
                    status.message()
                ));
                break;
            }
        };
        // One reading for the whole message: its events arrived together.
        let received = Instant::now();
        let received_unix_us = wall_unix_us();
        if received >= window.to {
            break;
        }
        if received < window.from {
            continue;
        }
        for event in &message.events {
            tally.record(received_unix_us, event.recorded_at_ms);
        }
    }
    tally
}

fn summarize(tallies: &[Tally]) -> SubscriberReport {
    let mut lag = histogram();
    for tally in tallies {
        let _ = lag.add(&tally.lag);
    }
    SubscriberReport {
        subscribers: tallies.len(),
        events_min: tallies.iter().map(|t| t.events).min().unwrap_or(0),
        events_max: tallies.iter().map(|t| t.events).max().unwrap_or(0),
        events_total: tallies.iter().map(|t| t.events).sum(),
        lag: Percentiles::of(&lag),
        ahead_of_clock: tallies.iter().map(|t| t.ahead_of_clock).sum(),
        errors: tallies
            .iter()
            .enumerate()
            .filter_map(|(index, t)| {
                t.ended
                    .as_ref()
                    .map(|why| format!("subscriber {index}: {why}"))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_receipt_minus_stamp_and_refuses_a_stamp_in_the_future() {
        // Received 12.345 ms after the millisecond the commit was stamped in.
        assert_eq!(
            lag_micros(1_700_000_000_012_345, 1_700_000_000_000),
            Some(12_345)
        );
        assert_eq!(lag_micros(5_000, 5), Some(0));
        assert_eq!(lag_micros(4_999, 5), None);
        assert_eq!(lag_micros(0, i64::MAX), None);
    }

    #[test]
    fn summary_spans_subscribers() {
        let mut first = Tally::new();
        first.record(10_000, 9); // 1 ms
        first.record(12_000, 9); // 3 ms
        first.record(8_000, 9); // ahead of the clock
        let mut second = Tally::new();
        second.record(30_000, 9); // 21 ms
        second.ended = Some("UNAVAILABLE: node is shutting down".to_owned());
        let report = summarize(&[first, second]);
        assert_eq!(report.subscribers, 2);
        assert_eq!((report.events_min, report.events_max), (1, 3));
        assert_eq!(report.events_total, 4);
        assert_eq!(report.ahead_of_clock, 1);
        assert_eq!(report.lag.count, 3);
        assert!((report.lag.max_ms - 21.0).abs() < 0.05, "{:?}", report.lag);
        assert!((report.lag.p50_ms - 3.0).abs() < 0.01, "{:?}", report.lag);
        assert_eq!(
            report.errors,
            vec!["subscriber 1: UNAVAILABLE: node is shutting down".to_owned()]
        );
        assert_eq!(summarize(&[]).events_min, 0);
    }
}
