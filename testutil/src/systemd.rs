//! A real systemd for tests, as PID 1 of its own PID, mount, cgroup, UTS and IPC namespaces,
//! fenced off from the host (`systemd_ns.sh` does the fencing and checks it before it execs
//! systemd, or refuses):
//! - private tmpfs on `/tmp`, `/var/tmp`, `/run`, `/var/log`, `/var/lib` and `/dev`:
//!   systemd-tmpfiles empties `/tmp` at boot, and what systemd writes stays inside;
//! - a sub-cgroup of its own in every hierarchy, a cgroup namespace rooted there, and a fresh
//!   tmpfs on `/sys/fs/cgroup` with fresh mounts of each hierarchy: systemd makes its slices
//!   under the sub-cgroup and remounts only its own tmpfs read-only;
//! - units that reach the kernel or the host's files (sysctl, binfmt, timesyncd, timers …)
//!   masked at runtime; it boots `basic.target` (D-Bus, journald) and no further.
//!
//! The network namespace is the host's: a launcher inside reaches a scheduler on loopback.
//! [`SystemdNs::command`] runs a program inside (nsenter into its namespaces). Dropping the
//! fixture kills its PID 1 (and so everything inside) and removes the sub-cgroups.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("systemd_ns.sh");
const SYSTEMD: &str = "/lib/systemd/systemd";

/// A systemd in namespaces of its own.
#[derive(Debug)]
pub struct SystemdNs {
    /// `unshare`, whose child is systemd.
    unshare: Option<Child>,
    /// systemd's PID on the host.
    pid1: u32,
    cgroups: Vec<PathBuf>,
    log: PathBuf,
    /// Shared host directories the namespace sees under [`KEEP_ROOT`], in order.
    kept: Vec<PathBuf>,
}

/// Directories the namespace has its own of.
const HIDDEN: [&str; 3] = ["/tmp", "/var/tmp", "/run"];
/// Where the namespace sees shared host directories that those hide.
const KEEP_ROOT: &str = "/run/drover-keep";

/// The host's cgroup hierarchies: (type, options, mount point).
fn cgroup_mounts() -> Result<Vec<(String, String, String)>, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut mounts = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let point = left.split(' ').nth(4).unwrap_or_default();
        let mut fields = right.split(' ');
        let (Some(kind), Some(_source), Some(options)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if (kind == "cgroup" || kind == "cgroup2") && point.starts_with("/sys/fs/cgroup") {
            mounts.push((kind.to_owned(), options.to_owned(), point.to_owned()));
        }
    }
    Ok(mounts)
}

/// This process's cgroup in the hierarchy with these mount options.
fn own_cgroup(kind: &str, options: &str) -> Option<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let controllers: Vec<&str> = options
        .split(',')
        .filter(|o| {
            !["rw", "ro", "xattr", "noprefix", "clone_children", "nsdelegate", "memory_recursiveprot"].contains(o)
        })
        .collect();
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if kind == "cgroup2" {
            id == "0" && names.is_empty()
        } else {
            let mut a: Vec<&str> = names.split(',').collect();
            let mut b = controllers.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        matches.then(|| path.to_owned())
    })
}

/// Why this machine cannot run the fixture, if it cannot.
pub fn unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    for program in [SYSTEMD, "/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/dbus-daemon", "/usr/bin/systemctl"] {
        if !Path::new(program).exists() {
            return Some(format!("{program} is missing (Debian: apt-get install systemd dbus util-linux)"));
        }
    }
    None
}

impl SystemdNs {
    /// Boots systemd fenced off from the host and waits until it runs; `work` (a directory the
    /// host and the namespace both see, not under `/tmp`) gets the boot script and log.
    ///
    /// # Errors
    /// The machine cannot (see [`unavailable`]), a fence could not be set up (systemd is then
    /// not started), or systemd did not reach `running` within a minute.
    pub fn start(work: &Path) -> Result<Self, String> {
        Self::boot(work, &[], None)
    }

    /// As [`SystemdNs::start`], with host directories the namespace must see (a test's work
    /// directory, the binaries it runs there). One under `/tmp`, `/var/tmp` or `/run`, which
    /// the namespace has its own of, is seen at another path inside: [`SystemdNs::inside`].
    ///
    /// # Errors
    /// As [`SystemdNs::start`], or a directory that does not exist.
    pub fn start_sharing(work: &Path, shared: &[&Path]) -> Result<Self, String> {
        Self::boot(work, shared, None)
    }

    /// Where the namespace sees the host's `path` (the same path unless a private directory
    /// hides it and it is under a directory shared with [`SystemdNs::start_sharing`]).
    pub fn inside(&self, path: &Path) -> PathBuf {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        for (i, kept) in self.kept.iter().enumerate() {
            if let Ok(rest) = path.strip_prefix(kept) {
                return Path::new(KEEP_ROOT).join(i.to_string()).join(rest);
            }
        }
        path
    }

    /// As [`SystemdNs::start`] with the private tmpfs on `dir` left out, for the fixture's own
    /// test: the boot script must then refuse to start systemd.
    ///
    /// # Errors
    /// As [`SystemdNs::start`]; the refusal.
    #[doc(hidden)]
    pub fn start_leaving_out(work: &Path, dir: &str) -> Result<Self, String> {
        Self::boot(work, &[], Some(dir))
    }

