//! Leases: grant, revoke, keep-alive streams, time-to-live, and expiry on
//! `tokio::time`, which deletes a lease's keys in one revision.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
    PbResponseHeader,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::mvcc::KeyRange;
use super::{errors, requires_leader, Shared, State};

/// etcd's largest TTL (`lease.MaxLeaseTTL`), in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The first id the lessor hands out; later ones count up. Positive, like
/// etcd's, and far from the small ids a client may choose.
const FIRST_LEASE_ID: i64 = 0x694d_71dc_0000_0001;

#[derive(Debug)]
struct Lease {
    granted_ttl: i64,
    expires_at: Instant,
}

/// The lessor's table.
#[derive(Debug)]
pub(crate) struct Leases {
    leases: BTreeMap<i64, Lease>,
    next_id: i64,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            leases: BTreeMap::new(),
            next_id: FIRST_LEASE_ID,
        }
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Leases {
    /// Whether `id` is a lease keys can be put under now.
    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    fn grant(&mut self, id: i64, ttl: i64, min_ttl: i64) -> Result<(i64, i64), Status> {
        if ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        let id = if id == 0 {
            while self.leases.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        } else if self.leases.contains_key(&id) {
            return Err(errors::lease_exists());
        } else {
            id
        };
        let ttl = ttl.max(min_ttl);
        self.leases.insert(
            id,
            Lease {
                granted_ttl: ttl,
                expires_at: Instant::now() + ttl_duration(ttl),
            },
        );
        Ok((id, ttl))
    }

    /// Extends `id` by its TTL; `None` when it is unknown or already past
    /// its end (etcd refuses to renew a lease waiting to be revoked).
    fn renew(&mut self, id: i64) -> Option<i64> {
        let now = Instant::now();
        let lease = self.leases.get_mut(&id)?;
        if lease.expires_at <= now {
            return None;
        }
        lease.expires_at = now + ttl_duration(lease.granted_ttl);
        Some(lease.granted_ttl)
    }

    /// Whole seconds left, and the granted TTL.
    fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let lease = self.leases.get(&id)?;
        let left = lease.expires_at.saturating_duration_since(Instant::now());
        let left = i64::try_from(left.as_secs()).unwrap_or(i64::MAX);
        Some((left, lease.granted_ttl))
    }

    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every lease lives its full TTL again from now, plus `extension`.
    pub fn restart_all(&mut self, after: Instant) {
        for lease in self.leases.values_mut() {
            lease.expires_at = after + ttl_duration(lease.granted_ttl);
        }
    }
}

impl State {
    /// Drops lease `id` and deletes its keys in one revision; false if
    /// there was no such lease.
    fn revoke_lease(&mut self, id: i64) -> bool {
        if self.leases.leases.remove(&id).is_none() {
            return false;
        }
        let keys = self.mvcc.keys_of_lease(id);
        let mut write = self.mvcc.write();
        for key in &keys {
            write.delete(KeyRange { key, end: b"" });
        }
        true
    }
}

/// Revokes every lease past its end, each on its own (one revision each,
/// as etcd's leader proposes one revoke per lease). Without a leader
/// nothing expires: no one is there to revoke.
pub(crate) async fn expire_leases(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.config.lease_check_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if shared.faults.leaderless() {
            continue;
        }
        let revision = {
            let mut state = shared.state.lock();
            let expired = state.leases.expired();
            if expired.is_empty() {
                continue;
            }
            for id in expired {
                state.revoke_lease(id);
            }
            state.mvcc.revision()
        };
        tracing::debug!(revision, "sim etcd: leases expired");
        shared.announce(revision);
    }
}

pub(crate) struct LeaseService {
    shared: Arc<Shared>,
}

impl LeaseService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type KeepAliveAnswers =
    Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        self.shared.admit(request.metadata(), true).await?;
        let asked = request.into_inner();
        let answer = {
            let mut state = self.shared.state.lock();
            let (id, ttl) =
                state
                    .leases
                    .grant(asked.id, asked.ttl, self.shared.config.min_lease_ttl)?;
            PbLeaseGrantResponse {
                header: Some(state.header()),
                id,
                ttl,
                error: String::new(),
            }
        };
        self.shared.answer_write(answer)
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        self.shared.admit(request.metadata(), true).await?;
        let id = request.into_inner().id;
        let (header, revision) = {
            let mut state = self.shared.state.lock();
            if !state.revoke_lease(id) {
                return Err(errors::lease_not_found());
            }
            (state.header(), state.mvcc.revision())
        };
        self.shared.announce(revision);
        self.shared.answer_write(PbLeaseRevokeResponse {
            header: Some(header),
        })
    }

    type LeaseKeepAliveStream = KeepAliveAnswers;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let leader_required = requires_leader(request.metadata());
        self.shared.admit(request.metadata(), false).await?;
        let (answers, receiver) = mpsc::channel(16);
        tokio::spawn(keep_alive_session(
            Arc::clone(&self.shared),
            leader_required,
            request.into_inner(),
            answers,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        // Answered by the leader in etcd, so refused without one.
        self.shared.admit(request.metadata(), true).await?;
        let asked = request.into_inner();
        let state = self.shared.state.lock();
        let answer = match state.leases.remaining(asked.id) {
            Some((ttl, granted_ttl)) => PbLeaseTimeToLiveResponse {
                header: Some(state.header()),
                id: asked.id,
                ttl,
                granted_ttl,
                keys: if asked.keys {
                    state.mvcc.keys_of_lease(asked.id)
                } else {
                    Vec::new()
                },
            },
            // etcd answers an unknown lease with TTL -1 and an empty header.
            None => PbLeaseTimeToLiveResponse {
                header: Some(PbResponseHeader::default()),
                id: asked.id,
                ttl: -1,
                ..PbLeaseTimeToLiveResponse::default()
            },
        };
        Ok(Response::new(answer))
    }

    async fn lease_leases(
        &self,
        request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.shared.admit(request.metadata(), false).await?;
        let state = self.shared.state.lock();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(state.header()),
            leases: state
                .leases
                .leases
                .keys()
                .map(|id| PbLeaseStatus { id: *id })
                .collect(),
        }))
    }
}

/// One keep-alive stream: each request renews its lease and is answered
/// with the TTL, or TTL 0 for a lease etcd does not know. A stream that
/// asked for a leader ends with "no leader" when the leader goes.
async fn keep_alive_session(
    shared: Arc<Shared>,
    leader_required: bool,
    mut requests: Streaming<PbLeaseKeepAliveRequest>,
    answers: mpsc::Sender<Result<PbLeaseKeepAliveResponse, Status>>,
) {
    let mut leaderless = shared.faults.subscribe_leaderless();
    loop {
        let request = tokio::select! {
            biased;
            changed = leaderless.changed(), if leader_required => {
                if changed.is_err() || *leaderless.borrow_and_update() {
                    let _ = answers.send(Err(errors::no_leader())).await;
                    return;
                }
                continue;
            }
            request = requests.message() => request,
            () = answers.closed() => return,
        };
        let Ok(Some(request)) = request else {
            return;
        };
        let delay = shared.faults.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A renewal is the leader's: without one the stream fails.
        if shared.faults.leaderless() {
            let _ = answers.send(Err(errors::no_leader())).await;
            return;
        }
        let answer = {
            let mut state = shared.state.lock();
            let ttl = state.leases.renew(request.id).unwrap_or(0);
            PbLeaseKeepAliveResponse {
                header: Some(state.header()),
                id: request.id,
                ttl,
            }
        };
        if answers.send(Ok(answer)).await.is_err() {
            return;
        }
    }
}
