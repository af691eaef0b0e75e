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