    fn boot(work: &Path, shared: &[&Path], leave_out: Option<&str>) -> Result<Self, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let script = work.join("systemd_ns.sh");
        std::fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
        let mounts = cgroup_mounts()?;
        if mounts.is_empty() {
            return Err("no cgroup hierarchy mounted under /sys/fs/cgroup".into());
        }
        let name = format!("drover-systemd-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        // Made before any step that needs undoing: dropping it on an error removes what was made.
        let mut kept = Vec::new();
        for dir in shared {
            let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
            if HIDDEN.iter().any(|h| dir.starts_with(h)) {
                kept.push(dir);
            }
        }
        let mut fixture =
            Self { unshare: None, pid1: 0, cgroups: Vec::new(), log: work.join("systemd.log"), kept: kept.clone() };
        for (kind, options, point) in &mounts {
            let own =
                own_cgroup(kind, options).ok_or_else(|| format!("this process's cgroup in {point} is unknown"))?;
            let dir = Path::new(point).join(own.trim_start_matches('/')).join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            fixture.cgroups.push(dir.clone());
            // A new cpuset group has no CPUs or memory nodes until given its parent's.
            if let Some(parent) = dir.parent().filter(|p| p.join("cpuset.cpus").exists()) {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(file)).map_err(|e| format!("{file}: {e}"))?;
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
                }
            }
        }
        let table: Vec<String> = mounts.iter().map(|(k, o, p)| format!("{k} {o} {p}")).collect();
        let log = std::fs::File::create(&fixture.log).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("/bin/bash")
            .arg(&script)
            .arg("outer")
            .args(&fixture.cgroups)
            .env("DROVER_SD_MOUNTS", table.join("\n"))
            .env("DROVER_SD_LEAVE_OUT", leave_out.unwrap_or_default())
            .env("DROVER_SD_KEEP", kept.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join("\n"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", script.display()))?;
        fixture.unshare = Some(child);
        fixture.pid1 = fixture.find_pid1()?;
        fixture.wait_running(Duration::from_secs(60))?;
        Ok(fixture)
    }

    /// systemd's PID on the host: the child of `unshare` once it has exec'd systemd.
    fn find_pid1(&mut self) -> Result<u32, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let unshare = self.unshare.as_mut().ok_or("not started")?;
        let parent = unshare.id();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = unshare.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("the fixture refused or failed ({status}): {log}"));
            }
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
            if let Some(child) = children.split_whitespace().next().and_then(|c| c.parse::<u32>().ok()) {
                let exe = std::fs::read_link(format!("/proc/{child}/exe")).unwrap_or_default();
                if exe.ends_with("systemd") {
                    return Ok(child);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("systemd did not start: {}", self.log_text()))
    }

    fn wait_running(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.unshare.as_mut().map(Child::try_wait) {
                return Err(format!("systemd ended ({status}): {}", self.log_text()));
            }
            if let Ok(out) = self.systemctl(&["is-system-running"]) {
                last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if last == "running" {
                    return Ok(());
                }
                if last == "degraded" {
                    let failed =
                        self.systemctl(&["--failed", "--no-legend", "--plain"]).map(|o| o.stdout).unwrap_or_default();
                    return Err(format!("systemd is degraded: {}", String::from_utf8_lossy(&failed)));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("systemd is {last:?}, not running, after {limit:?}: {}", self.log_text()))
    }

    /// What systemd and the fixture printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// systemd's PID on the host.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// The fixture's cgroups on the host (one per hierarchy); systemd's tree is below them.
    pub fn host_cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// A command that runs `program` inside: in systemd's mount, PID, cgroup, UTS and IPC
    /// namespaces (so it sees its `/run` and D-Bus), on the host's network.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("/usr/bin/nsenter");
        command
            .arg(format!("--target={}", self.pid1))
            .args(["--mount", "--pid", "--cgroup", "--uts", "--ipc", "--"])
            .arg(program);
        command
    }

    /// `systemctl ARGS` inside.
    ///
    /// # Errors
    /// It could not be run.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output, String> {
        self.command("/usr/bin/systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("systemctl: {e}"))
    }

    /// A property of a unit inside (`systemctl show -P`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-P", property, unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        if self.pid1 != 0 {
            // SIGKILL to a PID namespace's init ends every process in it.
            if let Ok(pid) = i32::try_from(self.pid1) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            self.pid1 = 0;
        }
        if let Some(mut unshare) = self.unshare.take() {
            let _ = unshare.kill();
            let _ = unshare.wait();
        }
        // systemd's tree under each sub-cgroup, deepest first, once its processes are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in std::mem::take(&mut self.cgroups) {
            while dir.exists() && Instant::now() < deadline {
                remove_tree(&dir);
                if dir.exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if dir.exists() {
                eprintln!("systemd fixture: could not remove {}", dir.display());
            }
        }
    }
}

/// Removes a cgroup directory and the groups below it, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for SystemdNs {
    fn drop(&mut self) {
        self.teardown();
    }
}
