//! A simulated etcd speaking the real etcd gRPC API (KV, Lease, Watch).
//!
//! It is served by tonic on etcd-client's own server traits over any
//! incoming stream: turmoil TCP in the simulation, a loopback listener in
//! the conformance test (`sim/tests/etcd_conformance.rs`), which runs one
//! script against this and against a real etcd and wants the same answers.
//! skuld's membership talks to it through its unchanged `etcd_client` code.
//!
//! What it models, as etcd 3.4 does it:
//! - one MVCC revision, bumped once per request that writes (a txn with
//!   several writes gives them all one revision; lease grants and no-op
//!   txns do not bump it), per key create/mod revision, version and lease;
//!   history kept for ranges and watches at older revisions until a
//!   compaction ([`mvcc`]);
//! - leases with a TTL on `tokio::time`, expiring by deleting their keys,
//!   keep-alive streams answering TTL 0 for an unknown lease ([`lease`]);
//! - watches with prefixes, start revisions, prev_kv, progress notices and
//!   cancellation, many per stream ([`watch`]);
//! - faults from a cloneable [`EtcdFaults`] handle ([`faults`]).
//!
//! Time is only `tokio::time` (paused and driven by turmoil in the
//! simulation) and every map that reaches an answer is ordered, so one seed
//! gives one trace.

mod faults;
mod kv;
mod lease;
mod mvcc;
#[cfg(test)]
mod tests;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{PbKvServer, PbLeaseServer, PbResponseHeader, PbWatchServer};
use futures::Stream;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::metadata::MetadataMap;
use tonic::transport::server::Connected;
use tonic::Status;

pub use faults::EtcdFaults;

use faults::FaultState;
use lease::Leases;
use mvcc::Mvcc;

/// The cluster id and member id every answer carries (one member).
const CLUSTER_ID: u64 = 0x5c1d_e7cd_0000_0001;
const MEMBER_ID: u64 = 0x5c1d_e7cd_0000_0002;

/// The metadata key etcd-client's `with_require_leader` sends.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// How the simulated etcd is set up; the defaults are etcd's own.
#[derive(Debug, Clone)]
pub struct SimEtcdConfig {
    /// The smallest TTL a lease is granted, in seconds: etcd's is
    /// 1.5 election timeouts rounded up (2 s with its default 1 s).
    pub min_lease_ttl: i64,
    /// How much longer than its TTL a lease lives after a leader change
    /// (etcd's new leader extends every lease by one election timeout).
    pub leader_change_extension: Duration,
    /// How often expired leases are looked for (etcd: every 500 ms).
    pub lease_check_interval: Duration,
    /// How often a watch with progress_notify hears of the revision when it
    /// had no event (etcd's default is 10 minutes).
    pub progress_notify_interval: Duration,
}

impl Default for SimEtcdConfig {
    fn default() -> Self {
        Self {
            min_lease_ttl: 2,
            leader_change_extension: Duration::from_secs(1),
            lease_check_interval: Duration::from_millis(100),
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// A simulated single-member etcd. Its data lives as long as any clone, so
/// a host serving it again after a crash finds the keys (and leases, whose
/// TTLs start over as after a restart of etcd).
#[derive(Clone)]
pub struct SimEtcd {
    shared: Arc<Shared>,
}

/// What the services and the fault handle share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The current revision, sent after every write and compaction: what
    /// watch sessions wait on.
    revisions: tokio::sync::watch::Sender<i64>,
    faults: FaultState,
    config: SimEtcdConfig,
}

/// The store and lease table, changed together under one lock.
pub(crate) struct State {
    mvcc: Mvcc,
    leases: Leases,
    raft_term: u64,
}

impl Default for SimEtcd {
    fn default() -> Self {
        Self::new(SimEtcdConfig::default())
    }
}

impl SimEtcd {
    pub fn new(config: SimEtcdConfig) -> Self {
        let mvcc = Mvcc::default();
        let (revisions, _) = tokio::sync::watch::channel(mvcc.revision());
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    mvcc,
                    leases: Leases::default(),
                    // `serve` elects the first leader: term 2, as a fresh
                    // single member has.
                    raft_term: 1,
                }),
                revisions,
                faults: FaultState::default(),
                config,
            }),
        }
    }

    /// The handle the nemesis injects faults through.
    pub fn faults(&self) -> EtcdFaults {
        EtcdFaults::new(Arc::clone(&self.shared))
    }

    /// The current revision (for traces and checks).
    pub fn revision(&self) -> i64 {
        self.shared.state.lock().mvcc.revision()
    }

    /// Serves KV, Lease and Watch on `incoming` until it ends, and expires
    /// leases meanwhile. Every lease gets its full TTL again first, as a
    /// restarted etcd's new leader gives it.
    pub async fn serve<I, IO, IE>(self, incoming: I) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.shared.change_leader();
        let expiry = tokio::spawn(lease::expire_leases(Arc::clone(&self.shared)));
        let _stop_expiry = AbortOnDrop(expiry);
        tonic::transport::Server::builder()
            .add_service(PbKvServer::new(kv::KvService::new(Arc::clone(
                &self.shared,
            ))))
            .add_service(PbLeaseServer::new(lease::LeaseService::new(Arc::clone(
                &self.shared,
            ))))
            .add_service(PbWatchServer::new(watch::WatchService::new(Arc::clone(
                &self.shared,
            ))))
            .serve_with_incoming(incoming)
            .await
    }
}

