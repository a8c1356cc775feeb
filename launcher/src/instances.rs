//! The instances on this node, and their survival across launcher restarts.
//!
//! Each instance gets `<state>/instances/<uuid>/` (see [`crate::state`] for the files). A
//! `process` instance runs under a [`crate::shim`] in its own process group, inside its own
//! cgroups when the node has them; a `sim` instance is a timer in the launcher. A watcher task
//! per instance turns the shim's files into [`Event`]s; a restarted launcher calls
//! [`Instances::adopt`] to pick every instance up again from disk.
//!
//! An instance's end is persisted (`state.json`) and re-reported after every reconnect until
//! [`Instances::reported`] marks it delivered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use ssntp::payload::{Backend, ExitReason, FailureReason, Start};
use ssntp::Uuid;
use tokio::sync::mpsc;

use crate::cgroup::{Cgroups, Pin};
use crate::executor::Executor;
pub use crate::executor::{Adopted, Event, Exit, InstanceUsage, Refusal};
use crate::migration::VmSockets;
use crate::state::{files, read_json, write_json, ExitRecord, InstanceRecord, Journal, ShimSpec};
use crate::systemd::{Systemd, UnitSpec};
use crate::users::{Account, Users};
use crate::vm::VmSpec;

/// The launcher's own user and group.
pub fn own_account() -> Account {
    Account { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw() }
}

/// Creates an instance's directory and its `results/`. The directory stays the launcher's
/// (its records and the shim's files are there, out of the workload's reach) and only lets
/// others pass through; `results/` is the workload user's alone.
fn make_dirs(dir: &Path, user: Option<Account>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let results = dir.join(files::RESULTS);
    std::fs::create_dir_all(&results)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o700))?;
    if let Some(user) = user {
        std::os::unix::fs::chown(&results, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

/// Most output bytes one LOG_FETCH returns, whatever it asks for (frames stay well under the
/// 4 MiB payload limit).
pub const MAX_LOG_BYTES: u32 = 1024 * 1024;
/// How often a watcher looks at an instance's files.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How to start a shim: the launcher binary and the arguments before `--dir`.
#[derive(Debug, Clone)]
pub struct ShimCommand {
    /// Program (normally this launcher's own executable).
    pub program: PathBuf,
    /// Leading arguments (normally `["shim"]`).
    pub args: Vec<String>,
}

impl ShimCommand {
    /// This executable's `shim` mode.
    ///
    /// # Errors
    /// The executable's path cannot be found.
    pub fn current() -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, args: vec!["shim".into()] })
    }
}

#[derive(Debug)]
struct Instance {
    record: InstanceRecord,
    /// The workload's PID (= its process group), once known.
    pid: Option<u32>,
    running: bool,
    /// Ends a `sim` instance early.
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    /// CPU time (clock ticks) and when it was read, for the next STATS' percentage.
    last_cpu: Option<(u64, std::time::Instant)>,
    /// A stop that came before the workload's PID was known: its grace, applied on start.
    stop_pending: Option<Duration>,
}

/// Where a root task finds the state directory kept across its runs.
pub const STATE_DIR_ENV: &str = "DROVER_STATE_DIR";

/// A name as a file name: letters, digits and `-_.@+~` kept, `/` (a child task's) as `+`,
/// anything else as `_`; never `.` or `..`.
fn safe(name: &str) -> String {
    let out: String = name
        .chars()
        .map(|c| match c {
            '/' => '+',
            c if c.is_ascii_alphanumeric() || "-_.@~".contains(c) => c,
            _ => '_',
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out.replace('.', "_")
    } else {
        out
    }
}

/// An instance's directory: named after its task and version, then its UUID
/// (`build+graph@2.<uuid>`); just the UUID when it has no name.
pub fn dir_name(start: &Start) -> String {
    let id = start.instance_uuid;
    match &start.name {
        Some(name) => match &start.version {
            Some(version) => format!("{}@{}.{id}", safe(name), safe(version)),
            None => format!("{}.{id}", safe(name)),
        },
        None => id.to_string(),
    }
}

/// The instance a directory belongs to (its name ends in the UUID).
fn uuid_of_dir(name: &str) -> Option<Uuid> {
    name.rsplit('.').next()?.parse().ok()
}

/// Grace for a stop requested before a restart of the launcher, whose own grace is not kept.
const ADOPTED_STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM to a workload's process group, SIGKILL after `grace`.
fn signal_stop(pid: u32, grace: Duration) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        // ESRCH (the group is gone) is the expected answer.
        let _ = killpg(group, Signal::SIGKILL);
    });
}

/// An `oci` START's backend, borrowed.
#[derive(Debug, Clone, Copy)]
struct OciSpec<'a> {
    rootfs: &'a str,
    args: &'a [String],
    env: &'a std::collections::BTreeMap<String, String>,
    writable_root: bool,
    volumes: &'a [ssntp::payload::Volume],
    network: &'a ssntp::payload::OciNetwork,
}

/// A named network namespace must be one of the node's (`ip netns add NAME`).
fn check_network(network: &ssntp::payload::OciNetwork) -> Result<(), Refusal> {
    if let ssntp::payload::OciNetwork::Namespace(path) = network {
        let p = Path::new(path);
        let named = ["/run/netns", "/var/run/netns"].iter().any(|d| p.parent() == Some(Path::new(d)));
        if !named || !p.exists() {
            return Err((
                FailureReason::InvalidData,
                format!("network namespace {path}: not a namespace of this node (/run/netns/NAME, made by ip netns add NAME)"),
            ));
        }
    }
    Ok(())
}

/// The node's instances.
#[derive(Debug)]
pub struct Instances {
    root: PathBuf,
    shim: ShimCommand,
    cgroups: Cgroups,
    /// NUMA pinning for every workload (launcher per NUMA node).
    pin: Option<Pin>,
    /// runc or crun, when the node offers the `oci` backend.
    oci_runtime: Option<PathBuf>,
    /// Where OCI volumes may come from (`--volume-root`, canonical); none: no volumes.
    volume_roots: Vec<PathBuf>,
    /// The scripts workloads may run as checks, by name (`--script`).
    scripts: std::collections::BTreeMap<String, PathBuf>,
    /// The device models VMs run with, by guest architecture (`qemu-system-ARCH`).
    device_models: std::collections::BTreeMap<String, PathBuf>,
    /// The runtimes artifacts run under, by kind (`java` for `jar`).
    runtimes: std::collections::BTreeMap<String, PathBuf>,
    /// Last-level cache allocation, where the node has it.
    cache: Option<crate::resctrl::Cache>,
    /// The cache ways each running instance holds (bit masks).
    cache_masks: HashMap<Uuid, u64>,
    table: HashMap<Uuid, Instance>,
    events: mpsc::Sender<Event>,
    /// The sim records' journal; changes wait in it until [`Instances::flush`].
    sims: Journal,
    /// Who workloads run as.
    users: Users,
    /// Where new per-tenant allocations are kept (none: not kept, for tests).
    users_file: Option<PathBuf>,
    /// The system manager, when the node offers the `systemd` backend.
    systemd: Option<Systemd>,
    /// The launcher's node, in machine-wide names ([`Instances::with_node`]).
    node: Option<Uuid>,
}

