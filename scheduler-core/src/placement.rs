//! Choosing a node, and explaining why none fits.
//!
//! - **spread** (default): the open node with the most free memory that fits; equal nodes take
//!   turns, since each placement lowers the chosen node's free memory.
//! - **binpack**: the open node with the least free memory that still fits.
//! - **firstfit**: ciao's rule, for comparison: nodes in a fixed order, the first that fits,
//!   skipping the most recently used one when another fits.
//!
//! Spread and bin-pack walk an index of open nodes ordered by free memory — the index of the
//! rarest required label when the START requires labels — so the first node looked at usually
//! fits, whatever the cluster's size.

use std::collections::BTreeMap;

use ssntp::Uuid;

use super::nodes::{Misfit, Need, Node, NodeTable};
use super::Config;

/// Placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Most free memory first: even load.
    Spread,
    /// Least free memory that fits: few busy nodes, others left empty.
    Binpack,
    /// ciao's first fit, skipping the most recently used node.
    Firstfit,
}

/// The node for a START, if any fits. `not_on` is left out (a node that just refused it).
pub fn choose(
    nodes: &NodeTable,
    need: &Need<'_>,
    cfg: &Config,
    mru: Option<Uuid>,
    not_on: Option<Uuid>,
) -> Option<Uuid> {
    let fits = |n: &&super::nodes::Node| Some(n.uuid) != not_on && n.check(need, cfg).is_ok();
    if let Some(id) = need.requirements.node_id {
        return nodes.get(&id).filter(fits).map(|n| n.uuid);
    }
    if ranks(need, cfg) {
        return choose_ranked(nodes, need, cfg, mru, &fits);
    }
    match cfg.policy {
        Policy::Spread => nodes.most_free(&need.requirements.labels).find(fits).map(|n| n.uuid),
        Policy::Binpack => nodes.least_free_above(&need.requirements.labels, need.charge_mb).find(fits).map(|n| n.uuid),
        Policy::Firstfit => {
            let mut fallback = None;
            for node in nodes.iter().filter(fits) {
                if Some(node.uuid) != mru {
                    return Some(node.uuid);
                }
                fallback = Some(node.uuid);
            }
            fallback
        }
    }
}

/// Whether the START orders the nodes that fit by [`rank`] before the policy's order: it has
/// preferences, or it is big enough for the strong workers.
fn ranks(need: &Need<'_>, cfg: &Config) -> bool {
    !need.requirements.preferences.is_empty() || cfg.strong_workers_mb.is_some_and(|least| need.charge_mb >= least)
}

/// How much a node is preferred for the START: the preferences it meets, then (for a big job
/// with strong workers on) its CPU score. Higher first; it never excludes a node.
pub fn rank(node: &Node, need: &Need<'_>, cfg: &Config) -> (u32, u32) {
    let strong = cfg.strong_workers_mb.is_some_and(|least| need.charge_mb >= least);
    (need.requirements.preferences.score(&node.report), if strong { node.report.cpu_score.unwrap_or(0) } else { 0 })
}

/// The best-ranked node that fits, ties broken by the policy's order (firstfit: the first
/// that is not the most recently used).
fn choose_ranked(
    nodes: &NodeTable,
    need: &Need<'_>,
    cfg: &Config,
    mru: Option<Uuid>,
    fits: &dyn Fn(&&Node) -> bool,
) -> Option<Uuid> {
    let in_order: Box<dyn Iterator<Item = &Node>> = match cfg.policy {
        Policy::Spread => Box::new(nodes.most_free(&need.requirements.labels)),
        Policy::Binpack => Box::new(nodes.least_free_above(&need.requirements.labels, need.charge_mb)),
        Policy::Firstfit => Box::new(nodes.iter()),
    };
    let mut best: Option<((u32, u32), bool, Uuid)> = None;
    for node in in_order.filter(|n| fits(n)) {
        let key = (rank(node, need, cfg), Some(node.uuid) != mru || cfg.policy != Policy::Firstfit);
        if best.is_none_or(|(r, fresh, _)| (key.0, key.1) > (r, fresh)) {
            best = Some((key.0, key.1, node.uuid));
        }
    }
    best.map(|(_, _, id)| id)
}

