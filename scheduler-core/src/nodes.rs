//! The node table: what each launcher offers, what the scheduler has placed on it, and whether a
//! START fits it.
//!
//! Capacity is `cpus_online × cpu overcommit` vCPUs and `mem_total_mb × memory overcommit` MiB,
//! and whether work fits it is [`drover_model::fit`], the rule launchers admit by too.
//! Usage counts every instance the scheduler placed on the node (its *charge*: the request, or
//! the memory estimate) from the moment of placement until the node reports it gone, plus
//! whatever the node reports as allocated beyond what the scheduler knows (instances it placed
//! before a restart). So a burst of STARTs between two reports never over-places, and a stale
//! report can only make the scheduler more careful, never less.
//!
//! Placed instances the node has not yet confirmed (in STATS or with INSTANCE_STARTED) are also
//! subtracted from the node's reported available memory: the speculative reservation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_model::NodeStatus;
use drover_model::{Capacity, Demand, Shortfall, Usage};
use ssntp::payload::{InstanceStat, InstanceState, NodeReport, Requirements, Start};
use ssntp::Uuid;

use super::Config;
use crate::estimate::Estimator;

/// An instance the scheduler placed on a node (or learned of from STATS).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// vCPUs requested.
    pub vcpus: u32,
    /// Memory requested, MiB.
    pub request_mb: u64,
    /// Memory charged against the node, MiB (≤ request).
    pub charge_mb: u64,
    /// The anchor tax charged beside it: what its backend's machinery takes on that node, MiB.
    pub tax_mb: u64,
    /// Last-level cache ways it holds alone.
    pub cache_ways: u32,
    /// Disk requested for its working directory, MiB: taken from the node's reported free disk
    /// until the node reports the instance (its files then count in the node's own figure).
    pub disk_mb: u64,
    /// Workload, for the memory estimate.
    pub workload: Option<Uuid>,
    /// Whether the node has reported it (STATS or INSTANCE_STARTED).
    pub confirmed: bool,
}

/// The instances on a node with their sums kept up to date, so that a fit check costs the same
/// whether the node runs one instance or a thousand.
#[derive(Debug, Clone, Default)]
pub struct Charges {
    map: HashMap<Uuid, Placed>,
    sums: Sums,
}

/// What the instances of a node add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    vcpus: u64,
    charge_mb: u64,
    tax_mb: u64,
    request_mb: u64,
    unconfirmed_mb: u64,
    unconfirmed: u64,
    unconfirmed_disk_mb: u64,
    cache_ways: u64,
}

impl Sums {
    fn add(&mut self, p: &Placed) {
        self.vcpus += u64::from(p.vcpus);
        self.charge_mb += p.charge_mb;
        self.tax_mb += p.tax_mb;
        self.request_mb += p.request_mb;
        self.cache_ways += u64::from(p.cache_ways);
        if !p.confirmed {
            self.unconfirmed_mb += p.charge_mb + p.tax_mb;
            self.unconfirmed += 1;
            self.unconfirmed_disk_mb += p.disk_mb;
        }
    }

    fn sub(&mut self, p: &Placed) {
        self.vcpus -= u64::from(p.vcpus);
        self.charge_mb -= p.charge_mb;
        self.tax_mb -= p.tax_mb;
        self.request_mb -= p.request_mb;
        self.cache_ways -= u64::from(p.cache_ways);
        if !p.confirmed {
            self.unconfirmed_mb -= p.charge_mb + p.tax_mb;
            self.unconfirmed -= 1;
            self.unconfirmed_disk_mb -= p.disk_mb;
        }
    }
}

impl Charges {
    /// Adds or replaces an instance.
    pub fn insert(&mut self, id: Uuid, placed: Placed) {
        self.sums.add(&placed);
        if let Some(old) = self.map.insert(id, placed) {
            self.sums.sub(&old);
        }
    }

    /// Removes an instance.
    pub fn remove(&mut self, id: &Uuid) -> Option<Placed> {
        let old = self.map.remove(id)?;
        self.sums.sub(&old);
        Some(old)
    }

