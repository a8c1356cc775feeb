//! `drover-launcher doctor`: inspects the host (memory, CPUs, NUMA, cgroups, runc/crun, systemd,
//! KVM, disk, binfmt_misc, GPUs) and prints the launcher flags it recommends, each with its
//! reason. `--interactive` asks what the node will run, as the OBS seed's helper script does.
//! [`gather`] reads the machine from injectable roots; [`recommend`] is pure.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Parser as _;

/// Flags of `drover-launcher doctor`.
#[derive(Debug, clap::Parser)]
#[command(name = "drover-launcher doctor", about = "Inspect this host and recommend launcher flags, with reasons")]
pub struct DoctorArgs {
    /// Ask what the node will run (builds, services, both) and whether the machine is shared.
    #[arg(long)]
    pub interactive: bool,
    /// The state directory the launcher will use (its disk is what is inspected).
    #[arg(long, default_value = "/var/lib/drover/launcher")]
    pub state_dir: PathBuf,
    /// Where /proc is (tests point this at a fixture tree).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (tests point this at a fixture tree).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,
    /// Where the cgroup file systems are mounted (tests point this at a fixture tree).
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    /// Where binfmt_misc is mounted (tests point this at a fixture tree).
    #[arg(long, default_value = "/proc/sys/fs/binfmt_misc", hide = true)]
    pub binfmt_root: PathBuf,
    /// Where systemd's runtime directory is (`/run/systemd/system` exists when it is PID 1).
    #[arg(long, default_value = "/run/systemd/system", hide = true)]
    pub systemd_marker: PathBuf,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm", hide = true)]
    pub kvm_device: PathBuf,
}

/// One NUMA node: its id, CPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numa {
    /// Its number.
    pub id: u32,
    /// CPUs on it.
    pub cpus: u32,
    /// Its memory, MiB.
    pub mem_mb: u64,
}

/// What the doctor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Memory, MiB.
    pub mem_total_mb: u64,
    /// CPUs online.
    pub cpus: u32,
    /// NUMA nodes with CPUs.
    pub numa: Vec<Numa>,
    /// `v1`, `v2` or why there are none.
    pub cgroups: Result<String, String>,
    /// runc or crun.
    pub oci_runtime: Option<PathBuf>,
    /// systemd is PID 1.
    pub systemd: bool,
    /// /dev/kvm exists.
    pub kvm: bool,
    /// Disk of the state directory (total, available), MiB.
    pub disk_mb: Option<(u64, u64)>,
    /// Architectures run through qemu-user.
    pub foreign_arches: Vec<String>,
    /// Display controllers (PCI class 03).
    pub gpus: Vec<String>,
    /// The doctor runs as root (the launcher must, for per-tenant users and cgroups).
    pub root: bool,
    /// Guest architectures there is a device model (`qemu-system-ARCH`) for on PATH.
    pub vm_arches: Vec<String>,
    /// Kinds of artifact there is a runtime for on PATH (`jar`: java).
    pub artifact_kinds: Vec<String>,
    /// L3 cache ways resctrl offers (0: no cache allocation).
    pub cache_ways: u32,
}

/// What the node will mostly run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Builds and other CPU-bound batch work (OBS's workers).
    Builds,
    /// Long-running services.
    Services,
    /// Both.
    #[default]
    Mixed,
}

/// The answers of `--interactive` (defaults without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answers {
    /// What the node will run.
    pub kind: Kind,
    /// The machine also does other work (a desktop, other services).
    pub shared: bool,
}

/// A recommended flag and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The flag(s) as typed.
    pub flag: String,
    /// Why, with the figures.
    pub why: String,
}

