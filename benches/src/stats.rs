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

/// The per-second histograms (one per caller and second) only feed the
/// p99-over-time plot: two significant digits keep each about a tenth of
/// the size, so recording a reply does not stream hundreds of KiB of fresh,
/// zeroed counters through the cache of cores the node needs.
#[allow(clippy::expect_used)]
fn second_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
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
    /// The first message seen per error code (for diagnosis).
    pub error_samples: BTreeMap<String, String>,
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
            error_samples: BTreeMap::new(),
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
            self.per_second.push((0, 0, second_histogram()));
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
        if code == "RESOURCE_EXHAUSTED" {
            let _ = self.rejections.record(micros(latency));
        }
        self.second(second).1 += 1;
    }

    /// Keeps the first message seen for `code`.
    pub fn error_sample(&mut self, code: &str, message: &str) {
        if !self.error_samples.contains_key(code) {
            self.error_samples
                .insert(code.to_owned(), message.chars().take(200).collect());
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.merge_at(other, 0);
    }

    /// Merges `other` with its per-second series shifted by `offset`
    /// seconds (phases of one run laid end to end).
    pub fn merge_at(&mut self, other: &Recorder, offset: usize) {
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
            let slot = self.second(index + offset);
            slot.0 += ok;
            slot.1 += errors;
            let _ = slot.2.add(latency);
        }
        for (code, count) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += count;
        }
        for (code, message) in &other.error_samples {
            self.error_sample(code, message);
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

/// All operations whose name passes `keep`, merged (e.g. every operation
/// on the non-hot positions).
pub fn combined(recorder: &Recorder, keep: impl Fn(&str) -> bool) -> Histogram<u64> {
    let mut all = histogram();
    for (name, latency) in &recorder.by_operation {
        if keep(name) {
            let _ = all.add(latency);
        }
    }
    all
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuantilePoint {
    pub percentile: f64,
    pub ms: f64,
}

/// The latency at p0, then every quarter "nine" up to p99.99 (p43.8, p68.4,
/// p82.2, p90, ... p99, p99.44, p99.68, p99.82, p99.9, ...): enough to see
/// a second mode in the tail.
pub fn distribution(histogram: &Histogram<u64>) -> Vec<QuantilePoint> {
    (0..=16)
        .map(|step| {
            let quantile = 1.0 - 10f64.powf(-f64::from(step) / 4.0);
            QuantilePoint {
                percentile: (quantile * 1e6).round() / 1e4,
                ms: histogram.value_at_quantile(quantile) as f64 / 1_000.0,
            }
        })
        .collect()
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
    fn open_loop_schedule_is_fixed_whatever_the_answers() {
        // 250/s: request k is due at k * 4 ms; 1 s holds exactly 250.
        let due: Vec<_> = (0..)
            .map(|k| intended_offset(k, 250.0))
            .take_while(|offset| *offset < Duration::from_secs(1))
            .collect();
        assert_eq!(due.len(), 250);
        assert_eq!(due[1], Duration::from_millis(4));
        assert_eq!(due[249], Duration::from_millis(996));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latency = histogram();
        for ms in 1..=1_000u64 {
            latency.record(ms * 1_000).unwrap();
        }
        let p = Percentiles::of(&latency);
        assert_eq!(p.count, 1_000);
        let close = |value: f64, want: f64| (value - want).abs() <= want * 0.002;
        assert!(close(p.p50_ms, 500.0), "{p:?}");
        assert!(close(p.p90_ms, 900.0), "{p:?}");
        assert!(close(p.p99_ms, 990.0), "{p:?}");
        assert!(close(p.p999_ms, 999.0), "{p:?}");
        assert!(close(p.max_ms, 1_000.0), "{p:?}");
        let points = distribution(&latency);
        assert_eq!(points.len(), 17);
        assert_eq!(points[4].percentile, 90.0);
        assert_eq!(points[8].percentile, 99.0);
        assert!(close(points[8].ms, 990.0), "{points:?}");
        assert!(points.windows(2).all(|w| w[0].ms <= w[1].ms));
    }

    #[test]
    fn phases_merge_end_to_end_and_subsets_combine() {
        let mut first = Recorder::default();
        first.ok("reserve", 0, Duration::from_millis(1));
        first.ok("reserve-hot", 1, Duration::from_millis(9));
        let mut second = Recorder::default();
        second.error("RESOURCE_EXHAUSTED", 0, Duration::from_micros(200));
        second.error_sample("RESOURCE_EXHAUSTED", "queue full");
        let mut total = Recorder::default();
        total.merge_at(&first, 0);
        total.merge_at(&second, 2);
        assert_eq!(total.per_second.len(), 3);
        assert_eq!(total.per_second[2].1, 1);
        assert_eq!(total.error_samples["RESOURCE_EXHAUSTED"], "queue full");
        let cold = combined(&total, |name| !name.ends_with("-hot"));
        assert_eq!(cold.len(), 1);
        assert!(cold.max() < 2_000);
    }

    #[test]
    fn recorders_merge_counts_seconds_and_errors() {
        let mut a = Recorder::default();
        a.ok("reserve", 0, Duration::from_millis(2));
        a.error("RESOURCE_EXHAUSTED", 1, Duration::from_micros(300));
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
