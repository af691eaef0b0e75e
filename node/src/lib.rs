//! The skuld node: configuration, the gRPC API, the server and the CLI.
//!
//! `server::run(config, listeners, metrics, shutdown)` runs a node until the
//! shutdown future resolves; `main` binds the ports and passes SIGTERM/SIGINT.

pub mod admin_api;
pub mod api;
pub mod app;
pub mod auth;
pub mod census;
pub mod channels;
pub mod channels_api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod environment;
pub mod erp;
pub mod events_api;
pub mod http;
pub mod import_api;
pub mod inbound;
pub mod json_door;
pub mod listen;
pub mod node_io;
pub mod ops_page;
pub mod orders_api;
pub mod otlp;
pub mod peer;
pub mod readiness;
pub mod returns_api;
pub mod routing_api;
pub mod rpc;
pub mod server;
pub mod shed;
pub mod sinks;
pub mod status;
pub mod telemetry;
pub mod timestamp;
pub mod tls;
pub mod trace_context;
pub mod webhooks_api;