/// The flags for `facts` and `answers`, each with its reason, and the warnings (what will not
/// work as an operator may expect).
pub fn recommend(facts: &HostFacts, answers: &Answers) -> (Vec<Advice>, Vec<String>) {
    let mut advice = Vec::new();
    let mut warnings = Vec::new();
    let mut add = |flag: String, why: String| advice.push(Advice { flag, why });

    // Memory kept back for the system: 5% (at least 256 MiB, at most 4 GiB); a quarter on a
    // machine that also does other work.
    let five = (facts.mem_total_mb / 20).clamp(256, 4096);
    let reserve = if answers.shared { five.max(facts.mem_total_mb / 4) } else { five };
    let why = if answers.shared {
        format!("the machine does other work too: a quarter of its {} MiB stays for it", facts.mem_total_mb)
    } else {
        format!(
            "keeps 5% of the {} MiB (at least 256, at most 4096) for the system and the launcher",
            facts.mem_total_mb
        )
    };
    add(format!("--mem-reserve-mb {reserve}"), why);

    if let Some((total, _)) = facts.disk_mb {
        let keep = (total / 10).clamp(1024, 20 * 1024);
        add(
            format!("--disk-reserve-mb {keep}"),
            format!("keeps 10% of the state directory's {total} MiB disk (1-20 GiB) free"),
        );
    }

    add("--backend process".into(), "always available: process groups under the shim".into());
    match &facts.oci_runtime {
        Some(runtime) => {
            add("--backend oci".into(), format!("{} is installed: OCI containers can run", runtime.display()));
            add(
                "--image-dir /var/lib/drover/images".into(),
                "root filesystems kept there are advertised, so OCI work that prefers a cached image comes here".into(),
            );
        }
        None => warnings.push("no runc or crun: no OCI containers (Debian: apt-get install runc)".into()),
    }
    if facts.systemd && facts.root {
        add("--backend systemd".into(), "systemd is PID 1: workloads can run as transient units".into());
    }

    let numa: Vec<&Numa> = facts.numa.iter().filter(|n| n.cpus > 0).collect();
    if numa.len() > 1 {
        let nodes: Vec<String> = numa.iter().map(|n| format!("{}: {} CPUs, {} MiB", n.id, n.cpus, n.mem_mb)).collect();
        add(
            "--numa-node N (one launcher per node)".into(),
            format!(
                "{} NUMA nodes ({}): a launcher per node keeps each workload's memory local; each needs its own --state-dir and certificate",
                numa.len(),
                nodes.join("; ")
            ),
        );
    }

    let usable_mb = facts.mem_total_mb.saturating_sub(reserve);
    let cpus = u64::from(facts.cpus.max(1));
    let (max, why) = match answers.kind {
        Kind::Builds => (
            cpus,
            format!("builds are CPU-bound: one per CPU ({cpus}), each told its share in DROVER_JOBS (make -j\"$DROVER_JOBS\")"),
        ),
        Kind::Services => {
            let by_memory = (usable_mb / 64).clamp(1, 1000);
            (by_memory, format!("services mostly wait: one per 64 MiB of the {usable_mb} MiB left (at most 1000)"))
        }
        Kind::Mixed => {
            let n = (cpus * 4).min((usable_mb / 64).max(1)).clamp(1, 1000);
            (n, format!("four per CPU ({cpus}), at most one per 64 MiB of the {usable_mb} MiB left"))
        }
    };
    add(format!("--max-instances {max}"), why);
    if answers.kind == Kind::Builds {
        add("--label kind=build".into(), "lets build workloads prefer this node ([preferences] labels)".into());
    }

    if facts.kvm {
        add("(advertised, no flag)".into(), "/dev/kvm exists: the node advertises the kvm feature".into());
    }
    if !facts.vm_arches.is_empty() {
        let accel = if facts.kvm { "with KVM for its own architecture" } else { "emulated (no /dev/kvm)" };
        add(
            "--backend vm".into(),
            format!(
                "device models for {} guests are on PATH: virtual machines can run, {accel}",
                facts.vm_arches.join(", ")
            ),
        );
    }
    if !facts.artifact_kinds.is_empty() {
        let kinds: Vec<String> = facts.artifact_kinds.iter().map(|k| format!(".{k}")).collect();
        add(
            "--backend artifact --volume-root DIR".into(),
            format!(
                "runtimes for {} artifacts are on PATH: files under DIR can run as tasks (the artifact backend)",
                kinds.join(", ")
            ),
        );
    }
    if facts.cache_ways > 0 {
        add(
            "(advertised, no flag)".into(),
            format!(
                "resctrl offers {} L3 cache ways: workloads may ask for ways of their own (cache_ways)",
                facts.cache_ways
            ),
        );
    }
    if !facts.foreign_arches.is_empty() {
        add(
            "(advertised, no flag)".into(),
            format!(
                "qemu-user runs {} here: the node advertises them (foreign_arches)",
                facts.foreign_arches.join(", ")
            ),
        );
    }
    if !facts.gpus.is_empty() {
        add(
            "(advertised, no flag)".into(),
            format!(
                "display controllers {}: the node advertises them; workloads require them with pci = [\"VENDOR:*\"]",
                facts.gpus.join(", ")
            ),
        );
    }
    if let Err(why) = &facts.cgroups {
        warnings.push(format!("no cgroup limits ({why}): workloads are not bounded in memory or CPU"));
    }
    if !facts.root {
        warnings.push(
            "not root: the launcher would run every workload as its own user (no per-tenant users) and may not create cgroups"
                .into(),
        );
    }
    (advice, warnings)
}

