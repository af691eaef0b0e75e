//! One simulation's trace: the harness's own events (workload outcomes,
//! faults) and the nodes' log lines, each stamped with simulated time.
//!
//! Its digest is what the determinism self-check compares between two
//! processes running one seed; its tail is what a failing seed prints.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

#[derive(Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
}

/// Simulated time as `  12.345s`; outside a host (the step loop), the time
/// the caller passes.
pub fn stamp(at: Duration) -> String {
    format!("{:>4}.{:03}s", at.as_secs(), at.subsec_millis())
}

/// Simulated time since the simulation started, read inside a host.
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Trace {
    /// Records `message` of `host` at simulated time `at`.
    pub fn at(&self, at: Duration, host: &str, message: impl fmt::Display) {
        self.lines
            .lock()
            .push(format!("{} {host} {message}", stamp(at)));
    }

    /// Records `message` of `host` now (inside a host).
    pub fn event(&self, host: &str, message: impl fmt::Display) {
        self.at(sim_now(), host, message);
    }

    pub fn len(&self) -> usize {
        self.lines.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.lock().is_empty()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    /// The last `count` lines.
    pub fn tail(&self, count: usize) -> Vec<String> {
        let lines = self.lines.lock();
        lines[lines.len().saturating_sub(count)..].to_vec()
    }

    /// A digest of every line in order. `DefaultHasher::new()` has fixed
    /// keys, so one binary gives one digest for one trace in any process.
    pub fn digest(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        for line in self.lines.lock().iter() {
            line.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Appends a line (the log writer's way in).
    fn push_raw(&self, line: String) {
        self.lines.lock().push(line);
    }
}

/// The first line where two traces differ: (index, left, right); `None`
/// when they are equal.
pub fn first_divergence(left: &[String], right: &[String]) -> Option<(usize, String, String)> {
    let missing = || "<end of trace>".to_owned();
    (0..left.len().max(right.len())).find_map(|index| {
        let (a, b) = (left.get(index), right.get(index));
        (a != b).then(|| {
            (
                index,
                a.cloned().unwrap_or_else(missing),
                b.cloned().unwrap_or_else(missing),
            )
        })
    })
}

/// tracing's timer for the nodes' log lines: simulated time.
pub struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        writer.write_str(&stamp(sim_now()))
    }
}

/// Log output into the trace, one line per event.
pub struct TraceWriter {
    trace: Trace,
    pending: Vec<u8>,
}

impl io::Write for TraceWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TraceWriter {
    // The formatter makes one writer per event and writes the event whole.
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.pending);
        for line in text.lines().filter(|line| !line.is_empty()) {
            self.trace.push_raw(line.to_owned());
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Trace {
    type Writer = TraceWriter;

    fn make_writer(&'a self) -> Self::Writer {
        TraceWriter {
            trace: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Sends this process's log events into `trace`, filtered by
/// `SKULD_SIM_LOG` (tracing's env-filter syntax). One simulation per
/// process, so the global subscriber is this seed's alone.
pub fn capture_logs(trace: &Trace) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SKULD_SIM_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,turmoil=warn")
        });
    // A second call in one process (unit tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SimTime)
        .with_ansi(false)
        .with_writer(trace.clone())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_traces_have_one_digest_and_the_first_difference_is_named() {
        let (left, right) = (Trace::default(), Trace::default());
        for trace in [&left, &right] {
            trace.at(Duration::from_millis(1_234), "node-1", "joined");
        }
        assert_eq!(left.digest(), right.digest());
        assert_eq!(first_divergence(&left.lines(), &right.lines()), None);
        right.at(Duration::from_millis(2_000), "node-2", "joined");
        assert_ne!(left.digest(), right.digest());
        let (index, a, b) = first_divergence(&left.lines(), &right.lines()).unwrap_or_default();
        assert_eq!((index, a.as_str()), (1, "<end of trace>"));
        assert_eq!(b, "   2.000s node-2 joined");
        assert_eq!(left.lines()[0], "   1.234s node-1 joined");
    }
}
