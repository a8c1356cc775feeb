//! `drover-launcher`: the agent on a compute node.
//!
//! This is the foundation build: it connects to the scheduler (reconnecting, with a persistent
//! UUID), reports READY with the node's real memory, disk, CPUs and load, and runs `process`
//! and `sim` workloads with their output captured in `results/output.txt`. cgroup limits,
//! NUMA, OCI, admission with hysteresis, STATS and re-adoption across restarts are the
//! launcher issue's.
//!
//! # Layout
//! - [`probe`]: node resources from /proc and the file system; parsers are pure.
//! - [`instances`]: the instances on this node: start, stop, delete, output tail.
//! - [`shell`]: the SSNTP client loop: reports, command handling.
//! - [`cli`]: command-line flags.

#![forbid(unsafe_code)]

pub mod cli;
pub mod instances;
pub mod probe;
pub mod shell;
