//! `drover-scheduler`: the only SSNTP server of a Drover cluster.
//!
//! This is the foundation build: it authenticates controllers and launchers, tracks nodes,
//! forwards commands, reports and events as `docs/ssntp.md` says, places START with ciao's
//! first fit on memory, and prints ciao's `--heartbeat` line. Placement with overcommit,
//! reservations, queueing, estimation, evacuation and node loss are the scheduler issue's.
//!
//! # Layout
//! - [`hub`]: the pure core: peer table, routing and placement decisions. Inputs in, outputs
//!   out, no IO, no clock.
//! - [`heartbeat`]: the status line, formatted from the hub.
//! - [`shell`]: the tokio shell: the SSNTP server, the event loop that feeds the hub and
//!   delivers its outputs, the heartbeat ticker.
//! - [`cli`]: command-line flags.

#![forbid(unsafe_code)]

pub mod cli;
pub mod heartbeat;
pub mod hub;
pub mod shell;
