//! What this node offers: memory, disk, CPUs, load, host name, architecture, features — for the
//! whole machine, or for one NUMA node when the launcher serves one (`--numa-node`).
//!
//! Figures are read anew for every report: on some kernels a NUMA node's memory grows after
//! boot (deferred initialisation), and the sum of the nodes need not equal `/proc/meminfo`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ssntp::payload::{Network, NodeReport};
use ssntp::Uuid;

/// Reads `MemTotal` and `MemAvailable` (MiB) from the text of `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("MemTotal")? / 1024, field("MemAvailable")? / 1024))
}

/// A NUMA node's share of the machine's load average: the kernel keeps one for the whole
/// machine, so a launcher serving `node_cpus` of the machine's `machine_cpus` counts the share
/// of its CPUs (the load spread evenly). Left whole, it would make each node look as loaded per
/// CPU as the machine times the number of nodes, and give its workloads too small a `-j` hint.
pub fn numa_share_of_load(load: f64, node_cpus: u32, machine_cpus: u32) -> f64 {
    if machine_cpus == 0 {
        return load;
    }
    load * f64::from(node_cpus.min(machine_cpus)) / f64::from(machine_cpus)
}

/// Reads the 1-minute load average from the text of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Total and available MiB of the file system holding `path`.
pub fn disk_mb(path: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let block = st.fragment_size();
    let mb = |blocks: u64| blocks.saturating_mul(block) / (1024 * 1024);
    Some((mb(st.blocks()), mb(st.blocks_available())))
}

/// Parses a kernel CPU list (`0-3,8,10-11`).
///
/// # Errors
/// Text that is not a CPU list.
pub fn parse_cpulist(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("not a CPU list: {text:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 65_536 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

/// One NUMA node's CPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    /// Its number.
    pub id: u32,
    /// Its CPUs.
    pub cpus: Vec<u32>,
    /// Its CPU list as the kernel writes it (for cpuset).
    pub cpulist: String,
    /// Its memory, MiB.
    pub mem_total_mb: u64,
    /// Its free memory plus reclaimable file cache, MiB.
    pub mem_available_mb: u64,
}

/// Reads NUMA node `id` under `sysfs` (normally `/sys`).
///
/// # Errors
/// The node does not exist or its files cannot be read.
pub fn numa_node(sysfs: &Path, id: u32) -> Result<NumaNode, String> {
    let dir: PathBuf = sysfs.join("devices/system/node").join(format!("node{id}"));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| format!("NUMA node {id}: {}: {e}", dir.join(f).display()))
    };
    let cpulist = read("cpulist")?.trim().to_owned();
    let cpus = parse_cpulist(&cpulist)?;
    let meminfo = read("meminfo")?;
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(&format!("Node {id} {name}:"))?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = field("MemTotal").ok_or_else(|| format!("NUMA node {id}: no MemTotal in meminfo"))?;
    let available = field("MemFree").unwrap_or(0) + field("Inactive(file)").unwrap_or(0);
    Ok(NumaNode { id, cpus, cpulist, mem_total_mb: total / 1024, mem_available_mb: available.min(total) / 1024 })
}

/// What the node offers besides resources.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// Backends this node runs (`process`, `oci`, `sim`).
    pub backends: Vec<String>,
    /// Capabilities (`cgroup-v1`, `kvm` …).
    pub features: Vec<String>,
    /// Operator labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The NUMA node served, if one.
    pub numa: Option<(u32, PathBuf)>,
    /// What the node can do beyond capacity (read at start).
    pub capabilities: Capabilities,
    /// The `vm` backend's device models, by guest architecture (empty without it).
    pub device_models: std::collections::BTreeMap<String, PathBuf>,
    /// The `artifact` backend's runtimes, by kind of artifact (empty without it).
    pub runtimes: std::collections::BTreeMap<String, PathBuf>,
}

/// What a node can do beyond capacity, read once at the launcher's start
/// ([`crate::capabilities`]).
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Architectures it runs through qemu-user.
    pub foreign_arches: Vec<String>,
    /// Its single-core speed score.
    pub cpu_score: Option<u32>,
    /// Its PCI devices.
    pub pci: Vec<ssntp::payload::PciDevice>,
    /// The directories images are cached in, listed again at each report (images come and go).
    pub image_dirs: Vec<PathBuf>,
    /// Last-level cache allocation, where resctrl offers it.
    pub cache: Option<crate::resctrl::Cache>,
}

