//! Memory per active reservation and per idle position, measured.
//!
//! Builds position states through the domain's own `decide` and `apply`
//! with realistic strings (36-character reservation ids in random order,
//! 29-character owner ids, line ids, channels such as "web" and
//! "store-123") and counts the heap bytes they hold with a counting global
//! allocator (over mimalloc, the node's allocator). Requested bytes, not
//! the allocator's size classes: mimalloc rounds each small allocation up
//! to its size class, which the RSS column shows (measured for the first,
//! largest state only, in a fresh process; it includes page slack).
//!
//! ```text
//! cargo run --release -p skuld-benches --bin memory [-- --max 400000]
//! ```

use std::collections::HashSet;
use std::hint::black_box;

use cap::Cap;
use mimalloc::MiMalloc;
use skuld_domain::journal::JournalEntry;
use skuld_domain::position::{
    apply_entry, decide, AdjustmentReason, Bucket, Command, Context, Event, Owner, OwnerType,
    PositionState,
};

#[global_allocator]
static ALLOCATOR: Cap<MiMalloc> = Cap::new(MiMalloc, usize::MAX);

/// A small deterministic generator (splitmix64), so runs build the same ids.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A UUID-shaped id (36 characters), random like a v4.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

const NOW_MS: i64 = 1_764_633_600_000;

fn context(now_ms: i64) -> Context {
    Context {
        now_ms,
        default_ttl_ms: 15 * 60_000,
        max_ttl_ms: 4 * 3_600_000,
    }
}

fn entry(state: &PositionState, now_ms: i64, events: Vec<Event>) -> JournalEntry<Event> {
    JournalEntry {
        version: state.version + 1,
        recorded_at_ms: now_ms,
        idempotency_key: None,
        correlation_id: String::new(),
        events,
    }
}

fn run(state: &mut PositionState, command: &Command, now_ms: i64) {
    match decide(state, None, command, &context(now_ms)) {
        Ok(decision) => {
            let entry = entry(state, now_ms, decision.events);
            apply_entry(state, &entry);
        }
        Err(refusal) => panic!("refused: {refusal}"),
    }
}

fn stocked() -> PositionState {
    let mut state = PositionState::default();
    run(
        &mut state,
        &Command::Adjust {
            bucket: Bucket::Available,
            delta: 100_000_000,
            reason: AdjustmentReason::Receipt,
            change_from: None,
            reference: String::new(),
        },
        NOW_MS,
    );
    state
}

/// The n-th reservation of a run (its id and the command): a cart's line
/// on the web, a store's checkout, or an order line.
fn reserve(ids: &mut Ids, n: u64) -> (String, Command) {
    let (kind, owner, line, channel) = match n % 4 {
        0 | 1 => (
            OwnerType::Cart,
            format!("cart-{:016x}{:08x}", ids.next(), ids.next() >> 32),
            format!("line-{}", n % 7),
            "web".to_owned(),
        ),
        2 => (
            OwnerType::Checkout,
            format!("checkout-{:020x}", ids.next()),
            String::new(),
            format!("store-{}", n % 500),
        ),
        _ => (
            OwnerType::Order,
            ids.uuid(),
            format!("{}-1", ids.uuid()),
            "app".to_owned(),
        ),
    };
    let reservation_id = ids.uuid();
    let command = Command::Reserve {
        reservation_id: reservation_id.clone(),
        quantity: 1,
        owner: Owner {
            kind,
            id: owner,
            line_id: line,
        },
        channel,
        ttl_ms: 0,
        allow_partial: false,
    };
    (reservation_id, command)
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Heap bytes (requested) and RSS grown while `build` runs and its result lives.
fn measure<T>(build: impl FnOnce() -> T) -> (T, usize, isize) {
    let (heap, rss) = (ALLOCATOR.allocated(), rss_bytes());
    let built = build();
    let heap_grown = ALLOCATOR.allocated().saturating_sub(heap);
    let rss_grown = rss_bytes() as isize - rss as isize;
    (built, heap_grown, rss_grown)
}

/// `with_rss`: whether the process's RSS growth means anything (only in
/// the first measurement of a process: later ones reuse freed pages).
fn hot(count: u64, with_rss: bool) {
    let base = stocked();
    let (state, heap, rss) = measure(|| {
        let mut state = base.clone();
        let mut ids = Ids(count);
        for n in 0..count {
            // One reservation per millisecond of a run: expiries in order.
            run(&mut state, &reserve(&mut ids, n).1, NOW_MS + n as i64);
        }
        state
    });
    let snapshot = bincode::serde::encode_to_vec(&state, bincode::config::standard())
        .map_or(0, |bytes| bytes.len());
    let rss = if with_rss {
        format!("{:>6.1} B", rss as f64 / count as f64)
    } else {
        "     -  ".to_owned()
    };
    println!(
        "hot position, {count:>7} active: {:>6.1} B/reservation heap, RSS {rss}, snapshot {:>6.1} B/reservation",
        heap as f64 / count as f64,
        snapshot as f64 / count as f64,
    );
    // One unit each: every reservation was granted and is still active.
    assert_eq!(state.buckets.reserved as u64, count);
    drop(black_box(state));
}

/// Positions that hold no active reservation, `count` of them: never
/// reserved, and after `ended` reservations have come and gone.
fn idle(count: usize, ended: u64) {
    let base = stocked();
    let (states, heap, _) = measure(|| {
        let mut ids = Ids(ended + 1);
        let mut states = Vec::with_capacity(count);
        for _ in 0..count {
            let mut state = base.clone();
            for n in 0..ended {
                let (reservation_id, command) = reserve(&mut ids, n);
                let release = Command::ReleaseReservation { reservation_id };
                run(&mut state, &command, NOW_MS);
                run(&mut state, &release, NOW_MS);
            }
            states.push(state);
        }
        states
    });
    println!(
        "idle position, {ended:>4} ended kept: {:>9.1} B/position heap ({} positions; plus {} B inline each)",
        heap.saturating_sub(count * std::mem::size_of::<PositionState>()) as f64 / count as f64,
        count,
        std::mem::size_of::<PositionState>(),
    );
    drop(black_box(states));
}

/// The known idempotency keys of one actor: a set of 64-bit hashes, as
/// `actors/src/runtime/known_keys.rs` holds them (at most 16,384 a
/// position; a hot position past that keeps none).
fn known_keys(count: usize) {
    let mut ids = Ids(7);
    let (set, heap, _) = measure(|| {
        let mut set = HashSet::new();
        for _ in 0..count {
            set.insert(ids.next());
        }
        set
    });
    println!(
        "known keys, {count:>6}: {:>5.1} B/key heap",
        heap as f64 / count as f64
    );
    drop(black_box(set));
}

fn main() {
    let max = std::env::args()
        .skip_while(|arg| arg != "--max")
        .nth(1)
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(422_000);
    println!(
        "PositionState: {} B inline; requested heap bytes per item (RSS grows by size classes and pages)",
        std::mem::size_of::<PositionState>()
    );
    // The largest first, in a fresh process, so that its RSS growth is its own.
    hot(max, true);
    for count in [100_000, 10_000, 1_000] {
        if count < max {
            hot(count, false);
        }
    }
    idle(10_000, 0);
    idle(100, 10);
    idle(20, 1_000);
    for count in [1_000, 16_384] {
        known_keys(count);
    }
}