/// Reads the host as `args` says where.
pub fn gather(args: &DoctorArgs) -> HostFacts {
    let meminfo = std::fs::read_to_string(args.proc_root.join("meminfo")).unwrap_or_default();
    let mem_total_mb = crate::probe::parse_meminfo(&meminfo).map_or(0, |(total, _)| total);
    let cpus = std::fs::read_to_string(args.sysfs_root.join("devices/system/cpu/online"))
        .ok()
        .and_then(|t| crate::probe::parse_cpulist(t.trim()).ok())
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            |c| u32::try_from(c.len()).unwrap_or(u32::MAX),
        );
    let mut numa: Vec<Numa> = std::fs::read_dir(args.sysfs_root.join("devices/system/node"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("node")?.parse::<u32>().ok())
        .filter_map(|id| crate::probe::numa_node(&args.sysfs_root, id).ok())
        .map(|n| Numa { id: n.id, cpus: u32::try_from(n.cpus.len()).unwrap_or(u32::MAX), mem_mb: n.mem_total_mb })
        .collect();
    numa.sort_by_key(|n| n.id);
    let cgroups = match crate::cgroup::Cgroups::detect(&args.cgroup_root) {
        crate::cgroup::Cgroups::V1 { cpuset, .. } => {
            Ok(if cpuset.is_some() { "v1 (memory, cpu, cpuset)".to_owned() } else { "v1 (memory, cpu)".to_owned() })
        }
        crate::cgroup::Cgroups::V2 { .. } => Ok("v2 (memory, cpu)".to_owned()),
        crate::cgroup::Cgroups::Unavailable { why } => Err(why),
    };
    // The state directory may not exist yet: its nearest existing ancestor holds its disk.
    let disk_mb = args.state_dir.ancestors().find(|p| p.exists()).and_then(crate::probe::disk_mb);
    let gpus = crate::capabilities::pci_devices(&args.sysfs_root, None)
        .into_iter()
        .filter(|d| d.class.starts_with("03"))
        .map(|d| d.id)
        .collect();
    HostFacts {
        mem_total_mb,
        cpus,
        numa,
        cgroups,
        oci_runtime: crate::probe::find_program(&["runc", "crun"]),
        systemd: args.systemd_marker.is_dir(),
        kvm: args.kvm_device.exists(),
        disk_mb,
        foreign_arches: crate::capabilities::foreign_arches(&args.binfmt_root),
        gpus,
        root: nix::unistd::geteuid().is_root(),
        vm_arches: crate::vm::device_models(&[]).into_keys().collect(),
        artifact_kinds: crate::artifact::runtimes(&[]).into_keys().collect(),
        cache_ways: crate::resctrl::read(std::path::Path::new("/sys/fs/resctrl")).map_or(0, |c| c.ways),
    }
}

/// Asks the `--interactive` questions on `input`/`output`; an empty or unreadable answer takes
/// the default.
///
/// # Errors
/// Writing the questions failed.
pub fn ask(input: &mut dyn BufRead, output: &mut dyn Write) -> std::io::Result<Answers> {
    let mut line = String::new();
    write!(output, "What will this node mostly run? [b]uilds, [s]ervices, [m]ixed (default m): ")?;
    output.flush()?;
    let _ = input.read_line(&mut line);
    let kind = match line.trim().to_ascii_lowercase().chars().next() {
        Some('b') => Kind::Builds,
        Some('s') => Kind::Services,
        _ => Kind::Mixed,
    };
    line.clear();
    write!(output, "Does this machine also do other work (a desktop, other services)? [y/N]: ")?;
    output.flush()?;
    let _ = input.read_line(&mut line);
    let shared = line.trim().to_ascii_lowercase().starts_with('y');
    Ok(Answers { kind, shared })
}

