//! The contract between the controller's API and its clients (the `drover` CLI, scripts): what
//! a user writes and what both sides must read the same way. No IO, no tokio, no axum.
//!
//! # Layout
//! - [`workload`]: workload files (JSON or TOML), checked with errors that name the field;
//!   task parameters and their schema.
//! - [`unit`]: task definitions in unit-like files (`build.workorder`, `graph.batch`), with
//!   errors that name the file and line.
//! - [`restart`]: restart policies and their bounds, as a workload file states them.
//! - [`sse`]: the event stream (`text/event-stream`) decoder clients read `/v1/events/stream` with.
//! - [`schema`]: JSON schemas of the names the API writes (instance states, node statuses),
//!   for the controller's OpenAPI document.
//! - [`views`]: the routes' bodies, queries and answers (instances, launches, logs, batches),
//!   with state names from `drover_model`.

#![forbid(unsafe_code)]

pub mod restart;
pub mod schema;
pub mod sse;
pub mod unit;
pub mod views;
pub mod workload;
