//! The PostgreSQL store's outbox (migration 0003): events inserted by the
//! transaction of the change that caused them, numbered per shard.
//!
//! A commit locks the `event_bounds` rows of its shards `FOR UPDATE` (after
//! the fence rows, in shard order, so two commits never wait on each other
//! in a cycle), numbers its events from each `head`, moves the heads and
//! inserts the events. Two commits to one shard therefore number and become
//! visible in the same order: a reader that sees event n sees every event
//! before it, and a new owner continues the sequence its predecessor left.

use std::collections::HashMap;
use std::time::Duration;

use super::{from_i64, limit, to_i32, to_i64, Param, PostgresStore};
use crate::store::{EntityWrite, ShardEvents, StoreError, StoredEvent};

const LOCK_BOUNDS: &str = "SELECT shard, head FROM event_bounds \
     WHERE shard = ANY($1::int[]) ORDER BY shard FOR UPDATE";
const INSERT_MISSING_BOUNDS: &str = "INSERT INTO event_bounds (shard) \
     SELECT shard FROM UNNEST($1::int[]) AS shard ON CONFLICT (shard) DO NOTHING";
const MOVE_HEADS: &str = "UPDATE event_bounds AS b SET head = moved.head \
     FROM UNNEST($1::int[], $2::bigint[]) AS moved(shard, head) WHERE b.shard = moved.shard";
// recorded_at_ms is the database's clock when the row is inserted, after the
// shard's bounds are locked, so it grows with seq within a shard.
const INSERT_EVENTS: &str = "INSERT INTO events (shard, seq, recorded_at_ms, entity, body) \
     SELECT shard, seq, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, entity, body \
     FROM UNNEST($1::int[], $2::bigint[], $3::bytea[], $4::bytea[]) AS rows(shard, seq, entity, body)";
// Only shards with events after the reader's position cost an index probe.
const READ_EVENTS: &str = "SELECT e.shard, e.seq, e.recorded_at_ms, e.entity, e.body \
     FROM event_bounds AS b \
     LEFT JOIN UNNEST($1::int[], $2::bigint[]) AS c(shard, after) ON c.shard = b.shard \
     CROSS JOIN LATERAL (SELECT shard, seq, recorded_at_ms, entity, body FROM events \
         WHERE events.shard = b.shard AND events.seq > coalesce(c.after, 0) \
         ORDER BY seq LIMIT $3) AS e \
     WHERE b.head > coalesce(c.after, 0) \
     ORDER BY e.shard, e.seq";
const SELECT_SHARD_EVENTS: &str = "SELECT shard, seq, recorded_at_ms, entity, body \
     FROM events WHERE shard = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const SELECT_BOUNDS: &str =
    "SELECT shard, floor, head FROM event_bounds WHERE head > 0 ORDER BY shard";
const SELECT_ENTITY_EVENTS: &str = "SELECT shard, seq, recorded_at_ms, entity, body \
     FROM events WHERE entity = $1 AND seq > $2 ORDER BY seq LIMIT $3";
// One shard at a time, so a purge holds one bounds row and never waits on a
// commit in a cycle. The oldest `$2` events of the shard are looked at; the
// ones recorded before the database's clock less the retention ($1, ms) go,
// and the floor rises past them.
const PURGE_SHARD: &str = "WITH target AS ( \
         SELECT b.shard, (SELECT max(s.seq) FROM ( \
             SELECT seq, recorded_at_ms FROM events \
             WHERE shard = b.shard AND seq > b.floor ORDER BY seq LIMIT $2) AS s \
             WHERE s.recorded_at_ms < (extract(epoch FROM now()) * 1000)::bigint - $1) AS upto \
         FROM event_bounds AS b WHERE b.shard = $3 AND b.head > b.floor), \
     gone AS (DELETE FROM events AS e USING target AS t \
         WHERE e.shard = t.shard AND e.seq <= t.upto RETURNING 1), \
     raised AS (UPDATE event_bounds AS b SET floor = t.upto FROM target AS t \
         WHERE b.shard = t.shard AND t.upto > b.floor RETURNING 1) \
     SELECT count(*) FROM gone";

