//! The PostgreSQL store's records of no shard (migration 0004): one row per
//! `(kind, id)`, each written in its own statement (autocommit, durable).

use super::{limit, PostgresStore};
use crate::store::StoreError;

const UPSERT: &str = "INSERT INTO records (kind, id, value) VALUES ($1, $2, $3) \
     ON CONFLICT (kind, id) DO UPDATE SET value = EXCLUDED.value";
// One statement for many rows: a single round trip, atomic in autocommit.
const UPSERT_MANY: &str = "INSERT INTO records (kind, id, value) \
     SELECT $1, u.id, u.value FROM unnest($2::text[], $3::bytea[]) AS u(id, value) \
     ON CONFLICT (kind, id) DO UPDATE SET value = EXCLUDED.value";
const SELECT: &str = "SELECT value FROM records WHERE kind = $1 AND id = $2";
const DELETE: &str = "DELETE FROM records WHERE kind = $1 AND id = $2";
// starts_with keeps a prefix's wildcards (% and _) literal.
const LIST: &str = "SELECT id, value FROM records \
     WHERE kind = $1 AND starts_with(id, $2) AND id > $3 ORDER BY id LIMIT $4";

impl PostgresStore {
    pub(super) async fn put(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.execute_one(UPSERT, &[&kind, &id, &value]).await?;
        Ok(())
    }

    pub(super) async fn put_many(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        // One statement may not update a row twice: keep each id's last.
        let mut last: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
        last.extend(records);
        if last.is_empty() {
            return Ok(());
        }
        let (ids, values): (Vec<String>, Vec<Vec<u8>>) = last.into_iter().unzip();
        self.execute_one(UPSERT_MANY, &[&kind, &ids, &values])
            .await?;
        Ok(())
    }

    pub(super) async fn get(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(SELECT, &[&kind, &id]).await?;
        rows.first()
            .map(|row| row.try_get(0).map_err(StoreError::backend))
            .transpose()
    }

    pub(super) async fn delete(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = self.execute_one(DELETE, &[&kind, &id]).await?;
        Ok(deleted > 0)
    }

    pub(super) async fn list(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        page: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let after = after.unwrap_or_default();
        let rows = self
            .query(LIST, &[&kind, &prefix, &after, &limit(page)])
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(StoreError::backend)?,
                    row.try_get(1).map_err(StoreError::backend)?,
                ))
            })
            .collect()
    }
}
