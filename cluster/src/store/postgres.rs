//! The cluster-mode store: one PostgreSQL database shared by every node, so
//! a shard can move to any node and find its entities there.
//!
//! Fencing lives in the database, not in the nodes: a commit reads the
//! epochs of its shards `FOR SHARE` in the same statement as its writes,
//! and [`Store::fence`] raises an epoch with an `UPDATE` of the same row. The
//! row lock makes the new owner's fence wait for the old owner's commit in
//! flight, and every commit that starts after the fence sees the new epoch,
//! so a stale owner can never slip a write in after a claim.
//!
//! A commit is one statement for the whole group-commit batch (`commit`):
//! one round trip and one WAL flush whatever its size.
//!
//! The schema lives in `cluster/migrations/`; every node applies what is
//! missing when it connects.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Committed, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError, StoredEvent,
    SummaryRow, WriteBatch,
};

use crate::tls::ReloadingClientConfig;

mod commit;
mod outbox;
mod records;

/// Migrations as (version, SQL), applied in order. A released migration is
/// never edited: a change to the schema is a new file and a new entry.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/0002_store_clock_and_settings.sql"),
    ),
    (3, include_str!("../../migrations/0003_outbox.sql")),
    (4, include_str!("../../migrations/0004_records.sql")),
    (5, include_str!("../../migrations/0005_fewer_indexes.sql")),
];

/// Key of the transaction-scoped advisory lock that serializes the
/// migrations of nodes connecting at the same time ("skuld" and 1).
const MIGRATION_LOCK: i64 = 0x736b_756c_6400_0001;

/// Bounds connecting (DNS, TCP, authentication) so a node notices an
/// unreachable database instead of hanging its writer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds how long unacknowledged data may sit on a connection whose server
/// vanished without closing it (a failed-over host), which TCP alone would
/// retry for many minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds the wait for a pooled connection, so an overloaded database turns
/// into errors the callers can shed rather than an ever-growing queue.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

const RAISE_FENCE: &str = "INSERT INTO shard_fences (shard, epoch) VALUES ($1, $2) \
     ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch \
     WHERE shard_fences.epoch <= EXCLUDED.epoch";
const SELECT_SNAPSHOT: &str = "SELECT seq, state FROM snapshots WHERE entity = $1";
const SELECT_JOURNAL_AFTER: &str =
    "SELECT seq, entry FROM journal WHERE entity = $1 AND seq > $2 ORDER BY seq";
const SELECT_IDEMPOTENCY_KEYS: &str = "SELECT key FROM idempotency WHERE entity = $1 LIMIT $2";
const SELECT_JOURNAL: &str = "SELECT seq, entry FROM journal WHERE entity = $1 ORDER BY seq";
// The idempotency records asked for by many drains at once, one primary-key
// probe per (entity, key): plain `key = ANY($2)` or a join let the planner
// scan every record of an entity (a hot position holds tens of thousands) on
// every drain; `LIMIT 1` in a LATERAL subquery keeps it from being flattened.
// `asked.lookup` says which request a row answers.
const SELECT_IDEMPOTENCY: &str = "SELECT i.key, i.fingerprint, i.reply, i.recorded_at_ms, \
         asked.lookup \
     FROM unnest($1::bytea[], $2::text[], $3::int4[]) AS asked(entity, key, lookup) \
     CROSS JOIN LATERAL (SELECT key, fingerprint, reply, recorded_at_ms FROM idempotency \
         WHERE entity = asked.entity AND key = asked.key LIMIT 1) AS i";
/// Lookups merged into one query at most.
const MAX_LOOKUP_BATCH: usize = 1_024;
/// Lookup queries in flight at once.
const CONCURRENT_LOOKUPS: usize = 4;
const SELECT_DUE_TIMERS: &str = "SELECT entity, due_ms FROM timers WHERE due_ms <= $1 \
     ORDER BY due_ms, entity LIMIT $2";
const SELECT_DUE_TIMERS_OF_SHARDS: &str = "SELECT entity, due_ms FROM timers \
     WHERE due_ms <= $1 AND shard = ANY($3::int[]) ORDER BY due_ms, entity LIMIT $2";
