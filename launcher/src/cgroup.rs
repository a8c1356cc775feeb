//! Memory and CPU limits through cgroups: v2 where its memory and cpu controllers are
//! available, v1 otherwise, none (with the reason) when neither is writable.
//!
//! Each instance gets `drover/<instance>` under each hierarchy it needs. The root is
//! injectable, so both layouts are tested against fixture trees; the real one is tested on the
//! machine when it is writable.

use std::path::{Path, PathBuf};

/// Which cgroup interface this node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1: separate hierarchies.
    V1 {
        /// The memory hierarchy (`<root>/memory`).
        memory: PathBuf,
        /// The cpu hierarchy (`<root>/cpu` or `<root>/cpu,cpuacct`).
        cpu: PathBuf,
        /// The cpuset hierarchy, for NUMA pinning, when mounted.
        cpuset: Option<PathBuf>,
    },
    /// cgroup v2: one unified hierarchy with memory and cpu enabled.
    V2 {
        /// The mount (`<root>`).
        root: PathBuf,
    },
    /// No usable controllers; workloads run without limits.
    Unavailable {
        /// Why, for the operator.
        why: String,
    },
}

/// Where a NUMA-local workload must stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// CPU list (`0-3,8`).
    pub cpus: String,
    /// Memory nodes (`1`).
    pub mems: String,
}