/// The report: what was found, the flags with reasons, the warnings, and a command line.
pub fn render(facts: &HostFacts, advice: &[Advice], warnings: &[String]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("This host:\n");
    let yes = |b: bool| if b { "yes" } else { "no" };
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    let numa = match facts.numa.len() {
        0 | 1 => "one node".to_owned(),
        n => format!("{n} nodes"),
    };
    let disk = facts.disk_mb.map_or_else(|| "unknown".to_owned(), |(t, a)| format!("{a} of {t} MiB free"));
    for (key, value) in [
        ("memory", format!("{} MiB", facts.mem_total_mb)),
        ("cpus", facts.cpus.to_string()),
        ("numa", numa),
        ("cgroups", facts.cgroups.clone().unwrap_or_else(|why| format!("none ({why})"))),
        ("oci runtime", facts.oci_runtime.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string())),
        ("systemd", if facts.systemd { "PID 1" } else { "not PID 1" }.to_owned()),
        ("kvm", yes(facts.kvm).to_owned()),
        ("disk", disk),
        ("binfmt", list(&facts.foreign_arches)),
        ("gpus", list(&facts.gpus)),
        ("root", yes(facts.root).to_owned()),
    ] {
        let _ = writeln!(out, "  {key:<12} {value}");
    }
    out.push_str("\nRecommended:\n");
    for a in advice {
        let _ = writeln!(out, "  {}\n      {}", a.flag, a.why);
    }
    if !warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    // The flags that are typed as they are (not the per-NUMA-node advice, not the notes).
    let flags: Vec<&str> =
        advice.iter().map(|a| a.flag.as_str()).filter(|f| f.starts_with("--") && !f.contains('(')).collect();
    let _ = writeln!(
        out,
        "\nCommand line:\n  drover-launcher --server SCHEDULER:8888 --cacert CA --cert CERT --key KEY {}",
        flags.join(" ")
    );
    out
}

