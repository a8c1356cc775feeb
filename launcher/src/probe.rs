//! What this node offers: memory, disk, CPUs, load, host name, architecture.

use std::path::Path;

use ssntp::payload::NodeReport;
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

/// A fresh report for this node.
pub fn report(node_uuid: Uuid, state_dir: &Path, mem_reserve_mb: u64) -> NodeReport {
    let (mem_total, mem_available) =
        std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo).unwrap_or((0, 0));
    let load = std::fs::read_to_string("/proc/loadavg").ok().as_deref().and_then(parse_loadavg).unwrap_or(0.0);
    let (disk_total, disk_available) = disk_mb(state_dir).unwrap_or((0, 0));
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    NodeReport {
        node_uuid,
        mem_total_mb: mem_total.saturating_sub(mem_reserve_mb),
        mem_available_mb: mem_available.saturating_sub(mem_reserve_mb),
        disk_total_mb: disk_total,
        disk_available_mb: disk_available,
        cpus_online: cpus,
        hostname,
        load,
        networks: vec![],
        arch: std::env::consts::ARCH.to_owned(),
        features: vec!["process".into(), "sim".into()],
        labels: Default::default(),
        numa_node: None,
        vcpus_allocated: 0,
        mem_allocated_mb: None,
        instance_count: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((24_000, 20_000)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_loadavg("0.42 0.30 0.10 1/76 1650\n"), Some(0.42));
        assert_eq!(parse_loadavg(""), None);
        let (total, avail) = disk_mb(Path::new("/")).unwrap();
        assert!(total >= avail);
    }
}
