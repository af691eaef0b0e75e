//! `skuld`: the node (`skuld serve`) and a CLI for people; see
//! `skuld_node::app`.

use std::process::ExitCode;

/// Every request allocates (HTTP/2 frames, protobuf messages, journal
/// entries) on many threads; glibc malloc showed up at ~10 % of the node's
/// CPU in the spread profile (benches/RESULTS.md), mimalloc costs less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    skuld_node::app::main()
}
