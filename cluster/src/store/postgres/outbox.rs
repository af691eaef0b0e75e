//! The PostgreSQL store's outbox (migration 0003): events inserted by the
//! transaction of the change that caused them, numbered per shard.
//!
//! The commit statement (`commit.rs`) locks the `event_bounds` rows of its
//! shards `FOR UPDATE` (in shard order, so two commits never wait on each
//! other in a cycle), numbers its events from each `head`, moves the heads
//! and inserts the events. Two commits to one shard therefore number and
//! become visible in the same order: a reader that sees event n sees every
//! event before it, and a new owner continues the sequence its predecessor
//! left. This file reads, bounds and purges what they wrote.

use std::time::Duration;

use super::{from_i64, limit, to_i32, to_i64, PostgresStore};
use crate::store::{ShardEvents, StoreError, StoredEvent};

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
