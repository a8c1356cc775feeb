//! Drover's model: the values and rules more than one part of the system must agree on, decided
//! here once. No IO, no tokio, no clap: inputs in, answers out (the clock is read only by
//! [`SystemClock`], which the shells hold).
//!
//! # Layout
//! - [`time`]: [`Now`], the injected time (monotonic for durations, Unix for anything persisted
//!   or sent); [`Clock`], and [`SystemClock`], the one place daemons read the system's clocks
//!   (a `clippy.toml` rule bans reading them anywhere else without saying why).
//! - [`duration`]: how durations are written (`500ms`, `10s`, `5m`), in flags and files.
//! - [`status`]: [`NodeStatus`] and [`InstanceStatus`]: the states every part shows and reads
//!   the same way, with their names and which instance states are final.
//! - [`fit`]: whether work fits a node's resources within the overcommit bounds — the rule the
//!   scheduler places by and a launcher admits by.

#![forbid(unsafe_code)]

pub mod duration;
pub mod fit;
pub mod status;
pub mod time;

pub use duration::parse_duration;
pub use fit::{fit, slots, Capacity, Demand, Overcommit, Shortfall, Usage};
pub use status::{InstanceStatus, NodeStatus};
pub use time::{format_utc, unix_ms_now, Clock, Now, SystemClock};
