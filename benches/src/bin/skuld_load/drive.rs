//! Driving load: closed and open loop, progress, CPU use.

use super::*;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use skuld_benches::node::{cpu_seconds, own_cpu_seconds};
use skuld_benches::stats::{histogram, intended_offset, Recorder};
use tonic::Code;

/// Live counters for the progress line.
pub(super) struct Progress {
    pub(super) label: String,
    pub(super) ok: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) latency: Mutex<Histogram<u64>>,
}

impl Progress {
    pub(super) fn new(label: &str) -> Arc<Self> {
        Arc::new(Self {
            label: label.to_owned(),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        })
    }

    pub(super) fn record(&self, result: &Outcome, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                let _ = self.latency.lock().record(micros.clamp(1, 60_000_000));
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Prints the progress line: every second with '\r' on a terminal, else a
/// line every 5 s.
pub(super) async fn report_progress(
    progress: Arc<Progress>,
    started: Instant,
    done: Arc<AtomicBool>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = Duration::from_secs(if tty { 1 } else { 5 });
    let mut last_ok = 0;
    let mut last = Instant::now();
    let mut next = Instant::now() + every;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() < next || done.load(Ordering::Relaxed) {
            continue;
        }
        next += every;
        let ok = progress.ok.load(Ordering::Relaxed);
        let rate = ok.saturating_sub(last_ok) as f64 / last.elapsed().as_secs_f64();
        last_ok = ok;
        last = Instant::now();
        let p99 = progress.latency.lock().value_at_quantile(0.99) as f64 / 1_000.0;
        let line = format!(
            "{} {:>6.1}s {:>9.0} ops/s  p99 {:>8.2} ms  ok {ok}  errors {}",
            progress.label,
            started.elapsed().as_secs_f64(),
            rate,
            p99,
            progress.errors.load(Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

pub(super) fn start_progress(
    label: &str,
    quiet: bool,
) -> (
    Arc<Progress>,
    Arc<AtomicBool>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let progress = Progress::new(label);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = (!quiet).then(|| {
        tokio::spawn(report_progress(
            Arc::clone(&progress),
            Instant::now(),
            Arc::clone(&done),
        ))
    });
    (progress, done, reporter)
}

pub(super) async fn stop_progress(
    done: Arc<AtomicBool>,
    reporter: Option<tokio::task::JoinHandle<()>>,
) {
    done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
}

pub(super) fn record(
    recorder: &mut Recorder,
    operation: &'static str,
    second: usize,
    result: &Outcome,
    latency: Duration,
) {
    match result {
        Ok(()) => recorder.ok(operation, second, latency),
        Err(status) => {
            let code = skuld_proto::code_name(status.code()).to_owned();
            recorder.error(&code, second, latency);
            recorder.error_sample(&code, status.message());
        }
    }
}

/// Closed loop: `concurrency` callers for warmup + duration; only requests
/// sent after the warmup are measured (all are applied and checked).
pub(super) async fn closed_loop(
    workload: Arc<dyn Workload>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    label: &str,
) -> Recorder {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let (progress, done, reporter) = start_progress(label, false);
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency.max(1) {
        let workload = Arc::clone(&workload);
        let progress = Arc::clone(&progress);
        callers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let (operation, result) = workload.call(caller).await;
                let latency = sent.elapsed();
                progress.record(&result, latency);
                if sent >= measure_from {
                    let second = (sent - measure_from).as_secs() as usize;
                    record(&mut recorder, operation, second, &result, latency);
                }
            }
            recorder
        }));
    }
    let mut total = Recorder::default();
    for caller in callers {
        if let Ok(recorder) = caller.await {
            total.merge(&recorder);
        }
    }
    stop_progress(done, reporter).await;
    total
}

#[derive(Clone)]
pub(super) struct OpenLoop {
    pub(super) rate: f64,
    pub(super) max_outstanding: usize,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    /// Request k goes to caller k % callers (mixed: whose state it uses).
    pub(super) callers: usize,
    pub(super) label: String,
    pub(super) quiet: bool,
    /// Per-second series are counted from here (default: end of warmup).
    pub(super) origin: Option<Instant>,
}

pub(super) struct OpenResult {
    pub(super) recorder: Recorder,
    /// How late the generator sent requests against the timetable.
    pub(super) dispatch_lag: Histogram<u64>,
    /// Latency from the actual send (not the intended time) of OK answers
    /// and of RESOURCE_EXHAUSTED answers: separates the generator's own
    /// lateness from the node's.
    pub(super) accepted_from_send: Histogram<u64>,
    pub(super) rejected_from_send: Histogram<u64>,
    /// CPU used during the measured window, when it could be read.
    pub(super) cpu: Option<CpuUse>,
    /// `--subscribers`: what the event subscribers saw in the window.
    pub(super) subscribers: Option<subscribers::SubscriberReport>,
}

/// CPU seconds the node and the generator used in the measured window.
/// On shared cores this, per OK reply, is the steadier figure: it does not
/// move with what else the machine is doing the way throughput does.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct CpuUse {
    pub(super) node_cpu_s: Option<f64>,
    pub(super) generator_cpu_s: f64,
    pub(super) window_s: f64,
}

