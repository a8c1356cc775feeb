//! The `systemd` backend: each instance a transient service on the node's system manager,
//! started with `StartTransientUnit()` over D-Bus, as the sd-taskpacker seed has it.
//!
//! The unit (`drover-<task>-<version>-<instance>.service`, in `drover.slice`) carries the
//! instance's argv, environment, working directory (`results/`), user, `MemoryMax=` and
//! `CPUQuota=` from its resources, `RuntimeMaxSec=` from its maximum run time, and appends
//! stdout and stderr to `results/output.txt`. An `ExecStopPost=` hook (`drover-launcher
//! unit-ended`, privileged) writes the end to `exit.json` in the instance directory — exit
//! code, signal, and an OOM kill told from the unit's own memory cgroup, which systemd alone
//! cannot on cgroup v1 — so an end is kept when no launcher is running. The launcher learns of
//! the end from the unit's `PropertiesChanged` (`ActiveState`) and reads that file; the start
//! from the job's `JobRemoved`. Units outlive the launcher and are adopted again by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use ssntp::payload::{ExitReason, Start};
use ssntp::Uuid;
use tokio::sync::mpsc;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::executor::{Event, Exit};
use crate::state::{files, read_json, ExitRecord};
use crate::users::Account;

/// Switches to a user that has no user record (util-linux).
const SETPRIV: &str = "/usr/bin/setpriv";

/// The slice every instance's unit goes in (its cgroup is `/drover.slice/<unit>`).
pub const SLICE: &str = "drover.slice";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: zbus::zvariant::ObjectPath<'_>, unit: &str, result: &str) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Service", default_service = "org.freedesktop.systemd1")]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

/// The node's system manager, over the system bus.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    /// This launcher's executable, for the `ExecStopPost=` hook.
    hook: PathBuf,
}

/// The unit of an instance: `drover-<task>-<version>-<instance>.service`, with the task's name
/// escaped as `systemd-escape` does (`/` becomes `-`, other bytes `\xNN`).
pub fn unit_name(start: &Start) -> String {
    let mut name = String::from("drover-");
    for part in [start.name.as_deref(), start.version.as_deref()].into_iter().flatten() {
        name.push_str(&escape(part));
        name.push('-');
    }
    name.push_str(&start.instance_uuid.to_string());
    name.push_str(".service");
    name
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// What the D-Bus start needs beyond the START.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// The instance directory (the hook writes `exit.json` there).
    pub dir: PathBuf,
    /// Who it runs as (`None`: root, asked for and allowed).
    pub user: Option<Account>,
    /// How long a stop waits before SIGKILL.
    pub stop_grace: Duration,
}