/// Parent directory of every instance's cgroup.
const PARENT: &str = "drover";
/// CFS period used for CPU quotas, µs.
const CFS_PERIOD_US: u64 = 100_000;

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat keyed file (`memory.stat`, `memory.events`, `oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == key).then(|| parts.next()?.parse().ok())?
    })
}

impl Cgroups {
    /// Finds the interface under `root` (normally `/sys/fs/cgroup`) and checks that it can
    /// create a group and write a limit there.
    pub fn detect(root: &Path) -> Self {
        let v2_controllers = read(&root.join("cgroup.controllers")).unwrap_or_default();
        let candidate = if v2_controllers.split_whitespace().any(|c| c == "memory")
            && v2_controllers.split_whitespace().any(|c| c == "cpu")
        {
            Self::V2 { root: root.to_owned() }
        } else if root.join("memory/memory.limit_in_bytes").exists() {
            let cpu = ["cpu", "cpu,cpuacct"].iter().map(|d| root.join(d)).find(|d| d.join("cpu.cfs_quota_us").exists());
            match cpu {
                Some(cpu) => {
                    let cpuset = Some(root.join("cpuset")).filter(|d| d.join("cpuset.cpus").exists());
                    Self::V1 { memory: root.join("memory"), cpu, cpuset }
                }
                None => return Self::Unavailable { why: "cgroup v1 has no cpu controller with CFS quotas".into() },
            }
        } else {
            return Self::Unavailable {
                why: format!("no cgroup v2 memory+cpu controllers and no v1 memory hierarchy under {}", root.display()),
            };
        };
        // A probe group proves we may create groups and write limits (mkdir alone proves
        // nothing on a tmpfs root).
        match candidate.create("probe", 64, 1, None) {
            Ok(dirs) => {
                candidate.remove(&dirs);
                candidate
            }
            Err(why) => Self::Unavailable { why: format!("cgroups present but not writable: {why}") },
        }
    }

    /// The groups of a systemd unit whose `ControlGroup` is `control_group` (for its usage).
    pub fn unit_dirs(&self, control_group: &str) -> Vec<PathBuf> {
        let relative = control_group.trim_start_matches('/');
        match self {
            Self::V1 { memory, cpu, .. } => vec![memory.join(relative), cpu.join(relative)],
            Self::V2 { root } => vec![root.join(relative)],
            Self::Unavailable { .. } => Vec::new(),
        }
    }

    /// The feature name advertised in READY (`cgroup-v1`, `cgroup-v2`), if any.
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            Self::V1 { .. } => Some("cgroup-v1"),
            Self::V2 { .. } => Some("cgroup-v2"),
            Self::Unavailable { .. } => None,
        }
    }

    /// Creates the groups of instance `name` with a memory limit (MiB; 0 = none), a CPU quota
    /// (vCPUs; 0 = none) and, with `pin`, a CPU list and memory node to stay on. Returns the
    /// directories to join (memory first).
    ///
    /// # Errors
    /// The groups cannot be created or the limits written.
    pub fn create(&self, name: &str, mem_mb: u64, vcpus: u32, pin: Option<&Pin>) -> Result<Vec<PathBuf>, String> {
        let mem_bytes = mem_mb.saturating_mul(1024 * 1024);
        let quota = u64::from(vcpus) * CFS_PERIOD_US;
        match self {
            Self::V1 { memory, cpu, cpuset } => {
                let mem_dir = memory.join(PARENT).join(name);
                let cpu_dir = cpu.join(PARENT).join(name);
                for dir in [&mem_dir, &cpu_dir] {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                if mem_mb > 0 {
                    write(&mem_dir.join("memory.limit_in_bytes"), &mem_bytes.to_string())?;
                }
                if vcpus > 0 {
                    write(&cpu_dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    write(&cpu_dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                let mut dirs = vec![mem_dir, cpu_dir];
                if let Some(pin) = pin {
                    let root =
                        cpuset.as_ref().ok_or("NUMA pinning needs the cpuset controller, which is not mounted")?;
                    // v1 cpusets start empty; a parent must have CPUs and memory nodes before a
                    // child can, and before any task can join.
                    let parent = root.join(PARENT);
                    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let value = read(&root.join(f)).unwrap_or_default();
                        write(&parent.join(f), value.trim())?;
                    }
                    let dir = parent.join(name);
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    write(&dir.join("cpuset.cpus"), &pin.cpus)?;
                    write(&dir.join("cpuset.mems"), &pin.mems)?;
                    dirs.push(dir);
                }
                Ok(dirs)
            }
            Self::V2 { root } => {
                // Controllers must be enabled on the way down for the leaf to have them.
                let parent = root.join(PARENT);
                std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                let controllers = if pin.is_some() { "+memory +cpu +cpuset" } else { "+memory +cpu" };
                write(&root.join("cgroup.subtree_control"), controllers)?;
                write(&parent.join("cgroup.subtree_control"), controllers)?;
                let dir = parent.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                if mem_mb > 0 {
                    write(&dir.join("memory.max"), &mem_bytes.to_string())?;
                    write(&dir.join("memory.swap.max"), "0").ok();
                }
                if vcpus > 0 {
                    write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                }
                if let Some(pin) = pin {
                    write(&dir.join("cpuset.cpus"), &pin.cpus)?;
                    write(&dir.join("cpuset.mems"), &pin.mems)?;
                }
                Ok(vec![dir])
            }
            Self::Unavailable { why } => Err(why.clone()),
        }
    }

    /// Real memory use of a group in MiB: usage minus inactive file cache (what the kernel
    /// can reclaim at once), as kubelet counts it.
    pub fn memory_usage_mb(&self, dirs: &[PathBuf]) -> Option<u64> {
        let dir = dirs.first()?;
        let (usage, stat, inactive_key) = match self {
            Self::V1 { .. } => {
                (read(&dir.join("memory.usage_in_bytes"))?, read(&dir.join("memory.stat"))?, "total_inactive_file")
            }
            Self::V2 { .. } => (read(&dir.join("memory.current"))?, read(&dir.join("memory.stat"))?, "inactive_file"),
            Self::Unavailable { .. } => return None,
        };
        let usage: u64 = usage.trim().parse().ok()?;
        let inactive = keyed(&stat, inactive_key).unwrap_or(0);
        Some(usage.saturating_sub(inactive) / (1024 * 1024))
    }

    /// How many times the kernel's OOM killer acted in the group.
    pub fn oom_kills(&self, dirs: &[PathBuf]) -> Option<u64> {
        let dir = dirs.first()?;
        match self {
            Self::V1 { .. } => keyed(&read(&dir.join("memory.oom_control"))?, "oom_kill"),
            Self::V2 { .. } => keyed(&read(&dir.join("memory.events"))?, "oom_kill"),
            Self::Unavailable { .. } => None,
        }
    }

    /// Removes an instance's groups. A group still holding a process that is on its way out
    /// cannot be removed yet, so removal is retried in the background for a few seconds.
    pub fn remove(&self, dirs: &[PathBuf]) {
        let pending: Vec<PathBuf> =
            dirs.iter().filter(|d| std::fs::remove_dir(d).is_err() && d.exists()).cloned().collect();
        if pending.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if pending.iter().all(|d| std::fs::remove_dir(d).is_ok() || !d.exists()) {
                    return;
                }
            }
            tracing::warn!(groups = ?pending, "cgroups still busy; left for the operator");
        });
    }
}

/// Moves the calling process out of each group, back to its hierarchy's root (the shim does
/// this before it reports, so the groups can be removed).
pub fn leave(dirs: &[PathBuf]) {
    let pid = std::process::id().to_string();
    for dir in dirs {
        // <hierarchy>/drover/<instance> → <hierarchy>
        if let Some(root) = dir.parent().and_then(Path::parent) {
            let _ = std::fs::write(root.join("cgroup.procs"), &pid);
        }
    }
}

/// Kills every process left in each group (the caller has left them) and waits, at most
/// `patience`, for them to be gone, so the groups can be removed: an instance ends with its
/// main process, and what it started in another process group or session (a daemon) goes with
/// it, as systemd's units do. A workload cannot leave its groups (their parents are root's), so
/// whatever is in them is its own. cgroup v2 kills the whole group at once (`cgroup.kill`,
/// Linux 5.14); otherwise each process listed is sent SIGKILL until none is left. Returns
/// whether the groups are empty.
pub fn kill_all(dirs: &[PathBuf], patience: std::time::Duration) -> bool {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
    let tries = patience.as_millis() / PAUSE.as_millis() + 1;
    for _ in 0..tries {
        let mut empty = true;
        for dir in dirs {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else { continue };
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                continue;
            }
            empty = false;
            if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
                for pid in pids {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        if empty {
            return true;
        }
        std::thread::sleep(PAUSE);
    }
    false
}

/// Moves the calling process into each group (the shim does this before starting the
/// workload, which then inherits the groups).
///
/// # Errors
/// A group cannot be joined.
pub fn join(dirs: &[PathBuf]) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for dir in dirs {
        write(&dir.join("cgroup.procs"), &pid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_fixture_limits_usage_and_oom() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(&r.join("memory/memory.limit_in_bytes"), "9223372036854771712\n");
        touch(&r.join("cpu/cpu.cfs_quota_us"), "-1\n");
        touch(&r.join("cpuset/cpuset.cpus"), "0-7\n");
        touch(&r.join("cpuset/cpuset.mems"), "0-1\n");
        let cg = Cgroups::detect(r);
        assert_eq!(cg, Cgroups::V1 { memory: r.join("memory"), cpu: r.join("cpu"), cpuset: Some(r.join("cpuset")) });
        assert_eq!(cg.feature(), Some("cgroup-v1"));
        let pin = Pin { cpus: "4-7".into(), mems: "1".into() };
        let dirs = cg.create("i1", 64, 2, Some(&pin)).unwrap();
        assert_eq!(std::fs::read_to_string(dirs[2].join("cpuset.cpus")).unwrap(), "4-7");
        assert_eq!(std::fs::read_to_string(dirs[2].join("cpuset.mems")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(r.join("cpuset/drover/cpuset.cpus")).unwrap(), "0-7", "parent filled in");
        assert_eq!(std::fs::read_to_string(dirs[0].join("memory.limit_in_bytes")).unwrap(), "67108864");
        assert_eq!(std::fs::read_to_string(dirs[1].join("cpu.cfs_quota_us")).unwrap(), "200000");
        touch(&dirs[0].join("memory.usage_in_bytes"), "104857600\n");
        touch(&dirs[0].join("memory.stat"), "cache 1\ntotal_inactive_file 20971520\n");
        touch(&dirs[0].join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        assert_eq!(cg.memory_usage_mb(&dirs), Some(80));
        assert_eq!(cg.oom_kills(&dirs), Some(2));
    }

    #[test]
    fn v2_fixture_limits_usage_and_oom() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(&r.join("cgroup.controllers"), "cpuset cpu io memory pids\n");
        touch(&r.join("cgroup.subtree_control"), "");
        let cg = Cgroups::detect(r);
        assert_eq!(cg, Cgroups::V2 { root: r.to_owned() });
        let dirs = cg.create("i1", 128, 1, Some(&Pin { cpus: "2".into(), mems: "0".into() })).unwrap();
        assert_eq!(std::fs::read_to_string(dirs[0].join("cpuset.cpus")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(r.join("cgroup.subtree_control")).unwrap(), "+memory +cpu +cpuset");
        assert_eq!(std::fs::read_to_string(dirs[0].join("memory.max")).unwrap(), "134217728");
        assert_eq!(std::fs::read_to_string(dirs[0].join("cpu.max")).unwrap(), "100000 100000");
        touch(&dirs[0].join("memory.current"), "52428800\n");
        touch(&dirs[0].join("memory.stat"), "anon 1\ninactive_file 10485760\n");
        touch(&dirs[0].join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        assert_eq!(cg.memory_usage_mb(&dirs), Some(40));
        assert_eq!(cg.oom_kills(&dirs), Some(1));
    }

    #[test]
    fn neither_layout_is_unavailable_with_a_reason() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroups::detect(root.path());
        assert!(matches!(&cg, Cgroups::Unavailable { why } if why.contains("no cgroup v2")), "{cg:?}");
        assert_eq!(cg.feature(), None);
    }
}
