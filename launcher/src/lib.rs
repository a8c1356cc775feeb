//! `drover-launcher`: the agent on a compute node.
//!
//! It connects to the scheduler (reconnecting, with a persistent UUID), reports READY with the
//! node's real memory, disk, CPUs and load and STATS with every instance's usage, and runs
//! `process` workloads under a per-instance shim (own process group, cgroup limits where the
//! node has them, output in `results/output.txt`), `oci` containers through runc or crun under
//! the same shim, `systemd` workloads as transient units of the node's system manager, `vm`
//! workloads as a qemu device model under the same shim, `artifact` workloads (JARs) under
//! their runtime under the same shim, and `sim` workloads for scale tests.
//! Workloads outlive the launcher; a restarted launcher re-adopts them.
//!
//! # Layout
//! - [`probe`]: node resources from /proc and the file system; parsers are pure.
//! - [`capabilities`]: PCI devices, foreign architectures (binfmt_misc), cached images and a
//!   measured CPU score, from injectable roots.
//! - [`core`]: the launcher's decisions, pure (`handle(now, input) -> effects`): the instance
//!   table, admission, node status, reports and the connection they go on.
//! - [`admission`]: START admission and READY/FULL with hysteresis (pure).
//! - [`executor`]: the [`executor::Executor`] trait the core's effects are carried out through.
//! - [`cgroup`]: memory and CPU limits, usage and OOM counts (v1 and v2, injectable root).
//! - [`state`]: the files kept per node and per instance, written atomically.
//! - [`shim`]: the per-instance supervisor (`drover-launcher shim --dir DIR`).
//! - [`instances`]: the executor: start, stop, delete, output tail, usage, re-adoption after a
//!   restart.
//! - [`oci`]: bundles for the `oci` backend (runc or crun under the shim).
//! - [`systemd`]: the `systemd` backend: transient units over D-Bus, their ends, adoption.
//! - [`vm`]: the `vm` backend's device models (hypervisor tools) and their command lines.
//! - [`artifact`]: the `artifact` backend's runtimes (hypervisor tools) and command lines.
//! - [`migration`]: live migration of `vm` instances: the state stream between launchers over
//!   mutual TLS, and the device models' QMP monitors.
//! - [`resctrl`]: last-level cache ways as a resource (Intel RDT cache allocation).
//! - [`shell`]: the IO around the core: the SSNTP client, the report timer and machine probe,
//!   the executor.
//! - [`metrics`]: Prometheus metrics on `--metrics ADDR`.
//! - [`users`]: who a workload runs as (per-tenant users, never root unless allowed and asked).
//! - [`cli`]: command-line flags.
//! - [`doctor`]: `drover-launcher doctor`: the host inspected, flags recommended with reasons.

#![forbid(unsafe_code)]

pub mod admission;
pub mod artifact;
pub mod capabilities;
pub mod cgroup;
pub mod cli;
pub mod core;
pub mod doctor;
pub mod executor;
pub mod instances;
pub mod metrics;
pub mod migration;
pub mod oci;
pub mod probe;
pub mod resctrl;
pub mod shell;
pub mod shim;
pub mod state;
pub mod systemd;
pub mod users;
pub mod vm;