fn usec(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Systemd {
    /// Connects to the system bus and checks that systemd answers there.
    ///
    /// # Errors
    /// No system bus, or no systemd on it, as a sentence for the operator.
    pub async fn connect() -> Result<Self, String> {
        let conn = zbus::Connection::system().await.map_err(|e| {
            format!("no D-Bus system bus ({e}); the systemd backend needs systemd as PID 1 and dbus running")
        })?;
        let manager = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
        let version = tokio::time::timeout(Duration::from_secs(5), manager.version())
            .await
            .map_err(|_| "systemd did not answer on the system bus within 5 s".to_owned())?
            .map_err(|e| format!("systemd does not answer on the system bus ({e}); is systemd PID 1 here?"))?;
        manager.subscribe().await.map_err(|e| format!("subscribing to systemd's signals: {e}"))?;
        tracing::info!(%version, "systemd answers on the system bus");
        let hook = std::env::current_exe().map_err(|e| format!("locating this executable for the unit hook: {e}"))?;
        Ok(Self { conn, hook })
    }

    /// Uses another program as the `ExecStopPost=` hook (tests of the library, which are not
    /// the launcher binary).
    #[must_use]
    pub fn with_hook(mut self, program: PathBuf) -> Self {
        self.hook = program;
        self
    }

    /// The properties of an instance's transient service.
    fn properties<'a>(
        &self,
        start: &'a Start,
        argv: &'a [String],
        env: &'a BTreeMap<String, String>,
        spec: &'a UnitSpec,
    ) -> Vec<(&'static str, Value<'a>)> {
        let results = spec.dir.join(files::RESULTS);
        let output = results.join(files::OUTPUT).display().to_string();
        let environment: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // systemd's User= needs a user record (exit status 217 without one); the uids
        // `--run-as auto` gives tenants have none, so util-linux's setpriv switches to them.
        let known =
            |u: &Account| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u.uid)).ok().flatten().is_some();
        let (user_property, command) = match spec.user {
            Some(user) if !known(&user) => {
                let mut wrapped = vec![
                    SETPRIV.to_owned(),
                    format!("--reuid={}", user.uid),
                    format!("--regid={}", user.gid),
                    "--clear-groups".to_owned(),
                    "--".to_owned(),
                ];
                wrapped.extend(argv.iter().cloned());
                (None, wrapped)
            }
            other => (other, argv.to_vec()),
        };
        let exec: Vec<(String, Vec<String>, bool)> = vec![(command[0].clone(), command, false)];
        let hook_argv = vec![
            self.hook.display().to_string(),
            "unit-ended".to_owned(),
            "--dir".to_owned(),
            spec.dir.display().to_string(),
        ];
        let stop_post: Vec<(String, Vec<String>, Vec<String>)> =
            vec![(self.hook.display().to_string(), hook_argv, vec!["privileged".to_owned()])];
        let what = start.name.as_deref().unwrap_or("instance");
        let mut props: Vec<(&'static str, Value<'a>)> = vec![
            ("Description", Value::from(format!("drover {what} {}", start.instance_uuid))),
            ("Slice", Value::from(SLICE)),
            ("Type", Value::from("exec")),
            ("ExecStart", Value::from(exec)),
            ("ExecStopPostEx", Value::from(stop_post)),
            ("Environment", Value::from(environment)),
            ("WorkingDirectory", Value::from(results.display().to_string())),
            ("StandardInput", Value::from("null")),
            ("StandardOutputFileToAppend", Value::from(output.clone())),
            ("StandardErrorFileToAppend", Value::from(output)),
            ("NoNewPrivileges", Value::from(true)),
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TimeoutStopUSec", Value::from(usec(spec.stop_grace))),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        if let Some(user) = user_property {
            props.push(("User", Value::from(user.uid.to_string())));
            props.push(("Group", Value::from(user.gid.to_string())));
        }
        let req = &start.requirements;
        if req.mem_mb > 0 {
            props.push(("MemoryMax", Value::from(req.mem_mb.saturating_mul(1024 * 1024))));
        }
        if req.vcpus > 0 {
            props.push(("CPUQuotaPerSecUSec", Value::from(u64::from(req.vcpus) * 1_000_000)));
        }
        if let Some(limit) = start.max_run_time_s {
            props.push(("RuntimeMaxUSec", Value::from(limit.saturating_mul(1_000_000))));
        }
        props
    }

    /// Starts the instance's unit and watches it to its end: [`Event::Started`] once systemd
    /// has exec'd it (`Type=exec`), [`Event::StartFailed`] if it could not, then
    /// [`Event::Exited`]. Returns at once; the work is a task.
    pub fn run(
        &self,
        start: &Start,
        argv: &[String],
        env: &BTreeMap<String, String>,
        spec: UnitSpec,
        events: mpsc::Sender<Event>,
    ) {
        let this = self.clone();
        let start = start.clone();
        let argv = argv.to_vec();
        let env = env.clone();
        tokio::spawn(async move {
            let id = start.instance_uuid;
            let unit = unit_name(&start);
            match this.start_unit(&start, &argv, &env, &spec, &unit).await {
                Ok(pid) => {
                    if events.send(Event::Started { instance: id, pid }).await.is_err() {
                        return;
                    }
                    this.watch(id, unit, spec.dir, events).await;
                }
                Err(detail) => {
                    if let Ok(manager) = this.manager().await {
                        let _ = manager.reset_failed_unit(&unit).await;
                    }
                    let _ = events.send(Event::StartFailed { instance: id, detail }).await;
                }
            }
        });
    }

    async fn manager(&self) -> zbus::Result<ManagerProxy<'static>> {
        ManagerProxy::new(&self.conn).await
    }

    /// Starts the unit and waits for its start job; returns the main PID.
    async fn start_unit(
        &self,
        start: &Start,
        argv: &[String],
        env: &BTreeMap<String, String>,
        spec: &UnitSpec,
        unit: &str,
    ) -> Result<u32, String> {
        if argv.is_empty() || !argv[0].starts_with('/') {
            return Err(format!("the systemd backend needs an absolute program path, not {:?}", argv.first()));
        }
        let manager = self.manager().await.map_err(|e| e.to_string())?;
        // Listen before starting, or the job's end could come first.
        let mut removed = manager.receive_job_removed().await.map_err(|e| e.to_string())?;
        let properties = self.properties(start, argv, env, spec);
        let job = manager
            .start_transient_unit(unit, "fail", &properties, &[])
            .await
            .map_err(|e| format!("systemd refused the unit {unit}: {e}"))?;
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.to_owned());
                }
            }
            None
        })
        .await
        .map_err(|_| format!("systemd did not start {unit} within 60 s"))?
        .ok_or("the system bus closed")?;
        if result != "done" {
            let why = self.service(unit).await.ok();
            let (detail, status) = match why {
                Some(s) => (s.result().await.unwrap_or_default(), s.exec_main_status().await.unwrap_or_default()),
                None => (String::new(), 0),
            };
            return Err(format!("systemd could not start {:?} ({result}: {detail}, status {status})", argv[0]));
        }
        let pid = match self.service(unit).await {
            Ok(s) => s.main_pid().await.unwrap_or(0),
            Err(_) => 0,
        };
        Ok(pid)
    }

    async fn service(&self, unit: &str) -> zbus::Result<ServiceProxy<'static>> {
        let path = self.manager().await?.get_unit(unit).await?;
        ServiceProxy::builder(&self.conn).path(path)?.cache_properties(zbus::proxy::CacheProperties::No).build().await
    }

    /// Watches a unit until it ends, then reports the end: from `exit.json` (the hook's
    /// record), or from the service's properties when the hook left none.
    pub async fn watch(&self, id: Uuid, unit: String, dir: PathBuf, events: mpsc::Sender<Event>) {
        let exit = self.wait_for_end(&unit, &dir).await;
        let exit = Exit { instance: id, code: exit.code, reason: exit.reason };
        let _ = events.send(Event::Exited(exit)).await;
    }

    async fn wait_for_end(&self, unit: &str, dir: &Path) -> ExitRecord {
        let exit_file = dir.join(files::EXIT);
        loop {
            if let Ok(Some(record)) = read_json::<ExitRecord>(&exit_file) {
                return record;
            }
            // The unit's object goes away with the unit (CollectMode=inactive-or-failed).
            let unit_proxy = match self.manager().await {
                Ok(m) => match m.get_unit(unit).await {
                    Ok(path) => UnitProxy::builder(&self.conn).path(path).ok().map(|b| b.build()),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let Some(building) = unit_proxy else {
                // Gone: the hook has written the file, or the unit vanished without it.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return read_json::<ExitRecord>(&exit_file).ok().flatten().unwrap_or(ExitRecord {
                    code: None,
                    signal: None,
                    reason: ExitReason::Unknown,
                });
            };
            let Ok(proxy) = building.await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut changes = proxy.receive_active_state_changed().await;
            loop {
                match proxy.active_state().await.as_deref() {
                    Ok("inactive" | "failed") | Err(_) => break,
                    Ok(_) => {}
                }
                if exit_file.exists() {
                    break;
                }
                // A missed signal costs at most this long.
                let _ = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
            }
            // The hook runs before the unit goes inactive; give a slow file system a moment.
            for _ in 0..20 {
                if let Ok(Some(record)) = read_json::<ExitRecord>(&exit_file) {
                    return record;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Ok(s) = self.service(unit).await {
                let record = record_from(
                    &s.result().await.unwrap_or_default(),
                    s.exec_main_code().await.unwrap_or(0),
                    s.exec_main_status().await.unwrap_or(0),
                    false,
                );
                if let Ok(m) = self.manager().await {
                    let _ = m.reset_failed_unit(unit).await;
                }
                return record;
            }
        }
    }

    /// Stops an instance's unit: `StopUnit` (SIGTERM, SIGKILL after the unit's stop timeout),
    /// or SIGKILL to all its processes at once when there is no grace.
    pub fn stop(&self, start: &Start, grace: Duration) {
        let this = self.clone();
        let unit = unit_name(start);
        tokio::spawn(async move {
            let Ok(manager) = this.manager().await else { return };
            let result = if grace.is_zero() {
                manager.kill_unit(&unit, "all", 9).await
            } else {
                manager.stop_unit(&unit, "replace").await.map(drop)
            };
            if let Err(e) = result {
                tracing::debug!(%unit, error = %e, "stopping the unit");
            }
        });
    }
}

/// An end from systemd's words for it: `SERVICE_RESULT` (`success`, `exit-code`, `signal`,
/// `core-dump`, `timeout`, `oom-kill` …), the main process's `si_code` (1 exited, 2 killed,
/// 3 dumped) and status, and whether the unit's memory cgroup counted an OOM kill.
pub fn record_from(result: &str, code: i32, status: i32, oom_counted: bool) -> ExitRecord {
    const CLD_EXITED: i32 = 1;
    let exited = code == CLD_EXITED;
    if result == "oom-kill" || (oom_counted && result != "success") {
        return ExitRecord {
            code: exited.then_some(status),
            signal: (!exited).then_some(status),
            reason: ExitReason::Oom,
        };
    }
    match (result, exited) {
        ("success", _) => ExitRecord { code: Some(0), signal: None, reason: ExitReason::Completed },
        (_, true) => ExitRecord {
            code: Some(status),
            signal: None,
            reason: if status == 0 { ExitReason::Completed } else { ExitReason::Failed },
        },
        _ => ExitRecord { code: None, signal: (status != 0).then_some(status), reason: ExitReason::Killed },
    }
}

/// `drover-launcher unit-ended --dir DIR`: the units' `ExecStopPost=` hook. Runs in the unit's
/// cgroup with systemd's `SERVICE_RESULT`, `EXIT_CODE` and `EXIT_STATUS`; writes `exit.json`
/// (unless one is there) and returns its own exit code.
pub fn unit_ended(dir: &Path) -> i32 {
    let exit_file = dir.join(files::EXIT);
    if exit_file.exists() {
        return 0;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let code = match var("EXIT_CODE").as_str() {
        "exited" => 1,
        "killed" => 2,
        "dumped" => 3,
        _ => 0,
    };
    let status_text = var("EXIT_STATUS");
    let status = status_text.parse::<i32>().ok().unwrap_or_else(|| {
        let name = if status_text.starts_with("SIG") { status_text.clone() } else { format!("SIG{status_text}") };
        name.parse::<nix::sys::signal::Signal>().map_or(0, |s| s as i32)
    });
    let result = var("SERVICE_RESULT");
    let oom = own_oom_kills().unwrap_or(0) > 0;
    let record = record_from(&result, code, status, oom);
    if record.reason == ExitReason::Oom {
        crate::shim::note(dir, "killed: out of memory (the unit's MemoryMax)");
    } else if result == "timeout" {
        crate::shim::note(dir, "killed: maximum run time reached");
    }
    match crate::state::write_json(&exit_file, &record) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drover unit-ended: {e}");
            1
        }
    }
}