fn unix_ms() -> u64 {
    drover_model::unix_ms_now()
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

fn exit_of(record: &ExitRecord, instance: Uuid) -> Exit {
    Exit { instance, code: record.code, reason: record.reason }
}

impl Instances {
    /// Instances under `<state_dir>/instances`, reporting on `events`.
    pub fn new(state_dir: &Path, shim: ShimCommand, cgroups: Cgroups, events: mpsc::Sender<Event>) -> Self {
        Self {
            root: state_dir.join("instances"),
            shim,
            cgroups,
            pin: None,
            oci_runtime: None,
            volume_roots: Vec::new(),
            scripts: std::collections::BTreeMap::new(),
            device_models: std::collections::BTreeMap::new(),
            runtimes: std::collections::BTreeMap::new(),
            cache: None,
            cache_masks: HashMap::new(),
            table: HashMap::new(),
            events,
            sims: Journal::new(state_dir.join("instances").join(files::SIMS)),
            users: Users::one(own_account()),
            users_file: None,
            systemd: None,
            node: None,
        }
    }

    /// Names what it makes machine-wide (cgroups, cache groups) after `node` too: two
    /// launchers of one machine (one per NUMA node) may hold copies of the same instance while
    /// it migrates from one to the other, and each copy needs limits of its own.
    #[must_use]
    pub fn with_node(mut self, node: Uuid) -> Self {
        self.node = Some(node);
        self
    }

    /// The machine-wide name of an instance's cgroups and cache group.
    fn machine_name(&self, id: Uuid) -> String {
        match self.node {
            Some(node) => format!("{node}-{id}"),
            None => id.to_string(),
        }
    }

    /// Runs `systemd` instances as transient units of this manager.
    #[must_use]
    pub fn with_systemd(mut self, systemd: Option<Systemd>) -> Self {
        self.systemd = systemd;
        self
    }

    /// Runs workloads as `users` decides (by default: as the launcher's own user), keeping new
    /// per-tenant allocations in `file`.
    #[must_use]
    pub fn with_users(mut self, users: Users, file: Option<PathBuf>) -> Self {
        // Workloads pass through to their own `results/`; nobody lists the node's instances.
        let opened = std::fs::create_dir_all(&self.root).and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))
        });
        if let Err(e) = opened {
            tracing::error!(dir = %self.root.display(), error = %e, "cannot prepare the instances directory");
        }
        self.users = users;
        self.users_file = file;
        self
    }

    /// Runs `oci` instances with this runtime (runc or crun).
    #[must_use]
    pub fn with_oci_runtime(mut self, runtime: Option<PathBuf>) -> Self {
        self.oci_runtime = runtime;
        self
    }

    /// The directories OCI volumes may come from (each made canonical; one that does not exist
    /// is left out).
    #[must_use]
    pub fn with_volume_roots(mut self, roots: &[PathBuf]) -> Self {
        self.volume_roots = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        self
    }

    /// Gives instances that ask for them cache ways of this allocation.
    #[must_use]
    pub fn with_cache(mut self, cache: Option<crate::resctrl::Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// The device models VMs run with, by guest architecture.
    #[must_use]
    pub fn with_device_models(mut self, models: std::collections::BTreeMap<String, PathBuf>) -> Self {
        self.device_models = models;
        self
    }

    /// The runtimes artifacts run under, by kind.
    #[must_use]
    pub fn with_runtimes(mut self, runtimes: std::collections::BTreeMap<String, PathBuf>) -> Self {
        self.runtimes = runtimes;
        self
    }

    /// The scripts workloads may run as checks, by name.
    #[must_use]
    pub fn with_scripts(mut self, scripts: std::collections::BTreeMap<String, PathBuf>) -> Self {
        self.scripts = scripts;
        self
    }

    /// Pins every workload started from now on to these CPUs and memory nodes.
    #[must_use]
    pub fn with_pin(mut self, pin: Option<Pin>) -> Self {
        self.pin = pin;
        self
    }

    /// The cgroup interface in use.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// Working directory of an instance.
    pub fn dir(&self, instance: Uuid) -> PathBuf {
        match self.table.get(&instance) {
            Some(i) => self.root.join(dir_name(&i.record.start)),
            None => self.root.join(instance.to_string()),
        }
    }

    /// Output file of an instance.
    pub fn output(&self, instance: Uuid) -> PathBuf {
        self.dir(instance).join(files::RESULTS).join(files::OUTPUT)
    }

    /// Number of instances still running.
    pub fn running(&self) -> usize {
        self.table.values().filter(|i| i.running).count()
    }

    /// The workload PID of an instance, if known.
    pub fn pid(&self, instance: Uuid) -> Option<u32> {
        self.table.get(&instance).and_then(|i| i.pid)
    }

    /// Whether an instance is on this node.
    pub fn contains(&self, instance: Uuid) -> bool {
        self.table.contains_key(&instance)
    }

    /// Whether an instance is running.
    pub fn is_running(&self, instance: Uuid) -> bool {
        self.table.get(&instance).is_some_and(|i| i.running)
    }

    fn persist(&mut self, id: Uuid) {
        let Some(i) = self.table.get(&id) else { return };
        if matches!(i.record.start.backend, Backend::Sim { .. }) {
            // Appended with the others at the next flush (group commit).
            self.sims.put(&i.record);
            return;
        }
        if let Err(e) = write_json(&self.dir(id).join(files::STATE), &i.record) {
            tracing::error!(instance = %id, error = %e, "cannot persist instance state");
        }
    }

    /// Appends the sim records' changes since the last flush to the node's sim journal: one
    /// write for all of them, the size of what changed, without fsync (they survive a crash of
    /// the launcher, not of the machine). The shell calls it on its report timer.
    pub fn flush(&mut self) {
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            tracing::error!(error = %e, "cannot create the instances directory");
            return;
        }
        let table = &self.table;
        let is_sim = |i: &&Instance| matches!(i.record.start.backend, Backend::Sim { .. });
        let live = table.values().filter(is_sim).count();
        let records = || table.values().filter(is_sim).map(|i| &i.record).collect::<Vec<&InstanceRecord>>();
        if let Err(e) = self.sims.flush(live, records) {
            tracing::error!(error = %e, "cannot persist the sim instances");
        }
    }

    /// Picks up every instance on disk after a launcher start, for the core: running ones are
    /// watched again (same PIDs), ended ones are listed with whether their end was delivered.
    /// An unreadable record is listed as such and its workload stopped: without its record the
    /// launcher cannot account for it, and the controller restarts it elsewhere.
    pub fn adopt(&mut self) -> Vec<Adopted> {
        let mut report = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return report };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(uuid_of_dir) else { continue };
            let dir = entry.path();
            let pid: Option<u32> =
                std::fs::read_to_string(dir.join(files::PID)).ok().and_then(|p| p.trim().parse().ok());
            let record: Option<InstanceRecord> = match read_json(&dir.join(files::STATE)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "instance state unreadable; stopping its workload and reporting it");
                    None
                }
            };
            let Some(mut record) = record else {
                if let Some(pid) = pid.filter(|p| alive(*p)).and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                crate::shim::clean_up(&dir);
                let _ = std::fs::remove_file(dir.join(files::STATE));
                report.push(Adopted::Unreadable(Exit { instance: id, code: None, reason: ExitReason::Unknown }));
                continue;
            };
            if record.exit.is_none() {
                if let Ok(Some(exit)) = read_json::<ExitRecord>(&dir.join(files::EXIT)) {
                    record.exit = Some(exit);
                }
            }
            let running = record.exit.is_none();
            if let Some(mask) = record.resctrl.as_ref().filter(|_| running).and_then(|g| {
                std::fs::read_to_string(g.join("schemata")).ok().as_deref().and_then(crate::resctrl::mask_of)
            }) {
                self.cache_masks.insert(id, mask);
            }
            let instance = Instance {
                record: record.clone(),
                pid,
                running,
                cancel: None,
                last_cpu: None,
                // Stopped before the shim wrote the PID, then this launcher restarted.
                stop_pending: (running && record.stop_requested && pid.is_none()).then_some(ADOPTED_STOP_GRACE),
            };
            self.table.insert(id, instance);
            report.push(Adopted::Known {
                start: Box::new(record.start.clone()),
                stop_requested: record.stop_requested,
                exit: record.exit.as_ref().map(|e| exit_of(e, id)),
                exit_reported: record.exit_reported,
            });
            match (&record.exit, &record.start.backend) {
                (Some(_), _) => self.persist(id),
                (None, Backend::Sim { duration_ms, exit_code, .. }) => {
                    let remaining = (record.started_unix_ms + duration_ms).saturating_sub(unix_ms());
                    let cancel = self.spawn_sim(id, Duration::from_millis(remaining), *exit_code);
                    if let Some(i) = self.table.get_mut(&id) {
                        i.cancel = Some(cancel);
                    }
                }
                (None, Backend::Systemd { .. }) => {
                    let unit = crate::systemd::unit_name(&record.start);
                    tracing::info!(instance = %id, %unit, "re-adopted running unit");
                    match &self.systemd {
                        Some(systemd) => {
                            let (systemd, events) = (systemd.clone(), self.events.clone());
                            tokio::spawn(async move { systemd.watch(id, unit, dir, events).await });
                        }
                        None => {
                            tracing::error!(instance = %id, %unit, "a systemd unit, but this launcher runs without --backend systemd; reporting it ended");
                            let events = self.events.clone();
                            tokio::spawn(async move {
                                let exit = Exit { instance: id, code: None, reason: ExitReason::Unknown };
                                let _ = events.send(Event::Exited(exit)).await;
                            });
                        }
                    }
                }
                (None, _) => {
                    tracing::info!(instance = %id, ?pid, "re-adopted running instance");
                    tokio::spawn(watch(dir, id, pid, self.events.clone()));
                }
            }
        }
        self.adopt_sims(&mut report);
        report
    }

    /// Picks the sim instances up from the node's sim file: running ones run on for what is
    /// left of their duration.
    fn adopt_sims(&mut self, report: &mut Vec<Adopted>) {
        let sims: Vec<InstanceRecord> = match self.sims.load(|r: &InstanceRecord| r.start.instance_uuid) {
            Ok(records) => records,
            Err(e) => {
                // Sims stand for work in scale tests: the controller restarts what is missing.
                tracing::error!(error = %e, "sim instances unreadable; forgetting them");
                Vec::new()
            }
        };
        for record in sims {
            let id = record.start.instance_uuid;
            let running = record.exit.is_none();
            let cancel = match (&record.exit, &record.start.backend) {
                (None, Backend::Sim { duration_ms, exit_code, .. }) => {
                    let remaining = (record.started_unix_ms + duration_ms).saturating_sub(unix_ms());
                    Some(self.spawn_sim(id, Duration::from_millis(remaining), *exit_code))
                }
                _ => None,
            };
            report.push(Adopted::Known {
                start: Box::new(record.start.clone()),
                stop_requested: record.stop_requested,
                exit: record.exit.as_ref().map(|e| exit_of(e, id)),
                exit_reported: record.exit_reported,
            });
            self.table.insert(id, Instance { record, pid: None, running, cancel, last_cpu: None, stop_pending: None });
        }
    }

    /// Starts an instance.
    ///
    /// # Errors
    /// A duplicate, an unsupported backend, an empty command, or a launch failure.
    pub fn start(&mut self, start: &Start) -> Result<(), Refusal> {
        let id = start.instance_uuid;
        if let Some(existing) = self.table.get(&id) {
            if start.restart && !existing.running {
                // A restart of a copy that ended here: the new run replaces it (ciao's restart).
                self.delete(id)?;
            } else {
                let reason =
                    if existing.running { FailureReason::AlreadyRunning } else { FailureReason::InstanceExists };
                return Err((reason, format!("instance {id} is already on this node")));
            }
        }
        for (what, text) in [("name", &start.name), ("version", &start.version)] {
            if text.as_ref().is_some_and(|t| t.len() > ssntp::payload::MAX_TASK_NAME) {
                let limit = ssntp::payload::MAX_TASK_NAME;
                return Err((FailureReason::InvalidData, format!("the task's {what} is longer than {limit} bytes")));
            }
        }
        let dir = self.root.join(dir_name(start));
        let is_sim = matches!(start.backend, Backend::Sim { .. });
        let mut user = None;
        if !is_sim {
            let (account, allocated) = self.users.account_for(start.tenant.as_deref(), start.run_as_root)?;
            if allocated {
                if let Some(file) = &self.users_file {
                    write_json(file, self.users.allocated())
                        .map_err(|e| (FailureReason::LaunchFailure, format!("cannot keep the tenant's uid: {e}")))?;
                }
            }
            user = account;
            // A sim instance has no directory: its record goes in the node's sim file.
            make_dirs(&dir, user).map_err(|e| (FailureReason::LaunchFailure, format!("{}: {e}", dir.display())))?;
        }
        let mut start = start.clone();
        if !is_sim {
            self.prepare_task(&mut start, &dir, user)?;
            if let Err(refusal) = with_checks(&mut start, &self.scripts) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(refusal);
            }
        }
        let start = &start;
        let mut record = InstanceRecord {
            start: start.clone(),
            started_unix_ms: unix_ms(),
            stop_requested: false,
            exit: None,
            exit_reported: false,
            cgroups: Vec::new(),
            resctrl: None,
            user,
        };
        if let Err(refusal) = self.take_cache(id, &mut record) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(refusal);
        }
        let result = match &start.backend {
            Backend::Process { argv, env } => self.spawn_process(id, &dir, argv, env, 0, &mut record).map(|()| None),
            Backend::Vm { kernel, initrd, append, disks, arch, accel } => {
                let vm = VmSpec {
                    kernel,
                    initrd: initrd.as_deref(),
                    append: append.as_deref(),
                    disks,
                    arch: arch.as_deref(),
                    accel: *accel,
                };
                self.spawn_vm(id, &dir, &vm, &mut record).map(|()| None)
            }
            Backend::Sim { duration_ms, exit_code, .. } => {
                Ok(Some(self.spawn_sim(id, Duration::from_millis(*duration_ms), *exit_code)))
            }
            Backend::Oci { rootfs, args, env, writable_root, volumes, network } => {
                let container = OciSpec { rootfs, args, env, writable_root: *writable_root, volumes, network };
                self.spawn_oci(id, &dir, &container, &mut record).map(|()| None)
            }
            Backend::Systemd { argv, env } => self.spawn_unit(&dir, argv, env, &mut record).map(|()| None),
            Backend::Artifact { path, args, env } => {
                self.spawn_artifact(id, &dir, path, args, env, &mut record).map(|()| None)
            }
        };
        let cancel = match result {
            Ok(cancel) => cancel,
            Err(refusal) => {
                self.cgroups.remove(&record.cgroups);
                self.release_cache(id, record.resctrl.take());
                let _ = std::fs::remove_dir_all(&dir);
                return Err(refusal);
            }
        };
        self.table
            .insert(id, Instance { record, pid: None, running: true, cancel, last_cpu: None, stop_pending: None });
        self.persist(id);
        Ok(())
    }

    fn spawn_process(
        &mut self,
        id: Uuid,
        dir: &Path,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
        extra_mb: u64,
        record: &mut InstanceRecord,
    ) -> Result<(), Refusal> {
        if argv.is_empty() {
            return Err((FailureReason::InvalidData, "argv is empty".into()));
        }
        let req = &record.start.requirements;
        if !matches!(self.cgroups, Cgroups::Unavailable { .. })
            && (req.mem_mb > 0 || req.vcpus > 0 || self.pin.is_some())
        {
            record.cgroups = self
                .cgroups
                .create(&self.machine_name(id), req.mem_mb + extra_mb, req.vcpus, self.pin.as_ref())
                .map_err(|e| (FailureReason::LaunchFailure, e))?;
        }
        self.spawn_shim(id, dir, argv.to_vec(), env.clone(), record.user, record)
    }

    /// Gives the instance the cache ways it asks for: a resctrl group of its own with the first
    /// free run of that many ways, which its shim joins. Refused where the node has no cache
    /// allocation or the backend does not run under the shim, and when no run or no group is
    /// free (the scheduler counted the ways; this is the node's own check).
    fn take_cache(&mut self, id: Uuid, record: &mut InstanceRecord) -> Result<(), Refusal> {
        let n = record.start.requirements.cache_ways;
        if n == 0 {
            return Ok(());
        }
        let Some(cache) = &self.cache else {
            return Err((FailureReason::InvalidData, "this node has no cache allocation (resctrl)".into()));
        };
        if matches!(record.start.backend, Backend::Systemd { .. } | Backend::Sim { .. }) {
            return Err((FailureReason::InvalidData, "cache ways are given to process, oci and vm instances".into()));
        }
        // The default group holds one of the hardware's groups.
        if self.cache_masks.len() + 1 >= usize::try_from(cache.closids).unwrap_or(usize::MAX) {
            return Err((FailureReason::FullCn, format!("all {} cache groups are in use", cache.closids)));
        }
        let Some(mask) = crate::resctrl::allocate(cache.ways, self.cache_masks.values().copied(), n) else {
            return Err((FailureReason::FullCn, format!("no {n} contiguous cache ways free of {}", cache.ways)));
        };
        let group = crate::resctrl::group(&cache.root, &self.machine_name(id));
        let made = std::fs::create_dir(&group)
            .and_then(|()| std::fs::write(group.join("schemata"), crate::resctrl::schemata(cache, mask)));
        if let Err(e) = made {
            crate::resctrl::remove(&group);
            return Err((FailureReason::LaunchFailure, format!("cache group {}: {e}", group.display())));
        }
        self.cache_masks.insert(id, mask);
        record.resctrl = Some(group);
        Ok(())
    }

    /// Gives back an instance's cache ways and removes its group.
    fn release_cache(&mut self, id: Uuid, group: Option<PathBuf>) {
        self.cache_masks.remove(&id);
        if let Some(group) = group {
            crate::resctrl::remove(&group);
        }
    }

    /// Runs a VM's device model as a process instance whose memory limit holds the guest's
    /// memory and the device model's own ([`crate::vm::DEVICE_MODEL_MB`]).
    fn spawn_vm(&mut self, id: Uuid, dir: &Path, vm: &VmSpec<'_>, record: &mut InstanceRecord) -> Result<(), Refusal> {
        let arch = ssntp::payload::canonical_arch(vm.arch.unwrap_or(std::env::consts::ARCH)).to_owned();
        let Some(model) = self.device_models.get(&arch) else {
            return Err((
                FailureReason::InvalidData,
                format!("this node has no device model for {arch} guests (qemu-system-{arch})"),
            ));
        };
        for file in std::iter::once(vm.kernel).chain(vm.initrd).chain(vm.disks.iter().map(String::as_str)) {
            if !Path::new(file).is_file() {
                return Err((FailureReason::LaunchFailure, format!("{file}: no such file on this node")));
            }
        }
        let req = &record.start.requirements;
        let kvm = crate::vm::use_kvm(vm.accel, &arch, Path::new("/dev/kvm").exists())
            .map_err(|e| (FailureReason::InvalidData, e))?;
        // Disks are snapshots beside this device model: such a guest never migrates, so it
        // needs no monitor.
        let incoming = record.start.migrate_from.is_some();
        let sockets = if record.start.backend.migrates() { VmSockets::in_dir(&dir.join(files::RESULTS)) } else { None };
        if incoming && sockets.is_none() {
            let detail = format!("{}: too long a path for the migration sockets", dir.display());
            return Err((FailureReason::LaunchFailure, detail));
        }
        let argv = crate::vm::argv(model, vm, req.mem_mb, req.vcpus, kvm, sockets.as_ref(), incoming);
        self.spawn_process(id, dir, &argv, &std::collections::BTreeMap::new(), crate::vm::DEVICE_MODEL_MB, record)
    }

    /// Runs an artifact under the node's runtime for its kind, charged the heap it asked for plus
    /// the runtime's own share. Refused: a kind this node has no runtime for, or an artifact
    /// that is not a file under a `--volume-root`.
    fn spawn_artifact(
        &mut self,
        id: Uuid,
        dir: &Path,
        path: &str,
        args: &[String],
        env: &std::collections::BTreeMap<String, String>,
        record: &mut InstanceRecord,
    ) -> Result<(), Refusal> {
        let refuse = |why: String| Err((FailureReason::InvalidData, why));
        let Some(kind) = ssntp::payload::artifact_kind(path) else {
            return refuse(format!("{path}: not a kind of artifact this node runs (a .jar)"));
        };
        let Some(runtime) = self.runtimes.get(kind) else {
            return refuse(format!("this node has no runtime for .{kind} artifacts (--backend artifact)"));
        };
        if self.volume_roots.is_empty() {
            return refuse("this node allows no volumes, so no artifacts (drover-launcher --volume-root DIR)".into());
        }
        let artifact = match Path::new(path).canonicalize() {
            Ok(p) if p.is_file() && self.volume_roots.iter().any(|root| p.starts_with(root)) => p,
            Ok(_) => return refuse(format!("{path}: not a file under this node's --volume-root")),
            Err(_) => return Err((FailureReason::LaunchFailure, format!("{path}: no such file on this node"))),
        };
        let heap_mb = record.start.requirements.mem_mb;
        let argv = crate::artifact::argv(runtime, kind, &artifact, heap_mb, args);
        self.spawn_process(id, dir, &argv, env, crate::artifact::RUNTIME_MB, record)
    }

    /// What a task's run gets besides its command: `parameters.json` in its working directory
    /// (when its parameters come that way), and for a root task the state directory kept
    /// across its runs (`<state>/roots/<tenant>/<name>`, its user's), in `DROVER_STATE_DIR`.
    fn prepare_task(&self, start: &mut Start, dir: &Path, user: Option<Account>) -> Result<(), Refusal> {
        let failed =
            |what: &Path, e: std::io::Error| (FailureReason::LaunchFailure, format!("{}: {e}", what.display()));
        if !start.parameters.is_empty() {
            let path = dir.join(files::RESULTS).join(files::PARAMETERS);
            write_json(&path, &start.parameters).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
            if let Some(user) = user {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(|e| failed(&path, e))?;
            }
        }
        if start.root_task {
            let tenant = start.tenant.as_deref().unwrap_or("-");
            let name = start.name.as_deref().unwrap_or("root");
            let state = self.root.parent().unwrap_or(&self.root).join("roots").join(safe(tenant)).join(safe(name));
            std::fs::create_dir_all(&state).map_err(|e| failed(&state, e))?;
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| failed(&state, e))?;
            }
            if let Some(user) = user {
                std::os::unix::fs::chown(&state, Some(user.uid), Some(user.gid)).map_err(|e| failed(&state, e))?;
            }
            if let Some(env) = start.backend.env_mut() {
                env.insert(STATE_DIR_ENV.to_owned(), state.display().to_string());
            }
        }
        Ok(())
    }

    /// Starts a `systemd` instance as a transient unit; its usage is read from the unit's
    /// cgroups, which systemd makes and removes.
    fn spawn_unit(
        &mut self,
        dir: &Path,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
        record: &mut InstanceRecord,
    ) -> Result<(), Refusal> {
        let Some(systemd) = &self.systemd else {
            return Err((FailureReason::InvalidData, "this node does not offer the systemd backend".into()));
        };
        if argv.first().is_none_or(|p| !p.starts_with('/')) {
            return Err((
                FailureReason::InvalidData,
                "the systemd backend needs argv[0] to be an absolute path".into(),
            ));
        }
        // Checked here because a unit whose program is missing may still "start" (setpriv).
        let executable = std::fs::metadata(&argv[0]).map(|m| crate::probe::is_executable(&m));
        match executable {
            Ok(true) => {}
            Ok(false) => return Err((FailureReason::LaunchFailure, format!("{}: not an executable file", argv[0]))),
            Err(e) => return Err((FailureReason::LaunchFailure, format!("{}: {e}", argv[0]))),
        }
        let unit = crate::systemd::unit_name(&record.start);
        record.cgroups = self.cgroups.unit_dirs(&format!("/{}/{unit}", crate::systemd::SLICE));
        let spec = UnitSpec { dir: dir.to_owned(), user: record.user, stop_grace: crate::core::STOP_GRACE };
        systemd.run(&record.start, argv, env, spec, self.events.clone());
        Ok(())
    }

    /// Writes the shim's spec and the instance record, and starts the shim.
    fn spawn_shim(
        &mut self,
        id: Uuid,
        dir: &Path,
        argv: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
        user: Option<Account>,
        record: &mut InstanceRecord,
    ) -> Result<(), Refusal> {
        let spec = ShimSpec {
            argv,
            env,
            cgroups: record.cgroups.clone(),
            resctrl: record.resctrl.clone(),
            max_run_time_s: record.start.max_run_time_s,
            user,
        };
        write_json(&dir.join(files::SPEC), &spec).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        write_json(&dir.join(files::STATE), &*record).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        // The shim makes itself a session of its own as its first step (see `shim::isolate`): a
        // signal to the launcher's group (Ctrl-C in a terminal) must not reach it. Tokio reaps
        // it if it ends while this launcher runs.
        tokio::process::Command::new(&self.shim.program)
            .args(&self.shim.args)
            .arg("--dir")
            .arg(dir)
            // systemd's socket for this launcher's readiness is not the workload's to use.
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                (FailureReason::LaunchFailure, format!("cannot start the shim {}: {e}", self.shim.program.display()))
            })?;
        tokio::spawn(watch(dir.to_owned(), id, None, self.events.clone()));
        Ok(())
    }

    /// Writes the bundle and runs the OCI runtime in the foreground under the shim; the runtime
    /// applies the limits itself. A writable root is an overlay of the instance's own on the
    /// shared `rootfs` (at `bundle/rootfs`; the shim unmounts it at the end).
    fn spawn_oci(
        &mut self,
        id: Uuid,
        dir: &Path,
        spec: &OciSpec<'_>,
        record: &mut InstanceRecord,
    ) -> Result<(), Refusal> {
        let runtime = self
            .oci_runtime
            .clone()
            .ok_or((FailureReason::UnknownBackend, "this launcher does not offer the oci backend".to_owned()))?;
        let rootfs = Path::new(spec.rootfs);
        if !rootfs.is_absolute() || !(rootfs.join("bin").is_dir() || rootfs.join("usr").is_dir()) {
            return Err((
                FailureReason::ImageFailure,
                format!("rootfs {} is not an absolute path to a root file system", rootfs.display()),
            ));
        }
        if spec.args.is_empty() {
            return Err((FailureReason::InvalidData, "args is empty".into()));
        }
        let volumes = self.check_volumes(spec.volumes)?;
        check_network(spec.network)?;
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        let root = if spec.writable_root { crate::oci::overlay(rootfs, &bundle)? } else { rootfs.to_owned() };
        let req = &record.start.requirements;
        let config = crate::oci::config(
            &crate::oci::Container {
                id: &id.to_string(),
                rootfs: &root,
                writable_root: spec.writable_root,
                volumes: &volumes,
                network: spec.network,
                results: &dir.join(files::RESULTS),
                user: record.user,
            },
            spec.args,
            spec.env,
            req.mem_mb,
            req.vcpus,
        );
        write_json(&bundle.join("config.json"), &config).map_err(|e| (FailureReason::LaunchFailure, e.to_string()))?;
        let argv = vec![
            runtime.display().to_string(),
            "run".to_owned(),
            "--bundle".to_owned(),
            bundle.display().to_string(),
            id.to_string(),
        ];
        // The runtime itself runs as root; the container's process runs as `user`.
        let spawned = self.spawn_shim(id, dir, argv, std::collections::BTreeMap::new(), None, record);
        if spawned.is_err() {
            crate::oci::unmount_overlay(&bundle);
        }
        spawned
    }

    /// The volumes with their sources made canonical; refused unless each source is a
    /// directory under a `--volume-root` and each destination an absolute path that is not one
    /// the container needs for itself.
    fn check_volumes(&self, volumes: &[ssntp::payload::Volume]) -> Result<Vec<ssntp::payload::Volume>, Refusal> {
        let refuse = |why: String| Err((FailureReason::InvalidData, why));
        if !volumes.is_empty() && self.volume_roots.is_empty() {
            return refuse("this node allows no volumes (drover-launcher --volume-root DIR)".into());
        }
        let mut out = Vec::with_capacity(volumes.len());
        for v in volumes {
            let destination = Path::new(&v.destination);
            let reserved = ["/", "/proc", "/dev", "/sys", "/results", "/tmp"];
            if !destination.is_absolute()
                || destination.components().any(|c| c == std::path::Component::ParentDir)
                || reserved.iter().any(|r| destination == Path::new(r))
            {
                return refuse(format!(
                    "volume destination {}: an absolute path other than {}",
                    v.destination,
                    reserved.join(" ")
                ));
            }
            let Ok(source) = Path::new(&v.source).canonicalize() else {
                return refuse(format!("volume source {}: no such directory on this node", v.source));
            };
            if !source.is_dir() || !self.volume_roots.iter().any(|root| source.starts_with(root)) {
                return refuse(format!("volume source {}: not a directory under this node's --volume-root", v.source));
            }
            out.push(ssntp::payload::Volume { source: source.display().to_string(), ..v.clone() });
        }
        Ok(out)
    }

    /// Runs a `sim` instance for `duration`; returns the handle that ends it early.
    fn spawn_sim(&self, id: Uuid, duration: Duration, exit_code: i32) -> tokio::sync::oneshot::Sender<()> {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _ = events.send(Event::Started { instance: id, pid: 0 }).await;
            let exit = tokio::select! {
                () = tokio::time::sleep(duration) => {
                    let reason = if exit_code == 0 { ExitReason::Completed } else { ExitReason::Failed };
                    Exit { instance: id, code: Some(exit_code), reason }
                }
                _ = cancelled => Exit { instance: id, code: None, reason: ExitReason::Killed },
            };
            let _ = events.send(Event::Exited(exit)).await;
        });
        cancel
    }

    /// Records that an instance's workload runs with this PID.
    ///
    /// A stop that arrived while the workload was starting (an EVACUATE or STOP right after the
    /// START) is carried out now: without this the workload would run on, unasked for.
    pub fn started(&mut self, id: Uuid, pid: u32) {
        if let Some(i) = self.table.get_mut(&id) {
            i.pid = (pid != 0).then_some(pid);
            if let Backend::Systemd { .. } = i.record.start.backend {
                if let (Some(grace), Some(systemd)) = (i.stop_pending.take(), &self.systemd) {
                    systemd.stop(&i.record.start, grace);
                }
            } else if let (Some(grace), Some(pid)) = (i.stop_pending.take(), i.pid) {
                signal_stop(pid, grace);
            }
        }
    }

    /// Records an end; returns whether it was the result of a stop request. The end is
    /// persisted; the instance directory keeps `results/` and `state.json` only.
    pub fn exited(&mut self, exit: &Exit) -> bool {
        let Some(i) = self.table.get_mut(&exit.instance) else { return false };
        i.running = false;
        i.pid = None;
        i.cancel = None;
        i.record.exit = Some(ExitRecord { code: exit.code, signal: None, reason: exit.reason });
        let stopped = i.record.stop_requested;
        let has_files = !matches!(i.record.start.backend, Backend::Sim { .. });
        let cgroups = std::mem::take(&mut i.record.cgroups);
        let cache_group = i.record.resctrl.take();
        if !matches!(i.record.start.backend, Backend::Systemd { .. }) {
            // A unit's groups are systemd's to remove.
            self.cgroups.remove(&cgroups);
        }
        self.release_cache(exit.instance, cache_group);
        self.persist(exit.instance);
        if has_files {
            let dir = self.dir(exit.instance);
            for f in [files::SPEC, files::PID, files::EXIT] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        stopped
    }

    /// Marks an instance's end as delivered to the scheduler.
    pub fn reported(&mut self, id: Uuid) {
        if let Some(i) = self.table.get_mut(&id) {
            i.record.exit_reported = true;
            self.persist(id);
        }
    }

    /// Stops a running instance: SIGTERM to its process group, SIGKILL after `grace`. Its end
    /// arrives as an event and is reported as a stop.
    ///
    /// # Errors
    /// No such instance.
    pub fn stop(&mut self, id: Uuid, grace: Duration) -> Result<(), Refusal> {
        let instance = self.table.get_mut(&id).ok_or((FailureReason::NoInstance, format!("no instance {id} here")))?;
        if !instance.running {
            return Ok(());
        }
        instance.record.stop_requested = true;
        if let Some(cancel) = instance.cancel.take() {
            let _ = cancel.send(()); // a `sim` instance
        } else if let (Backend::Systemd { .. }, Some(systemd)) = (&instance.record.start.backend, &self.systemd) {
            systemd.stop(&instance.record.start, grace);
        } else if let Some(pid) = instance.pid {
            signal_stop(pid, grace);
        } else {
            // Not started yet (the shim has not reported the PID): stopped once it has.
            instance.stop_pending = Some(grace);
        }
        self.persist(id);
        Ok(())
    }

    /// Removes an instance and its results (stopping it first if it runs).
    ///
    /// # Errors
    /// No such instance.
    pub fn delete(&mut self, id: Uuid) -> Result<(), Refusal> {
        self.stop(id, Duration::ZERO)?;
        let dir = self.dir(id);
        if let Some(i) = self.table.remove(&id) {
            if matches!(i.record.start.backend, Backend::Sim { .. }) {
                self.sims.del(id);
            }
            if !matches!(i.record.start.backend, Backend::Systemd { .. }) {
                self.cgroups.remove(&i.record.cgroups);
            }
            self.release_cache(id, i.record.resctrl);
        }
        crate::oci::unmount_overlay(&dir.join("bundle"));
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    /// The last `max_bytes` (at most [`MAX_LOG_BYTES`]) of an instance's output (lossy UTF-8)
    /// and whether earlier output was cut off.
    ///
    /// # Errors
    /// No such instance or unreadable output.
    pub fn tail(&self, id: Uuid, max_bytes: u32) -> Result<(String, bool), Refusal> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        match self.table.get(&id) {
            None => return Err((FailureReason::NoInstance, format!("no instance {id} here"))),
            Some(i) if matches!(i.record.start.backend, Backend::Sim { .. }) => return Ok((String::new(), false)),
            Some(_) => {}
        }
        let no = |e: std::io::Error| (FailureReason::NoInstance, e.to_string());
        let mut file = crate::state::open_output(&self.output(id), false).map_err(no)?;
        let len = file.metadata().map_err(no)?.len();
        let keep = len.min(u64::from(max_bytes.min(MAX_LOG_BYTES)));
        file.seek(SeekFrom::Start(len - keep)).map_err(no)?;
        let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
        file.take(keep).read_to_end(&mut tail).map_err(no)?;
        Ok((String::from_utf8_lossy(&tail).into_owned(), keep < len))
    }

    /// Every instance's use of the node. CPU use is the share of one CPU since the previous
    /// call (-1 the first time); disk use is what `results/` holds.
    #[allow(clippy::disallowed_methods)] // a CPU share is ticks over real elapsed time: a probe
    pub fn usage(&mut self) -> Vec<(Uuid, InstanceUsage)> {
        let now = std::time::Instant::now();
        let mut out = Vec::with_capacity(self.table.len());
        for (id, i) in &mut self.table {
            if let Backend::Sim { mem_usage_mb, .. } = &i.record.start.backend {
                // Nothing to read: a sim uses what it says, and has no files.
                let memory = if i.running { i64::try_from(*mem_usage_mb).unwrap_or(-1) } else { -1 };
                out.push((*id, InstanceUsage { memory_mb: memory, ..InstanceUsage::default() }));
                continue;
            }
            let memory = if i.running {
                self.cgroups.memory_usage_mb(&i.record.cgroups).or_else(|| i.pid.and_then(rss_mb)).or(
                    match &i.record.start.backend {
                        Backend::Sim { mem_usage_mb, .. } => Some(*mem_usage_mb),
                        _ => None,
                    },
                )
            } else {
                None
            };
            let mut cpu_usage = -1;
            if i.running {
                let pids = i
                    .record
                    .cgroups
                    .first()
                    .map(|d| group_pids(d))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| i.pid.into_iter().collect());
                let ticks: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
                if let Some((before, at)) = i.last_cpu {
                    let elapsed = now.duration_since(at).as_secs_f64();
                    if elapsed > 0.0 {
                        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)] // a percentage
                        let pct = (ticks.saturating_sub(before) as f64 / clock_ticks_per_second() / elapsed * 100.0)
                            .round() as i32;
                        cpu_usage = pct;
                    }
                }
                i.last_cpu = Some((ticks, now));
            }
            let disk = dir_size_mb(&self.root.join(dir_name(&i.record.start)).join(files::RESULTS));
            out.push((
                *id,
                InstanceUsage {
                    memory_mb: memory.and_then(|m| i64::try_from(m).ok()).unwrap_or(-1),
                    cpu_percent: cpu_usage,
                    disk_mb: disk.and_then(|d| i64::try_from(d).ok()).unwrap_or(-1),
                    machinery_kb: if i.running {
                        machinery_kb(&i.record.start.backend, i.record.start.requirements.mem_mb, i.pid)
                    } else {
                        -1
                    },
                },
            ));
        }
        out
    }
}

