//! Generates the skuld.v1 types, gRPC client/server, a file descriptor set for
//! server reflection, and proto3-JSON serde impls (used by the CLI's `--json`).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("skuld_descriptor.bin");
    let protos = [
        "skuld/v1/inventory.proto",
        "skuld/v1/returns.proto",
        "skuld/v1/orders.proto",
        "skuld/v1/admin.proto",
        "skuld/v1/events.proto",
        "skuld/v1/webhooks.proto",
        "skuld/v1/routing.proto",
        "skuld/v1/channels.proto",
        "skuld/internal/v1/peer.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&protos, &["."])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".skuld.v1"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
