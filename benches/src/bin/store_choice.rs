//! `store-choice`: measures redb against fjall on skuld's group-commit write
//! pattern so the embedded store is chosen by measurement (README "Architecture";
//! issue 2). Results are recorded in `benches/RESULTS.md`.
//!
//! Each commit is ONE durable, atomic, multi-table write holding, per logical
//! record, a journal entry `(entity key ~40 B, u64 BE sequence) -> ~200 B` and
//! an idempotency record `(entity key, 24-char id) -> ~120 B`. The commit call
//! returns only after the store has fsynced:
//! - redb: write transaction with `Durability::Immediate`, then `commit()`.
//! - fjall: one cross-keyspace write batch committed with
//!   `durability(Some(PersistMode::SyncAll))` (the batch fsyncs the journal
//!   before `commit()` returns, same as `Database::persist(SyncAll)` after it);
//!   `fjall-syncdata` is the same with `PersistMode::SyncData` (fdatasync).
//!
//! Build and run (needs the `store-comparison` feature):
//! `cargo run --release -p skuld-benches --features store-comparison --bin store-choice`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;

const ENTITY_KEY_LEN: usize = 40;
const JOURNAL_KEY_LEN: usize = ENTITY_KEY_LEN + 8;
const IDEM_ID_LEN: usize = 24;
const IDEM_KEY_LEN: usize = ENTITY_KEY_LEN + IDEM_ID_LEN;
const JOURNAL_VALUE_LEN: usize = 200;
const IDEM_VALUE_LEN: usize = 120;
/// Distinct pre-generated values cycled through (keeps value generation out of
/// the timed path while not writing one identical value over and over).
const VALUE_POOL: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "redb vs fjall on skuld's durable group-commit workload")]
struct Args {
    /// Seconds of writes per (store, batch size).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of random journal point reads after the writes.
    #[arg(long, default_value_t = 2.0)]
    read_seconds: f64,
    /// Records (journal entry + idempotency record) per durable commit.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128,1024")]
    batch_sizes: Vec<usize>,
    /// Stores to measure: redb, fjall (SyncAll), fjall-syncdata.
    #[arg(long, value_delimiter = ',', default_value = "redb,fjall")]
    stores: Vec<String>,
    /// Distinct entity keys the records are spread over.
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    /// Parent of the per-run temporary data directories. Must be a real disk
    /// (not tmpfs), otherwise fsync costs nothing and the numbers mean nothing.
    #[arg(long, default_value = "target/store-choice")]
    dir: PathBuf,
    /// PRNG seed.
    #[arg(long, default_value_t = 0x5eed_5eed)]
    seed: u64,
    /// Rounds over all (batch size, store) pairs; the store order rotates each
    /// round and the summary reports medians, so a noisy neighbour hitting the
    /// disk during one run does not decide the comparison.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of a raw-disk probe (append 4 KiB + fdatasync, in a loop) before
    /// each run; its p50 shows how expensive one fsync was at that moment.
    #[arg(long, default_value_t = 0.5)]
    probe_seconds: f64,
}

