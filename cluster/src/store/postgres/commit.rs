//! The group commit of the PostgreSQL store: one statement per batch.
//!
//! Every table's rows of the batch travel as arrays (`UNNEST`) in a single
//! data-modifying `WITH` statement, sent in autocommit: PostgreSQL runs it
//! as its own transaction and commits at the end of the statement, so a
//! group commit costs one round trip and one WAL flush whatever its size,
//! and fails or succeeds whole.
//!
//! Fencing stays in the database. The statement's first step locks the
//! fence rows of the batch's shards `FOR SHARE` (in shard order), and every
//! row it writes is joined to the writes whose epoch equals its shard's
//! locked epoch: a stale write leaves nothing behind. Under READ COMMITTED
//! the lock returns the newest committed epoch (a fence that committed after
//! the statement started is seen), and it is held until the commit, so
//! [`Store::fence`](crate::store::Store::fence), an `UPDATE` of the same
//! row, waits for the statement in flight. The epochs are returned, so the
//! caller learns which writes were refused from the values the statement
//! itself checked against.
//!
//! The outbox is numbered in the same statement: the `event_bounds` rows of
//! the shards with accepted events are locked `FOR UPDATE` in shard order
//! (so concurrent commits never wait on each other in a cycle), each event
//! takes `head + its rank` in the batch's order, and the heads move by the
//! count. A shard without a bounds row would give its events a NULL `seq`,
//! which the table refuses: the statement fails rather than drop them.

use std::collections::HashMap;

use super::{from_i64, to_i32, to_i64, Param, PostgresStore};
use crate::store::{Committed, EntityWrite, StoreError, WriteBatch};

/// One batch: `$1` the batch's shards (sorted, distinct); `$2`, `$3` each
/// write's shard and epoch (write `i` is ordinality `i`, from 1); then each
/// table's rows with the write they belong to (`w`). Upserts keep the last
/// accepted write of an entity (an upsert may touch a row once per
/// statement) and sort their rows, so concurrent commits lock in one order.
/// Returns the locked `(shard, epoch)` of every shard that has a fence row.
pub(super) const COMMIT_BATCH: &str = "WITH \
 fences AS MATERIALIZED ( \
     SELECT shard, epoch FROM shard_fences WHERE shard = ANY($1::int[]) \
     ORDER BY shard FOR SHARE), \
 accepted AS MATERIALIZED ( \
     SELECT w.i::int AS i, w.shard \
     FROM unnest($2::int[], $3::bigint[]) WITH ORDINALITY AS w(shard, epoch, i) \
     JOIN fences AS f ON f.shard = w.shard AND f.epoch = w.epoch), \
 journal_in AS ( \
     INSERT INTO journal (entity, seq, entry) \
     SELECT r.entity, r.seq, r.entry \
     FROM unnest($4::int[], $5::bytea[], $6::bigint[], $7::bytea[]) AS r(w, entity, seq, entry) \
     JOIN accepted AS a ON a.i = r.w), \
 snapshots_in AS ( \
     INSERT INTO snapshots (entity, seq, state) \
     SELECT DISTINCT ON (r.entity) r.entity, r.seq, r.state \
     FROM unnest($8::int[], $9::bytea[], $10::bigint[], $11::bytea[]) AS r(w, entity, seq, state) \
     JOIN accepted AS a ON a.i = r.w ORDER BY r.entity, r.w DESC \
     ON CONFLICT (entity) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state), \
 idempotency_in AS ( \
     INSERT INTO idempotency (entity, key, fingerprint, reply, shard, recorded_at_ms) \
     SELECT r.entity, r.key, r.fingerprint, r.reply, a.shard, \
         (extract(epoch FROM now()) * 1000)::bigint \
     FROM unnest($12::int[], $13::bytea[], $14::text[], $15::bytea[], $16::bytea[]) \
         AS r(w, entity, key, fingerprint, reply) \
     JOIN accepted AS a ON a.i = r.w), \
 timer_rows AS ( \
     SELECT DISTINCT ON (r.entity) r.entity, a.shard, r.due \
     FROM unnest($17::int[], $18::bytea[], $19::bigint[]) AS r(w, entity, due) \
     JOIN accepted AS a ON a.i = r.w ORDER BY r.entity, r.w DESC), \
 timers_set AS ( \
     INSERT INTO timers (entity, shard, due_ms) \
     SELECT entity, shard, due FROM timer_rows WHERE due IS NOT NULL \
     ON CONFLICT (entity) DO UPDATE SET shard = EXCLUDED.shard, due_ms = EXCLUDED.due_ms \
     WHERE (timers.shard, timers.due_ms) IS DISTINCT FROM (EXCLUDED.shard, EXCLUDED.due_ms)), \
 timers_cleared AS ( \
     DELETE FROM timers AS t USING timer_rows AS r WHERE r.due IS NULL AND t.entity = r.entity), \
 summaries_in AS ( \
     INSERT INTO summaries (scope, entity, value) \
     SELECT DISTINCT ON (r.scope, r.entity) r.scope, r.entity, r.value \
     FROM unnest($20::int[], $21::bytea[], $22::bytea[], $23::bytea[]) AS r(w, scope, entity, value) \
     JOIN accepted AS a ON a.i = r.w ORDER BY r.scope, r.entity, r.w DESC \
     ON CONFLICT (scope, entity) DO UPDATE SET value = EXCLUDED.value), \
 new_events AS ( \
     SELECT r.n, a.shard, r.entity, r.body \
     FROM unnest($24::int[], $25::bytea[], $26::bytea[]) WITH ORDINALITY AS r(w, entity, body, n) \
     JOIN accepted AS a ON a.i = r.w), \
 added AS (SELECT shard, count(*) AS events FROM new_events GROUP BY shard), \
 bounds AS MATERIALIZED ( \
     SELECT shard, head FROM event_bounds WHERE shard = ANY(ARRAY(SELECT shard FROM added)) \
     ORDER BY shard FOR UPDATE), \
 heads_moved AS ( \
     UPDATE event_bounds AS b SET head = l.head + d.events \
     FROM bounds AS l JOIN added AS d ON d.shard = l.shard WHERE b.shard = l.shard), \
 events_in AS ( \
     INSERT INTO events (shard, seq, recorded_at_ms, entity, body) \
     SELECT e.shard, l.head + row_number() OVER (PARTITION BY e.shard ORDER BY e.n), \
         (extract(epoch FROM clock_timestamp()) * 1000)::bigint, e.entity, e.body \
     FROM new_events AS e LEFT JOIN bounds AS l ON l.shard = e.shard) \
 SELECT shard, epoch FROM fences";

