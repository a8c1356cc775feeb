//! What the launcher keeps on disk so that it, and its workloads, survive its restarts.
//!
//! ```text
//! <state>/uuid-agent                      the node's identity (ssntp::identity)
//! <state>/launcher.json                   node flags: {"maintenance": bool}
//! <state>/instances/<uuid>/state.json     the instance: its START, backend facts, what was reported
//! <state>/instances/<uuid>/spec.json      what the shim runs (argv, env, cgroups)  — while running
//! <state>/instances/<uuid>/pid            the workload's PID, written by the shim   — while running
//! <state>/instances/<uuid>/exit.json      how it ended, written by the shim         — until reported
//! <state>/instances/<uuid>/results/       output.txt and whatever the workload leaves there
//! <state>/instances/sims.json             every sim instance's record (sims have no directory)
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash leaves the old or the new
//! version, never half of one. JSON because operators read these files when things go wrong.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ssntp::payload::{ExitReason, Start};

/// A persisted file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but does not hold what it should.
    #[error("{path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Writes `value` as JSON to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
/// File system errors.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    write_json_as(path, value, Durability::Synced)
}

/// How far a write must get before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On the disk (fsync): survives a power loss.
    Synced,
    /// In the page cache: survives a crash of the launcher, not of the machine. For `sim`
    /// instances, which stand for work in scale tests and must cost next to nothing.
    Cached,
}

/// [`write_json`] with a chosen durability; the rename keeps it atomic either way.
///
/// # Errors
/// File system errors.
pub fn write_json_as<T: Serialize>(path: &Path, value: &T, durability: Durability) -> Result<(), StateError> {
    let io = |source| StateError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).expect("state types serialise");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    if durability == Durability::Synced {
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
///
/// # Errors
/// Unreadable or corrupt file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path: path.to_owned(), source }),
    }
}

/// Node-wide flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeFlags {
    /// Evacuated: take no work until RESTORE.
    pub maintenance: bool,
}

/// The persisted record of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The START as received (payload types are serde; JSON here).
    pub start: Start,
    /// When it started, Unix ms.
    pub started_unix_ms: u64,
    /// A stop was requested (its end is reported as stopped, not exited).
    #[serde(default)]
    pub stop_requested: bool,
    /// How it ended, once known.
    #[serde(default)]
    pub exit: Option<ExitRecord>,
    /// Whether the end was reported to the scheduler.
    #[serde(default)]
    pub exit_reported: bool,
    /// cgroup directories the instance runs in.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// How a workload ended, as the shim saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    /// Why, as reported.
    pub reason: ExitReason,
}

/// What the shim runs (`spec.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// cgroup directories to join before starting the workload.
    pub cgroups: Vec<PathBuf>,
    /// Kill the workload after this long, seconds.
    pub max_run_time_s: Option<u64>,
}

/// File names inside an instance directory.
pub mod files {
    /// The instance record.
    pub const STATE: &str = "state.json";
    /// The shim's input.
    pub const SPEC: &str = "spec.json";
    /// The workload's PID.
    pub const PID: &str = "pid";
    /// The shim's verdict.
    pub const EXIT: &str = "exit.json";
    /// Kept after the end.
    pub const RESULTS: &str = "results";
    /// The records of every sim instance, in the instances directory (sims have no directory).
    pub const SIMS: &str = "sims.json";
    /// Output of the workload, inside results/.
    pub const OUTPUT: &str = "output.txt";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert_eq!(read_json::<NodeFlags>(&path).unwrap(), None);
        write_json(&path, &NodeFlags { maintenance: true }).unwrap();
        assert_eq!(read_json::<NodeFlags>(&path).unwrap(), Some(NodeFlags { maintenance: true }));
        std::fs::write(&path, b"{\"maintenance\": tru").unwrap();
        assert!(matches!(read_json::<NodeFlags>(&path), Err(StateError::Corrupt { .. })));
    }
}