// The cut-off is the database's clock less the retention ($1, ms); a node
// purges the shards it owns ($3). SKIP LOCKED: a purge never waits behind a
// commit that holds the same rows.
const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE (entity, key) IN ( \
     SELECT entity, key FROM idempotency \
     WHERE shard = ANY($3::int[]) \
       AND recorded_at_ms < (extract(epoch FROM now()) * 1000)::bigint - $1 \
     ORDER BY shard, recorded_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)";
/// Rows stored before migration 2 carry no shard.
const PURGE_UNSHARDED_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE (entity, key) IN ( \
     SELECT entity, key FROM idempotency \
     WHERE shard IS NULL \
       AND recorded_at_ms < (extract(epoch FROM now()) * 1000)::bigint - $1 \
     LIMIT $2 FOR UPDATE SKIP LOCKED)";
/// Keyset paging over (scope, entity), the primary key; `scope >= $1`
/// starts the index range at the prefix.
const SCAN_SUMMARIES: &str = "SELECT scope, entity, value FROM summaries \
    WHERE scope >= $1 AND substring(scope FROM 1 FOR $2) = $1 AND (scope, entity) > ($3, $4) \
    ORDER BY scope, entity LIMIT $5";
const SELECT_SUMMARIES: &str =
    "SELECT entity, value FROM summaries WHERE scope = $1 ORDER BY entity LIMIT $2";
const SELECT_SUMMARIES_AFTER: &str = "SELECT entity, value FROM summaries \
     WHERE scope = $1 AND entity > $3 ORDER BY entity LIMIT $2";

type Param<'a> = &'a (dyn ToSql + Sync);
/// (key, value) rows.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The safety timeouts every session gets (see [`PostgresStore::connect`]),
/// and generic plans for its prepared statements: the statements take
/// arrays, so a custom plan (which PostgreSQL would otherwise keep choosing,
/// since it knows the array lengths) buys nothing but planning the group
/// commit's statement again on every commit, about 0.5 ms of the server.
const SAFETY_OPTIONS: &str = "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=15000 \
     -c plan_cache_mode=force_generic_plan";

/// The PostgreSQL store of cluster mode. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: Pool,
    shard_count: u32,
    /// Failpoint for the fencing tests: each commit runs its statement in
    /// an explicit transaction and waits this long after the statement (its
    /// fence rows locked, its writes done) and before COMMIT, as a paused
    /// owner would. Without it a commit is one autocommit statement.
    pause_after_lock: Option<Duration>,
    /// Idempotency lookups, batched like the group commit batches writes:
    /// every actor's drain asks for its keys, and the lookups that queue up
    /// while a query runs share the next one.
    lookups: mpsc::Sender<Lookup>,
}

type LookupAnswer = Result<Vec<Option<IdempotencyRecord>>, StoreError>;

#[derive(Debug)]
struct Lookup {
    entity: Vec<u8>,
    keys: Vec<String>,
    answer: oneshot::Sender<LookupAnswer>,
}

impl PostgresStore {
    /// Connects a pool of up to `pool_size` connections to `url`, brings the
    /// schema up to date and makes sure every shard in `0..shard_count` has
    /// a fence row, so commits always have a row to lock.
    pub async fn connect(
        url: &str,
        shard_count: u32,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        Self::connect_with_tls(url, shard_count, pool_size, None).await
    }