/// Ends a background task with the future that started it (the server's
/// host may be crashed by the simulation at any poll).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    /// What every request goes through first: the configured slowness, then
    /// the leader check. Without a leader etcd refuses writes, and, when the
    /// client asks for a leader, everything.
    async fn admit(&self, metadata: &MetadataMap, writes: bool) -> Result<(), Status> {
        let delay = self.faults.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.faults.leaderless() && (writes || requires_leader(metadata)) {
            return Err(errors::no_leader());
        }
        Ok(())
    }

    /// A write's answer, unless the fault handle asked for it to be lost
    /// after the write applied.
    fn answer_write<T>(&self, answer: T) -> Result<tonic::Response<T>, Status> {
        if self.faults.take_dropped_reply() {
            return Err(errors::timed_out());
        }
        Ok(tonic::Response::new(answer))
    }

    /// Tells watch sessions the revision moved (or history was compacted).
    fn announce(&self, revision: i64) {
        self.revisions.send_replace(revision);
    }

    /// A new leader: every lease lives its full TTL again (plus one election
    /// timeout), and the term moves on.
    fn change_leader(&self) {
        let mut state = self.state.lock();
        state.raft_term += 1;
        let until = tokio::time::Instant::now() + self.config.leader_change_extension;
        state.leases.restart_all(until);
    }
}

impl State {
    /// The header of an answer given now.
    fn header(&self) -> PbResponseHeader {
        header(self.raft_term, self.mvcc.revision())
    }
}

fn header(raft_term: u64, revision: i64) -> PbResponseHeader {
    PbResponseHeader {
        cluster_id: CLUSTER_ID,
        member_id: MEMBER_ID,
        revision,
        raft_term,
    }
}

/// Whether the client sent etcd-client's `hasleader` metadata.
fn requires_leader(metadata: &MetadataMap) -> bool {
    metadata
        .get(REQUIRE_LEADER_KEY)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == "true")
}

/// The statuses real etcd answers with, code and message alike
/// (etcd's `api/v3rpc/rpctypes/error.go`).
pub(crate) mod errors {
    use tonic::Status;

    pub fn no_leader() -> Status {
        Status::unavailable("etcdserver: no leader")
    }

    pub fn timed_out() -> Status {
        Status::unavailable("etcdserver: request timed out")
    }

    pub fn lease_not_found() -> Status {
        Status::not_found("etcdserver: requested lease not found")
    }

    pub fn lease_exists() -> Status {
        Status::failed_precondition("etcdserver: lease already exists")
    }

    pub fn lease_ttl_too_large() -> Status {
        Status::out_of_range("etcdserver: too large lease TTL")
    }

    pub fn empty_key() -> Status {
        Status::invalid_argument("etcdserver: key is not provided")
    }

    pub fn key_not_found() -> Status {
        Status::invalid_argument("etcdserver: key not found")
    }

    pub fn value_provided() -> Status {
        Status::invalid_argument("etcdserver: value is provided")
    }

    pub fn lease_provided() -> Status {
        Status::invalid_argument("etcdserver: lease is provided")
    }

    pub fn too_many_ops() -> Status {
        Status::invalid_argument("etcdserver: too many operations in txn request")
    }

    pub fn duplicate_key() -> Status {
        Status::invalid_argument("etcdserver: duplicate key given in txn request")
    }

    pub fn compacted() -> Status {
        Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
    }

    pub fn future_revision() -> Status {
        Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
    }
}
