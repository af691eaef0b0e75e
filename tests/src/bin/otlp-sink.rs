//! `otlp-sink ADDR SECONDS`: the tests' OTLP/gRPC receiver as a process, for
//! measuring what trace export costs a node under load (benches/RESULTS.md,
//! "Tracing overhead"). Listens on ADDR, stops after SECONDS and prints how
//! many spans and export calls arrived.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use skuld_tests::otlp::OtlpReceiver;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(seconds)) = (
        args.first()
            .and_then(|addr| addr.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|seconds| seconds.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: otlp-sink ADDR SECONDS (e.g. 127.0.0.1:4317 40)");
        return ExitCode::FAILURE;
    };
    let receiver = match OtlpReceiver::start_on(addr).await {
        Ok(receiver) => receiver,
        Err(error) => {
            eprintln!("otlp-sink: cannot listen on {addr}: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("otlp-sink: listening on {}", receiver.endpoint());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    println!(
        "otlp-sink: {} spans in {} exports",
        receiver.span_count(),
        receiver.exports()
    );
    ExitCode::SUCCESS
}
