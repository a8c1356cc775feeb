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
//! <state>/instances/sims.jsonl            the sim instances' records, a journal of changes
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash leaves the old or the new
//! version, never half of one. The sim journal is the exception: one JSON line per change,
//! appended, so a change costs its own size and not the size of every sim on the node; a torn
//! last line is ignored, and the journal is rewritten from the live records when it has grown to
//! twice their number. JSON because operators read these files when things go wrong.

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
    // The launcher's own records: nobody else reads them (a workload's env is in spec.json).
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?
    };
    file.write_all(&text).map_err(io)?;
    if durability == Durability::Synced {
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Opens an instance's output file for the launcher or the shim, which may run as root while
/// `results/` belongs to the workload's user: a symbolic link or a second hard link planted
/// there must not make root read or append to a file the workload could not.
///
/// # Errors
/// The file cannot be opened, or is a link.
pub fn open_output(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut options = std::fs::OpenOptions::new();
    if append {
        options.create(true).append(true).mode(0o644);
    } else {
        options.read(true);
    }
    let file = options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() > 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a plain file of its own", path.display()),
        ));
    }
    Ok(file)
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
    /// Draining (a graceful evacuation): what still runs at this time, Unix ms, is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until_unix_ms: Option<u64>,
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
    /// Its cache allocation group (resctrl), when it has cache ways of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resctrl: Option<PathBuf>,
    /// The user its workload runs as (`None`: root, asked for and allowed; or a record from
    /// before users were chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<crate::users::Account>,
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
    /// The cache allocation group (resctrl) to join before starting it.
    #[serde(default)]
    pub resctrl: Option<PathBuf>,
    /// Kill the workload after this long, seconds.
    pub max_run_time_s: Option<u64>,
    /// The user to run it as; `None`: the shim's own (root, when the workload asked for it and
    /// the launcher allows it). Specs written before there was a choice have none.
    #[serde(default)]
    pub user: Option<crate::users::Account>,
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
    /// The sim instances' records, in the instances directory (sims have no directory): a
    /// journal ([`super::Journal`]).
    pub const SIMS: &str = "sims.jsonl";
    /// Output of the workload, inside results/.
    pub const OUTPUT: &str = "output.txt";
    /// A task's parameters, inside results/ (its working directory), when they come that way.
    pub const PARAMETERS: &str = "parameters.json";
}

/// One line of a [`Journal`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line<T> {
    Put(T),
    Del(ssntp::Uuid),
}

/// An append-only file of changes to records keyed by UUID, one JSON line each, written without
/// fsync (what it holds survives a crash of the launcher, not of the machine). Changes wait in
/// memory until [`Journal::flush`] appends them in one write.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pending: Vec<u8>,
    lines: usize,
}

impl Journal {
    /// The journal at `path` (read it with [`Journal::load`]).
    pub fn new(path: PathBuf) -> Self {
        Self { path, pending: Vec::new(), lines: 0 }
    }

    /// Records that `record` is now as given.
    pub fn put<T: Serialize>(&mut self, record: &T) {
        serde_json::to_writer(&mut self.pending, &Line::Put(record)).expect("state types serialise");
        self.pending.push(b'\n');
    }

    /// Records that the record `id` is gone.
    pub fn del(&mut self, id: ssntp::Uuid) {
        serde_json::to_writer(&mut self.pending, &Line::<()>::Del(id)).expect("state types serialise");
        self.pending.push(b'\n');
    }

    /// Appends what changed since the last flush. When the file has grown past twice `live`
    /// records (and a thousand), it is rewritten from `records()` instead.
    ///
    /// # Errors
    /// File system errors (the changes stay pending for the next flush).
    pub fn flush<'a, T: Serialize + 'a>(
        &mut self,
        live: usize,
        records: impl FnOnce() -> Vec<&'a T>,
    ) -> Result<(), StateError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |source| StateError::Io { path: self.path.clone(), source };
        let added = self.pending.iter().filter(|b| **b == b'\n').count();
        if self.lines + added > 2 * live + 1000 {
            let mut text = Vec::new();
            let records = records();
            for record in &records {
                serde_json::to_writer(&mut text, &Line::Put(record)).expect("state types serialise");
                text.push(b'\n');
            }
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, &text).map_err(io)?;
            std::fs::rename(&tmp, &self.path).map_err(io)?;
            self.lines = records.len();
        } else {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
            file.write_all(&self.pending).map_err(io)?;
            self.lines += added;
        }
        self.pending.clear();
        Ok(())
    }

    /// The records the journal holds, replaying its changes in order. A last line cut short (a
    /// crash mid-write) is ignored.
    ///
    /// # Errors
    /// An unreadable file, or a line before the last that is not a change.
    pub fn load<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: impl Fn(&T) -> ssntp::Uuid,
    ) -> Result<Vec<T>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path: self.path.clone(), source }),
        };
        let mut records: std::collections::HashMap<ssntp::Uuid, T> = std::collections::HashMap::new();
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let complete = bytes.last() == Some(&b'\n');
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<Line<T>>(line) {
                Ok(Line::Put(record)) => {
                    records.insert(key(&record), record);
                }
                Ok(Line::Del(id)) => {
                    records.remove(&id);
                }
                Err(_) if i + 1 == lines.len() && !complete => {}
                Err(e) => {
                    return Err(StateError::Corrupt { path: self.path.clone(), reason: format!("line {}: {e}", i + 1) })
                }
            }
        }
        self.lines = lines.len();
        Ok(records.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_replays_its_changes_ignores_a_torn_tail_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let id = |n: u8| ssntp::Uuid::from_bytes([n; 16]);
        let key = |f: &(ssntp::Uuid, u32)| f.0;
        let mut j = Journal::new(path.clone());
        assert!(j.load(key).unwrap().is_empty(), "no file: nothing");
        j.put(&(id(1), 1));
        j.put(&(id(2), 1));
        j.put(&(id(1), 2));
        j.del(id(2));
        j.flush::<(ssntp::Uuid, u32)>(1, Vec::new).unwrap();
        let mut again = Journal::new(path.clone());
        assert_eq!(again.load(key).unwrap(), vec![(id(1), 2)]);
        // A crash mid-append leaves a torn last line: ignored.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"put\":[\"0303");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Journal::new(path.clone()).load(key).unwrap(), vec![(id(1), 2)]);
        // A broken line before the last is corruption.
        std::fs::write(&path, b"nonsense\n{\"del\":\"01010101-0101-0101-0101-010101010101\"}\n").unwrap();
        assert!(matches!(Journal::new(path.clone()).load(key), Err(StateError::Corrupt { .. })));
        // Many changes to one record: the file is rewritten, not grown without end.
        std::fs::remove_file(&path).unwrap();
        let mut j = Journal::new(path.clone());
        let live = (id(9), 0u32);
        for n in 0..5000 {
            j.put(&(id(9), n));
            j.flush(1, || vec![&live]).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 1002, "{lines} lines");
    }

    #[test]
    fn json_round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert_eq!(read_json::<NodeFlags>(&path).unwrap(), None);
        write_json(&path, &NodeFlags { maintenance: true, drain_until_unix_ms: Some(7) }).unwrap();
        assert_eq!(
            read_json::<NodeFlags>(&path).unwrap(),
            Some(NodeFlags { maintenance: true, drain_until_unix_ms: Some(7) })
        );
        std::fs::write(&path, b"{\"maintenance\": tru").unwrap();
        assert!(matches!(read_json::<NodeFlags>(&path), Err(StateError::Corrupt { .. })));
    }
}
