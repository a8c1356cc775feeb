//! The node table: what each launcher offers, what the scheduler has placed on it, and whether a
//! START fits it.
//!
//! Capacity is `cpus_online × cpu_overcommit` vCPUs and `mem_total_mb × mem_overcommit` MiB.
//! Usage counts every instance the scheduler placed on the node (its *charge*: the request, or
//! the memory estimate) from the moment of placement until the node reports it gone, plus
//! whatever the node reports as allocated beyond what the scheduler knows (instances it placed
//! before a restart). So a burst of STARTs between two reports never over-places, and a stale
//! report can only make the scheduler more careful, never less.
//!
//! Placed instances the node has not yet confirmed (in STATS or with INSTANCE_STARTED) are also
//! subtracted from the node's reported available memory: the speculative reservation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ssntp::payload::{NodeReport, Requirements};
use ssntp::{Status, Uuid};

use super::Config;

/// An instance the scheduler placed on a node (or learned of from STATS).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// vCPUs requested.
    pub vcpus: u32,
    /// Memory requested, MiB.
    pub request_mb: u64,
    /// Memory charged against the node, MiB (≤ request).
    pub charge_mb: u64,
    /// Workload, for the memory estimate.
    pub workload: Option<Uuid>,
    /// Whether the node has reported it (STATS or INSTANCE_STARTED).
    pub confirmed: bool,
}

/// A launcher as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its connection, while connected.
    pub conn_id: Option<u64>,
    /// Its last status (CONNECTED until the first report).
    pub status: Status,
    /// Evacuated by a controller: no new work until RESTORE.
    pub maintenance: bool,
    /// Declared lost (NODE_LOST sent).
    pub lost: bool,
    /// Its last capacity report.
    pub report: NodeReport,
    /// When a frame last arrived from it, or when it disconnected (monotonic ms).
    pub last_seen_ms: u64,
    /// Instances believed to be on it.
    pub instances: HashMap<Uuid, Placed>,
    /// STARTs placed on it since it connected.
    pub starts: u64,
}

/// Why a START does not fit a node, in the order of the checks: the node's state first (a node
/// that has not reported has no features to compare), then the START's requirements, then
/// load and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Misfit {
    /// The node is not connected.
    Disconnected,
    /// The node was declared lost.
    Lost,
    /// Evacuated or reported MAINTENANCE.
    Maintenance,
    /// Reported FULL.
    Full,
    /// Has not reported READY (nothing else about it is known yet).
    NotReady,
    /// Pinned to another node.
    NodeId,
    /// Pinned to another host name.
    Hostname,
    /// A required label is missing or different.
    Labels,
    /// Another architecture.
    Arch,
    /// A required feature is missing.
    Features,
    /// The backend is not offered.
    Backend,
    /// Needs a per-NUMA launcher.
    Numa,
    /// Load average per CPU above the threshold.
    Load,
    /// Not enough vCPUs within the overcommit bound.
    Cpu,
    /// Not enough memory within the overcommit bound.
    Memory,
    /// Not enough memory actually available right now.
    AvailableMemory,
}

impl Misfit {
    /// The words used in explanations.
    pub const fn words(self) -> &'static str {
        match self {
            Self::NodeId => "not the requested node",
            Self::Hostname => "not the requested host",
            Self::Labels => "missing labels",
            Self::Arch => "other architecture",
            Self::Features => "missing features",
            Self::Backend => "backend not offered",
            Self::Numa => "not NUMA-local",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
            Self::Maintenance => "maintenance",
            Self::Full => "full",
            Self::NotReady => "not ready",
            Self::Load => "load above threshold",
            Self::Cpu => "insufficient vCPUs",
            Self::Memory => "insufficient memory",
            Self::AvailableMemory => "insufficient available memory",
        }
    }

    /// Whether this node could take the START later without the START changing (capacity or
    /// state), as opposed to never (a requirement it does not meet).
    pub const fn is_transient(self) -> bool {
        !matches!(
            self,
            Self::NodeId | Self::Hostname | Self::Labels | Self::Arch | Self::Features | Self::Backend | Self::Numa
        )
    }
}

