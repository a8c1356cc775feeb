//! Drover's model: the values and rules more than one part of the system must agree on, decided
//! here once. No IO, no clock reads, no tokio, no clap: inputs in, answers out.
//!
//! # Layout
//! - [`time`]: [`Now`], the injected time (monotonic for durations, Unix for anything persisted
//!   or sent).
//! - [`fit`]: whether work fits a node's resources within the overcommit bounds — the rule the
//!   scheduler places by and a launcher admits by.

#![forbid(unsafe_code)]

pub mod fit;
pub mod time;

pub use fit::{fit, Capacity, Demand, Overcommit, Shortfall, Usage};
pub use time::Now;
