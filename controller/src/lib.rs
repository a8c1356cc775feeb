//! `drover-controller`.
//!
//! The controller keeps what users asked for — workloads and their instances — durable in redb,
//! sends STARTs to the scheduler, follows every instance through its life (restart policies,
//! node loss, evacuation), reconciles with what the nodes report, and serves an HTTPS API with
//! client-certificate tenants. Its command line, `drover`, is the `drover-cli` crate.
//!
//! # Layout
//! - [`workload`]: workload files (JSON or TOML), re-exported from `drover-api`, the contract
//!   the CLI shares.
//! - [`lifecycle`]: an instance's life and restart policy: a pure state machine.
//! - [`store`]: durable state in redb or etcd: workloads, instances, events with a revision.
//! - [`service`]: user intent and cluster reports in, commands out, committed before sent;
//!   reconciliation with news and digests; batches.
//! - [`feeds`]: the order of each node's reports: gaps, duplicates, digest pages (pure).
//! - [`resend_gate`]: when unanswered STARTs may go again after a reconnect (pure).
//! - [`answer_watch`]: STARTs still unanswered after `--start-timeout` go again (pure).
//! - [`daemon`]: shared state and the loop that talks to the scheduler.
//! - [`api`]: the HTTPS API (axum over tokio-rustls), tenants from client certificates.
//! - [`openapi`]: the API's OpenAPI 3.1 document, from the handlers' annotations, at
//!   `/v1/openapi.json`.
//! - [`event_stream`]: `GET /v1/events/stream`, the events as Server-Sent Events, resumable.
//! - [`api_guard`]: around every API call: a rate per client, the body limit, an audit line.
//! - [`metrics`]: `GET /metrics`, the controller's figures as Prometheus text.
//! - [`ui`]: the dashboard at `/ui`, pages rendered on the server, same TLS and tenants.
//! - [`shell`]: `drover-controller`'s flags and tasks.
//! - [`link`]: the controller's SSNTP connection and how events are described for people.

#![forbid(unsafe_code)]

pub use drover_api::workload;

pub mod answer_watch;
pub mod api;
pub mod api_guard;
pub mod daemon;
pub mod event_stream;
pub mod feeds;
pub mod lifecycle;
pub mod link;
pub mod metrics;
pub mod openapi;
pub mod resend_gate;
pub mod service;
pub mod shell;
pub mod store;
pub mod ui;
