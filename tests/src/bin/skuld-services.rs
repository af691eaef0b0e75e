//! A real etcd and PostgreSQL on free loopback ports, started the way the
//! end-to-end tests start them ([`skuld_tests::services`]), for scripts that
//! run skuld outside Cargo's tests (`scripts/pod-smoke` runs the chart's pods
//! against them).
//!
//!   skuld-services
//!
//! Prints one JSON line once both are ready,
//! `{"etcd_endpoint": "http://127.0.0.1:…", "postgres_url": "postgres://…/skuld"}`,
//! then keeps them running until its standard input closes (the script
//! exited, however it exited), and stops both and removes their data.

use std::io::Read as _;

use anyhow::Context as _;
use skuld_tests::services::{Etcd, Postgres};

/// The database the nodes use.
const DATABASE: &str = "skuld";

fn main() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("skuld-services-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let etcd = Etcd::start(dir.path())?;
    let postgres = Postgres::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a runtime")?;
    let postgres_url = runtime.block_on(postgres.create_database(DATABASE))?;
    let ready = serde_json::json!({
        "etcd_endpoint": etcd.endpoint(),
        "postgres_url": postgres_url,
    });
    println!("{ready}");
    // Blocks until the parent closes the pipe; what it sends is ignored.
    std::io::stdin()
        .read_to_end(&mut Vec::new())
        .context("cannot read standard input")?;
    drop(etcd);
    drop(postgres);
    Ok(())
}
