//! The instances on this node.
//!
//! Each instance gets `<state>/instances/<uuid>/` as its working directory, with stdout and
//! stderr in `results/output.txt`. A `process` instance runs in its own process group (so a
//! stop reaches its children, and a launcher crash does not kill it); a `sim` instance only
//! waits. When an instance ends, a watcher task reports an [`Exit`] on the channel given to
//! [`Instances::new`], and everything in its directory except `results/` is removed.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use ssntp::payload::{Backend, ExitReason, FailureReason, Start};
use ssntp::Uuid;
use tokio::sync::mpsc;

/// Time between SIGTERM and SIGKILL when stopping.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

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

#[derive(Debug)]
struct Instance {
    /// Process group of a `process` instance while it runs.
    pgid: Option<i32>,
    /// Ends a `sim` instance early.
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    running: bool,
    stop_requested: bool,
}

/// A refusal: the reason for the wire and a sentence for the operator.
pub type Refusal = (FailureReason, String);

/// The node's instances.
#[derive(Debug)]
pub struct Instances {
    root: PathBuf,
    table: HashMap<Uuid, Instance>,
    exits: mpsc::Sender<Exit>,
}

impl Instances {
    /// Instances under `<state_dir>/instances`, reporting exits on `exits`.
    pub fn new(state_dir: &Path, exits: mpsc::Sender<Exit>) -> Self {
        Self { root: state_dir.join("instances"), table: HashMap::new(), exits }
    }

    /// Working directory of an instance.
    pub fn dir(&self, instance: Uuid) -> PathBuf {
        self.root.join(instance.to_string())
    }

    /// Output file of an instance.
    pub fn output(&self, instance: Uuid) -> PathBuf {
        self.dir(instance).join("results").join("output.txt")
    }

    /// Number of instances still running.
    pub fn running(&self) -> usize {
        self.table.values().filter(|i| i.running).count()
    }

    /// Starts an instance.
    ///
    /// # Errors
    /// A duplicate, an unsupported backend, an empty command, or a spawn failure.
    pub fn start(&mut self, start: &Start) -> Result<(), Refusal> {
        let id = start.instance_uuid;
        if let Some(existing) = self.table.get(&id) {
            let reason = if existing.running { FailureReason::AlreadyRunning } else { FailureReason::InstanceExists };
            return Err((reason, format!("instance {id} is already on this node")));
        }
        let dir = self.dir(id);
        let results = dir.join("results");
        std::fs::create_dir_all(&results)
            .map_err(|e| (FailureReason::LaunchFailure, format!("{}: {e}", results.display())))?;
        let instance = match &start.backend {
            Backend::Process { argv, env } => self.spawn_process(id, &dir, argv, env)?,
            Backend::Sim { duration_ms, exit_code, .. } => {
                self.spawn_sim(id, Duration::from_millis(*duration_ms), *exit_code)
            }
            Backend::Oci { .. } => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err((FailureReason::UnknownBackend, "this launcher does not offer the oci backend".into()));
            }
        };
        self.table.insert(id, instance);
        Ok(())
    }

    fn spawn_process(
        &self,
        id: Uuid,
        dir: &Path,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Instance, Refusal> {
        let Some((program, args)) = argv.split_first() else {
            return Err((FailureReason::InvalidData, "argv is empty".into()));
        };
        let output =
            std::fs::File::create(self.output(id)).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        let stderr = output.try_clone().map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(env)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| (FailureReason::LaunchFailure, format!("cannot run {program:?}: {e}")))?;
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let exits = self.exits.clone();
        let dir = dir.to_owned();
        tokio::spawn(async move {
            let (code, reason) = match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(0), _) => (Some(0), ExitReason::Completed),
                    (Some(code), _) => (Some(code), ExitReason::Failed),
                    (None, Some(_)) => (None, ExitReason::Killed),
                    (None, None) => (None, ExitReason::Unknown),
                },
                Err(_) => (None, ExitReason::Unknown),
            };
            clean_up(&dir);
            let _ = exits.send(Exit { instance: id, code, reason }).await;
        });
        Ok(Instance { pgid, cancel: None, running: true, stop_requested: false })
    }

    fn spawn_sim(&self, id: Uuid, duration: Duration, exit_code: i32) -> Instance {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let exit = tokio::select! {
                () = tokio::time::sleep(duration) => {
                    let reason = if exit_code == 0 { ExitReason::Completed } else { ExitReason::Failed };
                    Exit { instance: id, code: Some(exit_code), reason }
                }
                _ = cancelled => Exit { instance: id, code: None, reason: ExitReason::Killed },
            };
            let _ = exits.send(exit).await;
        });
        Instance { pgid: None, cancel: Some(cancel), running: true, stop_requested: false }
    }

    /// Stops a running instance: SIGTERM to its process group, SIGKILL after `grace`. Its
    /// [`Exit`] arrives on the channel; [`Instances::exited`] then says it was a stop.
    ///
    /// # Errors
    /// No such instance.
    pub fn stop(&mut self, id: Uuid, grace: Duration) -> Result<(), Refusal> {
        let instance = self.table.get_mut(&id).ok_or((FailureReason::NoInstance, format!("no instance {id} here")))?;
        instance.stop_requested = true;
        if !instance.running {
            return Ok(());
        }
        if let Some(cancel) = instance.cancel.take() {
            let _ = cancel.send(());
        }
        if let Some(pgid) = instance.pgid {
            let group = Pid::from_raw(pgid);
            let _ = killpg(group, Signal::SIGTERM);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                // The group is gone when every member exited; ESRCH is the expected answer.
                let _ = killpg(group, Signal::SIGKILL);
            });
        }
        Ok(())
    }

    /// Records an exit; returns whether it was the result of a stop request.
    pub fn exited(&mut self, exit: &Exit) -> bool {
        match self.table.get_mut(&exit.instance) {
            Some(instance) => {
                instance.running = false;
                instance.pgid = None;
                instance.stop_requested
            }
            None => false,
        }
    }

    /// Removes an instance and its results (stopping it first if it runs).
    ///
    /// # Errors
    /// No such instance.
    pub fn delete(&mut self, id: Uuid) -> Result<(), Refusal> {
        self.stop(id, Duration::ZERO)?;
        self.table.remove(&id);
        let _ = std::fs::remove_dir_all(self.dir(id));
        Ok(())
    }

    /// The last `max_bytes` of an instance's output (lossy UTF-8) and whether earlier output was
    /// cut off.
    ///
    /// # Errors
    /// No such instance or unreadable output.
    pub fn tail(&self, id: Uuid, max_bytes: u32) -> Result<(String, bool), Refusal> {
        if !self.table.contains_key(&id) {
            return Err((FailureReason::NoInstance, format!("no instance {id} here")));
        }
        let bytes = std::fs::read(self.output(id)).map_err(|e| (FailureReason::NoInstance, e.to_string()))?;
        let keep = bytes.len().min(max_bytes as usize);
        let tail = &bytes[bytes.len() - keep..];
        Ok((String::from_utf8_lossy(tail).into_owned(), keep < bytes.len()))
    }
}