/// `drover-launcher doctor ARGS…` (the words after `doctor`): the exit code.
pub fn run(words: &[String]) -> i32 {
    let args = match DoctorArgs::try_parse_from(
        std::iter::once("drover-launcher doctor".to_owned()).chain(words.iter().cloned()),
    ) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 64 } else { 0 };
        }
    };
    let facts = gather(&args);
    let answers = if args.interactive {
        let stdin = std::io::stdin();
        match ask(&mut stdin.lock(), &mut std::io::stdout()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("drover-launcher doctor: {e}");
                return 1;
            }
        }
    } else {
        Answers::default()
    };
    let (advice, warnings) = recommend(&facts, &answers);
    print!("{}", render(&facts, &advice, &warnings));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            mem_total_mb: 64 * 1024,
            cpus: 32,
            numa: vec![Numa { id: 0, cpus: 16, mem_mb: 32 * 1024 }, Numa { id: 1, cpus: 16, mem_mb: 32 * 1024 }],
            cgroups: Ok("v2 (memory, cpu)".into()),
            oci_runtime: Some("/usr/sbin/runc".into()),
            systemd: true,
            kvm: true,
            disk_mb: Some((500 * 1024, 400 * 1024)),
            foreign_arches: vec!["arm".into()],
            gpus: vec!["10de:2204".into()],
            root: true,
            vm_arches: vec!["aarch64".into(), "x86_64".into()],
            artifact_kinds: vec!["jar".into()],
            cache_ways: 12,
        }
    }

    fn flags(advice: &[Advice]) -> Vec<&str> {
        advice.iter().map(|a| a.flag.as_str()).collect()
    }

    #[test]
    fn a_big_numa_machine_gets_a_launcher_per_node_every_backend_and_reasons_with_figures() {
        let (advice, warnings) = recommend(&facts(), &Answers::default());
        let f = flags(&advice);
        for want in [
            "--mem-reserve-mb 3276",
            "--disk-reserve-mb 20480",
            "--backend process",
            "--backend oci",
            "--backend systemd",
            "--backend vm",
            "--backend artifact --volume-root DIR",
            "--max-instances 128",
        ] {
            assert!(f.contains(&want), "{want} in {f:?}");
        }
        let numa = advice.iter().find(|a| a.flag.starts_with("--numa-node")).expect("a launcher per NUMA node");
        assert!(numa.why.contains("2 NUMA nodes (0: 16 CPUs, 32768 MiB; 1: 16 CPUs, 32768 MiB)"), "{}", numa.why);
        assert!(advice.iter().any(|a| a.why.contains("10de:2204")), "the GPU is named");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn the_answers_change_the_reserve_and_the_instance_count() {
        let builds = recommend(&facts(), &Answers { kind: Kind::Builds, shared: true }).0;
        let f = flags(&builds);
        assert!(f.contains(&"--mem-reserve-mb 16384"), "a shared machine keeps a quarter: {f:?}");
        assert!(f.contains(&"--max-instances 32") && f.contains(&"--label kind=build"), "{f:?}");
        let services = recommend(&facts(), &Answers { kind: Kind::Services, shared: false }).0;
        assert!(flags(&services).contains(&"--max-instances 972"), "{:?}", flags(&services));
    }

    #[test]
    fn a_small_bare_machine_is_warned_about_what_it_lacks() {
        let small = HostFacts {
            mem_total_mb: 2048,
            cpus: 2,
            numa: Vec::new(),
            cgroups: Err("no cgroup v2 memory+cpu controllers".into()),
            oci_runtime: None,
            systemd: false,
            kvm: false,
            disk_mb: None,
            foreign_arches: Vec::new(),
            gpus: Vec::new(),
            root: false,
            vm_arches: Vec::new(),
            artifact_kinds: Vec::new(),
            cache_ways: 0,
        };
        let (advice, warnings) = recommend(&small, &Answers::default());
        let f = flags(&advice);
        assert!(f.contains(&"--mem-reserve-mb 256") && f.contains(&"--max-instances 8"), "{f:?}");
        assert!(!f.iter().any(|f| f.starts_with("--numa-node")
            || *f == "--backend oci"
            || *f == "--backend systemd"
            || *f == "--backend vm"));
        let text = warnings.join("\n");
        assert!(
            text.contains("no runc or crun") && text.contains("no cgroup limits") && text.contains("not root"),
            "{text}"
        );
    }

    #[test]
    fn interactive_answers_are_read_and_defaults_taken_for_empty_ones() {
        let mut out = Vec::new();
        let a = ask(&mut "b\ny\n".as_bytes(), &mut out).unwrap();
        assert_eq!(a, Answers { kind: Kind::Builds, shared: true });
        assert!(String::from_utf8(out).unwrap().contains("[b]uilds"));
        assert_eq!(ask(&mut "\n".as_bytes(), &mut Vec::new()).unwrap(), Answers::default());
    }

    #[test]
    fn the_host_is_read_from_fixture_trees() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let write = |rel: &str, text: &str| {
            let path = p.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/meminfo", "MemTotal:       16384000 kB\nMemFree:        8000000 kB\nMemAvailable:   12000000 kB\n");
        write("sys/devices/system/cpu/online", "0-7\n");
        for (id, cpus) in [(0, "0-3"), (1, "4-7")] {
            write(&format!("sys/devices/system/node/node{id}/cpulist"), &format!("{cpus}\n"));
            write(
                &format!("sys/devices/system/node/node{id}/meminfo"),
                &format!("Node {id} MemTotal:       8192000 kB\nNode {id} MemFree:        4096000 kB\n"),
            );
        }
        write("sys/bus/pci/devices/0000:01:00.0/vendor", "0x10de\n");
        write("sys/bus/pci/devices/0000:01:00.0/device", "0x2204\n");
        write("sys/bus/pci/devices/0000:01:00.0/class", "0x030000\n");
        write("binfmt/qemu-riscv64", "enabled\n");
        std::fs::create_dir_all(p.join("cgroup")).unwrap();
        let args = DoctorArgs::try_parse_from([
            "doctor",
            "--state-dir",
            &p.join("state/does/not/exist/yet").display().to_string(),
            "--proc-root",
            &p.join("proc").display().to_string(),
            "--sysfs-root",
            &p.join("sys").display().to_string(),
            "--cgroup-root",
            &p.join("cgroup").display().to_string(),
            "--binfmt-root",
            &p.join("binfmt").display().to_string(),
            "--systemd-marker",
            &p.join("none").display().to_string(),
            "--kvm-device",
            &p.join("none").display().to_string(),
        ])
        .unwrap();
        let f = gather(&args);
        assert_eq!((f.mem_total_mb, f.cpus), (16000, 8));
        assert_eq!(f.numa.iter().map(|n| (n.id, n.cpus, n.mem_mb)).collect::<Vec<_>>(), [(0, 4, 8000), (1, 4, 8000)]);
        assert!(f.cgroups.is_err() && !f.systemd && !f.kvm);
        assert!(f.disk_mb.is_some(), "the nearest existing ancestor's disk");
        assert_eq!(
            (f.foreign_arches.as_slice(), f.gpus.as_slice()),
            (&["riscv64".to_owned()][..], &["10de:2204".to_owned()][..])
        );
        let (advice, warnings) = recommend(&f, &Answers::default());
        let text = render(&f, &advice, &warnings);
        for want in [
            "memory       16000 MiB",
            "numa         2 nodes",
            "--numa-node N",
            "gpus         10de:2204",
            "Command line:",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
