//! `drover`: the user's command line. This build has `up`; the rest of the CLI (workloads,
//! instances, nodes, events) arrives with the controller API.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use drover_controller::up::{self, UpOptions};

/// Drover: a cluster workload scheduler.
#[derive(Debug, Parser)]
#[command(name = "drover", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local cluster (scheduler + one launcher), run a demo workload on it and show its
    /// output, then show the heartbeat until Ctrl-C. Certificates are minted into DIR/pki on
    /// the first run.
    Up {
        /// Working directory for certificates, logs and launcher state.
        #[arg(long, default_value = ".drover")]
        dir: PathBuf,
        /// Scheduler port on 127.0.0.1.
        #[arg(long, default_value_t = ssntp::DEFAULT_PORT)]
        port: u16,
        /// Stop after the demo workload instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Directory holding drover-scheduler and drover-launcher (default: next to drover).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = ssntp::cli::parse_or_exit();
    let result = match cli.command {
        Cmd::Up { dir, port, once, bin_dir } => {
            let ctrl_c = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            up::run(UpOptions { dir, port, once, bin_dir }, ctrl_c).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
