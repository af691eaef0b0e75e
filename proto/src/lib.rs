//! The versioned gRPC API of skuld (`skuld.v1`).
//!
//! Generated from `proto/skuld/v1/*.proto`. The descriptor set is exported for
//! gRPC server reflection.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("skuld.v1");
    include!(concat!(env!("OUT_DIR"), "/skuld.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every skuld proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("skuld_descriptor");