/// Creates the fence and bounds rows of shards past the count the store was
/// connected with (the migration made those below it), before a commit
/// that needs a row to lock. Committed first on its own: a row inserted by
/// the commit itself would be invisible to its own lock.
const ENSURE_SHARD_ROWS: &str = "WITH f AS ( \
     INSERT INTO shard_fences (shard, epoch) SELECT shard, 0 FROM unnest($1::int[]) AS shard \
     ON CONFLICT (shard) DO NOTHING) \
 INSERT INTO event_bounds (shard) SELECT shard FROM unnest($1::int[]) AS shard \
 ON CONFLICT (shard) DO NOTHING";

/// The batch as one array per column, each row with its write's ordinality
/// (`w`), in the order of the statement's parameters.
#[derive(Default)]
struct Columns<'a> {
    shards: Vec<i32>,
    write_shards: Vec<i32>,
    write_epochs: Vec<i64>,
    journal_w: Vec<i32>,
    journal_entities: Vec<&'a [u8]>,
    journal_seqs: Vec<i64>,
    journal_entries: Vec<&'a [u8]>,
    snapshot_w: Vec<i32>,
    snapshot_entities: Vec<&'a [u8]>,
    snapshot_seqs: Vec<i64>,
    snapshot_states: Vec<&'a [u8]>,
    idempotency_w: Vec<i32>,
    idempotency_entities: Vec<&'a [u8]>,
    idempotency_keys: Vec<&'a str>,
    idempotency_fingerprints: Vec<[u8; 16]>,
    idempotency_replies: Vec<&'a [u8]>,
    timer_w: Vec<i32>,
    timer_entities: Vec<&'a [u8]>,
    /// NULL clears the entity's timer.
    timer_dues: Vec<Option<i64>>,
    summary_w: Vec<i32>,
    summary_scopes: Vec<&'a [u8]>,
    summary_entities: Vec<&'a [u8]>,
    summary_values: Vec<&'a [u8]>,
    event_w: Vec<i32>,
    event_entities: Vec<&'a [u8]>,
    event_bodies: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(writes: &'a [EntityWrite]) -> Result<Self, StoreError> {
        let mut c = Self::default();
        for (index, write) in writes.iter().enumerate() {
            let w = i32::try_from(index + 1)
                .map_err(|_| StoreError::Backend("a commit of over 2^31 writes".into()))?;
            let key = write.key.as_slice();
            let shard = to_i32(write.shard)?;
            c.shards.push(shard);
            c.write_shards.push(shard);
            c.write_epochs.push(to_i64(write.epoch, "epoch")?);
            for (seq, entry) in &write.journal {
                c.journal_w.push(w);
                c.journal_entities.push(key);
                c.journal_seqs.push(to_i64(*seq, "journal sequence")?);
                c.journal_entries.push(entry);
            }
            if let Some((seq, state)) = &write.snapshot {
                c.snapshot_w.push(w);
                c.snapshot_entities.push(key);
                c.snapshot_seqs.push(to_i64(*seq, "snapshot sequence")?);
                c.snapshot_states.push(state);
            }
            for record in &write.idempotency {
                c.idempotency_w.push(w);
                c.idempotency_entities.push(key);
                c.idempotency_keys.push(&record.key);
                c.idempotency_fingerprints
                    .push(record.fingerprint.to_be_bytes());
                c.idempotency_replies.push(&record.reply);
            }
            if let Some(timer) = write.timer {
                c.timer_w.push(w);
                c.timer_entities.push(key);
                c.timer_dues
                    .push(timer.map(|due| to_i64(due, "timer")).transpose()?);
            }
            if let Some((scope, value)) = &write.summary {
                c.summary_w.push(w);
                c.summary_scopes.push(scope);
                c.summary_entities.push(key);
                c.summary_values.push(value);
            }
            for body in &write.events {
                c.event_w.push(w);
                c.event_entities.push(key);
                c.event_bodies.push(body);
            }
        }
        c.shards.sort_unstable();
        c.shards.dedup();
        Ok(c)
    }
}

