//! The versioned gRPC API of skuld (`skuld.v1`).
//!
//! Generated from `proto/skuld/v1/*.proto`. The descriptor set is exported for
//! gRPC server reflection.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("skuld.v1");
    include!(concat!(env!("OUT_DIR"), "/skuld.v1.serde.rs"));
}

/// The node-to-node API (`skuld.internal.v1`); not for clients.
pub mod internal {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("skuld.internal.v1");
    }
}

/// Which shard a key belongs to: part of the API, since a shard map
/// (`RoutingService.GetShardMap`) is of use only to a client that hashes
/// keys exactly as the nodes do. The one definition; `skuld-cluster`'s
/// placement re-exports it.
pub mod shard {
    use xxhash_rust::xxh3::xxh3_64_with_seed;

    /// The name `GetShardMapResponse.shard_function` gives [`shard_of`].
    pub const SHARD_FUNCTION: &str = "xxh3-64-v1";

    const SEED: u64 = 0x0073_6b75_6c64;

    /// The shard of an encoded entity key (`skuld_domain::PositionKey::encode`,
    /// `ReturnKey::encode`). Fixed for the life of a cluster: the shard
    /// count never changes once the cluster is created.
    pub fn shard_of(key: &[u8], shard_count: u32) -> u32 {
        let count = u64::from(shard_count.max(1));
        u32::try_from(xxh3_64_with_seed(key, SEED) % count).unwrap_or(0)
    }
}

/// The canonical name of a status code, as the API docs and metrics use it
/// (`FAILED_PRECONDITION`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a client may do after a failed call, by its status code: the one
/// definition the CLI, the load generator and the test harness share.
pub mod retry {
    use tonic::Code;

    /// The call may or may not have been applied (a deadline, a broken
    /// connection, a node that stopped answering): send it again with the
    /// same idempotency key to learn its outcome. Refusals (INVALID_ARGUMENT,
    /// FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED)
    /// changed nothing.
    pub fn outcome_open(code: Code) -> bool {
        matches!(
            code,
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Cancelled
                | Code::Internal
                | Code::Aborted
        )
    }

    /// Sending the same request again with the same key is the right move:
    /// its outcome is open, or it was refused for a passing reason (a full
    /// queue, with a retry hint).
    pub fn worth_retrying(code: Code) -> bool {
        outcome_open(code) || code == Code::ResourceExhausted
    }
}

/// Encoded `FileDescriptorSet` of every skuld proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("skuld_descriptor");

impl v1::Buckets {
    /// Every bucket with its name, on_hand first: one list for tables,
    /// checks and reports.
    pub fn named(&self) -> [(&'static str, i64); 8] {
        [
            ("on_hand", self.on_hand),
            ("available", self.available),
            ("reserved", self.reserved),
            ("committed", self.committed),
            ("damaged", self.damaged),
            ("quality_control", self.quality_control),
            ("safety_stock", self.safety_stock),
            ("incoming", self.incoming),
        ]
    }
}
