//! Drover on etcd: what the controllers and schedulers need of an etcd cluster to fail over.
//!
//! # Layout
//! - [`client`]: a small etcd v3 client over etcd's JSON gateway (HTTPS, the same API as gRPC;
//!   no `protoc` at build time): ranges, transactions, leases, compaction.
//! - [`election`]: leader election on an etcd lease ([`election::Tenure`] decides, purely, how
//!   long a leader may act), and the [`election::Fence`] a leader's writes carry.
//! - [`cli`]: the `--etcd-*` flags, and the steps a daemon takes with them: connect (retrying),
//!   campaign, start again as a standby after losing.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod election;

pub use client::{Client, Compare, Error, KeyValue, Op, Tls, Txn, TxnAnswer};
