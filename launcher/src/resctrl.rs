//! Last-level cache ways as a resource (ciao's "cache quality of service capacity"): where the
//! kernel offers cache allocation (Intel RDT, the `resctrl` file system at `/sys/fs/resctrl`),
//! the node reports how many L3 ways workloads may have, and an instance that asks for
//! `cache_ways = N` gets N contiguous ways of its own — a resctrl group `drover-<uuid>` whose
//! schemata give it those ways in every cache domain, which its shim joins — so a neighbour
//! cannot evict its working set. Which ways an instance gets is decided here, purely.

use std::path::{Path, PathBuf};

/// What the node's L3 cache allocation offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// The resctrl mount.
    pub root: PathBuf,
    /// Ways (bits of `info/L3/cbm_mask`).
    pub ways: u32,
    /// Cache domains (the L3 ids of the default group's schemata).
    pub domains: Vec<String>,
    /// Groups the hardware can tell apart (`info/L3/num_closids`; the default group is one).
    pub closids: u32,
}

/// The cache allocation under `root`, if it is mounted and offers L3.
pub fn read(root: &Path) -> Option<Cache> {
    let text = |f: &str| std::fs::read_to_string(root.join(f)).ok();
    let mask = u64::from_str_radix(text("info/L3/cbm_mask")?.trim(), 16).ok()?;
    let closids = text("info/L3/num_closids")?.trim().parse().ok()?;
    let schemata = text("schemata")?;
    let l3 = schemata.lines().find_map(|l| l.trim().strip_prefix("L3:"))?;
    let domains = l3.split(';').filter_map(|d| d.split_once('=').map(|(id, _)| id.trim().to_owned())).collect();
    Some(Cache { root: root.to_owned(), ways: mask.count_ones(), domains, closids })
}

/// The first `n` contiguous ways free of `taken` (bit masks) among `ways`, as a mask: cache
/// allocation needs contiguous bits. `None` when there is no such run.
pub fn allocate(ways: u32, taken: impl IntoIterator<Item = u64>, n: u32) -> Option<u64> {
    if n == 0 || n > ways || ways > 64 {
        return None;
    }
    let used = taken.into_iter().fold(0u64, |a, m| a | m);
    let run = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    (0..=ways - n).map(|shift| run << shift).find(|m| m & used == 0)
}

/// The schemata line that gives `mask` in every domain (`L3:0=00f;1=00f`).
pub fn schemata(cache: &Cache, mask: u64) -> String {
    let width = usize::try_from(cache.ways.div_ceil(4)).unwrap_or(1);
    let parts: Vec<String> = cache.domains.iter().map(|d| format!("{d}={mask:0width$x}")).collect();
    format!("L3:{}\n", parts.join(";"))
}

/// The mask a group's schemata gives (its first domain's), to rebuild what is taken after a
/// restart.
pub fn mask_of(schemata: &str) -> Option<u64> {
    let l3 = schemata.lines().find_map(|l| l.trim().strip_prefix("L3:"))?;
    let (_, mask) = l3.split(';').next()?.split_once('=')?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

/// The group of instance `id` under `root`.
pub fn group(root: &Path, id: &str) -> PathBuf {
    root.join(format!("drover-{id}"))
}

/// Removes a group (its tasks fall back to the default group). A real resctrl group goes with
/// rmdir; a plain directory (a test's tree) with its files.
pub fn remove(dir: &Path) {
    if std::fs::remove_dir(dir).is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_cache_is_read_from_resctrl_and_a_group_gets_its_ways_in_every_domain() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("info/L3")).unwrap();
        std::fs::write(root.path().join("info/L3/cbm_mask"), "fff\n").unwrap();
        std::fs::write(root.path().join("info/L3/num_closids"), "16\n").unwrap();
        std::fs::write(root.path().join("schemata"), "    L3:0=fff;1=fff\n    MB:0=100;1=100\n").unwrap();
        let cache = read(root.path()).unwrap();
        assert_eq!((cache.ways, cache.closids, cache.domains.clone()), (12, 16, vec!["0".to_owned(), "1".to_owned()]));
        let first = allocate(12, [], 4).unwrap();
        let second = allocate(12, [first], 4).unwrap();
        assert_eq!(schemata(&cache, second), "L3:0=0f0;1=0f0\n");
        assert_eq!(mask_of(&schemata(&cache, second)), Some(0x0f0));
        assert_eq!(allocate(12, [first, second], 5), None, "4 ways left");
        assert_eq!(allocate(12, [0x0f0], 4), Some(0x00f), "the first free run");
        assert_eq!(allocate(12, [0x0f0], 5), None, "8 ways free, but no 5 in a row");
        assert_eq!(allocate(12, [0x0f0, 0x00f], 4), Some(0xf00));
        assert!(read(&root.path().join("absent")).is_none());
    }

    proptest! {
        #[test]
        fn allocations_are_contiguous_disjoint_and_found_whenever_a_run_is_free(
            ways in 1u32..=20,
            asks in prop::collection::vec(1u32..8, 0..12),
        ) {
            let mut taken: Vec<u64> = Vec::new();
            for n in asks {
                let used = taken.iter().fold(0u64, |a, m| a | m);
                let free_run = (0..ways).any(|s| s + n <= ways && (((1u64 << n) - 1) << s) & used == 0);
                match allocate(ways, taken.iter().copied(), n) {
                    Some(mask) => {
                        prop_assert_eq!(mask.count_ones(), n);
                        prop_assert_eq!(mask >> mask.trailing_zeros(), (1u64 << n) - 1, "contiguous");
                        prop_assert_eq!(mask & used, 0);
                        prop_assert!(mask >> ways == 0, "within the cache");
                        taken.push(mask);
                    }
                    None => prop_assert!(!free_run),
                }
            }
        }
    }
}
