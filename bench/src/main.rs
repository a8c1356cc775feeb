//! `drover-bench`: Drover's scale benchmarks against a real scheduler process.
//!
//! # Layout
//! - `testutil::process` (shared): the scheduler (or relay) child, its CPU and memory from
//!   `/proc`, its metrics.
//! - `testutil::agents` (shared): fake launchers, many to this process, and the controller
//!   that submits STARTs.
//! - `relay`: the no-scheduling relay that `ceiling` measures.
//! - `scenarios`: `place`, `hold`, `storm`, `ceiling`, each a table of figures against goals.
//! - `e2e`: the user's path through the API to real launchers.
//! - `migrate`: live migration on the user's path: one guest moved back and forth.
//! - `artifact`: JARs on the user's path, one at a time and in a burst, beside the bare JVM.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod artifact;
mod e2e;
mod migrate;
mod relay;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Measures Drover's scheduler at scale on this machine: a real `drover-scheduler` child
/// process, fake launchers in this process (each its own mutual-TLS connection), and a
/// controller-role load generator. Prints a table against the project's goals, or JSON.
///
/// Build first: cargo build --release -p drover-scheduler -p drover-bench
/// Then e.g.:   target/release/drover-bench place
///              target/release/drover-bench place --nodes 200 --instances 2000
///
/// Durations take a unit: 500ms, 10s, 5m.
#[derive(Debug, Parser)]
#[command(name = "drover-bench", version, verbatim_doc_comment)]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (CI logs).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// M instances onto N nodes: placements/s, submit→START latency, scheduler CPU and RSS,
    /// spread, and a check that no START was lost, duplicated or over-placed.
    Place(scenarios::PlaceArgs),
    /// N connections reporting at a launcher's interval: scheduler memory per connection and
    /// CPU share.
    Hold(scenarios::HoldArgs),
    /// kill -9 and restart the scheduler under N launchers: time until every node is READY
    /// again, and that no instance was restarted or stopped and no node declared lost.
    Storm(scenarios::StormArgs),
    /// The user's path: real scheduler, controller and K launchers (sim backend); M instances
    /// launched through the API; instances/s until all run, each daemon's CPU and peak RSS.
    E2e(e2e::E2eArgs),
    /// Live migration on the user's path: real scheduler, controller and two vm launchers; one
    /// guest moved back and forth through the API; time per move, the guest's downtime, CPU.
    Migrate(migrate::MigrateArgs),
    /// JARs on the user's path: real scheduler, controller and an artifact launcher (the
    /// node's java); one JAR at a time and a burst through the API, beside the bare JVM.
    Artifact(artifact::ArtifactArgs),
    /// `place` through the scheduler and through a relay that does no scheduling, side by
    /// side: what share of the machine's transport ceiling placement reaches.
    Ceiling(scenarios::PlaceArgs),
    /// (internal) The relay `ceiling` starts as a child process.
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cacert: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let ui = scenarios::Ui { json: args.json, quiet: args.quiet };
    let result = runtime.block_on(async move {
        match args.scenario {
            Scenario::Place(a) => scenarios::place(&a, &ui).await,
            Scenario::Hold(a) => scenarios::hold(&a, &ui).await,
            Scenario::Storm(a) => scenarios::storm(&a, &ui).await,
            Scenario::Ceiling(a) => scenarios::ceiling(&a, &ui).await,
            Scenario::E2e(a) => e2e::e2e(&a, &ui).await,
            Scenario::Migrate(a) => migrate::migrate(&a, &ui).await,
            Scenario::Artifact(a) => artifact::artifact(&a, &ui).await,
            Scenario::Relay { listen, cacert, cert, key } => {
                let paths = ssntp::tls::TlsPaths { ca: cacert, cert, key: Some(key), crl: None };
                relay::run(listen, paths).await.map(|()| true)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // The run completed but a correctness check failed (lost or duplicated STARTs …).
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("drover-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