/// After an instance ends, keeps `results/` and removes everything else in its directory.
fn clean_up(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name() == "results" {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssntp::payload::Requirements;

    fn start(id: Uuid, backend: Backend) -> Start {
        Start::new(id, Requirements { vcpus: 1, mem_mb: 16, ..Default::default() }, backend)
    }

    fn sh(script: &str) -> Backend {
        Backend::Process { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: Default::default() }
    }

    async fn next(rx: &mut mpsc::Receiver<Exit>) -> Exit {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn process_output_exit_codes_and_clean_up() {
        let state = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut instances = Instances::new(state.path(), tx);
        let ok = Uuid::new_v4();
        instances.start(&start(ok, sh("echo hello; echo oops >&2; touch scratch"))).unwrap();
        let exit = next(&mut rx).await;
        assert_eq!(exit, Exit { instance: ok, code: Some(0), reason: ExitReason::Completed });
        assert!(!instances.exited(&exit));
        assert_eq!(std::fs::read_to_string(instances.output(ok)).unwrap(), "hello\noops\n");
        assert!(!instances.dir(ok).join("scratch").exists(), "only results/ is kept");
        let (tail, truncated) = instances.tail(ok, 4).unwrap();
        assert_eq!((tail.as_str(), truncated), ("ops\n", true));

        let failing = Uuid::new_v4();
        instances.start(&start(failing, sh("exit 3"))).unwrap();
        let exit = next(&mut rx).await;
        assert_eq!(exit.code, Some(3));
        assert_eq!(
            instances.start(&start(failing, sh("true"))).unwrap_err().0,
            FailureReason::AlreadyRunning,
            "until its exit is recorded"
        );
        instances.exited(&exit);
        assert_eq!(instances.start(&start(failing, sh("true"))).unwrap_err().0, FailureReason::InstanceExists);
        let missing = Uuid::new_v4();
        let refusal = instances
            .start(&start(missing, Backend::Process { argv: vec!["/no/such/program".into()], env: Default::default() }))
            .unwrap_err();
        assert_eq!(refusal.0, FailureReason::LaunchFailure);
        instances.delete(ok).unwrap();
        assert!(!instances.dir(ok).exists());
    }

    #[tokio::test]
    async fn stop_reaches_the_whole_process_group() {
        let state = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut instances = Instances::new(state.path(), tx);
        let id = Uuid::new_v4();
        // A shell that ignores nothing, with a child: SIGTERM to the group ends both.
        instances.start(&start(id, sh("sleep 60 & wait"))).unwrap();
        assert_eq!(instances.running(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        instances.stop(id, Duration::from_secs(2)).unwrap();
        let exit = next(&mut rx).await;
        assert_eq!(exit.reason, ExitReason::Killed);
        assert!(instances.exited(&exit), "reported as a requested stop");
        assert_eq!(instances.running(), 0);
    }

    #[tokio::test]
    async fn sim_instances_run_for_their_duration() {
        let state = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut instances = Instances::new(state.path(), tx);
        let id = Uuid::new_v4();
        instances.start(&start(id, Backend::Sim { duration_ms: 10, mem_usage_mb: 1, exit_code: 7 })).unwrap();
        assert_eq!(next(&mut rx).await, Exit { instance: id, code: Some(7), reason: ExitReason::Failed });
    }
}
