//! What this node can do beyond capacity, for requirements and preferences (the OBS seed's
//! worker capabilities): its PCI devices, the foreign architectures it runs through
//! binfmt_misc, the OCI root filesystems it already holds, and a measured CPU speed score.
//! Each reader takes its root directory, so tests give them fixture trees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ssntp::payload::PciDevice;

/// The PCI devices under `sysfs` (`/sys`): vendor:device and class of each, in address order.
/// A device whose files cannot be read is left out. A launcher that serves one NUMA node
/// (`numa_node`) offers only the devices attached to it (ciao's per-NUMA launchers: a workload
/// that wants the fast NIC lands on the node it hangs off), and those whose node the kernel
/// does not know (`-1`, as on one-node machines), which may be anywhere.
pub fn pci_devices(sysfs: &Path, numa_node: Option<u32>) -> Vec<PciDevice> {
    let Ok(entries) = std::fs::read_dir(sysfs.join("bus/pci/devices")) else { return Vec::new() };
    let mut found: Vec<(String, PciDevice)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let dir = e.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().map(|t| hex_id(&t));
            let (vendor, device, class) = (read("vendor")?, read("device")?, read("class")?);
            if let Some(want) = numa_node {
                let on = std::fs::read_to_string(dir.join("numa_node")).ok().and_then(|t| t.trim().parse::<i64>().ok());
                if on.is_some_and(|n| n >= 0 && n != i64::from(want)) {
                    return None;
                }
            }
            let address = e.file_name().to_string_lossy().into_owned();
            Some((address, PciDevice { id: format!("{vendor}:{device}"), class }))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.into_iter().map(|(_, d)| d).collect()
}

/// `0x10de\n` → `10de`.
fn hex_id(text: &str) -> String {
    text.trim().trim_start_matches("0x").to_ascii_lowercase()
}

/// The architectures this node runs besides its own: every enabled `qemu-ARCH` entry of
/// binfmt_misc (`/proc/sys/fs/binfmt_misc`), as `ARCH`, sorted.
pub fn foreign_arches(binfmt_misc: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(binfmt_misc) else { return Vec::new() };
    let mut arches: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let arch = name.strip_prefix("qemu-")?.to_owned();
            let text = std::fs::read_to_string(e.path()).ok()?;
            (text.lines().next() == Some("enabled")).then_some(arch)
        })
        .filter(|a| *a != std::env::consts::ARCH)
        .collect();
    arches.sort();
    arches.dedup();
    arches
}

/// The root filesystems cached under each of `dirs` (`--image-dir`): every subdirectory, by its
/// absolute path, sorted. An OCI workload whose `rootfs` is one of them (or inside one) finds
/// its image here.
pub fn cached_images(dirs: &[PathBuf]) -> Vec<String> {
    let mut images: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect();
    images.sort();
    images
}

/// How long the CPU benchmark runs.
pub const SCORE_RUN: Duration = Duration::from_millis(200);

/// Work units per millisecond that score 1000: about one core of a 2020 server.
const UNITS_PER_MS_AT_1000: f64 = 40.0;

/// One unit of the benchmark: integer mixing that the compiler cannot fold away.
fn unit(mut x: u64) -> u64 {
    for _ in 0..1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    x
}

/// A single-core speed score (OBS's "bogomips"): how many benchmark units one core runs per
/// millisecond over [`SCORE_RUN`], scaled so that about 1000 is a 2020 server core.
#[allow(clippy::disallowed_methods)] // a benchmark of the machine: it measures wall time
pub fn measure_cpu_score() -> u32 {
    let started = Instant::now();
    let (mut units, mut x) = (0u64, 0x1234_5678u64);
    while started.elapsed() < SCORE_RUN {
        for _ in 0..16 {
            x = unit(x);
        }
        units += 16;
    }
    std::hint::black_box(x);
    score_of(units, started.elapsed())
}

/// The score of `units` run in `took`.
pub fn score_of(units: u64, took: Duration) -> u32 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let score = (units as f64 / took.as_secs_f64().max(1e-3) / 1000.0 / UNITS_PER_MS_AT_1000 * 1000.0).round() as u32;
    score.max(1)
}

/// The CPU score, measured once per CPU model and kept in `cache` (`STATE/cpu-score`): a
/// launcher's restart does not run the benchmark again, a new CPU does.
pub fn cpu_score(cache: &Path, cpu_model: &str) -> u32 {
    if let Some(score) = cached_score(cache, cpu_model) {
        return score;
    }
    let score = measure_cpu_score();
    let text = format!("{cpu_model}\n{score}\n");
    if let Err(e) = std::fs::write(cache, text) {
        tracing::warn!(path = %cache.display(), error = %e, "the CPU score is not cached; it is measured again at the next start");
    }
    score
}

