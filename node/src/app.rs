//! The `skuld` command: the node (`skuld serve`) and a CLI for people
//! (every other subcommand talks to a node over gRPC; see [`crate::cli`]).

use std::process::ExitCode;

use crate::cli::{self, ClientCommand, ClientOptions};
use crate::config::{Config, ServeArgs};
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

#[derive(Subcommand)]
enum Command {
    /// Run a node (single node on the embedded store by default).
    Serve(ServeArgs),
    /// Show the effective configuration (defaults < file < env < flags).
    Config {
        #[command(flatten)]
        serve: ServeArgs,
        /// Print it as TOML (the only output format today).
        #[arg(long, default_value_t = true)]
        dump: bool,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// The whole `skuld` command: parses the command line, runs it, and says
/// how it ended. Shared by the `skuld` binary and the end-to-end tests' copy
/// of it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Config { serve, .. } => {
                let config = Config::load(&serve)?;
                print!("{}", toml::to_string_pretty(&config)?);
                Ok(())
            }
            Command::Client(command) => cli::run(cli.client, command).await,
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    telemetry::init_logging(&config.log_format, &config.log_filter);
    let metrics = telemetry::init_metrics()?;
    let listeners = Listeners::bind(&config).await?;
    server::run(config, listeners, Some(metrics), shutdown_signal()).await
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
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
