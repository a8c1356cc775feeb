//! `drover-controller` and the `drover` CLI.
//!
//! This is the foundation build: the controller daemon connects to the scheduler and logs what
//! the cluster reports; `drover up` starts a local cluster (scheduler and launcher as child
//! processes, certificates minted on first run), runs a demo workload through the scheduler and
//! shows its output. The durable store, API, workload files, restart policies and the rest of
//! the CLI are the controller issue's.
//!
//! # Layout
//! - [`lifecycle`]: an instance's life and restart policy: a pure state machine.
//! - [`link`]: the controller's SSNTP connection (a reconnecting client with the controller
//!   role) and how events are described for people.
//! - [`service`]: user intent and cluster reports in, commands out, committed before sent.
//! - [`store`]: durable state in redb: workloads, instances, events with a revision.
//! - [`workload`]: workload files (JSON or TOML), checked with errors that name the field.
//! - [`up`]: `drover up`: local PKI, child processes, demo workload, status until Ctrl-C.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod lifecycle;
pub mod link;
pub mod service;
pub mod shell;
pub mod store;
pub mod up;
pub mod workload;