impl Executor for Instances {
    fn run(&mut self, start: &Start) -> Result<(), Refusal> {
        self.start(start)
    }

    fn vm_sockets(&self, instance: Uuid) -> Option<VmSockets> {
        let i = self.table.get(&instance)?;
        if i.record.start.backend.migrates() {
            VmSockets::in_dir(&self.dir(instance).join(files::RESULTS))
        } else {
            None
        }
    }

    fn stop(&mut self, instance: Uuid, grace: Duration) {
        let _ = Self::stop(self, instance, grace);
    }

    fn delete(&mut self, instance: Uuid) {
        let _ = Self::delete(self, instance);
    }

    fn record(&mut self, event: &Event) {
        match event {
            Event::Started { instance, pid } => self.started(*instance, *pid),
            Event::StartFailed { instance, .. } => {
                let reason = ExitReason::Failed;
                self.exited(&Exit { instance: *instance, code: Some(crate::shim::CANNOT_RUN), reason });
            }
            Event::Exited(exit) => {
                self.exited(exit);
            }
        }
    }

    fn reported(&mut self, instance: Uuid) {
        Self::reported(self, instance);
    }

    fn tail(&self, instance: Uuid, max_bytes: u32) -> Result<(String, bool), Refusal> {
        Self::tail(self, instance, max_bytes)
    }