impl OpenResult {
    pub(super) fn empty() -> Self {
        Self {
            recorder: Recorder::default(),
            dispatch_lag: histogram(),
            accepted_from_send: histogram(),
            rejected_from_send: histogram(),
            cpu: None,
            subscribers: None,
        }
    }

    pub(super) fn merge(&mut self, other: &OpenResult) {
        self.recorder.merge(&other.recorder);
        let _ = self.dispatch_lag.add(&other.dispatch_lag);
        let _ = self.accepted_from_send.add(&other.accepted_from_send);
        let _ = self.rejected_from_send.add(&other.rejected_from_send);
    }
}

pub(super) fn record_micros(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let _ = histogram.record(micros.clamp(1, 60_000_000));
}

/// The error name of requests the generator did not send because
/// `--max-outstanding` were in flight.
pub(super) const NOT_SENT: &str = "ClientMaxOutstanding";

/// (measured, second, operation, result, latency from intended time,
/// latency from actual send when sent)
pub(super) type Answer = (
    bool,
    usize,
    &'static str,
    Outcome,
    Duration,
    Option<Duration>,
);

/// Open loop: request k is due at start + k / rate, whatever the answers;
/// its latency counts from that intended time (coordinated omission
/// corrected). At most `max_outstanding` are in flight; a request due
/// beyond that is not sent and counted as `ClientMaxOutstanding`.
pub(super) async fn open_loop(workload: Arc<dyn Workload>, plan: OpenLoop) -> OpenResult {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let origin = plan.origin.unwrap_or(measure_from);
    let total = plan.warmup + plan.duration;
    let (answers, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let max_outstanding = plan.max_outstanding.clamp(1, 1 << 20);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
    let (progress, done, reporter) = start_progress(&plan.label, plan.quiet);
    let collector = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move {
            let mut result = OpenResult::empty();
            while let Some((measured, second, operation, outcome, latency, from_send)) =
                receiver.recv().await
            {
                progress.record(&outcome, latency);
                if !measured {
                    continue;
                }
                if operation == NOT_SENT {
                    // The generator's own limit, not an answer of the node.
                    result.recorder.error(NOT_SENT, second, Duration::ZERO);
                    result
                        .recorder
                        .error_sample(NOT_SENT, "not sent: --max-outstanding requests in flight");
                    continue;
                }
                record(&mut result.recorder, operation, second, &outcome, latency);
                match (&outcome, from_send) {
                    (Ok(()), Some(from_send)) => {
                        record_micros(&mut result.accepted_from_send, from_send);
                    }
                    (Err(status), Some(from_send)) if status.code() == Code::ResourceExhausted => {
                        record_micros(&mut result.rejected_from_send, from_send);
                    }
                    _ => {}
                }
            }
            result
        }
    });
    let mut dispatch_lag = histogram();
    let mut index = 0u64;
    'schedule: loop {
        let next = intended_offset(index, plan.rate);
        if next >= total || plan.rate <= 0.0 {
            break;
        }
        tokio::time::sleep_until((started + next).into()).await;
        // Send everything that is due by now (timer granularity is ~1 ms).
        let now = Instant::now();
        loop {
            let offset = intended_offset(index, plan.rate);
            if offset >= total {
                break 'schedule;
            }
            let intended = started + offset;
            if intended > now {
                break;
            }
            let measured = intended >= measure_from;
            let second = intended.saturating_duration_since(origin).as_secs() as usize;
            if measured {
                let lag = u64::try_from(now.duration_since(intended).as_micros()).unwrap_or(0);
                let _ = dispatch_lag.record(lag.clamp(1, 60_000_000));
            }
            let caller = (index % plan.callers.max(1) as u64) as usize;
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let workload = Arc::clone(&workload);
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let (operation, result) = workload.call(caller).await;
                        let _ = answers.send((
                            measured,
                            second,
                            operation,
                            result,
                            intended.elapsed(),
                            Some(sent.elapsed()),
                        ));
                        drop(permit);
                    });
                }
                Err(_) => {
                    let _ = answers.send((
                        measured,
                        second,
                        NOT_SENT,
                        Err(tonic::Status::new(
                            Code::Aborted,
                            "not sent: --max-outstanding requests in flight",
                        )),
                        Duration::ZERO,
                        None,
                    ));
                }
            }
            index += 1;
        }
    }
    drop(answers);
    let _ = permits.acquire_many(max_outstanding as u32).await;
    let mut result = collector.await.unwrap_or_else(|_| OpenResult::empty());
    result.dispatch_lag = dispatch_lag;
    stop_progress(done, reporter).await;
    result
}

