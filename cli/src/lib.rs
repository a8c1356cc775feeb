//! `drover`: the command line of the controller's HTTPS API, and `drover up`, a whole local
//! cluster. It speaks to the controller only through the API, so it links no store and no server.
//!
//! # Layout
//! - [`client`]: an HTTPS client of the API (the CLI, `drover up`, tests).
//! - [`cli`]: the `drover` commands.
//! - [`local`]: the flags each daemon is started with on one machine (`drover up`, tests).
//! - [`up`]: `drover up`: local PKI, child processes, demo workload, status until Ctrl-C.

#![forbid(unsafe_code)]
// All of this crate is a shell (HTTP calls, child processes, waits): it may read the clock.
#![allow(clippy::disallowed_methods)]

pub mod cli;
pub mod client;
pub mod local;
pub mod up;