    fn usage(&mut self) -> Vec<(Uuid, InstanceUsage)> {
        Self::usage(self)
    }

    fn flush(&mut self) {
        Self::flush(self);
    }
}

/// PIDs in a cgroup.
fn group_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// User + system CPU time of a process and of its reaped children, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are counted from ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14–17 of the line, 12–15 after the name.
    (11..15).map(|k| fields.get(k)?.parse::<u64>().ok()).sum()
}

fn clock_ticks_per_second() -> f64 {
    #[allow(clippy::cast_precision_loss)] // tens to thousands
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100.0, |t| t as f64);
    ticks
}

/// Size of a directory tree in MiB (at most 10,000 entries are looked at).
fn dir_size_mb(dir: &Path) -> Option<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            seen += 1;
            if seen > 10_000 {
                return Some(total / (1024 * 1024));
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Some(total / (1024 * 1024))
}

/// What an instance's machinery takes, KiB: its shim (the parent of the process it runs), and
/// for `oci` the runtime it runs too (whose container lives in a cgroup of its own), for `vm`
/// what the device model holds beyond its guest's memory. -1 unknown.
fn machinery_kb(backend: &Backend, guest_mb: u64, pid: Option<u32>) -> i64 {
    let Some(pid) = pid else { return -1 };
    let status = |p: u32| std::fs::read_to_string(format!("/proc/{p}/status")).ok();
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
    };
    let Some(own) = status(pid) else { return -1 };
    let Some(shim) = field(&own, "PPid:").and_then(|pp| u32::try_from(pp).ok()).and_then(status) else { return -1 };
    let shim_kb = field(&shim, "VmRSS:").unwrap_or(0);
    let runtime_kb = match backend {
        Backend::Oci { .. } => field(&own, "VmRSS:").unwrap_or(0),
        // A JVM's heap is rarely all resident, so this undercounts it; the measured tax never
        // falls below the default.
        Backend::Vm { .. } | Backend::Artifact { .. } => {
            field(&own, "VmRSS:").unwrap_or(0).saturating_sub(guest_mb * 1024)
        }
        _ => 0,
    };
    i64::try_from(shim_kb + runtime_kb).unwrap_or(-1)
}