/// What a START needs, resolved for placement.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    /// Placement constraints.
    pub requirements: &'a Requirements,
    /// Backend name (`process`, `oci`, `sim`).
    pub backend: &'a str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory to charge, MiB.
    pub charge_mb: u64,
}

impl Node {
    /// A node that just connected.
    pub fn new(uuid: Uuid, conn_id: u64, now_ms: u64) -> Self {
        Self {
            uuid,
            conn_id: Some(conn_id),
            status: Status::Connected,
            maintenance: false,
            lost: false,
            report: NodeReport { node_uuid: uuid, ..NodeReport::default() },
            last_seen_ms: now_ms,
            instances: HashMap::new(),
            starts: 0,
        }
    }

    /// vCPUs within the overcommit bound.
    pub fn cpu_capacity(&self, cfg: &Config) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small, non-negative
        let cap = (f64::from(self.report.cpus_online) * cfg.cpu_overcommit).floor() as u64;
        cap
    }

    /// Memory within the overcommit bound, MiB.
    pub fn mem_capacity(&self, cfg: &Config) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative, < 2^53
        let cap = (self.report.mem_total_mb as f64 * cfg.mem_overcommit).floor() as u64;
        cap
    }

    /// vCPUs in use: the scheduler's instances plus what the node reports beyond them.
    pub fn cpu_used(&self) -> u64 {
        let known: u64 = self.instances.values().map(|p| u64::from(p.vcpus)).sum();
        known + u64::from(self.report.vcpus_allocated).saturating_sub(known)
    }

    /// Memory in use, MiB: charges of the scheduler's instances plus what the node reports as
    /// allocated beyond their requests.
    pub fn mem_used(&self) -> u64 {
        let charged: u64 = self.instances.values().map(|p| p.charge_mb).sum();
        let requested: u64 = self.instances.values().map(|p| p.request_mb).sum();
        charged + self.report.mem_allocated_mb.unwrap_or(0).saturating_sub(requested)
    }

    /// Memory charged to instances the node has not reported yet, MiB.
    pub fn unconfirmed_mb(&self) -> u64 {
        self.instances.values().filter(|p| !p.confirmed).map(|p| p.charge_mb).sum()
    }

    /// Free memory within the overcommit bound, MiB (the placement index key).
    pub fn mem_free(&self, cfg: &Config) -> u64 {
        self.mem_capacity(cfg).saturating_sub(self.mem_used())
    }

    /// Load average per online CPU.
    pub fn load_per_cpu(&self) -> f64 {
        self.report.load / f64::from(self.report.cpus_online.max(1))
    }

    /// Whether the node may take new work at all (before looking at the START).
    pub fn is_open(&self) -> bool {
        self.conn_id.is_some() && !self.lost && !self.maintenance && self.status == Status::Ready
    }

    /// Whether the START fits, and if not, the first reason why not.
    ///
    /// # Errors
    /// The [`Misfit`].
    pub fn check(&self, need: &Need<'_>, cfg: &Config) -> Result<(), Misfit> {
        if self.conn_id.is_none() {
            return Err(Misfit::Disconnected);
        }
        if self.lost {
            return Err(Misfit::Lost);
        }
        match self.status {
            _ if self.maintenance => return Err(Misfit::Maintenance),
            Status::Maintenance => return Err(Misfit::Maintenance),
            Status::Full => return Err(Misfit::Full),
            Status::Ready => {}
            Status::Connected | Status::Offline => return Err(Misfit::NotReady),
        }
        let req = need.requirements;
        if req.node_id.is_some_and(|id| id != self.uuid) {
            return Err(Misfit::NodeId);
        }
        if req.hostname.as_ref().is_some_and(|h| *h != self.report.hostname) {
            return Err(Misfit::Hostname);
        }
        if req.labels.iter().any(|(k, v)| self.report.labels.get(k) != Some(v)) {
            return Err(Misfit::Labels);
        }
        if req.arch.as_ref().is_some_and(|a| *a != self.report.arch) {
            return Err(Misfit::Arch);
        }
        if req.features.iter().any(|f| !self.report.features.contains(f)) {
            return Err(Misfit::Features);
        }
        if !self.report.features.iter().any(|f| f == need.backend) {
            return Err(Misfit::Backend);
        }
        if req.numa_local && self.report.numa_node.is_none() {
            return Err(Misfit::Numa);
        }
        if self.load_per_cpu() > cfg.load_threshold {
            return Err(Misfit::Load);
        }
        if self.cpu_used() + u64::from(need.vcpus) > self.cpu_capacity(cfg) {
            return Err(Misfit::Cpu);
        }
        if self.mem_used() + need.charge_mb > self.mem_capacity(cfg) {
            return Err(Misfit::Memory);
        }
        if need.charge_mb + self.unconfirmed_mb() > self.report.mem_available_mb {
            return Err(Misfit::AvailableMemory);
        }
        Ok(())
    }
}