/// Numbers the events of the accepted writes and adds them to the
/// transaction, with the moved heads. Returns once both are sent.
pub(super) async fn append(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[&EntityWrite],
) -> Result<(), StoreError> {
    let mut shards: Vec<i32> = writes
        .iter()
        .filter(|write| !write.events.is_empty())
        .map(|write| to_i32(write.shard))
        .collect::<Result<_, _>>()?;
    if shards.is_empty() {
        return Ok(());
    }
    shards.sort_unstable();
    shards.dedup();
    let mut heads = lock_bounds(tx, &shards).await?;
    let (mut event_shards, mut seqs, mut entities, mut bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Only the shards locked above move: a write without events (a refusal
    // recorded, a timer) must not touch its shard's head.
    for write in writes.iter().filter(|write| !write.events.is_empty()) {
        let shard = to_i32(write.shard)?;
        let head = heads.get_mut(&shard).ok_or_else(|| {
            StoreError::Backend(format!("shard {shard}'s event bounds were not locked"))
        })?;
        for body in &write.events {
            *head += 1;
            event_shards.push(shard);
            seqs.push(*head);
            entities.push(write.key.as_slice());
            bodies.push(body.as_slice());
        }
    }
    let (moved_shards, moved_heads): (Vec<i32>, Vec<i64>) = heads.into_iter().unzip();
    let move_heads = tx
        .prepare_cached(MOVE_HEADS)
        .await
        .map_err(StoreError::backend)?;
    let insert = tx
        .prepare_cached(INSERT_EVENTS)
        .await
        .map_err(StoreError::backend)?;
    let move_params: [Param; 2] = [&moved_shards, &moved_heads];
    let insert_params: [Param; 4] = [&event_shards, &seqs, &entities, &bodies];
    tokio::try_join!(
        tx.execute(&move_heads, &move_params),
        tx.execute(&insert, &insert_params),
    )
    .map_err(StoreError::backend)?;
    Ok(())
}

/// Locks the bounds rows of `shards` (sorted, distinct) and returns their
/// heads; a shard without a row gets one first.
async fn lock_bounds(
    tx: &deadpool_postgres::Transaction<'_>,
    shards: &[i32],
) -> Result<HashMap<i32, i64>, StoreError> {
    let select = tx
        .prepare_cached(LOCK_BOUNDS)
        .await
        .map_err(StoreError::backend)?;
    let read = |rows: Vec<tokio_postgres::Row>| -> Result<HashMap<i32, i64>, StoreError> {
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(StoreError::backend)?,
                    row.try_get(1).map_err(StoreError::backend)?,
                ))
            })
            .collect()
    };
    let mut heads = read(
        tx.query(&select, &[&shards])
            .await
            .map_err(StoreError::backend)?,
    )?;
    if heads.len() < shards.len() {
        tx.execute(INSERT_MISSING_BOUNDS, &[&shards])
            .await
            .map_err(StoreError::backend)?;
        heads = read(
            tx.query(&select, &[&shards])
                .await
                .map_err(StoreError::backend)?,
        )?;
    }
    Ok(heads)
}

fn stored_event(row: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    let shard: i32 = row.try_get(0).map_err(StoreError::backend)?;
    let seq: i64 = row.try_get(1).map_err(StoreError::backend)?;
    let recorded_at_ms: i64 = row.try_get(2).map_err(StoreError::backend)?;
    Ok(StoredEvent {
        shard: u32::try_from(shard)
            .map_err(|_| StoreError::Backend(format!("stored shard {shard} is negative")))?,
        seq: from_i64(seq, "event sequence")?,
        recorded_at_ms: from_i64(recorded_at_ms, "event time")?,
        entity: row.try_get(3).map_err(StoreError::backend)?,
        body: row.try_get(4).map_err(StoreError::backend)?,
    })
}

impl PostgresStore {
    pub(super) async fn read_outbox(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut shards = Vec::with_capacity(after.len());
        let mut positions = Vec::with_capacity(after.len());
        for (shard, seq) in after {
            shards.push(to_i32(shard)?);
            positions.push(to_i64(seq, "event position")?);
        }
        let rows = self
            .query(READ_EVENTS, &[&shards, &positions, &limit(per_shard)])
            .await?;
        rows.iter().map(stored_event).collect()
    }

    pub(super) async fn read_shard(
        &self,
        shard: u32,
        after: u64,
        per_page: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self
            .query(
                SELECT_SHARD_EVENTS,
                &[
                    &to_i32(shard)?,
                    &to_i64(after, "event position")?,
                    &limit(per_page),
                ],
            )
            .await?;
        rows.iter().map(stored_event).collect()
    }

    pub(super) async fn outbox_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        let rows = self.query(SELECT_BOUNDS, &[]).await?;
        rows.iter()
            .map(|row| {
                let shard: i32 = row.try_get(0).map_err(StoreError::backend)?;
                let floor: i64 = row.try_get(1).map_err(StoreError::backend)?;
                let head: i64 = row.try_get(2).map_err(StoreError::backend)?;
                Ok(ShardEvents {
                    shard: u32::try_from(shard).map_err(|_| {
                        StoreError::Backend(format!("stored shard {shard} is negative"))
                    })?,
                    floor: from_i64(floor, "event floor")?,
                    head: from_i64(head, "event head")?,
                })
            })
            .collect()
    }

    pub(super) async fn outbox_of_entity(
        &self,
        entity: &[u8],
        after: u64,
        per_page: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self
            .query(
                SELECT_ENTITY_EVENTS,
                &[&entity, &to_i64(after, "event position")?, &limit(per_page)],
            )
            .await?;
        rows.iter().map(stored_event).collect()
    }

    pub(super) async fn purge_outbox(
        &self,
        retention: Duration,
        shards: Vec<u32>,
        budget: usize,
    ) -> Result<usize, StoreError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(PURGE_SHARD)
            .await
            .map_err(StoreError::backend)?;
        let mut purged = 0usize;
        for shard in shards {
            if purged >= budget {
                break;
            }
            let left = limit(budget - purged);
            let row = client
                .query_one(&statement, &[&retention_ms, &left, &to_i32(shard)?])
                .await
                .map_err(StoreError::backend)?;
            let count: i64 = row.try_get(0).map_err(StoreError::backend)?;
            purged += usize::try_from(count).unwrap_or(0);
        }
        Ok(purged)
    }
}
