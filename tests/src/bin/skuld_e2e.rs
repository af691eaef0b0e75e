//! The `skuld` binary as the end-to-end tests run it: the same code
//! (`skuld_node::app`), built by Cargo with the tests (so no separate build
//! step) and with the `failpoints` feature, so tests can inject faults.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    skuld_node::app::main()
}