fn cached_score(cache: &Path, cpu_model: &str) -> Option<u32> {
    let text = std::fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    (lines.next()? == cpu_model).then_some(())?;
    lines.next()?.trim().parse().ok().filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn pci_devices_are_read_from_a_sysfs_tree_by_vendor_device_and_class() {
        let root = tempfile::tempdir().unwrap();
        let devices = root.path().join("bus/pci/devices");
        for (addr, vendor, device, class) in
            [("0000:01:00.0", "0x10de", "0x2204", "0x030000"), ("0000:00:1f.6", "0x8086", "0x15BC", "0x020000")]
        {
            write(&devices.join(addr).join("vendor"), &format!("{vendor}\n"));
            write(&devices.join(addr).join("device"), &format!("{device}\n"));
            write(&devices.join(addr).join("class"), &format!("{class}\n"));
        }
        write(&devices.join("0000:02:00.0/vendor"), "0x1af4\n"); // no device file: left out
        let found = pci_devices(root.path(), None);
        assert_eq!(
            found,
            vec![
                PciDevice { id: "8086:15bc".into(), class: "020000".into() },
                PciDevice { id: "10de:2204".into(), class: "030000".into() },
            ]
        );
        assert!(pci_devices(&root.path().join("absent"), None).is_empty());
    }

    #[test]
    fn a_launcher_for_one_numa_node_offers_the_devices_attached_to_it_and_those_of_no_known_node() {
        let root = tempfile::tempdir().unwrap();
        let devices = root.path().join("bus/pci/devices");
        for (addr, device, node) in [
            ("0000:01:00.0", "0x0001", Some("0")),
            ("0000:81:00.0", "0x0002", Some("1")),
            ("0000:00:02.0", "0x0003", Some("-1")),
            ("0000:00:03.0", "0x0004", None),
        ] {
            write(&devices.join(addr).join("vendor"), "0x15b3\n");
            write(&devices.join(addr).join("device"), &format!("{device}\n"));
            write(&devices.join(addr).join("class"), "0x020000\n");
            if let Some(node) = node {
                write(&devices.join(addr).join("numa_node"), &format!("{node}\n"));
            }
        }
        let ids = |n| pci_devices(root.path(), n).into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(None), ["15b3:0003", "15b3:0004", "15b3:0001", "15b3:0002"]);
        assert_eq!(ids(Some(0)), ["15b3:0003", "15b3:0004", "15b3:0001"]);
        assert_eq!(ids(Some(1)), ["15b3:0003", "15b3:0004", "15b3:0002"]);
    }

    #[test]
    fn foreign_architectures_are_the_enabled_qemu_entries_of_binfmt_misc() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("qemu-arm"), "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\n");
        write(&root.path().join("qemu-riscv64"), "enabled\ninterpreter /usr/libexec/qemu-binfmt/riscv64-binfmt-P\n");
        write(&root.path().join("qemu-mips"), "disabled\n");
        write(&root.path().join("python3.11"), "enabled\n");
        write(&root.path().join("status"), "enabled\n");
        write(&root.path().join(format!("qemu-{}", std::env::consts::ARCH)), "enabled\n");
        assert_eq!(foreign_arches(root.path()), vec!["arm".to_owned(), "riscv64".to_owned()]);
        assert!(foreign_arches(&root.path().join("absent")).is_empty());
    }

    #[test]
    fn cached_images_are_the_directories_under_the_image_dirs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/alpine")).unwrap();
        std::fs::create_dir_all(root.path().join("a/busybox")).unwrap();
        write(&root.path().join("a/README"), "not an image");
        std::fs::create_dir_all(root.path().join("b/debian")).unwrap();
        let images = cached_images(&[root.path().join("a"), root.path().join("b"), root.path().join("none")]);
        let names: Vec<&str> = images.iter().map(|i| i.rsplit('/').next().unwrap()).collect();
        assert_eq!(names, ["alpine", "busybox", "debian"]);
        assert!(images.iter().all(|i| i.starts_with('/')));
    }

    #[test]
    fn the_cpu_score_is_measured_once_per_cpu_model_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cpu-score");
        let first = cpu_score(&cache, "Test CPU @ 3.0GHz");
        assert!(first > 0);
        std::fs::write(&cache, "Test CPU @ 3.0GHz\n4242\n").unwrap();
        assert_eq!(cpu_score(&cache, "Test CPU @ 3.0GHz"), 4242, "read from the cache, not measured");
        let other = cpu_score(&cache, "Another CPU");
        assert_ne!(other, 4242, "a new CPU model is measured again");
        assert!(std::fs::read_to_string(&cache).unwrap().starts_with("Another CPU\n"));
        assert_eq!(score_of(40_000, Duration::from_secs(1)), 1000);
        assert_eq!(score_of(80_000, Duration::from_secs(1)), 2000);
    }
}