/// Runs the load of `args` (closed or open loop), with `--subscribers`
/// reading the event stream beside it. Fails only when the subscriptions
/// cannot be opened.
pub(super) async fn drive(
    args: &Args,
    workload: Arc<dyn Workload>,
    label: &str,
) -> anyhow::Result<OpenResult> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    // Opened before the load's clock starts, so that every event of the
    // load is after their `now`.
    let opened = match args.subscribers {
        0 => None,
        count => Some(
            subscribers::open_subscribers(&args.endpoint, args.tls_ca_file.as_deref(), count)
                .await?,
        ),
    };
    // The loops below take their own start within microseconds of this one
    // (as measure_cpu does): close enough for a window of seconds.
    let started = Instant::now();
    let running = opened.map(|opened| {
        opened.start(subscribers::MeasuredWindow {
            from: started + warmup,
            to: started + warmup + duration,
        })
    });
    let cpu = tokio::spawn(measure_cpu(args.node_pid, warmup, duration));
    let mut result = match args.rate {
        Some(rate) => {
            open_loop(
                workload,
                OpenLoop {
                    rate,
                    max_outstanding: args.max_outstanding,
                    warmup,
                    duration,
                    callers: args.concurrency.max(1),
                    label: label.to_owned(),
                    quiet: false,
                    origin: None,
                },
            )
            .await
        }
        None => OpenResult {
            recorder: closed_loop(workload, args.concurrency, warmup, duration, label).await,
            ..OpenResult::empty()
        },
    };
    result.cpu = cpu.await.ok().flatten();
    if let Some(running) = running {
        result.subscribers = Some(running.finish().await);
    }
    Ok(result)
}

/// CPU used by the node (when its pid is known) and by this process from
/// the end of the warmup to the end of the measured window.
pub(super) async fn measure_cpu(
    node_pid: Option<u32>,
    warmup: Duration,
    duration: Duration,
) -> Option<CpuUse> {
    let node = || node_pid.and_then(cpu_seconds);
    tokio::time::sleep(warmup).await;
    let (node_before, own_before, started) = (node(), own_cpu_seconds()?, Instant::now());
    tokio::time::sleep(duration).await;
    let (node_after, own_after) = (node(), own_cpu_seconds()?);
    Some(CpuUse {
        node_cpu_s: node_before
            .zip(node_after)
            .map(|(before, after)| after - before),
        generator_cpu_s: own_after - own_before,
        window_s: started.elapsed().as_secs_f64(),
    })
}