    /// Changes an instance (sums follow); `None` if it is not here.
    pub fn modify<T>(&mut self, id: &Uuid, change: impl FnOnce(&mut Placed) -> T) -> Option<T> {
        let placed = self.map.get_mut(id)?;
        self.sums.sub(placed);
        let result = change(placed);
        self.sums.add(placed);
        Some(result)
    }

    /// Cache ways the instances hold, from the sums.
    pub fn cache_ways(&self) -> u64 {
        self.sums.cache_ways
    }

    /// Memory requested but not charged (what estimates reclaimed), MiB, from the sums.
    pub fn reclaimed_mb(&self) -> u64 {
        self.sums.request_mb - self.sums.charge_mb
    }

    /// Removes every instance; returns their UUIDs.
    pub fn drain(&mut self) -> Vec<Uuid> {
        let ids = self.map.drain().map(|(id, _)| id).collect();
        *self = Self::default();
        ids
    }

    /// Every instance's UUID.
    pub fn ids(&self) -> impl Iterator<Item = &Uuid> {
        self.map.keys()
    }

    /// One instance's charge.
    pub fn get(&self, id: &Uuid) -> Option<&Placed> {
        self.map.get(id)
    }

    /// Every instance.
    pub fn values(&self) -> impl Iterator<Item = &Placed> {
        self.map.values()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the sums equal the ones computed from scratch (for tests).
    pub fn sums_consistent(&self) -> bool {
        let mut fresh = Sums::default();
        for p in self.map.values() {
            fresh.add(p);
        }
        fresh == self.sums
    }
}

/// A launcher as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its connection, while connected.
    pub conn_id: Option<u64>,
    /// Its last status (CONNECTED until the first report).
    pub status: NodeStatus,
    /// Evacuated by a controller: no new work until RESTORE.
    pub maintenance: bool,
    /// Declared lost (NODE_LOST sent).
    pub lost: bool,
    /// Its last capacity report.
    pub report: NodeReport,
    /// When a frame last arrived from it, or when it disconnected (monotonic ms).
    pub last_seen_ms: u64,
    /// Instances believed to be on it.
    pub instances: Charges,
    /// STARTs placed on it since it connected.
    pub starts: u64,
    /// When its last heartbeat went to the controllers (monotonic ms) and the status it
    /// carried; `None` until the first since it connected.
    pub heartbeat_forwarded: Option<(u64, ssntp::payload::NodeState)>,
    /// The fingerprint of the last READY/FULL/MAINTENANCE report passed on to the controllers
    /// (what the node is: labels, features, architecture …); `None` until one went since the
    /// node or a controller connected.
    pub report_forwarded: Option<u64>,
    /// Never connected to this scheduler: a controller said work runs there, so it is expected
    /// (and declared lost if it stays away).
    pub expected: bool,
    /// Silent for the TTL while still connected (frozen, or cut off without a reset): takes no
    /// new work until it speaks again.
    pub suspect: bool,
    /// Its launcher stopped and left its workloads running (MAINTENANCE with a grace): not
    /// declared lost before this time (monotonic ms), so the next launcher finds them.
    pub away_until_ms: Option<u64>,
    /// Reserved for one big queued START (the OBS seed's workers that shrink to make room for
    /// a huge job): takes no other work until that one fits and is placed here.
    pub reserved_for: Option<Uuid>,
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
    /// Connected but silent for the TTL (suspect).
    Silent,
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
    /// A required PCI device is missing.
    Pci,
    /// Its CPU score is below the required least.
    CpuScore,
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
    /// As many STARTs in flight as `--start-window` allows: it takes more once it confirms some.
    Busy,
    /// Reserved for a big START that waits for room here (`--reserve-big`).
    Reserved,
    /// Not enough last-level cache ways free (or none at all).
    CacheWays,
    /// Not enough free disk for the working directory.
    Disk,
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
            Self::Pci => "missing PCI devices",
            Self::CpuScore => "CPU score too low",
            Self::Backend => "backend not offered",
            Self::Numa => "not NUMA-local",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
            Self::Silent => "silent",
            Self::Maintenance => "maintenance",
            Self::Full => "full",
            Self::NotReady => "not ready",
            Self::Load => "load above threshold",
            Self::Cpu => "insufficient vCPUs",
            Self::Memory => "insufficient memory",
            Self::AvailableMemory => "insufficient available memory",
            Self::Busy => "busy starting earlier work",
            Self::Reserved => "reserved for a big job",
            Self::CacheWays => "insufficient cache ways",
            Self::Disk => "insufficient disk",
        }
    }

    /// The words used in explanations, naming what the START asks for where that is what the
    /// node lacks ("missing features (gpu)", "backend oci not offered").
    pub fn words_for(self, need: &Need<'_>) -> String {
        let req = need.requirements;
        match self {
            Self::Features => format!("missing features ({})", req.features.join(", ")),
            Self::Labels => {
                let labels: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("missing labels ({})", labels.join(", "))
            }
            Self::Backend => format!("backend {} not offered", need.backend),
            Self::Arch => format!("other architecture (needs {})", req.arch.as_deref().unwrap_or("?")),
            Self::Pci => format!("missing PCI devices ({})", req.pci.join(", ")),
            Self::CpuScore => format!("CPU score below {}", req.min_cpu_score.unwrap_or(0)),
            Self::Hostname => format!("not host {}", req.hostname.as_deref().unwrap_or("?")),
            other => other.words().to_owned(),
        }
    }

    /// Whether this node could take the START later without the START changing (capacity or
    /// state), as opposed to never (a requirement it does not meet).
    pub const fn is_transient(self) -> bool {
        !matches!(
            self,
            Self::NodeId
                | Self::Hostname
                | Self::Labels
                | Self::Arch
                | Self::Features
                | Self::Pci
                | Self::CpuScore
                | Self::Backend
                | Self::Numa
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
    /// The instance, when a real START (a node reserved for it takes it).
    pub instance: Option<Uuid>,
}

impl Node {
    /// A node that just connected.
    pub fn new(uuid: Uuid, conn_id: u64, now_ms: u64) -> Self {
        Self {
            uuid,
            conn_id: Some(conn_id),
            status: NodeStatus::Connected,
            maintenance: false,
            lost: false,
            report: NodeReport { node_uuid: uuid, ..NodeReport::default() },
            last_seen_ms: now_ms,
            instances: Charges::default(),
            starts: 0,
            heartbeat_forwarded: None,
            report_forwarded: None,
            expected: false,
            suspect: false,
            away_until_ms: None,
            reserved_for: None,
        }
    }

    /// What the node reported having.
    fn capacity(&self) -> Capacity {
        Capacity {
            cpus_online: self.report.cpus_online,
            mem_total_mb: self.report.mem_total_mb,
            mem_available_mb: self.report.mem_available_mb,
        }
    }

    /// vCPUs within the overcommit bound.
    pub fn cpu_capacity(&self, cfg: &Config) -> u64 {
        self.capacity().cpu_limit(cfg.overcommit)
    }

    /// Memory within the overcommit bound, MiB.
    pub fn mem_capacity(&self, cfg: &Config) -> u64 {
        self.capacity().mem_limit(cfg.overcommit)
    }

    /// vCPUs in use: the scheduler's instances plus what the node reports beyond them.
    pub fn cpu_used(&self) -> u64 {
        let known = self.instances.sums.vcpus;
        known + u64::from(self.report.vcpus_allocated).saturating_sub(known)
    }

    /// Memory in use, MiB: charges (and anchor taxes) of the scheduler's instances plus what
    /// the node reports as charged beyond them (the node sums the same: each START's charge
    /// and its backend's tax).
    pub fn mem_used(&self) -> u64 {
        let sums = &self.instances.sums;
        let known = sums.charge_mb + sums.tax_mb;
        known + self.report.mem_allocated_mb.unwrap_or(0).saturating_sub(known)
    }

    /// What a START is charged here, MiB: its memory and its backend's anchor tax on this node.
    pub fn charge_for(&self, need: &Need<'_>) -> u64 {
        need.charge_mb + self.report.anchor_tax(need.backend)
    }

    /// Memory charged to instances the node has not reported yet, MiB.
    pub fn unconfirmed_mb(&self) -> u64 {
        self.instances.sums.unconfirmed_mb
    }

    /// Free disk, MiB: the node's last figure less what was placed there since and not yet
    /// reported (a working directory takes its room as its work writes, not at once, so disk is
    /// not charged like memory: the node's own figure is the truth).
    pub fn disk_free(&self) -> u64 {
        self.report.disk_available_mb.saturating_sub(self.instances.sums.unconfirmed_disk_mb)
    }

    /// Free memory within the overcommit bound, MiB (the placement index key).
    pub fn mem_free(&self, cfg: &Config) -> u64 {
        self.mem_capacity(cfg).saturating_sub(self.mem_used())
    }

    /// Load average per online CPU.
    pub fn load_per_cpu(&self) -> f64 {
        self.report.load / f64::from(self.report.cpus_online.max(1))
    }

    /// STARTs placed here that the node has not confirmed yet.
    pub fn in_flight(&self) -> u64 {
        self.instances.sums.unconfirmed
    }

    /// Whether the window of STARTs in flight is full.
    fn is_busy(&self, cfg: &Config) -> bool {
        self.in_flight() >= u64::try_from(cfg.start_window).unwrap_or(u64::MAX)
    }

    /// Whether the node may take new work at all (before looking at the START).
    pub fn is_open(&self, cfg: &Config) -> bool {
        self.in_service() && self.status == NodeStatus::Ready && !self.is_busy(cfg) && self.reserved_for.is_none()
    }

    /// Whether it may be reserved for a big START: connected and heard from, not lost or in
    /// maintenance, reporting (READY or FULL: a full node empties as its work ends).
    pub fn may_reserve(&self) -> bool {
        self.in_service() && matches!(self.status, NodeStatus::Ready | NodeStatus::Full) && self.reserved_for.is_none()
    }

    /// Connected, heard from, not lost and not in maintenance (whatever it last reported).
    pub fn in_service(&self) -> bool {
        self.conn_id.is_some() && !self.lost && !self.suspect && !self.maintenance
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
        if self.suspect {
            return Err(Misfit::Silent);
        }
        match self.status {
            _ if self.maintenance => return Err(Misfit::Maintenance),
            NodeStatus::Maintenance => return Err(Misfit::Maintenance),
            NodeStatus::Full => return Err(Misfit::Full),
            NodeStatus::Ready => {}
            // Disconnected and lost are answered above, from the connection and liveness.
            NodeStatus::Connected | NodeStatus::Offline | NodeStatus::Disconnected | NodeStatus::Lost => {
                return Err(Misfit::NotReady)
            }
        }
        self.meets(need)?;
        if self.reserved_for.is_some_and(|r| need.instance != Some(r)) {
            return Err(Misfit::Reserved);
        }
        if self.load_per_cpu() > cfg.load_threshold {
            return Err(Misfit::Load);
        }
        let usage =
            Usage { vcpus: self.cpu_used(), mem_mb: self.mem_used(), mem_unconfirmed_mb: self.unconfirmed_mb() };
        let demand = Demand { vcpus: need.vcpus, mem_mb: self.charge_for(need) };
        drover_model::fit(&self.capacity(), &usage, &demand, cfg.overcommit).map_err(|short| match short {
            Shortfall::Cpu => Misfit::Cpu,
            Shortfall::Memory => Misfit::Memory,
            Shortfall::AvailableMemory => Misfit::AvailableMemory,
        })?;
        let ways = u64::from(need.requirements.cache_ways);
        if ways > 0 && self.instances.cache_ways() + ways > u64::from(self.report.cache_ways) {
            return Err(Misfit::CacheWays);
        }
        if need.requirements.disk_mb > self.disk_free() {
            return Err(Misfit::Disk);
        }
        if self.is_busy(cfg) {
            return Err(Misfit::Busy);
        }
        Ok(())
    }

    /// How many instances of `need`, one after another, this node would take now (at most
    /// `up_to`): 0 unless [`Node::check`] passes for the first. The window of STARTs in flight
    /// is left out: a busy node takes more as it confirms the earlier ones.
    pub fn room(&self, need: &Need<'_>, cfg: &Config, up_to: u32) -> u32 {
        match self.check(need, cfg) {
            Ok(()) | Err(Misfit::Busy) => {}
            Err(_) => return 0,
        }
        let charge = self.charge_for(need);
        let demand = Demand { vcpus: need.vcpus, mem_mb: charge };
        // Would the k-th instance fit after k - 1 more? Monotone in k: search for the last.
        let fits_kth = |k: u32| {
            let before = u64::from(k - 1);
            let usage = Usage {
                vcpus: self.cpu_used() + before * u64::from(need.vcpus),
                mem_mb: self.mem_used() + before * charge,
                mem_unconfirmed_mb: self.unconfirmed_mb() + before * charge,
            };
            let ways = u64::from(need.requirements.cache_ways);
            let disk = need.requirements.disk_mb;
            drover_model::fit(&self.capacity(), &usage, &demand, cfg.overcommit).is_ok()
                && (ways == 0 || self.instances.cache_ways() + u64::from(k) * ways <= u64::from(self.report.cache_ways))
                && (disk == 0 || u64::from(k) * disk <= self.disk_free())
        };
        let (mut fits, mut fails) = (1, up_to.saturating_add(1));
        while fails - fits > 1 {
            let mid = fits + (fails - fits) / 2;
            if fits_kth(mid) {
                fits = mid;
            } else {
                fails = mid;
            }
        }
        fits.min(up_to)
    }

    /// Whether the START could fit this node were it empty: its requirements are met and the
    /// node's whole capacity (within the overcommit bound) holds it. The node's last report
    /// says what it has; one that has not reported could take anything.
    ///
    /// # Errors
    /// The requirement the node does not meet, or the dimension it is too small in.
    pub fn could_ever_fit(&self, need: &Need<'_>, cfg: &Config) -> Result<(), Misfit> {
        self.meets(need)?;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // capacities are far below 2^52; the products are rounded down on purpose
        let (vcpus, mem_mb) = (
            (f64::from(self.report.cpus_online) * cfg.overcommit.cpu) as u64,
            (self.report.mem_total_mb as f64 * cfg.overcommit.mem) as u64,
        );
        if u64::from(need.vcpus) > vcpus {
            return Err(Misfit::Cpu);
        }
        if self.charge_for(need) > mem_mb {
            return Err(Misfit::Memory);
        }
        if need.requirements.cache_ways > self.report.cache_ways {
            return Err(Misfit::CacheWays);
        }
        if need.requirements.disk_mb > self.report.disk_total_mb {
            return Err(Misfit::Disk);
        }
        Ok(())
    }

    /// The START's requirements that are the node's to meet (not its capacity or state).
    fn meets(&self, need: &Need<'_>) -> Result<(), Misfit> {
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
        if req.arch.as_ref().is_some_and(|a| !self.report.runs_arch(a)) {
            return Err(Misfit::Arch);
        }
        if req.features.iter().any(|f| !self.report.features.contains(f)) {
            return Err(Misfit::Features);
        }
        if req.pci.iter().any(|p| !self.report.pci.iter().any(|d| d.matches(p))) {
            return Err(Misfit::Pci);
        }
        // A node that has not measured its speed has none to show.
        if req.min_cpu_score.is_some_and(|least| self.report.cpu_score.unwrap_or(0) < least) {
            return Err(Misfit::CpuScore);
        }
        if !self.report.features.iter().any(|f| f == need.backend) {
            return Err(Misfit::Backend);
        }
        if req.numa_local && self.report.numa_node.is_none() {
            return Err(Misfit::Numa);
        }
        Ok(())
    }
}

/// Per label key, per value: the (free memory, node) index of the open nodes carrying it.
/// Nested so that a lookup borrows the START's strings instead of allocating a key.
type LabelIndex = HashMap<String, HashMap<String, BTreeSet<(u64, Uuid)>>>;

/// Where an instance is, as far as the scheduler knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Its node.
    pub node: Uuid,
    /// The START and its sender while the node has not confirmed it, so that a `full_cn`
    /// refusal can be retried elsewhere; `None` once confirmed, and for instances the scheduler
    /// only learned of from STATS.
    pub unconfirmed: Option<Box<(Start, Uuid)>>,
}