/// Why no node this scheduler knows could ever take the START, not even empty (a 64-vCPU job
/// on 2-CPU nodes, an `oci` job where no node offers it, a label nobody has): the counted
/// reasons, or `None` when some node could, or when no node has reported yet (one may come).
pub fn never_fits(nodes: &NodeTable, need: &Need<'_>, cfg: &Config) -> Option<String> {
    let known: Vec<&Node> = nodes.iter().filter(|n| !n.lost && n.report.cpus_online > 0).collect();
    if known.is_empty() {
        return None;
    }
    let mut counts: BTreeMap<Misfit, usize> = BTreeMap::new();
    for node in &known {
        match node.could_ever_fit(need, cfg) {
            Ok(()) => return None,
            Err(misfit) => *counts.entry(misfit).or_default() += 1,
        }
    }
    let parts: Vec<String> = counts.iter().map(|(m, n)| format!("{n} {}", m.words_for(need))).collect();
    Some(format!(
        "0 of {} nodes could ever fit it, even empty: {} (it needs {} vCPUs and {} MiB)",
        known.len(),
        parts.join(", "),
        need.vcpus,
        need.charge_mb
    ))
}

/// How many nodes fit now, and why each of the others does not.
fn misfits(nodes: &NodeTable, need: &Need<'_>, cfg: &Config) -> (usize, BTreeMap<Misfit, usize>) {
    let mut counts: BTreeMap<Misfit, usize> = BTreeMap::new();
    let mut fit = 0;
    for node in nodes.iter() {
        match node.check(need, cfg) {
            Ok(()) => fit += 1,
            Err(misfit) => *counts.entry(misfit).or_default() += 1,
        }
    }
    (fit, counts)
}

/// Why no node fits, counted over the nodes: "0 of 12 nodes fit: 7 insufficient memory, 3 load
/// above threshold, 2 maintenance".
pub fn explain(nodes: &NodeTable, need: &Need<'_>, cfg: &Config) -> String {
    let (fit, counts) = misfits(nodes, need, cfg);
    words_of(nodes.len(), fit, &counts, need)
}

fn words_of(nodes: usize, fit: usize, counts: &BTreeMap<Misfit, usize>, need: &Need<'_>) -> String {
    if nodes == 0 {
        return "no launcher has connected".to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(m, n)| format!("{n} {}", m.words_for(need))).collect();
    let mut text = format!("{fit} of {nodes} nodes fit");
    if !parts.is_empty() {
        text.push_str(": ");
        text.push_str(&parts.join(", "));
    }
    text
}

/// A dry run of placing `count` instances of `need` on the nodes as they are now: where each
/// would go, as the policy chooses, and what would make the rest fit. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Planned {
    /// Nodes that would take one instance now.
    pub fit_now: usize,
    /// Node and how many instances it would take, in the order the policy fills them.
    pub placed: Vec<(Uuid, u32)>,
    /// Instances no node would take now.
    pub unplaced: u32,
    /// Counted over the nodes, as [`explain`] says it.
    pub explanation: String,
    /// Why no node could take one even empty, as [`never_fits`] says it.
    pub never: Option<String>,
    /// What would make the unplaced ones fit, one line per reason.
    pub advice: Vec<String>,
}

