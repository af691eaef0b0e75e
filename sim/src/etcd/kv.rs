//! The KV service: range, put, delete, txn and compact, with etcd's
//! checks and answers.

use std::collections::BTreeSet;
use std::sync::Arc;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbCompare, PbDeleteRequest, PbDeleteResponse,
    PbKeyValue, PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse,
    PbRangeStreamResponse, PbResponseOp, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse,
    PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::lease::Leases;
use super::mvcc::{KeyRange, Mvcc, Writer};
use super::{errors, header, Shared};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// `Compare.CompareResult`.
const COMPARE_EQUAL: i32 = 0;
const COMPARE_GREATER: i32 = 1;
const COMPARE_LESS: i32 = 2;
const COMPARE_NOT_EQUAL: i32 = 3;

/// `Compare.CompareTarget`.
const TARGET_VERSION: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;
const TARGET_VALUE: i32 = 3;
const TARGET_LEASE: i32 = 4;

/// `RangeRequest.SortOrder` and `RangeRequest.SortTarget`.
const SORT_NONE: i32 = 0;
const SORT_DESCEND: i32 = 2;
const SORT_BY_KEY: i32 = 0;
const SORT_BY_VERSION: i32 = 1;
const SORT_BY_CREATE: i32 = 2;
const SORT_BY_MOD: i32 = 3;
const SORT_BY_VALUE: i32 = 4;

pub(crate) struct KvService {
    shared: Arc<Shared>,
}