    /// [`PostgresStore::connect`], over TLS when `tls` is given: every
    /// connection then requires TLS (a server that offers none is refused,
    /// never fallen back from), the server's chain and host name are
    /// verified against the CA (libpq's `verify-full`), and the client
    /// certificate, when configured, is presented for `cert`
    /// authentication. Each new pooled connection reads the files again if
    /// they changed (see [`ReloadingClientConfig`]); open ones stay up.
    pub async fn connect_with_tls(
        url: &str,
        shard_count: u32,
        pool_size: usize,
        tls: Option<Arc<ReloadingClientConfig>>,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::backend)?;
        if tls.is_some() {
            require_tls(&mut config)?;
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("skuld");
        }
        // A zombie owner (paused, or cut off) can leave a commit transaction
        // open holding its fence rows FOR SHARE; the new owner's fence would
        // wait behind it indefinitely. The server ends such a session, and no
        // statement waits for a lock for long. A URL's own `options` are
        // kept and come last, so a setting it names explicitly wins.
        let options = merged_options(config.get_options());
        config.options(&options);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        // Fast recycling still drops a connection whose socket closed (a
        // restarted or failed-over server) before handing it out; checking
        // each one with a query would add a round trip to every call.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, PostgresTls(tls), manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .build()
            .map_err(StoreError::backend)?;
        let (lookups, queue) = mpsc::channel(16_384);
        tokio::spawn(run_lookups(pool.clone(), queue));
        let store = Self {
            pool,
            shard_count,
            pause_after_lock: None,
            lookups,
        };
        store.migrate(shard_count).await?;
        Ok(store)
    }

    /// Failpoint: every commit runs its statement in an explicit
    /// transaction and pauses for `pause` after it (fence rows locked,
    /// writes done) and before COMMIT, the window a zombie owner would sit
    /// in. This is not the production path, which commits in autocommit
    /// at the end of the one statement.
    pub fn pause_commits_after_lock(mut self, pause: Option<Duration>) -> Self {
        self.pause_after_lock = pause;
        self
    }

    /// The highest fence epoch stored, and its shard: every claim etcd makes
    /// from now on must be above it, or the store refuses it.
    pub async fn newest_fence(&self) -> Result<Option<(u32, u64)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT shard, epoch FROM shard_fences ORDER BY epoch DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(StoreError::backend)?;
        row.map(|row| {
            let shard: i32 = row.try_get(0).map_err(StoreError::backend)?;
            let epoch: i64 = row.try_get(1).map_err(StoreError::backend)?;
            Ok((
                u32::try_from(shard).map_err(StoreError::backend)?,
                from_i64(epoch, "epoch")?,
            ))
        })
        .transpose()
    }

    /// One cached prepared statement on a pooled connection: its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let (client, statement) = self.prepared(sql).await?;
        client
            .query(&statement, params)
            .await
            .map_err(StoreError::backend)
    }

    /// One cached prepared statement without rows: how many it touched.
    async fn execute_one(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let (client, statement) = self.prepared(sql).await?;
        client
            .execute(&statement, params)
            .await
            .map_err(StoreError::backend)
    }

    /// A pooled connection and `sql` prepared on it (cached per connection).
    async fn prepared(&self, sql: &str) -> Result<(Object, tokio_postgres::Statement), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(StoreError::backend)?;
        Ok((client, statement))
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(StoreError::backend)
    }

    /// Applies the missing migrations and creates the missing fence rows in
    /// one transaction under an advisory lock: nodes that start together
    /// take turns, and all but the first find nothing to do.
    async fn migrate(&self, shard_count: u32) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(StoreError::backend)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS skuld_schema_migrations ( \
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(StoreError::backend)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM skuld_schema_migrations", &[])
            .await
            .map_err(StoreError::backend)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(StoreError::backend)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .map_err(|error| StoreError::Backend(format!("migration {version}: {error}")))?;
            tx.execute(
                "INSERT INTO skuld_schema_migrations (version, applied_at) VALUES ($1, now())",
                &[version],
            )
            .await
            .map_err(StoreError::backend)?;
            tracing::info!(version, "applied a PostgreSQL schema migration");
        }
        check_shard_count(&tx, shard_count).await?;
        let shard_count = i32::try_from(shard_count).map_err(|_| {
            StoreError::Backend(format!("shard count {shard_count} does not fit an int"))
        })?;
        tx.execute(
            "INSERT INTO shard_fences (shard, epoch) \
             SELECT shard, 0 FROM generate_series(0, $1 - 1) AS shard \
             ON CONFLICT (shard) DO NOTHING",
            &[&shard_count],
        )
        .await
        .map_err(StoreError::backend)?;
        tx.execute(
            "INSERT INTO event_bounds (shard) \
             SELECT shard FROM generate_series(0, $1 - 1) AS shard \
             ON CONFLICT (shard) DO NOTHING",
            &[&shard_count],
        )
        .await
        .map_err(StoreError::backend)?;
        tx.commit().await.map_err(StoreError::backend)
    }
}