/// Capabilities found on this machine: `kvm` when /dev/kvm exists.
pub fn machine_features() -> Vec<String> {
    let mut f = Vec::new();
    if Path::new("/dev/kvm").exists() {
        f.push("kvm".to_owned());
    }
    f
}

/// Whether a file with this metadata is a program someone may run (a regular file with an
/// execute bit).
pub fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Where the node's hypervisor tools (device models, runtimes) are looked for: the
/// `--hypervisor-tools` directories, or `PATH`'s when there are none.
pub fn tool_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if dirs.is_empty() {
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
    } else {
        dirs.to_vec()
    }
}

/// The first of `names` found on `PATH`.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// A fresh report for this node as `offer` describes it (one NUMA node's share when it names
/// one).
///
/// # Errors
/// The NUMA node cannot be read.
pub fn report_for(node_uuid: Uuid, state_dir: &Path, mem_reserve_mb: u64, offer: &Offer) -> Result<NodeReport, String> {
    let mut r = report(node_uuid, state_dir, mem_reserve_mb);
    if let Some((id, sysfs)) = &offer.numa {
        let n = numa_node(sysfs, *id)?;
        let node_cpus = u32::try_from(n.cpus.len()).unwrap_or(u32::MAX);
        r.load = numa_share_of_load(r.load, node_cpus, r.cpus_online);
        r.cpus_online = node_cpus;
        r.mem_total_mb = n.mem_total_mb.saturating_sub(mem_reserve_mb);
        r.mem_available_mb = n.mem_available_mb.saturating_sub(mem_reserve_mb);
        r.numa_node = Some(*id);
    }
    r.features = offer.backends.iter().chain(&offer.features).cloned().collect();
    r.labels = offer.labels.clone();
    let caps = &offer.capabilities;
    r.foreign_arches = caps.foreign_arches.clone();
    r.cpu_score = caps.cpu_score;
    r.pci = caps.pci.clone();
    r.images = crate::capabilities::cached_images(&caps.image_dirs);
    r.cache_ways = caps.cache.as_ref().map_or(0, |c| c.ways);
    Ok(r)
}

/// CPU model name and clock (MHz) from the text of `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> (String, Option<u32>) {
    let value = |key: &str| {
        text.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a clock in MHz fits a u32
    let mhz = value("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|m| m.is_finite() && *m >= 0.0)
        .map(|m| m.round() as u32);
    (value("model name").unwrap_or_default(), mhz)
}

/// The node's IPv4/IPv6 addresses with their interfaces' MAC addresses (loopback left out).
pub fn networks() -> Vec<Network> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let addrs: Vec<_> = addrs.collect();
    let mac_of = |name: &str| {
        addrs
            .iter()
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
    };
    addrs
        .iter()
        .filter(|a| !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK))
        .filter_map(|a| {
            let addr = a.address.as_ref()?;
            let ip = addr
                .as_sockaddr_in()
                .map(|v4| v4.ip().to_string())
                .or_else(|| addr.as_sockaddr_in6().map(|v6| v6.ip().to_string()))?;
            Some(Network { ip, mac: mac_of(&a.interface_name).unwrap_or_default() })
        })
        .collect()
}

/// How long the facts that rarely change (host name, CPU model and count, addresses) are reused
/// between heartbeats. `/proc/cpuinfo` alone is tens of KiB on a large machine, and the
/// addresses cost a netlink dump: read every second by every launcher, they were most of an
/// idle launcher's CPU.
pub const SLOW_FACTS_TTL: Duration = Duration::from_secs(60);

/// The facts of [`SLOW_FACTS_TTL`].
#[derive(Debug, Clone)]
struct SlowFacts {
    hostname: String,
    cpu_model: String,
    cpu_mhz: Option<u32>,
    cpus: u32,
    networks: Vec<Network>,
}

#[allow(clippy::disallowed_methods)] // a probe of the machine: how old its cached facts are
fn slow_facts() -> SlowFacts {
    static CACHE: Mutex<Option<(Instant, SlowFacts)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, facts)) = cache.as_ref().filter(|(at, _)| at.elapsed() < SLOW_FACTS_TTL) {
        return facts.clone();
    }
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let (cpu_model, cpu_mhz) = std::fs::read_to_string("/proc/cpuinfo").map(|t| parse_cpuinfo(&t)).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let facts = SlowFacts { hostname, cpu_model, cpu_mhz, cpus, networks: networks() };
    *cache = Some((Instant::now(), facts.clone()));
    facts
}