/// See [`Planned`].
pub fn plan(nodes: &NodeTable, need: &Need<'_>, cfg: &Config, count: u32) -> Planned {
    let (fit_now, counts) = misfits(nodes, need, cfg);
    let explanation = words_of(nodes.len(), fit_now, &counts, need);
    let mut rooms: Vec<(&Node, u32)> = nodes
        .iter()
        .filter(|n| need.requirements.node_id.is_none_or(|id| id == n.uuid))
        .map(|n| (n, n.room(need, cfg, count)))
        .filter(|(_, room)| *room > 0)
        .collect();
    let mut placed: Vec<(Uuid, u32)> = Vec::new();
    let mut left = count;
    let rank_of = |n: &Node| if ranks(need, cfg) { rank(n, need, cfg) } else { (0, 0) };
    match cfg.policy {
        Policy::Spread => {
            // The next instance goes to the node with the most free memory after the ones
            // already given to it, as successive placements would choose (ties: the larger
            // UUID, as the index of free memory walks them).
            // Preferences and strong workers rank first (they never change as instances go).
            let mut heap: std::collections::BinaryHeap<((u32, u32), u64, Uuid, u32)> =
                rooms.iter().map(|(n, room)| (rank_of(n), n.mem_free(cfg), n.uuid, *room)).collect();
            let mut given: BTreeMap<Uuid, u32> = BTreeMap::new();
            let mut order: Vec<Uuid> = Vec::new();
            while left > 0 {
                let Some((ranked, free, node, room)) = heap.pop() else { break };
                let n = given.entry(node).or_insert_with(|| {
                    order.push(node);
                    0
                });
                *n += 1;
                left -= 1;
                if room > 1 {
                    heap.push((ranked, free.saturating_sub(need.charge_mb), node, room - 1));
                }
            }
            placed = order.into_iter().map(|id| (id, given[&id])).collect();
        }
        Policy::Binpack | Policy::Firstfit => {
            if cfg.policy == Policy::Binpack {
                rooms.sort_by_key(|(n, _)| (n.mem_free(cfg), n.uuid));
            }
            // Best-ranked first; a stable sort keeps the policy's order within a rank.
            rooms.sort_by_key(|(n, _)| std::cmp::Reverse(rank_of(n)));
            for (node, room) in rooms {
                if left == 0 {
                    break;
                }
                let take = room.min(left);
                placed.push((node.uuid, take));
                left -= take;
            }
        }
    }
    let never = never_fits(nodes, need, cfg);
    let advice = if left == 0 { Vec::new() } else { advise(nodes, need, cfg, &counts, count - left, left) };
    Planned { fit_now, placed, unplaced: left, explanation, never, advice }
}