/// TLS on every connection, whatever the URL says: `sslmode=prefer` (the
/// default) would fall back to plaintext when the server offers no TLS, and
/// `disable` contradicts the CA file the operator configured. A Unix socket
/// carries no TLS, so it cannot be what was meant either.
fn require_tls(config: &mut tokio_postgres::Config) -> Result<(), StoreError> {
    if config.get_ssl_mode() == SslMode::Disable {
        return Err(StoreError::Incompatible(
            "the PostgreSQL URL says sslmode=disable but postgres_tls_ca_file is set".into(),
        ));
    }
    if config
        .get_hosts()
        .iter()
        .any(|host| !matches!(host, Host::Tcp(_)))
    {
        return Err(StoreError::Incompatible(
            "the PostgreSQL URL names a Unix socket, which carries no TLS, but \
             postgres_tls_ca_file is set"
                .into(),
        ));
    }
    config.ssl_mode(SslMode::Require);
    Ok(())
}

/// The pool's TLS connector: each connection is made with the newest
/// configuration the files give (rustls verifies the server's chain to the
/// CA and that its certificate names the URL's host). Channel binding
/// (SCRAM-SHA-256-PLUS) comes with tokio-postgres-rustls.
#[derive(Clone)]
struct PostgresTls(Arc<ReloadingClientConfig>);

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresStream<<MakeRustlsConnect as MakeTlsConnect<S>>::Stream>;
    type TlsConnect = PostgresConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let config = ClientConfig::clone(&self.0.current());
        MakeTlsConnect::<S>::make_tls_connect(&mut MakeRustlsConnect::new(config), domain)
            .map(PostgresConnect)
    }
}

/// One handshake, its failure explained (see [`PostgresStream`]).
struct PostgresConnect<C>(C);

impl<S, C> TlsConnect<S> for PostgresConnect<C>
where
    C: TlsConnect<S, Error = io::Error>,
    C::Future: Send + 'static,
{
    type Stream = PostgresStream<C::Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.0.connect(stream);
        Box::pin(async move { handshake.await.map(PostgresStream).map_err(explained) })
    }
}

/// A TLS connection to PostgreSQL whose read errors say which option to
/// look at: with TLS 1.3 the server refuses a client certificate (another
/// CA, an expired one) with an alert after the handshake, at the first read
/// of the startup exchange, which would otherwise read only "received
/// fatal alert: UnknownCA".
struct PostgresStream<T>(T);

fn explained(error: io::Error) -> io::Error {
    match crate::tls::explain_failure(
        &error,
        "PostgreSQL",
        "postgres_tls_cert_file",
        "the server's ssl_ca_file",
        "postgres_tls_ca_file",
    ) {
        Some(text) => io::Error::new(error.kind(), text),
        None => error,
    }
}

impl<T: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream
    for PostgresStream<T>
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.0.channel_binding()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PostgresStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf).map_err(explained)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PostgresStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The URL's own `options` after the safety timeouts, so that a setting the
/// URL names itself wins (PostgreSQL applies `-c` options in order).
fn merged_options(own: Option<&str>) -> String {
    match own.map(str::trim) {
        Some(own) if !own.is_empty() => format!("{SAFETY_OPTIONS} {own}"),
        _ => SAFETY_OPTIONS.to_owned(),
    }
}