/// All known nodes, with an index of the open ones by free memory.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: BTreeMap<Uuid, Node>,
    /// (free memory MiB, node) of every open node.
    by_free: BTreeSet<(u64, Uuid)>,
}

impl NodeTable {
    /// A node.
    pub fn get(&self, uuid: &Uuid) -> Option<&Node> {
        self.nodes.get(uuid)
    }

    /// Every node in UUID order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Number of nodes (lost and disconnected ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Open nodes, most free memory first.
    pub fn most_free(&self) -> impl Iterator<Item = &Node> {
        self.by_free.iter().rev().filter_map(|(_, u)| self.nodes.get(u))
    }

    /// Open nodes with at least `mem_mb` free, least free first.
    pub fn least_free_above(&self, mem_mb: u64) -> impl Iterator<Item = &Node> {
        self.by_free.range((mem_mb, Uuid::nil())..).filter_map(|(_, u)| self.nodes.get(u))
    }

    /// Inserts or replaces a node.
    pub fn insert(&mut self, node: Node, cfg: &Config) {
        let uuid = node.uuid;
        self.remove(&uuid, cfg);
        if node.is_open() {
            self.by_free.insert((node.mem_free(cfg), uuid));
        }
        self.nodes.insert(uuid, node);
    }

    /// Removes a node.
    pub fn remove(&mut self, uuid: &Uuid, cfg: &Config) -> Option<Node> {
        let node = self.nodes.remove(uuid)?;
        if node.is_open() {
            self.by_free.remove(&(node.mem_free(cfg), *uuid));
        }
        Some(node)
    }

    /// Changes a node and keeps the index true. Returns what `change` returned, or `None` for
    /// an unknown node.
    pub fn update<T>(&mut self, uuid: &Uuid, cfg: &Config, change: impl FnOnce(&mut Node) -> T) -> Option<T> {
        let node = self.nodes.get_mut(uuid)?;
        if node.is_open() {
            self.by_free.remove(&(node.mem_free(cfg), *uuid));
        }
        let result = change(node);
        if node.is_open() {
            self.by_free.insert((node.mem_free(cfg), *uuid));
        }
        Some(result)
    }

    /// Rebuilds the index (after a configuration change alters every capacity).
    pub fn reindex(&mut self, cfg: &Config) {
        self.by_free = self.nodes.values().filter(|n| n.is_open()).map(|n| (n.mem_free(cfg), n.uuid)).collect();
    }

    /// Finds the node and instance an instance UUID is placed on.
    pub fn node_of(&self, instance: &Uuid) -> Option<Uuid> {
        self.nodes.values().find(|n| n.instances.contains_key(instance)).map(|n| n.uuid)
    }
}
