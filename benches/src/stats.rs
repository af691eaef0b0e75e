//! Latency and throughput recording.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to 60 s, 3 significant digits.
#[allow(clippy::expect_used)]
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What one caller (or the whole run) saw.
#[derive(Clone)]
pub struct Recorder {
    pub started_second: u64,
    pub latency: Histogram<u64>,
    pub by_operation: BTreeMap<&'static str, Histogram<u64>>,
    /// Per second of the run: (ok, errors, latency of ok requests).
    pub per_second: Vec<(u64, u64, Histogram<u64>)>,
    pub errors: BTreeMap<String, u64>,
    /// Latency of RESOURCE_EXHAUSTED answers.
    pub rejections: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            started_second: 0,
            latency: histogram(),
            by_operation: BTreeMap::new(),
            per_second: Vec::new(),
            errors: BTreeMap::new(),
            rejections: histogram(),
        }
    }
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 60_000_000)
}

impl Recorder {
    fn second(&mut self, second: usize) -> &mut (u64, u64, Histogram<u64>) {
        while self.per_second.len() <= second {
            self.per_second.push((0, 0, histogram()));
        }
        &mut self.per_second[second]
    }

    pub fn ok(&mut self, operation: &'static str, second: usize, latency: Duration) {
        let us = micros(latency);
        let _ = self.latency.record(us);
        let _ = self
            .by_operation
            .entry(operation)
            .or_insert_with(histogram)
            .record(us);
        let slot = self.second(second);
        slot.0 += 1;
        let _ = slot.2.record(us);
    }

    pub fn error(&mut self, code: &str, second: usize, latency: Duration) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
        if code == "ResourceExhausted" {
            let _ = self.rejections.record(micros(latency));
        }
        self.second(second).1 += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        let _ = self.rejections.add(&other.rejections);
        for (operation, recorded) in &other.by_operation {
            let _ = self
                .by_operation
                .entry(operation)
                .or_insert_with(histogram)
                .add(recorded);
        }
        for (index, (ok, errors, latency)) in other.per_second.iter().enumerate() {
            let slot = self.second(index);
            slot.0 += ok;
            slot.1 += errors;
            let _ = slot.2.add(latency);
        }
        for (code, count) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += count;
        }
    }

    pub fn ok_count(&self) -> u64 {
        self.latency.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondSample {
    pub second: usize,
    pub ok: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

pub fn series(recorder: &Recorder) -> Vec<SecondSample> {
    recorder
        .per_second
        .iter()
        .enumerate()
        .map(|(second, (ok, errors, latency))| SecondSample {
            second,
            ok: *ok,
            errors: *errors,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1_000.0,
        })
        .collect()
}

/// The open-loop timetable: the intended send time of request `index` at
/// `rate` requests per second. Latency is measured from this time, not from
/// when the request actually left, so a stalled server cannot hide its stall
/// (coordinated omission).
pub fn intended_offset(index: u64, rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(index as f64 / rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_requests_are_evenly_spaced() {
        assert_eq!(intended_offset(0, 1_000.0), Duration::ZERO);
        assert_eq!(intended_offset(500, 1_000.0), Duration::from_millis(500));
        assert_eq!(intended_offset(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn recorders_merge_counts_seconds_and_errors() {
        let mut a = Recorder::default();
        a.ok("reserve", 0, Duration::from_millis(2));
        a.error("ResourceExhausted", 1, Duration::from_micros(300));
        let mut b = Recorder::default();
        b.ok("reserve", 1, Duration::from_millis(4));
        b.ok("get", 2, Duration::from_millis(1));
        a.merge(&b);
        assert_eq!(a.ok_count(), 3);
        assert_eq!(a.error_count(), 1);
        assert_eq!(a.per_second.len(), 3);
        assert_eq!((a.per_second[1].0, a.per_second[1].1), (1, 1));
        assert_eq!(a.rejections.len(), 1);
        let p = Percentiles::of(&a.latency);
        assert!(p.p50_ms >= 1.9 && p.p50_ms <= 2.1, "{p:?}");
        assert!(p.max_ms >= 3.9);
    }
}