/// Refuses a store written by a cluster of another shard count: keys hash
/// to shards by it, so every key would be fenced and found under the wrong
/// shard. The count is recorded by the first node; a store from before
/// migration 2 is checked against its fence rows.
async fn check_shard_count(
    tx: &deadpool_postgres::Transaction<'_>,
    shard_count: u32,
) -> Result<(), StoreError> {
    let stored: Option<String> = tx
        .query_opt(
            "SELECT value FROM cluster_settings WHERE name = 'shard_count'",
            &[],
        )
        .await
        .map_err(StoreError::backend)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(StoreError::backend)?;
    let written_with = match stored {
        Some(value) => Some(value.parse::<u32>().map_err(|_| {
            StoreError::Backend(format!("stored shard_count {value:?} is not a number"))
        })?),
        None => {
            let fences: Option<i32> = tx
                .query_one("SELECT max(shard) FROM shard_fences", &[])
                .await
                .map_err(StoreError::backend)?
                .try_get(0)
                .map_err(StoreError::backend)?;
            fences
                .and_then(|max| u32::try_from(max).ok())
                .map(|max| max + 1)
        }
    };
    if let Some(written_with) = written_with {
        if written_with != shard_count {
            return Err(StoreError::Incompatible(format!(
                "this PostgreSQL database was written by a cluster of {written_with} shards, \
                 but etcd says the cluster has {shard_count}: the shard count is fixed for a \
                 store's life (was etcd rebuilt with another shard_count?)"
            )));
        }
    }
    tx.execute(
        "INSERT INTO cluster_settings (name, value) VALUES ('shard_count', $1) \
         ON CONFLICT (name) DO NOTHING",
        &[&shard_count.to_string()],
    )
    .await
    .map_err(StoreError::backend)?;
    Ok(())
}

/// Sequences, epochs and times are u64 in Rust and bigint in PostgreSQL;
/// a value past i64::MAX is refused rather than stored negative, which
/// would break the ordering every query relies on.
fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Backend(format!("{what} {value} does not fit a bigint")))
}

fn from_i64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Backend(format!("stored {what} {value} is negative")))
}

fn to_i32(shard: u32) -> Result<i32, StoreError> {
    i32::try_from(shard)
        .map_err(|_| StoreError::Backend(format!("shard {shard} does not fit an int")))
}

/// A query bound past every storable value means "everything".
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Runs queued lookups in batches until every store handle is gone.
async fn run_lookups(pool: Pool, mut queue: mpsc::Receiver<Lookup>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_LOOKUPS));
    let mut pending = Vec::with_capacity(MAX_LOOKUP_BATCH);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut pending, MAX_LOOKUP_BATCH).await == 0 {
            return;
        }
        let batch = std::mem::take(&mut pending);
        let pool = pool.clone();
        tokio::spawn(async move {
            let found = lookup_batch(&pool, &batch).await;
            for (index, lookup) in batch.into_iter().enumerate() {
                let answer = match &found {
                    Ok(found) => Ok(lookup
                        .keys
                        .iter()
                        .map(|key| found.get(&(index, key.clone())).cloned())
                        .collect()),
                    Err(error) => Err(error.clone()),
                };
                // The asker may have gone (its request was cancelled).
                let _ = lookup.answer.send(answer);
            }
            drop(slot);
        });
    }
}

/// One query for every key of every lookup in `batch`; the records found by
/// (lookup index, key).
async fn lookup_batch(
    pool: &Pool,
    batch: &[Lookup],
) -> Result<HashMap<(usize, String), IdempotencyRecord>, StoreError> {
    let mut entities: Vec<&[u8]> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut lookups: Vec<i32> = Vec::new();
    for (index, lookup) in batch.iter().enumerate() {
        let index = i32::try_from(index).map_err(StoreError::backend)?;
        for key in &lookup.keys {
            entities.push(&lookup.entity);
            keys.push(key);
            lookups.push(index);
        }
    }
    let client = pool.get().await.map_err(StoreError::backend)?;
    let statement = client
        .prepare_cached(SELECT_IDEMPOTENCY)
        .await
        .map_err(StoreError::backend)?;
    let rows = client
        .query(&statement, &[&entities, &keys, &lookups])
        .await
        .map_err(StoreError::backend)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = decode_record(row)?;
        let lookup: i32 = row.try_get(4).map_err(StoreError::backend)?;
        let lookup = usize::try_from(lookup).map_err(StoreError::backend)?;
        found.insert((lookup, record.key.clone()), record);
    }
    Ok(found)
}

