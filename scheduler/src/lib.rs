//! `drover-scheduler`: the only SSNTP server of a Drover cluster.
//!
//! It authenticates controllers and launchers, places STARTs on vCPUs and memory within the
//! overcommit bounds (spread, bin-pack or ciao's first fit), reserves what it placed until the
//! node reports it, queues what does not fit yet and says why, estimates real memory per
//! workload, forwards commands, reports and events as `docs/ssntp.md` says, evacuates nodes,
//! declares silent nodes lost (with a brake for mass silence), and prints ciao's `--heartbeat`
//! line followed by its own summary.
//!
//! # Layout
//! - [`hub`]: the pure core, the `drover-scheduler-core` crate: peer table, routing and
//!   placement decisions. Inputs in, outputs out, no IO, no clock, no tokio.
//! - [`heartbeat`]: the status line, formatted from the hub.
//! - [`metrics`]: Prometheus text on `--metrics ADDR`.
//! - [`shell`]: the tokio shell: the SSNTP server, the event loop that feeds the hub and
//!   delivers its outputs, the heartbeat ticker.
//! - [`reload`]: TLS material and revocations reloaded on SIGHUP or a change of the files.
//! - [`cli`]: command-line flags.

#![forbid(unsafe_code)]

pub mod cli;
pub mod heartbeat;
pub use drover_scheduler_core as hub;
pub mod metrics;
pub mod reload;
pub mod shell;
