//! What runs workloads, seen from the launcher's core: the [`Executor`] trait and the values
//! that cross it. The core decides (admission, stops, what to report); an executor only does:
//! it starts and signals workloads, keeps their files, and tells what happened as [`Event`]s on
//! a channel. [`crate::instances::Instances`] is the executor for `process` and `oci` (under the
//! shim) and `sim` (a timer) workloads; tests of the core need none, its effects are data.

use std::time::Duration;

use ssntp::payload::{ExitReason, FailureReason, Start};
use ssntp::Uuid;

/// A refusal: the reason for the wire and a sentence for the operator.
pub type Refusal = (FailureReason, String);

/// Something that happened to an instance's workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The workload runs (its PID).
    Started {
        /// The instance.
        instance: Uuid,
        /// The workload's PID (0 for `sim`).
        pid: u32,
    },
    /// The workload could not be started; the detail is for the operator.
    StartFailed {
        /// The instance.
        instance: Uuid,
        /// Why.
        detail: String,
    },
    /// The workload ended.
    Exited(Exit),
}

/// An instance's workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The instance.
    pub instance: Uuid,
    /// Exit code, when it exited rather than was killed.
    pub code: Option<i32>,
    /// Why it ended.
    pub reason: ExitReason,
}

/// One instance's use of the node, sampled on the report timer (-1: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceUsage {
    /// Real memory, MiB.
    pub memory_mb: i64,
    /// CPU, percent of one CPU since the previous sample.
    pub cpu_percent: i32,
    /// What `results/` holds, MiB.
    pub disk_mb: i64,
    /// What the backend's machinery for it takes (the shim; runc beside it), KiB; -1 unknown.
    pub machinery_kb: i64,
}

impl Default for InstanceUsage {
    fn default() -> Self {
        Self { memory_mb: -1, cpu_percent: -1, disk_mb: -1, machinery_kb: -1 }
    }
}

/// An instance found on disk when the launcher starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Adopted {
    /// Its record was read: running again under watch, or ended.
    Known {
        /// The START it was run from.
        start: Box<Start>,
        /// A stop was requested before the restart.
        stop_requested: bool,
        /// How it ended, if it has.
        exit: Option<Exit>,
        /// Whether that end was delivered.
        exit_reported: bool,
    },
    /// Its record was unreadable: its workload was killed and its end is to be reported.
    Unreadable(Exit),
}

/// Runs workloads. Every method returns at once; what follows arrives as [`Event`]s.
pub trait Executor: std::fmt::Debug {
    /// Starts the workload of a START the core admitted.
    ///
    /// # Errors
    /// The workload cannot be started here (bad backend data, no runtime, file system).
    fn run(&mut self, start: &Start) -> Result<(), Refusal>;
    /// Stops a workload: SIGTERM, SIGKILL after `grace` (at once if not started yet, when it
    /// starts).
    fn stop(&mut self, instance: Uuid, grace: Duration);
    /// Removes an instance and its results, stopping it first if it runs.
    fn delete(&mut self, instance: Uuid);
    /// Takes note of one of its own events before the core sees it: the PID of a workload that
    /// started (and a stop asked for before it), or an end (persisted; limits and spec files
    /// removed).
    fn record(&mut self, event: &Event);
    /// Records that an end was delivered to the scheduler.
    fn reported(&mut self, instance: Uuid);
    /// The last `max_bytes` of an instance's output and whether earlier output was cut off.
    ///
    /// # Errors
    /// No such instance, or its output is unreadable.
    fn tail(&self, instance: Uuid, max_bytes: u32) -> Result<(String, bool), Refusal>;
    /// Samples every instance's use of the node.
    fn usage(&mut self) -> Vec<(Uuid, InstanceUsage)>;
    /// The device model sockets of a `vm` instance (live migration); `None` for any other.
    fn vm_sockets(&self, _instance: Uuid) -> Option<crate::migration::VmSockets> {
        None
    }
    /// Writes what it keeps in memory between the shell's report ticks (group commit).
    fn flush(&mut self) {}
}