fn decode_record(row: &tokio_postgres::Row) -> Result<IdempotencyRecord, StoreError> {
    let key: String = row.try_get(0).map_err(StoreError::backend)?;
    let fingerprint: &[u8] = row.try_get(1).map_err(StoreError::backend)?;
    let fingerprint: [u8; 16] = fingerprint.try_into().map_err(|_| {
        StoreError::Backend("stored idempotency fingerprint is not 16 bytes".into())
    })?;
    let reply: Vec<u8> = row.try_get(2).map_err(StoreError::backend)?;
    let recorded_at_ms: i64 = row.try_get(3).map_err(StoreError::backend)?;
    Ok(IdempotencyRecord {
        key,
        fingerprint: u128::from_be_bytes(fingerprint),
        reply,
        recorded_at_ms: from_i64(recorded_at_ms, "recorded_at_ms")?,
    })
}

fn sequenced(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get(0).map_err(StoreError::backend)?;
            let entry: Vec<u8> = row.try_get(1).map_err(StoreError::backend)?;
            Ok((from_i64(seq, "journal sequence")?, entry))
        })
        .collect()
}

fn keyed(rows: Vec<tokio_postgres::Row>) -> Result<Pairs, StoreError> {
    rows.iter()
        .map(|row| {
            let key: Vec<u8> = row.try_get(0).map_err(StoreError::backend)?;
            let value: Vec<u8> = row.try_get(1).map_err(StoreError::backend)?;
            Ok((key, value))
        })
        .collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(SELECT_SNAPSHOT)
            .await
            .map_err(StoreError::backend)?;
        let snapshot = match client
            .query_opt(&statement, &[&key])
            .await
            .map_err(StoreError::backend)?
        {
            Some(row) => {
                let seq: i64 = row.try_get(0).map_err(StoreError::backend)?;
                let state: Vec<u8> = row.try_get(1).map_err(StoreError::backend)?;
                Some((from_i64(seq, "snapshot sequence")?, state))
            }
            None => None,
        };
        // Read after the snapshot: the journal only grows, so entries
        // committed in between are simply part of the tail.
        let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let statement = client
            .prepare_cached(SELECT_JOURNAL_AFTER)
            .await
            .map_err(StoreError::backend)?;
        let rows = client
            .query(&statement, &[&key, &bound(after)])
            .await
            .map_err(StoreError::backend)?;
        Ok(LoadedEntity {
            snapshot,
            journal_tail: sequenced(rows)?,
        })
    }

    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, answered) = oneshot::channel();
        self.lookups
            .send(Lookup {
                entity: entity.to_vec(),
                keys,
                answer,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }

    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        // One more than the limit tells "over the limit" from "exactly".
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let rows = self
            .query(SELECT_IDEMPOTENCY_KEYS, &[&entity, &fetch])
            .await?;
        if rows.len() > limit {
            return Ok(None);
        }
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(StoreError::backend))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        self.commit_batch(batch).await
    }

    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(RAISE_FENCE)
            .await
            .map_err(StoreError::backend)?;
        let raised = client
            .execute(&statement, &[&to_i32(shard)?, &to_i64(epoch, "epoch")?])
            .await
            .map_err(StoreError::backend)?;
        Ok(raised == 1)
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        if limit == 0 || shards.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let now = bound(now_ms);
        let count = self::limit(limit);
        let rows = match shards {
            Some(shards) => {
                let shards = shards
                    .into_iter()
                    .map(to_i32)
                    .collect::<Result<Vec<_>, _>>()?;
                let statement = client
                    .prepare_cached(SELECT_DUE_TIMERS_OF_SHARDS)
                    .await
                    .map_err(StoreError::backend)?;
                client.query(&statement, &[&now, &count, &shards]).await
            }
            None => {
                let statement = client
                    .prepare_cached(SELECT_DUE_TIMERS)
                    .await
                    .map_err(StoreError::backend)?;
                client.query(&statement, &[&now, &count]).await
            }
        }
        .map_err(StoreError::backend)?;
        rows.iter()
            .map(|row| {
                let entity: Vec<u8> = row.try_get(0).map_err(StoreError::backend)?;
                let due: i64 = row.try_get(1).map_err(StoreError::backend)?;
                Ok((entity, from_i64(due, "timer")?))
            })
            .collect()
    }

    async fn purge_idempotency(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        // Every node of a cluster owns shards; a store used without them
        // purges all of them.
        let shards = match shards {
            Some(shards) => shards,
            None => (0..self.shard_count).collect(),
        };
        if limit == 0 || shards.is_empty() {
            return Ok(0);
        }
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let unsharded_too = shards.contains(&0);
        let shards = shards
            .into_iter()
            .map(to_i32)
            .collect::<Result<Vec<_>, _>>()?;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(PURGE_IDEMPOTENCY)
            .await
            .map_err(StoreError::backend)?;
        let mut purged = client
            .execute(&statement, &[&retention_ms, &self::limit(limit), &shards])
            .await
            .map_err(StoreError::backend)?;
        if unsharded_too {
            let statement = client
                .prepare_cached(PURGE_UNSHARDED_IDEMPOTENCY)
                .await
                .map_err(StoreError::backend)?;
            purged += client
                .execute(&statement, &[&retention_ms, &self::limit(limit)])
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                        pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                &[],
            )
            .await
            .map_err(StoreError::backend)?;
        let now: i64 = row.try_get(0).map_err(StoreError::backend)?;
        let read_only: bool = row.try_get(1).map_err(StoreError::backend)?;
        if read_only {
            // Answers, but cannot take a commit: as good as unreachable.
            return Err(StoreError::Backend(
                "the database is read-only (a standby, or default_transaction_read_only)".into(),
            ));
        }
        Ok(Some(from_i64(now, "clock")?))
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let count = self::limit(limit);
        let rows = match &after {
            Some(after) => {
                let statement = client
                    .prepare_cached(SELECT_SUMMARIES_AFTER)
                    .await
                    .map_err(StoreError::backend)?;
                client.query(&statement, &[&scope, &count, after]).await
            }
            None => {
                let statement = client
                    .prepare_cached(SELECT_SUMMARIES)
                    .await
                    .map_err(StoreError::backend)?;
                client.query(&statement, &[&scope, &count]).await
            }
        }
        .map_err(StoreError::backend)?;
        keyed(rows)
    }

    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix_len = i32::try_from(scope_prefix.len())
            .map_err(|_| StoreError::Backend("summary scope prefix too long".into()))?;
        // Every real row sorts after ('', ''): a scope is never empty.
        let (after_scope, after_entity) = after.unwrap_or_default();
        let rows = self
            .query(
                SCAN_SUMMARIES,
                &[
                    &scope_prefix,
                    &prefix_len,
                    &after_scope,
                    &after_entity,
                    &self::limit(limit),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SummaryRow {
                    scope: row.try_get(0).map_err(StoreError::backend)?,
                    entity: row.try_get(1).map_err(StoreError::backend)?,
                    value: row.try_get(2).map_err(StoreError::backend)?,
                })
            })
            .collect()
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        sequenced(self.query(SELECT_JOURNAL, &[&key]).await?)
    }

    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_outbox(after, per_shard).await
    }

    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_shard(shard, after, limit).await
    }

    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        self.outbox_bounds().await
    }

    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.outbox_of_entity(entity, after, limit).await
    }

    async fn purge_events(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let shards = shards.unwrap_or_else(|| (0..self.shard_count).collect());
        self.purge_outbox(retention, shards, limit).await
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.put(kind, id, value).await
    }

    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.put_many(kind, records).await
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(kind, id).await
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        self.delete(kind, id).await
    }

    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(kind, prefix, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_own_options_come_after_the_safety_timeouts() {
        assert_eq!(merged_options(None), SAFETY_OPTIONS);
        assert_eq!(merged_options(Some("  ")), SAFETY_OPTIONS);
        let merged = merged_options(Some("-c search_path=skuld"));
        assert!(merged.starts_with(SAFETY_OPTIONS), "{merged}");
        assert!(merged.ends_with("-c search_path=skuld"), "{merged}");
    }
}