/// A live migration under way: the instance runs at `from` and is charged at `to` too, so that
/// the destination's room is held while the state is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The node it runs on.
    pub from: Uuid,
    /// The node it moves to.
    pub to: Uuid,
    /// It is abandoned if not over by then (monotonic ms).
    pub expires_ms: u64,
    /// The destination said it is ready and the source was told to send (MIGRATE_OUT).
    pub sending: bool,
}

/// All known nodes and the one index of where instances are, with indexes of the open nodes by
/// free memory: one over all of them, and one per label, so that a START requiring a rare label
/// finds its node as fast as any other.
///
/// An instance the scheduler placed is both in its node's [`Charges`] (what it costs the node)
/// and in the index (where it is); the methods here change both together.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: BTreeMap<Uuid, Node>,
    /// (free memory MiB, node) of every open node.
    by_free: BTreeSet<(u64, Uuid)>,
    /// The same, per label the node carries.
    by_label: LabelIndex,
    /// Instance → where it is.
    instances: HashMap<Uuid, Location>,
    /// Instance → its migration under way (its destination's charge is the second place it is
    /// charged).
    migrations: BTreeMap<Uuid, Migration>,
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

    /// The index to walk for nodes carrying every label in `required`: the smallest of the
    /// required labels' indexes, or the index of all open nodes when none is required. `None`
    /// when a required label is carried by no open node.
    fn index_for(&self, required: &BTreeMap<String, String>) -> Option<&BTreeSet<(u64, Uuid)>> {
        if required.is_empty() {
            return Some(&self.by_free);
        }
        required.iter().map(|(k, v)| self.by_label.get(k.as_str())?.get(v.as_str())).try_fold(
            None,
            |best: Option<&BTreeSet<_>>, set| {
                let set = set?;
                Some(Some(match best {
                    Some(b) if b.len() <= set.len() => b,
                    _ => set,
                }))
            },
        )?
    }

    /// Open nodes carrying the `required` labels, most free memory first.
    pub fn most_free(&self, required: &BTreeMap<String, String>) -> impl Iterator<Item = &Node> {
        self.index_for(required).into_iter().flat_map(|i| i.iter().rev()).filter_map(|(_, u)| self.nodes.get(u))
    }

    /// Open nodes carrying the `required` labels with at least `mem_mb` free, least free first.
    pub fn least_free_above(&self, required: &BTreeMap<String, String>, mem_mb: u64) -> impl Iterator<Item = &Node> {
        self.index_for(required)
            .into_iter()
            .flat_map(move |i| i.range((mem_mb, Uuid::nil())..))
            .filter_map(|(_, u)| self.nodes.get(u))
    }

    /// Whether the indexes equal ones rebuilt from scratch (for tests).
    pub fn check_indexes(&self, cfg: &Config) -> bool {
        let (mut by_free, mut by_label) = (BTreeSet::new(), HashMap::new());
        for node in self.nodes.values() {
            Self::index(&mut by_free, &mut by_label, node, cfg);
        }
        by_free == self.by_free
            && by_label == self.by_label
            && self.nodes.values().all(|n| n.instances.sums_consistent())
            && self.check_instance_index()
    }

    /// Whether any node is open.
    pub fn any_open(&self) -> bool {
        !self.by_free.is_empty()
    }

    fn index(by_free: &mut BTreeSet<(u64, Uuid)>, by_label: &mut LabelIndex, node: &Node, cfg: &Config) {
        if node.is_open(cfg) {
            let key = (node.mem_free(cfg), node.uuid);
            by_free.insert(key);
            for (k, v) in &node.report.labels {
                by_label.entry(k.clone()).or_default().entry(v.clone()).or_default().insert(key);
            }
        }
    }

    fn unindex(by_free: &mut BTreeSet<(u64, Uuid)>, by_label: &mut LabelIndex, node: &Node, cfg: &Config) {
        if node.is_open(cfg) {
            let key = (node.mem_free(cfg), node.uuid);
            by_free.remove(&key);
            for (k, v) in &node.report.labels {
                let Some(values) = by_label.get_mut(k.as_str()) else { continue };
                if let Some(set) = values.get_mut(v.as_str()) {
                    set.remove(&key);
                    if set.is_empty() {
                        values.remove(v.as_str());
                    }
                }
                if values.is_empty() {
                    by_label.remove(k.as_str());
                }
            }
        }
    }

    /// Inserts or replaces a node.
    pub fn insert(&mut self, node: Node, cfg: &Config) {
        let uuid = node.uuid;
        self.remove(&uuid, cfg);
        Self::index(&mut self.by_free, &mut self.by_label, &node, cfg);
        self.nodes.insert(uuid, node);
    }

    /// Removes a node.
    pub fn remove(&mut self, uuid: &Uuid, cfg: &Config) -> Option<Node> {
        let node = self.nodes.remove(uuid)?;
        Self::unindex(&mut self.by_free, &mut self.by_label, &node, cfg);
        Some(node)
    }

    /// Where an instance is.
    pub fn location(&self, instance: &Uuid) -> Option<&Location> {
        self.instances.get(instance)
    }

    /// Records a START placed on `node` (which exists and fits it), sent by `sender`.
    pub fn place(&mut self, node: Uuid, placed: Placed, start: &Start, sender: Uuid, cfg: &Config) {
        let id = start.instance_uuid;
        self.update(&node, cfg, |n| {
            n.instances.insert(id, placed);
            n.starts += 1;
        });
        self.instances.insert(id, Location { node, unconfirmed: Some(Box::new((start.clone(), sender))) });
    }

    /// The node said the instance runs (INSTANCE_STARTED).
    pub fn confirm(&mut self, node: Uuid, instance: Uuid, cfg: &Config) {
        if let Some(location) = self.instances.get_mut(&instance) {
            location.unconfirmed = None;
        }
        self.update(&node, cfg, |n| n.instances.modify(&instance, |p| p.confirmed = true));
    }

    /// An instance left `node`; returns its START and sender if the scheduler placed it there and
    /// it was not confirmed (for a retry elsewhere).
    /// A report from another node than the index names is about a stale copy there: the index
    /// keeps the instance where it is.
    pub fn forget(&mut self, node: Uuid, instance: Uuid, cfg: &Config) -> Option<(Start, Uuid)> {
        let location = match self.instances.get(&instance) {
            Some(l) if l.node == node => self.instances.remove(&instance),
            _ => None,
        };
        self.update(&node, cfg, |n| n.instances.remove(&instance)).flatten()?;
        location.and_then(|l| l.unconfirmed).map(|b| *b)
    }

    /// A migration of `instance`, if one is under way.
    pub fn migration(&self, instance: &Uuid) -> Option<&Migration> {
        self.migrations.get(instance)
    }

    /// Every migration under way, by instance.
    pub fn migrations(&self) -> impl Iterator<Item = (&Uuid, &Migration)> {
        self.migrations.iter()
    }

    /// Starts a migration: the destination is charged `placed` beside the source's charge.
    pub fn begin_migration(&mut self, instance: Uuid, migration: Migration, placed: Placed, cfg: &Config) {
        self.update(&migration.to, cfg, |n| {
            n.instances.insert(instance, placed);
            n.starts += 1;
        });
        self.migrations.insert(instance, migration);
    }

    /// The source was told to send.
    pub fn migration_sending(&mut self, instance: &Uuid) {
        if let Some(m) = self.migrations.get_mut(instance) {
            m.sending = true;
        }
    }

    /// Ends a migration. Committed: the instance is at the destination, confirmed, and the
    /// source's charge is gone; abandoned: the destination's charge is gone.
    pub fn end_migration(&mut self, instance: Uuid, committed: bool, cfg: &Config) -> Option<Migration> {
        let m = self.migrations.remove(&instance)?;
        if committed {
            self.update(&m.from, cfg, |n| n.instances.remove(&instance));
            self.update(&m.to, cfg, |n| n.instances.modify(&instance, |p| p.confirmed = true));
            self.instances.insert(instance, Location { node: m.to, unconfirmed: None });
        } else {
            self.update(&m.to, cfg, |n| n.instances.remove(&instance));
        }
        Some(m)
    }

    /// Migrations that cannot go on, with why: the instance left its source (it ended, or the
    /// source was lost), or the destination no longer holds its charge (it refused or ended
    /// the incoming copy, or it was lost).
    pub fn broken_migrations(&self) -> Vec<(Uuid, String)> {
        self.migrations
            .iter()
            .filter_map(|(id, m)| {
                if self.instances.get(id).is_none_or(|l| l.node != m.from) {
                    Some((*id, format!("the instance no longer runs on node {}", m.from)))
                } else if self.nodes.get(&m.to).is_none_or(|n| n.instances.get(id).is_none()) {
                    Some((*id, format!("node {} no longer holds the incoming copy", m.to)))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Forgets every instance on a node (it was lost, or came back after being lost); returns
    /// them, sorted. An instance only migrating to it is not among them (it runs elsewhere).
    pub fn forget_all_on(&mut self, node: Uuid, cfg: &Config) -> Vec<Uuid> {
        let mut gone: Vec<Uuid> = self.update(&node, cfg, |n| n.instances.drain()).unwrap_or_default();
        gone.retain(|id| self.migrations.get(id).is_none_or(|m| m.to != node));
        self.instances.retain(|id, l| {
            if l.node == node {
                gone.push(*id);
                false
            } else {
                true
            }
        });
        gone.sort_unstable();
        gone.dedup();
        gone
    }

    /// Takes in the instances of a node's STATS or INSTANCE_NEWS: ended instances leave; running ones are confirmed, located (the
    /// scheduler may not have placed them: it restarted) and their memory use observed.
    pub fn apply_stats(
        &mut self,
        from: Uuid,
        stats: &[InstanceStat],
        cfg: &Config,
        estimator: &mut Estimator,
        now_ms: u64,
    ) {
        if stats.is_empty() {
            return;
        }
        let index = &mut self.instances;
        let Some(n) = self.nodes.get_mut(&from) else { return };
        Self::unindex(&mut self.by_free, &mut self.by_label, n, cfg);
        for stat in stats {
            let id = stat.instance_uuid;
            if stat.state == InstanceState::Exited || stat.state == InstanceState::Stopped {
                n.instances.remove(&id);
                if index.get(&id).is_some_and(|l| l.node == from) {
                    index.remove(&id);
                }
                continue;
            }
            index.entry(id).or_insert(Location { node: from, unconfirmed: None }).unconfirmed = None;
            let usage = u64::try_from(stat.memory_usage_mb).ok();
            let known = n.instances.modify(&id, |p| {
                p.confirmed = true;
                if let (Some(usage), Some(w)) = (usage, p.workload) {
                    estimator.observe(w, usage, now_ms);
                    // Never charge an instance less than it is seen to use.
                    p.charge_mb = ssntp::payload::charge_mb(p.charge_mb.max(usage), p.request_mb);
                }
            });
            if known.is_none() {
                if let (Some(usage), Some(w)) = (usage, stat.workload_uuid) {
                    estimator.observe(w, usage, now_ms);
                }
            }
        }
        Self::index(&mut self.by_free, &mut self.by_label, n, cfg);
    }

    /// Whether the index agrees with the nodes' charges: every charged instance is located on
    /// its node.
    fn check_instance_index(&self) -> bool {
        self.nodes.values().all(|n| {
            n.instances.ids().all(|id| {
                self.instances.get(id).is_some_and(|l| l.node == n.uuid)
                    || self.migrations.get(id).is_some_and(|m| m.to == n.uuid)
            })
        })
    }

    /// Changes a node and keeps the indexes true. Returns what `change` returned, or `None` for
    /// an unknown node.
    pub fn update<T>(&mut self, uuid: &Uuid, cfg: &Config, change: impl FnOnce(&mut Node) -> T) -> Option<T> {
        let node = self.nodes.get_mut(uuid)?;
        Self::unindex(&mut self.by_free, &mut self.by_label, node, cfg);
        let result = change(node);
        Self::index(&mut self.by_free, &mut self.by_label, node, cfg);
        Some(result)
    }
}