/// splitmix64: small, fast, dependency-free PRNG.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small (<= a few million), the modulo bias is irrelevant here.
        (self.next_u64() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One logical record of a group commit.
struct Record {
    journal_key: [u8; JOURNAL_KEY_LEN],
    journal_value: usize,
    idem_key: [u8; IDEM_KEY_LEN],
    idem_value: usize,
}

struct Workload {
    entities: Vec<[u8; ENTITY_KEY_LEN]>,
    next_seq: Vec<u64>,
    journal_values: Vec<Vec<u8>>,
    idem_values: Vec<Vec<u8>>,
    rng: Rng,
    value_cursor: usize,
}

impl Workload {
    fn new(entities: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let entities: Vec<[u8; ENTITY_KEY_LEN]> = (0..entities)
            .map(|i| {
                // e.g. "pos/sku-000000004711/loc-0042/.........", exactly 40 bytes
                let s = format!("pos/sku-{:012}/loc-{:04}/", i * 7919 % 1_000_003, i % 250);
                let mut k = [b'.'; ENTITY_KEY_LEN];
                let n = s.len().min(ENTITY_KEY_LEN);
                k[..n].copy_from_slice(&s.as_bytes()[..n]);
                k
            })
            .collect();
        // Random bytes: incompressible, so fjall's LZ4 gains nothing it would
        // not gain on real (bincode) events too; a conservative choice.
        let mut gen_values = |len: usize| -> Vec<Vec<u8>> {
            (0..VALUE_POOL)
                .map(|_| {
                    let mut v = vec![0u8; len];
                    rng.fill(&mut v);
                    v
                })
                .collect()
        };
        let journal_values = gen_values(JOURNAL_VALUE_LEN);
        let idem_values = gen_values(IDEM_VALUE_LEN);
        Self {
            next_seq: vec![0; entities.len()],
            entities,
            journal_values,
            idem_values,
            rng,
            value_cursor: 0,
        }
    }

    fn fill_batch(&mut self, batch: &mut Vec<Record>, size: usize) {
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
        batch.clear();
        for _ in 0..size {
            let e = self.rng.below(self.entities.len());
            let entity = &self.entities[e];
            let seq = self.next_seq[e];
            self.next_seq[e] += 1;

            let mut journal_key = [0u8; JOURNAL_KEY_LEN];
            journal_key[..ENTITY_KEY_LEN].copy_from_slice(entity);
            journal_key[ENTITY_KEY_LEN..].copy_from_slice(&seq.to_be_bytes());

            let mut idem_key = [0u8; IDEM_KEY_LEN];
            idem_key[..ENTITY_KEY_LEN].copy_from_slice(entity);
            let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
            for (i, slot) in idem_key[ENTITY_KEY_LEN..].iter_mut().enumerate() {
                let bits = if i < 12 {
                    a >> (i * 5)
                } else {
                    b >> ((i - 12) * 5)
                };
                *slot = ALPHABET[(bits & 31) as usize];
            }

            self.value_cursor = (self.value_cursor + 1) % VALUE_POOL;
            batch.push(Record {
                journal_key,
                journal_value: self.value_cursor,
                idem_key,
                idem_value: (self.value_cursor * 7 + 3) % VALUE_POOL,
            });
        }
    }

    /// A random journal key that was written (entity with at least one entry).
    fn random_written_key(&mut self, written: &[usize]) -> [u8; JOURNAL_KEY_LEN] {
        let e = written[self.rng.below(written.len())];
        let seq = self.rng.next_u64() % self.next_seq[e];
        let mut key = [0u8; JOURNAL_KEY_LEN];
        key[..ENTITY_KEY_LEN].copy_from_slice(&self.entities[e]);
        key[ENTITY_KEY_LEN..].copy_from_slice(&seq.to_be_bytes());
        key
    }
}

trait Store {
    /// One atomic, durable commit of the whole batch; returns after fsync.
    fn commit(&mut self, batch: &[Record], w: &Workload) -> Result<()>;
    /// Point lookup of a journal entry; returns whether it was found.
    fn get_journal(&self, key: &[u8]) -> Result<bool>;
}

const REDB_JOURNAL: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("journal");
const REDB_IDEM: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("idempotency");

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(dir.join("skuld.redb"))?;
        // Create both tables up front so the first timed commit is not special.
        let tx = db.begin_write()?;
        tx.open_table(REDB_JOURNAL)?;
        tx.open_table(REDB_IDEM)?;
        tx.commit()?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn commit(&mut self, batch: &[Record], w: &Workload) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut journal = tx.open_table(REDB_JOURNAL)?;
            let mut idem = tx.open_table(REDB_IDEM)?;
            for r in batch {
                journal.insert(&r.journal_key[..], &w.journal_values[r.journal_value][..])?;
                idem.insert(&r.idem_key[..], &w.idem_values[r.idem_value][..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get_journal(&self, key: &[u8]) -> Result<bool> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let journal = tx.open_table(REDB_JOURNAL)?;
        Ok(journal.get(key)?.is_some())
    }
}

struct FjallStore {
    db: fjall::Database,
    journal: fjall::Keyspace,
    idem: fjall::Keyspace,
    mode: fjall::PersistMode,
}

impl FjallStore {
    fn open(dir: &Path, mode: fjall::PersistMode) -> Result<Self> {
        let db = fjall::Database::builder(dir.join("skuld.fjall")).open()?;
        let journal = db.keyspace("journal", fjall::KeyspaceCreateOptions::default)?;
        let idem = db.keyspace("idempotency", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self {
            db,
            journal,
            idem,
            mode,
        })
    }
}

impl Store for FjallStore {
    fn commit(&mut self, batch: &[Record], w: &Workload) -> Result<()> {
        let mut wb = self.db.batch().durability(Some(self.mode));
        for r in batch {
            wb.insert(
                &self.journal,
                &r.journal_key[..],
                &w.journal_values[r.journal_value][..],
            );
            wb.insert(
                &self.idem,
                &r.idem_key[..],
                &w.idem_values[r.idem_value][..],
            );
        }
        wb.commit()?;
        Ok(())
    }

    fn get_journal(&self, key: &[u8]) -> Result<bool> {
        Ok(self.journal.get(key)?.is_some())
    }
}

struct Outcome {
    round: usize,
    store: String,
    probe_p50_us: u64,
    batch: usize,
    records: u64,
    commits: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    disk_bytes: u64,
    reads: u64,
    read_elapsed: Duration,
}

fn dir_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn open_store(name: &str, dir: &Path) -> Result<Box<dyn Store>> {
    Ok(match name {
        "redb" => Box::new(RedbStore::open(dir)?),
        "fjall" => Box::new(FjallStore::open(dir, fjall::PersistMode::SyncAll)?),
        "fjall-syncdata" => Box::new(FjallStore::open(dir, fjall::PersistMode::SyncData)?),
        other => bail!("unknown store {other:?} (redb, fjall, fjall-syncdata)"),
    })
}

/// p50 latency (µs) of "append 4 KiB + fdatasync" on the data dir's disk.
fn fsync_probe(dir: &Path, seconds: f64) -> Result<u64> {
    use std::io::Write;
    if seconds <= 0.0 {
        return Ok(0);
    }
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let limit = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    while start.elapsed() < limit {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        hist.record(
            u64::try_from(t.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(hist.value_at_quantile(0.5))
}

fn run_one(args: &Args, round: usize, store_name: &str, batch_size: usize) -> Result<Outcome> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{store_name}-b{batch_size}-"))
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating temp dir in {}", args.dir.display()))?;
    let probe_p50_us = fsync_probe(tmp.path(), args.probe_seconds)?;
    let mut store = open_store(store_name, tmp.path())?;
    let mut w = Workload::new(args.entities, args.seed ^ batch_size as u64);
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut batch = Vec::with_capacity(batch_size);
    let (mut commits, mut records) = (0u64, 0u64);

    let limit = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < limit {
        w.fill_batch(&mut batch, batch_size);
        let t = Instant::now();
        store.commit(&batch, &w)?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency_us.record(us.max(1))?;
        commits += 1;
        records += batch_size as u64;
    }
    let elapsed = start.elapsed();
    let disk_bytes = dir_size(tmp.path())?;

    // Point reads of random journal keys that were written.
    let written: Vec<usize> = (0..w.entities.len())
        .filter(|&e| w.next_seq[e] > 0)
        .collect();
    let read_limit = Duration::from_secs_f64(args.read_seconds);
    let mut reads = 0u64;
    let read_start = Instant::now();
    if !written.is_empty() {
        'reads: loop {
            for _ in 0..256 {
                let key = w.random_written_key(&written);
                if !store.get_journal(&key)? {
                    bail!("{store_name}: journal key written but not found");
                }
                reads += 1;
            }
            if read_start.elapsed() >= read_limit {
                break 'reads;
            }
        }
    }
    let read_elapsed = read_start.elapsed();
    drop(store);
    tmp.close()?;

    Ok(Outcome {
        round,
        store: store_name.to_owned(),
        probe_p50_us,
        batch: batch_size,
        records,
        commits,
        elapsed,
        latency_us,
        disk_bytes,
        reads,
        read_elapsed,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.entities == 0 || args.rounds == 0 || args.batch_sizes.contains(&0) {
        bail!("--entities, --rounds and every --batch-sizes value must be > 0");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    eprintln!(
        "data dir parent: {} | {} s writes + {} s reads per run | {} entities",
        dir.display(),
        args.seconds,
        args.read_seconds,
        args.entities
    );

    println!(
        "| round | store | records/commit | durable records/s | commits/s | p50 commit | p99 commit | max commit | on disk | journal point reads/s | disk fsync p50 (probe) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut outcomes: Vec<Outcome> = Vec::new();
    for round in 1..=args.rounds {
        for &batch in &args.batch_sizes {
            let n = args.stores.len();
            for i in 0..n {
                let store = &args.stores[(i + round - 1) % n];
                let o = run_one(&args, round, store, batch)?;
                let secs = o.elapsed.as_secs_f64();
                println!(
                    "| {} | {} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} MiB | {:.0} | {:.2} ms |",
                    o.round,
                    o.store,
                    o.batch,
                    o.records as f64 / secs,
                    o.commits as f64 / secs,
                    o.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
                    o.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                    o.latency_us.max() as f64 / 1000.0,
                    o.disk_bytes as f64 / (1024.0 * 1024.0),
                    o.reads as f64 / o.read_elapsed.as_secs_f64(),
                    o.probe_p50_us as f64 / 1000.0,
                );
                outcomes.push(o);
            }
        }
    }
    print_summary(&args, &outcomes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians over rounds; commit latency percentiles over all rounds' commits.
fn print_summary(args: &Args, outcomes: &[Outcome]) -> Result<()> {
    println!();
    println!(
        "Summary over {} round(s): medians of per-run rates; latency percentiles over all commits.",
        args.rounds
    );
    println!();
    println!(
        "| store | records/commit | durable records/s | commits/s | p50 commit | p99 commit | journal point reads/s | disk fsync p50 (probe) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &batch in &args.batch_sizes {
        for store in &args.stores {
            let runs: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.batch == batch && &o.store == store)
                .collect();
            let mut lat = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for o in &runs {
                lat.add(&o.latency_us)?;
            }
            let rate = |f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(|o| f(o)).collect());
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms |",
                store,
                batch,
                rate(&|o| o.records as f64 / o.elapsed.as_secs_f64()),
                rate(&|o| o.commits as f64 / o.elapsed.as_secs_f64()),
                lat.value_at_quantile(0.50) as f64 / 1000.0,
                lat.value_at_quantile(0.99) as f64 / 1000.0,
                rate(&|o| o.reads as f64 / o.read_elapsed.as_secs_f64()),
                rate(&|o| o.probe_p50_us as f64 / 1000.0),
            );
        }
    }
    Ok(())
}