/// One suggestion per reason nodes gave, with the figures that make it concrete.
fn advise(
    nodes: &NodeTable,
    need: &Need<'_>,
    cfg: &Config,
    counts: &BTreeMap<Misfit, usize>,
    placed: u32,
    left: u32,
) -> Vec<String> {
    let mut out = Vec::new();
    if nodes.is_empty() {
        out.push(
            "start a launcher (drover-launcher --server SCHEDULER …); the work waits in the queue until one connects"
                .to_owned(),
        );
        return out;
    }
    if placed > 0 {
        out.push(format!("{placed} would start now; the other {left} would wait in the queue until room frees"));
    }
    let req = need.requirements;
    for (misfit, n) in counts {
        let line = match misfit {
            Misfit::Memory | Misfit::AvailableMemory => {
                let most = nodes.iter().filter(|n| n.is_open(cfg) || n.check(need, cfg) == Err(Misfit::Busy)).map(|n| {
                    if *misfit == Misfit::Memory { n.mem_free(cfg) } else { n.report.mem_available_mb.saturating_sub(n.unconfirmed_mb()) }
                }).max().unwrap_or(0);
                format!(
                    "{n} nodes lack memory: each instance is charged {} MiB and the most free on a ready node is {most} MiB; ask for less (mem_mb), free memory (drover ps, drover stop), add nodes, or raise the scheduler's --mem-overcommit",
                    need.charge_mb
                )
            }
            Misfit::Cpu => {
                let most = nodes
                    .iter()
                    .filter(|n| n.is_open(cfg))
                    .map(|n| n.cpu_capacity(cfg).saturating_sub(n.cpu_used()))
                    .max()
                    .unwrap_or(0);
                format!(
                    "{n} nodes lack vCPUs: each instance needs {} and the most free on a ready node is {most}; ask for fewer (vcpus), add nodes, or raise the scheduler's --cpu-overcommit",
                    need.vcpus
                )
            }
            Misfit::Load => {
                let lowest = nodes
                    .iter()
                    .filter(|n| n.check(need, cfg) == Err(Misfit::Load))
                    .map(Node::load_per_cpu)
                    .fold(f64::INFINITY, f64::min);
                format!(
                    "{n} nodes are busy (load per CPU above the scheduler's --load-threshold {}; the lowest of them is {lowest:.2}): wait for their load to drop, or raise --load-threshold",
                    cfg.load_threshold
                )
            }
            Misfit::Maintenance => format!("{n} nodes are in maintenance: drover node restore NODE takes one back"),
            Misfit::CacheWays => {
                let most = nodes
                    .iter()
                    .filter(|n| n.is_open(cfg))
                    .map(|n| u64::from(n.report.cache_ways).saturating_sub(n.instances.cache_ways()))
                    .max()
                    .unwrap_or(0);
                format!(
                    "{n} nodes lack cache ways: each instance asks for {} and the most free on a ready node is {most}; ask for fewer (cache_ways), or wait for others to end",
                    req.cache_ways
                )
            }
            Misfit::Disk => {
                let most = nodes.iter().filter(|n| n.is_open(cfg)).map(Node::disk_free).max().unwrap_or(0);
                format!(
                    "{n} nodes lack disk: each instance asks for {} MiB and the most free on a ready node is {most} MiB; ask for less (disk_mb), free disk on the nodes (drover rm finished instances), or add nodes",
                    req.disk_mb
                )
            }
            Misfit::Reserved => format!(
                "{n} nodes are reserved for a big job that waits for room there (the scheduler's --reserve-big): they take work again once it starts"
            ),
            Misfit::Full => format!("{n} nodes report full (their launcher's --max-instances or memory): they take work again as theirs ends"),
            Misfit::Disconnected | Misfit::Lost | Misfit::Silent | Misfit::NotReady => format!(
                "{n} nodes are {}: see drover node ls, and start their launchers again",
                misfit.words()
            ),
            Misfit::Features => format!(
                "{n} nodes lack the features it requires ({}): drop the requirement, or run it where a launcher offers them",
                req.features.join(", ")
            ),
            Misfit::Labels => {
                let labels: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{n} nodes lack the labels it requires ({}): start launchers with --label {}", labels.join(", "), labels.join(" --label "))
            }
            Misfit::Backend => format!("{n} nodes do not offer the {} backend: start a launcher with --backend {}", need.backend, need.backend),
            Misfit::Arch => format!(
                "{n} nodes are another architecture than {} and do not run it through qemu-user (apt-get install qemu-user-binfmt on them)",
                req.arch.as_deref().unwrap_or("?")
            ),
            Misfit::Pci => format!(
                "{n} nodes lack the PCI devices it requires ({}): see the devices each node reports with drover node show",
                req.pci.join(", ")
            ),
            Misfit::CpuScore => {
                let best = nodes.iter().filter_map(|n| n.report.cpu_score).max().unwrap_or(0);
                format!(
                    "{n} nodes are slower than its min_cpu_score {} (the fastest node scores {best}): lower it, or add faster nodes",
                    req.min_cpu_score.unwrap_or(0)
                )
            }
            Misfit::Hostname => format!("{n} nodes are not host {}, which it is pinned to", req.hostname.as_deref().unwrap_or("?")),
            Misfit::NodeId => continue,
            Misfit::Numa => format!("{n} nodes have no per-NUMA launcher (drover-launcher --numa-node N), which numa_local needs"),
            Misfit::Busy => continue,
        };
        out.push(line);
    }
    out
}