/// A fresh report for the whole machine (memory, load and disk read now; the rest at most
/// [`SLOW_FACTS_TTL`] old).
pub fn report(node_uuid: Uuid, state_dir: &Path, mem_reserve_mb: u64) -> NodeReport {
    let (mem_total, mem_available) =
        std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo).unwrap_or((0, 0));
    let load = std::fs::read_to_string("/proc/loadavg").ok().as_deref().and_then(parse_loadavg).unwrap_or(0.0);
    let (disk_total, disk_available) = disk_mb(state_dir).unwrap_or((0, 0));
    let SlowFacts { hostname, cpu_model, cpu_mhz, cpus, networks } = slow_facts();
    NodeReport {
        node_uuid,
        mem_total_mb: mem_total.saturating_sub(mem_reserve_mb),
        mem_available_mb: mem_available.saturating_sub(mem_reserve_mb),
        disk_total_mb: disk_total,
        disk_available_mb: disk_available,
        cpus_online: cpus,
        hostname,
        load,
        networks,
        arch: std::env::consts::ARCH.to_owned(),
        cpu_model,
        cpu_mhz,
        features: Vec::new(),
        labels: Default::default(),
        numa_node: None,
        vcpus_allocated: 0,
        mem_allocated_mb: None,
        instance_count: 0,
        away_grace_ms: None,
        foreign_arches: Vec::new(),
        cpu_score: None,
        pci: Vec::new(),
        images: Vec::new(),
        draining_until_unix_ms: None,
        anchor_tax_mb: Default::default(),
        cache_ways: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(root: &Path, id: u32, cpulist: &str, total_kb: u64, free_kb: u64) {
        let dir = root.join("devices/system/node").join(format!("node{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpulist"), format!("{cpulist}\n")).unwrap();
        std::fs::write(
            dir.join("meminfo"),
            format!("Node {id} MemTotal: {total_kb} kB\nNode {id} MemFree: {free_kb} kB\nNode {id} Inactive(file): 1024 kB\n"),
        )
        .unwrap();
    }

    #[test]
    fn cpuinfo_and_networks() {
        let (model, mhz) = parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.404\n");
        assert_eq!((model.as_str(), mhz), ("AMD EPYC", Some(2445)));
        assert_eq!(parse_cpuinfo(""), (String::new(), None));
        // This machine has at least one non-loopback address, and never reports 127.0.0.1.
        assert!(networks().iter().all(|n| n.ip != "127.0.0.1"));
    }

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
    }

    #[test]
    fn a_launcher_per_numa_node_reports_only_its_node() {
        let sys = tempfile::tempdir().unwrap();
        fixture(sys.path(), 0, "0-3", 8 * 1024 * 1024, 4 * 1024 * 1024);
        fixture(sys.path(), 1, "4-7,12", 16 * 1024 * 1024, 2 * 1024 * 1024);
        let state = tempfile::tempdir().unwrap();
        let offer =
            |n| Offer { backends: vec!["process".into()], numa: Some((n, sys.path().to_owned())), ..Offer::default() };
        let r0 = report_for(Uuid::nil(), state.path(), 256, &offer(0)).unwrap();
        let r1 = report_for(Uuid::nil(), state.path(), 256, &offer(1)).unwrap();
        assert_eq!(
            (r0.cpus_online, r0.mem_total_mb, r0.mem_available_mb, r0.numa_node),
            (4, 8192 - 256, 4097 - 256, Some(0))
        );
        assert_eq!(
            (r1.cpus_online, r1.mem_total_mb, r1.mem_available_mb, r1.numa_node),
            (5, 16384 - 256, 2049 - 256, Some(1))
        );
        assert_eq!(r0.features, vec!["process".to_owned()]);
        assert!(report_for(Uuid::nil(), state.path(), 256, &offer(2)).unwrap_err().contains("NUMA node 2"));
    }

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((24_000, 20_000)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_loadavg("0.42 0.30 0.10 1/76 1650\n"), Some(0.42));
        // Two nodes of 8 CPUs, a machine load of 8: each node has 4 of it, 0.5 per CPU, as the
        // machine has.
        assert!((numa_share_of_load(8.0, 8, 16) - 4.0).abs() < 1e-9);
        assert!((numa_share_of_load(3.0, 16, 16) - 3.0).abs() < 1e-9, "one node: the machine's");
        assert!((numa_share_of_load(3.0, 4, 0) - 3.0).abs() < 1e-9, "no count of the machine: as it is");
        assert_eq!(parse_loadavg(""), None);
        let (total, avail) = disk_mb(Path::new("/")).unwrap();
        assert!(total >= avail);
    }
}
