//! SSNTP as Drover speaks it: a fixed 8-byte header, a 16-byte origin UUID and a CBOR payload,
//! over mutually authenticated TLS 1.3, with roles carried in certificates.
//!
//! The full protocol (header bytes, operand tables, payload schemas, handshake, who may send
//! what) is specified in `docs/ssntp.md`.
//!
//! # Layout
//! - [`frame`]: bytes ↔ [`Frame`]: header, [`Kind`]s and operand tables, incremental decoder
//!   that refuses oversized or unknown frames before buffering them.
//! - [`payload`]: typed payloads, one per kind, and [`Message`], which maps kinds to payloads.
//! - [`uuid`]: UUIDs as raw header bytes and as payload text.
//! - [`role`]: the role bitmask, role OIDs, and reading roles, identity and tenants from a
//!   certificate.
//! - [`bindings`]: which certificate holds which UUID on a server (no impostors, pure).
//! - [`advice`]: what to do about a failed connection, and how often to log it (pure).
//! - [`tls`]: PEM loading, rustls server and client configurations (TLS 1.3 only).
//! - [`handshake`]: the handshake's rules without IO (CONNECT, its checks against the
//!   certificate, CONNECTED), shared by server and client.
//! - [`conn`]: buffered frame reading and batched writing over any async stream.
//! - [`server`]: accept loop, handshake with role checks, per-peer queues, shutdown.
//! - [`client`]: one connection, or a client that reconnects with backoff.
//! - [`identity`]: a client's UUID persisted per role.
//! - [`error`]: the error type and its mapping to ERROR frames.
//! - `cli` (feature `cli`): the TLS flags and exit-code conventions the daemons share;
//!   `config_file`: `--config FILE` (TOML keys as flags).
//!
//! `conn`, `server` and `client` need the default feature `net` (tokio); without it the crate is
//! the wire format alone, for decision cores that must not depend on an async runtime.
//!
//! This crate depends on no other Drover crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advice;
pub mod bindings;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "cli")]
pub mod config_file;
#[cfg(feature = "net")]
pub mod conn;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod identity;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod payload;
pub mod role;
#[cfg(feature = "net")]
pub mod server;
pub mod tls;
pub mod uuid;

pub use error::{Error, Result};
pub use frame::{Command, ErrorCode, Event, Frame, FrameError, FrameType, Kind, Status};
pub use payload::Message;
pub use role::Role;
pub use uuid::Uuid;

/// Default TCP port of the scheduler.
pub const DEFAULT_PORT: u16 = 8888;
