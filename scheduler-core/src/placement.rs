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

/// Why no node fits, counted over the nodes: "0 of 12 nodes fit: 7 insufficient memory, 3 load
/// above threshold, 2 maintenance".
pub fn explain(nodes: &NodeTable, need: &Need<'_>, cfg: &Config) -> String {
    if nodes.is_empty() {
        return "no launcher has connected".to_owned();
    }
    let mut counts: BTreeMap<Misfit, usize> = BTreeMap::new();
    let mut fit = 0;
    for node in nodes.iter() {
        match node.check(need, cfg) {
            Ok(()) => fit += 1,
            Err(misfit) => *counts.entry(misfit).or_default() += 1,
        }
    }
    let parts: Vec<String> = counts.iter().map(|(m, n)| format!("{n} {}", m.words_for(need))).collect();
    let mut text = format!("{fit} of {} nodes fit", nodes.len());
    if !parts.is_empty() {
        text.push_str(": ");
        text.push_str(&parts.join(", "));
    }
    text
}