/// The OOM kills counted in this process's own memory cgroup: the hook runs in the unit's
/// cgroup, which systemd removes after it. Read as the shim reads its instance's group.
fn own_oom_kills() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            candidates.push(Path::new("/sys/fs/cgroup/memory").join(path));
        } else if id == "0" {
            candidates.push(Path::new("/sys/fs/cgroup").join(path));
            candidates.push(Path::new("/sys/fs/cgroup/unified").join(path));
        }
    }
    candidates.into_iter().filter(|d| d.is_dir()).map(|d| crate::shim::oom_kills(&[d])).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssntp::payload::{Backend, Requirements};

    #[test]
    fn a_unit_is_named_after_its_task_version_and_instance() {
        let id = Uuid::from_bytes([1; 16]);
        let mut start =
            Start::new(id, Requirements::default(), Backend::Systemd { argv: vec![], env: BTreeMap::new() });
        assert_eq!(unit_name(&start), format!("drover-{id}.service"));
        start.name = Some("build/disk graph".into());
        start.version = Some("1.2".into());
        assert_eq!(unit_name(&start), format!("drover-build-disk\\x20graph-1.2-{id}.service"));
    }

    #[test]
    fn systemd_results_become_ends() {
        assert_eq!(record_from("success", 1, 0, false).reason, ExitReason::Completed);
        let failed = record_from("exit-code", 1, 3, false);
        assert_eq!((failed.code, failed.reason), (Some(3), ExitReason::Failed));
        let killed = record_from("signal", 2, 9, false);
        assert_eq!((killed.code, killed.signal, killed.reason), (None, Some(9), ExitReason::Killed));
        assert_eq!(record_from("oom-kill", 2, 9, false).reason, ExitReason::Oom);
        assert_eq!(record_from("signal", 2, 9, true).reason, ExitReason::Oom, "v1: the cgroup counted it");
        assert_eq!(record_from("timeout", 2, 15, false).reason, ExitReason::Killed);
        assert_eq!(record_from("success", 1, 0, true).reason, ExitReason::Completed, "a survived OOM is no end by OOM");
    }
}