/// Resident memory of a process in MiB (when the node has no cgroups).
fn rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024)
}

/// How long the watcher waits for a shim's exit record after the process it watched died.
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(5);

/// Watches an instance's files: reports the PID when the shim writes it, then the end when
/// `exit.json` appears. A workload that vanishes without either (its shim was killed too) is
/// reported ended with an unknown reason.
#[allow(clippy::disallowed_methods)] // a watcher task of the IO layer: how long the shim takes
async fn watch(dir: PathBuf, instance: Uuid, mut pid: Option<u32>, events: mpsc::Sender<Event>) {
    let mut announced = pid.is_some();
    let born = tokio::time::Instant::now();
    loop {
        if let Ok(Some(exit)) = read_json::<ExitRecord>(&dir.join(files::EXIT)) {
            let never_ran = !announced && exit.code == Some(crate::shim::CANNOT_RUN);
            let event = if never_ran {
                let output = std::fs::read_to_string(dir.join(files::RESULTS).join(files::OUTPUT)).unwrap_or_default();
                let detail = output
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("drover: "))
                    .unwrap_or("the workload could not be started")
                    .to_owned();
                Event::StartFailed { instance, detail }
            } else {
                if !announced {
                    // A workload quicker than one look still started: say so first, so every
                    // observer sees started before ended.
                    let pid = pid.or_else(|| std::fs::read_to_string(dir.join(files::PID)).ok()?.trim().parse().ok());
                    let _ = events.send(Event::Started { instance, pid: pid.unwrap_or(0) }).await;
                }
                Event::Exited(exit_of(&exit, instance))
            };
            let _ = events.send(event).await;
            return;
        }
        if pid.is_none() {
            pid = std::fs::read_to_string(dir.join(files::PID)).ok().and_then(|p| p.trim().parse().ok());
        }
        match pid {
            Some(p) if !announced => {
                announced = true;
                if events.send(Event::Started { instance, pid: p }).await.is_err() {
                    return;
                }
            }
            Some(p) if !alive(p) => {
                // Give the shim a moment to clean up (an OCI bundle, an overlay) and write
                // exit.json after its workload ended; a loaded machine needs a few seconds.
                let deadline = tokio::time::Instant::now() + EXIT_RECORD_WAIT;
                while !dir.join(files::EXIT).exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !dir.join(files::EXIT).exists() {
                    let _ =
                        events.send(Event::Exited(Exit { instance, code: None, reason: ExitReason::Unknown })).await;
                    return;
                }
            }
            None if born.elapsed() > Duration::from_secs(30) => {
                let detail = "the shim never started the workload".to_owned();
                let _ = events.send(Event::StartFailed { instance, detail }).await;
                return;
            }
            _ => {}
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Makes the instance run its workload's checks after its program: the program, then each
/// script in order, in one shell so they share its directory, user, limits and environment.
/// The first failure ends it with that exit code, and a check's failure says which failed.
/// Refused: a check this node has no script for, or a backend that cannot run the node's
/// scripts (an OCI container sees only its own root).
fn with_checks(start: &mut Start, scripts: &std::collections::BTreeMap<String, PathBuf>) -> Result<(), Refusal> {
    if start.checks.is_empty() {
        return Ok(());
    }
    let argv = match &mut start.backend {
        Backend::Process { argv, .. } | Backend::Systemd { argv, .. } => argv,
        Backend::Oci { .. } | Backend::Vm { .. } | Backend::Artifact { .. } | Backend::Sim { .. } => {
            return Err((FailureReason::InvalidData, "checks run only with the process and systemd backends".into()));
        }
    };
    let quote = |text: &str| format!("'{}'", text.replace('\'', "'\\''"));
    let mut program = String::from("\"$@\" || exit\n");
    for name in &start.checks {
        let Some(path) = scripts.get(name) else {
            return Err((FailureReason::InvalidData, format!("this node has no script {name:?} (--script)")));
        };
        program.push_str(&format!(
            "{} || {{ rc=$?; echo \"drover: check {name} failed (exit $rc)\" >&2; exit $rc; }}\n",
            quote(&path.display().to_string())
        ));
    }
    let mut wrapped = vec!["/bin/sh".to_owned(), "-c".to_owned(), program, "drover-checks".to_owned()];
    wrapped.append(argv);
    *argv = wrapped;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[String], dir: &Path) -> (Option<i32>, String) {
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).current_dir(dir).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    #[test]
    fn checks_run_after_the_program_succeeds_and_the_first_failure_decides() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(format!("it's {name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            (name.to_owned(), path)
        };
        let scripts = [script("accept", "echo accepting; test -s result"), script("lint", "echo linted")].into();
        let start_of = |program: &str, checks: &[&str]| {
            let backend = Backend::Process {
                argv: vec!["/bin/sh".into(), "-c".into(), program.into(), "job".into()],
                env: Default::default(),
            };
            let mut start = Start::new(Uuid::nil(), Default::default(), backend);
            start.checks = checks.iter().map(|c| (*c).to_owned()).collect();
            start
        };
        let argv = |start: &Start| match &start.backend {
            Backend::Process { argv, .. } => argv.clone(),
            _ => unreachable!(),
        };

        let mut good = start_of("echo built > result", &["accept", "lint"]);
        with_checks(&mut good, &scripts).unwrap();
        assert_eq!(run(&argv(&good), dir.path()), (Some(0), "accepting\nlinted\n".into()));

        let mut rejected = start_of("echo -n > result", &["accept", "lint"]);
        with_checks(&mut rejected, &scripts).unwrap();
        let (code, out) = run(&argv(&rejected), dir.path());
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("drover: check accept failed (exit 1)") && !out.contains("linted"), "{out}");

        let mut broken = start_of("exit 3", &["accept"]);
        with_checks(&mut broken, &scripts).unwrap();
        assert_eq!(run(&argv(&broken), dir.path()), (Some(3), String::new()), "a failed program runs no check");

        let mut plain = start_of("exit 0", &[]);
        with_checks(&mut plain, &scripts).unwrap();
        assert_eq!(argv(&plain)[2], "exit 0", "no checks: the program as it is");

        let (reason, detail) = with_checks(&mut start_of("true", &["absent"]), &scripts).unwrap_err();
        assert_eq!(reason, FailureReason::InvalidData);
        assert!(detail.contains("no script \"absent\""), "{detail}");
        let mut oci = start_of("true", &["lint"]);
        oci.backend = Backend::Oci {
            rootfs: "/srv".into(),
            args: vec!["true".into()],
            env: Default::default(),
            writable_root: false,
            volumes: Vec::new(),
            network: Default::default(),
        };
        assert!(with_checks(&mut oci, &scripts).is_err(), "a container cannot run the node's scripts");
    }
}
