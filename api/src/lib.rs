//! The contract between the controller's API and its clients (the `drover` CLI, scripts): what
//! a user writes and what both sides must read the same way. No IO, no tokio, no axum.
//!
//! # Layout
//! - [`workload`]: workload files (JSON or TOML), checked with errors that name the field.
//! - [`restart`]: restart policies and their bounds, as a workload file states them.

#![forbid(unsafe_code)]

pub mod restart;
pub mod workload;
