//! A simulated etcd speaking the real etcd gRPC API (KV, Lease, Watch).
