//! The `skuld` command: the node (`skuld serve`) and a CLI for people
//! (every other subcommand talks to a node over gRPC; see [`crate::cli`]).

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{self, ClientCommand, ClientOptions};
use crate::config::{Config, ServeArgs};
use crate::otlp::TraceExport;
use crate::server::{self, Listeners};
use crate::telemetry;
use clap::{Parser, Subcommand};

/// skuld keeps retail inventory consistent across every channel.
/// The version, and whether this build injects faults (the test build).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(name = "skuld", version = VERSION, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

/// `skuld serve` and `skuld config` parsed on their own, so the client
/// options (`--endpoint`, `--json`, ...) are not listed under them.
#[derive(Parser)]
#[command(name = "skuld", version = VERSION, about, propagate_version = true)]
struct NodeCli {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node (single node on the embedded store by default).
    Serve(ServeArgs),
    /// Show the effective configuration (defaults < file < env < flags),
    /// each option under its documentation, secrets redacted.
    Config {
        #[command(flatten)]
        serve: ServeArgs,
        /// Print the table of every option (markdown) instead.
        #[arg(long)]
        describe: bool,
    },
}

// Parsed once per process: boxing the larger variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Node(NodeCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The command line: `serve` and `config` without the client options.
fn parse() -> (Option<ClientOptions>, Command) {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let node_command = args
        .get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|arg| arg == "serve" || arg == "config");
    if node_command {
        (None, Command::Node(NodeCli::parse_from(args).command))
    } else {
        let cli = Cli::parse_from(args);
        (Some(cli.client), cli.command)
    }
}

/// The whole `skuld` command: parses the command line, runs it, and says
/// how it ended. Shared by the `skuld` binary and the end-to-end tests' copy
/// of it.
pub fn main() -> ExitCode {
    let (client, command) = parse();
    // ring is the only provider compiled in; a library that asks rustls
    // for the process default (tonic's acceptor, tokio-postgres-rustls)
    // gets it rather than a panic. Fails only when already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Node(NodeCommand::Serve(args)) => serve(args).await,
            Command::Node(NodeCommand::Config { serve, describe }) => {
                if describe {
                    print!("{}", crate::config::markdown_table());
                } else {
                    print!("{}", Config::load(&serve)?.to_commented_toml()?);
                }
                Ok(())
            }
            Command::Client(command) => {
                let client = client.ok_or_else(|| anyhow::anyhow!("no client options"))?;
                cli::run(client, command).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Client errors were already printed as one line by the CLI.
            if !error.is::<cli::CommandFailed>() {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// How long the last queued spans may take to reach the collector once the
/// node has stopped (within the grace Kubernetes gives past the drain).
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    // Built here, inside the runtime, which outlives its shutdown below.
    let (export, tracer) = match config.telemetry.otlp() {
        Some(endpoint) => {
            let (export, tracer) = TraceExport::start(endpoint, &config.effective_node_id())?;
            (Some(export), Some(tracer))
        }
        None => (None, None),
    };
    telemetry::init_logging(&config.server.log_format, &config.server.log_filter, tracer);
    let served = run_node(config).await;
    // The last step of the ordered shutdown: the drain's spans go out too.
    if let Some(export) = export {
        export.shutdown(TRACE_FLUSH_TIMEOUT).await;
    }
    served
}

async fn run_node(config: Config) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let listeners = Listeners::bind(&config).await?;
    server::run(config, listeners, Some(metrics), shutdown_signal()).await
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: in a container the node is PID 1, and the kernel drops a
/// SIGTERM that PID 1 has no handler for, so a node stopped while it starts
/// would wait out its grace period and be killed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { wait_for_signals(handlers).await }
}

async fn wait_for_signals(
    handlers: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
) {
    let (Ok(mut terminate), Ok(mut interrupt)) = handlers else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("second signal: exiting without draining");
        std::process::exit(130);
    });
}