impl KvService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        self.shared.admit(request.metadata(), false).await?;
        let asked = request.into_inner();
        check_key(&asked.key)?;
        let state = self.shared.state.lock();
        let answer = range(&state.mvcc, state.mvcc.revision(), state.raft_term, &asked)?;
        Ok(Response::new(answer))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    /// etcd 3.7's streamed range, which skuld does not use (nor does the
    /// etcd 3.4 the conformance test runs).
    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented("unknown method RangeStream"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        self.shared.admit(request.metadata(), true).await?;
        let asked = request.into_inner();
        check_put(&asked)?;
        let (answer, revision) = {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            let mut write = state.mvcc.write();
            check_put_applies(&write, &state.leases, &asked)?;
            let mut answer = put(&mut write, &asked);
            drop(write);
            let revision = state.mvcc.revision();
            answer.header = Some(header(state.raft_term, revision));
            (answer, revision)
        };
        self.shared.announce(revision);
        self.shared.answer_write(answer)
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        self.shared.admit(request.metadata(), true).await?;
        let asked = request.into_inner();
        check_key(&asked.key)?;
        let (answer, revision) = {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            let mut write = state.mvcc.write();
            let mut answer = delete(&mut write, &asked);
            drop(write);
            let revision = state.mvcc.revision();
            answer.header = Some(header(state.raft_term, revision));
            (answer, revision)
        };
        self.shared.announce(revision);
        self.shared.answer_write(answer)
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let asked = request.get_ref();
        let writes = txn_writes(asked);
        self.shared.admit(request.metadata(), writes).await?;
        let asked = request.into_inner();
        check_txn(&asked)?;
        let (answer, revision) = {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            let raft_term = state.raft_term;
            let mut write = state.mvcc.write();
            check_txn_applies(&write, &state.leases, &asked)?;
            let mut answer = txn(&mut write, raft_term, &asked)?;
            drop(write);
            let revision = state.mvcc.revision();
            answer.header = Some(header(raft_term, revision));
            (answer, revision)
        };
        if writes {
            self.shared.announce(revision);
            self.shared.answer_write(answer)
        } else {
            Ok(Response::new(answer))
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        self.shared.admit(request.metadata(), true).await?;
        let revision = request.into_inner().revision;
        let (answer, current) = {
            let mut state = self.shared.state.lock();
            state.mvcc.compact(revision)?;
            let current = state.mvcc.revision();
            (
                PbCompactionResponse {
                    header: Some(header(state.raft_term, current)),
                },
                current,
            )
        };
        self.shared.announce(current);
        self.shared.answer_write(answer)
    }
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// The checks etcd makes before a put reaches the store.
fn check_put(asked: &PbPutRequest) -> Result<(), Status> {
    check_key(&asked.key)?;
    if asked.ignore_value && !asked.value.is_empty() {
        return Err(errors::value_provided());
    }
    if asked.ignore_lease && asked.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

/// The checks made against the store: the key exists when its value or
/// lease is kept, and the lease exists.
fn check_put_applies(
    write: &Writer<'_>,
    leases: &Leases,
    asked: &PbPutRequest,
) -> Result<(), Status> {
    if (asked.ignore_value || asked.ignore_lease) && write.mvcc().get(&asked.key).is_none() {
        return Err(errors::key_not_found());
    }
    if asked.lease != 0 && !leases.exists(asked.lease) {
        return Err(errors::lease_not_found());
    }
    Ok(())
}

fn range(
    mvcc: &Mvcc,
    header_revision: i64,
    raft_term: u64,
    asked: &PbRangeRequest,
) -> Result<PbRangeResponse, Status> {
    let mut kvs = mvcc.range(
        KeyRange {
            key: &asked.key,
            end: &asked.range_end,
        },
        asked.revision,
    )?;
    let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
    kvs.retain(|kv| {
        (asked.min_mod_revision == 0 || kv.mod_revision >= asked.min_mod_revision)
            && (asked.max_mod_revision == 0 || kv.mod_revision <= asked.max_mod_revision)
            && (asked.min_create_revision == 0 || kv.create_revision >= asked.min_create_revision)
            && (asked.max_create_revision == 0 || kv.create_revision <= asked.max_create_revision)
    });
    sort(&mut kvs, asked.sort_order, asked.sort_target);
    let mut more = false;
    if let Ok(limit) = usize::try_from(asked.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if asked.count_only {
        kvs.clear();
        more = false;
    }
    if asked.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(PbRangeResponse {
        header: Some(header(raft_term, header_revision)),
        kvs,
        more,
        count,
    })
}

/// etcd sorts by the target when asked, and ascending by default when the
/// target is not the key (the store already gives key order).
fn sort(kvs: &mut [PbKeyValue], order: i32, target: i32) {
    let order = if order == SORT_NONE && target != SORT_BY_KEY {
        1
    } else {
        order
    };
    if order == SORT_NONE {
        return;
    }
    kvs.sort_by(|a, b| {
        let ordering = match target {
            SORT_BY_VERSION => a.version.cmp(&b.version),
            SORT_BY_CREATE => a.create_revision.cmp(&b.create_revision),
            SORT_BY_MOD => a.mod_revision.cmp(&b.mod_revision),
            SORT_BY_VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        };
        if order == SORT_DESCEND {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

fn put(write: &mut Writer<'_>, asked: &PbPutRequest) -> PbPutResponse {
    let existing = write.mvcc().get(&asked.key).cloned();
    let value = match (&existing, asked.ignore_value) {
        (Some(kv), true) => kv.value.clone(),
        _ => asked.value.clone(),
    };
    let lease = match (&existing, asked.ignore_lease) {
        (Some(kv), true) => kv.lease,
        _ => asked.lease,
    };
    let prev = write.put(&asked.key, value, lease);
    PbPutResponse {
        header: None,
        prev_kv: if asked.prev_kv { prev } else { None },
    }
}

fn delete(write: &mut Writer<'_>, asked: &PbDeleteRequest) -> PbDeleteResponse {
    let deleted = write.delete(KeyRange {
        key: &asked.key,
        end: &asked.range_end,
    });
    PbDeleteResponse {
        header: None,
        deleted: i64::try_from(deleted.len()).unwrap_or(i64::MAX),
        prev_kvs: if asked.prev_kv { deleted } else { Vec::new() },
    }
}

/// Whether a txn can write (either branch, nested txns included): etcd
/// handles one that cannot as a read.
fn txn_writes(asked: &PbTxnRequest) -> bool {
    asked
        .success
        .iter()
        .chain(&asked.failure)
        .any(|op| match &op.request {
            Some(PbTxnOpRequest::RequestPut(_)) | Some(PbTxnOpRequest::RequestDeleteRange(_)) => {
                true
            }
            Some(PbTxnOpRequest::RequestTxn(nested)) => txn_writes(nested),
            Some(PbTxnOpRequest::RequestRange(_)) | None => false,
        })
}

/// The checks etcd's gRPC layer makes before a txn reaches the store:
/// sizes, keys, and no key written twice in one branch.
fn check_txn(asked: &PbTxnRequest) -> Result<(), Status> {
    if asked.compare.len() > MAX_TXN_OPS
        || asked.success.len() > MAX_TXN_OPS
        || asked.failure.len() > MAX_TXN_OPS
    {
        return Err(errors::too_many_ops());
    }
    for compare in &asked.compare {
        check_key(&compare.key)?;
    }
    for branch in [&asked.success, &asked.failure] {
        for op in branch {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(range)) => check_key(&range.key)?,
                Some(PbTxnOpRequest::RequestPut(put)) => check_put(put)?,
                Some(PbTxnOpRequest::RequestDeleteRange(delete)) => check_key(&delete.key)?,
                Some(PbTxnOpRequest::RequestTxn(nested)) => check_txn(nested)?,
                None => {}
            }
        }
        check_no_duplicate_writes(branch)?;
    }
    Ok(())
}

/// A key put twice, or put and deleted, in one branch is refused.
fn check_no_duplicate_writes(branch: &[PbTxnRequestOp]) -> Result<(), Status> {
    let mut puts = BTreeSet::new();
    let mut deletes = Vec::new();
    for op in branch {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(put)) => {
                let first_put = puts.insert(put.key.as_slice());
                if !first_put {
                    return Err(errors::duplicate_key());
                }
            }
            Some(PbTxnOpRequest::RequestDeleteRange(delete)) => deletes.push(KeyRange {
                key: &delete.key,
                end: &delete.range_end,
            }),
            _ => {}
        }
    }
    if puts
        .iter()
        .any(|key| deletes.iter().any(|range| range.contains(key)))
    {
        return Err(errors::duplicate_key());
    }
    Ok(())
}

/// The store checks of the branch the compares choose, made before any
/// of it applies (a txn applies whole or not at all).
fn check_txn_applies(
    write: &Writer<'_>,
    leases: &Leases,
    asked: &PbTxnRequest,
) -> Result<(), Status> {
    let branch = if compares_hold(write.mvcc(), &asked.compare) {
        &asked.success
    } else {
        &asked.failure
    };
    for op in branch {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(put)) => check_put_applies(write, leases, put)?,
            Some(PbTxnOpRequest::RequestTxn(nested)) => check_txn_applies(write, leases, nested)?,
            Some(PbTxnOpRequest::RequestRange(range)) => {
                check_range_revision(write.mvcc(), range.revision)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A range at a revision the store no longer (or not yet) has fails the
/// whole txn before anything in it applies.
fn check_range_revision(mvcc: &Mvcc, revision: i64) -> Result<(), Status> {
    if revision > mvcc.revision() {
        return Err(errors::future_revision());
    }
    if revision > 0 && revision < mvcc.compacted() {
        return Err(errors::compacted());
    }
    Ok(())
}

fn compares_hold(mvcc: &Mvcc, compares: &[PbCompare]) -> bool {
    compares.iter().all(|compare| compare_holds(mvcc, compare))
}

/// One compare over every key of its range; a missing key compares as a
/// key with every field zero, except that a value compare then fails.
fn compare_holds(mvcc: &Mvcc, compare: &PbCompare) -> bool {
    let range = KeyRange {
        key: &compare.key,
        end: &compare.range_end,
    };
    let mut kvs = mvcc.current(range).peekable();
    if kvs.peek().is_none() {
        return compare.target != TARGET_VALUE && compare_one(compare, &PbKeyValue::default());
    }
    kvs.all(|kv| compare_one(compare, kv))
}

fn compare_one(compare: &PbCompare, kv: &PbKeyValue) -> bool {
    let number = |wanted: fn(&PbTargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(wanted).unwrap_or(0)
    };
    let ordering = match compare.target {
        TARGET_VERSION => kv.version.cmp(&number(|union| match union {
            PbTargetUnion::Version(version) => Some(*version),
            _ => None,
        })),
        TARGET_CREATE => kv.create_revision.cmp(&number(|union| match union {
            PbTargetUnion::CreateRevision(revision) => Some(*revision),
            _ => None,
        })),
        TARGET_MOD => kv.mod_revision.cmp(&number(|union| match union {
            PbTargetUnion::ModRevision(revision) => Some(*revision),
            _ => None,
        })),
        TARGET_LEASE => kv.lease.cmp(&number(|union| match union {
            PbTargetUnion::Lease(lease) => Some(*lease),
            _ => None,
        })),
        TARGET_VALUE => {
            let wanted: &[u8] = match &compare.target_union {
                Some(PbTargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        _ => return false,
    };
    match compare.result {
        COMPARE_EQUAL => ordering.is_eq(),
        COMPARE_GREATER => ordering.is_gt(),
        COMPARE_LESS => ordering.is_lt(),
        COMPARE_NOT_EQUAL => ordering.is_ne(),
        _ => false,
    }
}

/// Runs a checked txn: the compares, then the chosen branch's operations
/// in order, each seeing the ones before it.
fn txn(
    write: &mut Writer<'_>,
    raft_term: u64,
    asked: &PbTxnRequest,
) -> Result<PbTxnResponse, Status> {
    let succeeded = compares_hold(write.mvcc(), &asked.compare);
    let branch = if succeeded {
        &asked.success
    } else {
        &asked.failure
    };
    let mut responses = Vec::with_capacity(branch.len());
    for op in branch {
        let response = match &op.request {
            Some(PbTxnOpRequest::RequestRange(asked)) => Some(PbTxnOpResponse::ResponseRange(
                range(write.mvcc(), write.read_revision(), raft_term, asked)?,
            )),
            Some(PbTxnOpRequest::RequestPut(asked)) => {
                Some(PbTxnOpResponse::ResponsePut(put(write, asked)))
            }
            Some(PbTxnOpRequest::RequestDeleteRange(asked)) => {
                Some(PbTxnOpResponse::ResponseDeleteRange(delete(write, asked)))
            }
            Some(PbTxnOpRequest::RequestTxn(asked)) => {
                Some(PbTxnOpResponse::ResponseTxn(txn(write, raft_term, asked)?))
            }
            None => None,
        };
        responses.push(PbResponseOp { response });
    }
    let revision = write.read_revision();
    for response in &mut responses {
        let header = Some(header(raft_term, revision));
        match &mut response.response {
            Some(PbTxnOpResponse::ResponsePut(put)) => put.header = header,
            Some(PbTxnOpResponse::ResponseDeleteRange(delete)) => delete.header = header,
            Some(PbTxnOpResponse::ResponseTxn(nested)) => nested.header = header,
            Some(PbTxnOpResponse::ResponseRange(_)) | None => {}
        }
    }
    Ok(PbTxnResponse {
        header: None,
        succeeded,
        responses,
    })
}