impl PostgresStore {
    /// Commits `batch` in one statement (see the module's comment); the
    /// writes whose epoch differed from their shard's are refused.
    pub(super) async fn commit_batch(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        if batch.entities.is_empty() {
            return Ok(Committed::default());
        }
        let columns = Columns::of(&batch.entities)?;
        let shard_count = i64::from(self.shard_count);
        let beyond: Vec<i32> = columns
            .shards
            .iter()
            .copied()
            .filter(|shard| i64::from(*shard) >= shard_count)
            .collect();
        let mut client = self.client().await?;
        if !beyond.is_empty() {
            let ensure = client
                .prepare_cached(ENSURE_SHARD_ROWS)
                .await
                .map_err(StoreError::backend)?;
            client
                .execute(&ensure, &[&beyond])
                .await
                .map_err(StoreError::backend)?;
        }
        let statement = client
            .prepare_cached(COMMIT_BATCH)
            .await
            .map_err(StoreError::backend)?;
        let fingerprints: Vec<&[u8]> = columns
            .idempotency_fingerprints
            .iter()
            .map(|bytes| bytes.as_slice())
            .collect();
        let c = &columns;
        let params: [Param; 26] = [
            &c.shards,
            &c.write_shards,
            &c.write_epochs,
            &c.journal_w,
            &c.journal_entities,
            &c.journal_seqs,
            &c.journal_entries,
            &c.snapshot_w,
            &c.snapshot_entities,
            &c.snapshot_seqs,
            &c.snapshot_states,
            &c.idempotency_w,
            &c.idempotency_entities,
            &c.idempotency_keys,
            &fingerprints,
            &c.idempotency_replies,
            &c.timer_w,
            &c.timer_entities,
            &c.timer_dues,
            &c.summary_w,
            &c.summary_scopes,
            &c.summary_entities,
            &c.summary_values,
            &c.event_w,
            &c.event_entities,
            &c.event_bodies,
        ];
        let rows = match self.pause_after_lock {
            None => client
                .query(&statement, &params)
                .await
                .map_err(StoreError::backend)?,
            // The failpoint needs a window between the lock and the commit:
            // the same statement inside an explicit transaction, held open.
            Some(pause) => {
                let tx = client.transaction().await.map_err(StoreError::backend)?;
                let rows = tx
                    .query(&statement, &params)
                    .await
                    .map_err(StoreError::backend)?;
                tokio::time::sleep(pause).await;
                tx.commit().await.map_err(StoreError::backend)?;
                rows
            }
        };
        let mut epochs = HashMap::with_capacity(rows.len());
        for row in &rows {
            let shard: i32 = row.try_get(0).map_err(StoreError::backend)?;
            let epoch: i64 = row.try_get(1).map_err(StoreError::backend)?;
            epochs.insert(shard, from_i64(epoch, "epoch")?);
        }
        // The same test the statement made: equal, not at-least (a writer
        // ahead of the stored epoch has not fenced yet, so the previous
        // owner may still be writing). A shard without a fence row had
        // nothing to lock, so nothing of its writes was applied either.
        let mut fenced = Vec::new();
        for (index, write) in batch.entities.iter().enumerate() {
            let current = epochs.get(&to_i32(write.shard)?).copied();
            if current != Some(write.epoch) {
                fenced.push((index, current.unwrap_or_default()));
            }
        }
        Ok(Committed { fenced })
    }
}
