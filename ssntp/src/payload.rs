//! Typed payloads: one struct per frame kind, CBOR maps with text keys (serde + ciborium).
//!
//! Field names are ciao's YAML names in snake_case, so ciao users recognise them. Decoders ignore
//! keys they do not know (forward compatibility) and report a missing required key as
//! [`PayloadError`] (sent to the peer as `invalid_payload`). Optional keys are left out when
//! empty, so frames stay small.
//!
//! [`Message`] ties each [`Kind`] to its payload type: [`Message::decode`] turns a [`Frame`] into
//! a typed value and [`Message::to_frame`] goes back.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::{Command, ErrorCode, Event, Frame, Kind, Status};
use crate::role::Role;
use crate::uuid::Uuid;

/// A payload could not be decoded as the type its frame kind names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} payload: {reason}")]
pub struct PayloadError {
    /// The frame kind whose payload was bad.
    pub kind: Kind,
    /// What was wrong (from the CBOR decoder or a validation rule).
    pub reason: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

// === handshake ===

/// CONNECT (COMMAND 0): the client's claimed role and identity. The header origin is the same
/// UUID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    /// Claimed roles; must be contained in the certificate's roles.
    pub role: Role,
    /// The client's persistent UUID.
    pub uuid: Uuid,
    /// Host name of the client, for logs and status tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Software version of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A controller's leadership term (its election key's revision in etcd): a scheduler makes
    /// the controller with the highest term its master, so a deposed leader still connected
    /// (cut off from etcd, not from the scheduler) commands nothing. Absent: no election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// CONNECTED (STATUS 0): the server accepted the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// The server's roles (a client checks them against the server's certificate).
    pub role: Role,
    /// The server's UUID.
    pub uuid: Uuid,
    /// Cluster configuration the client should apply.
    pub config: ClusterConfig,
}

/// Cluster-wide settings the scheduler hands every client in CONNECTED and that a controller
/// replaces with CONFIGURE. Every field has a default, so an empty map is a valid configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// How often launchers send READY/FULL and STATS, in milliseconds.
    pub report_interval_ms: u64,
    /// How long a silent launcher is trusted before it is suspect, in milliseconds.
    pub node_ttl_ms: u64,
    /// Largest payload the server accepts, in bytes.
    pub max_payload: u32,
    /// Free-form labels for the cluster (name, environment …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// vCPUs the scheduler offers per online CPU of a node; launchers admit by it.
    #[serde(default = "default_cpu_overcommit")]
    pub cpu_overcommit: f64,
    /// Memory the scheduler offers per MiB of a node; launchers admit by it.
    #[serde(default = "default_mem_overcommit")]
    pub mem_overcommit: f64,
    /// Load average per online CPU above which the scheduler places no new work on a node
    /// (controllers show such nodes as loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_threshold: Option<f64>,
}

const fn default_cpu_overcommit() -> f64 {
    4.0
}

const fn default_mem_overcommit() -> f64 {
    1.0
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            report_interval_ms: 1_000,
            node_ttl_ms: 10_000,
            max_payload: u32::try_from(crate::frame::DEFAULT_MAX_PAYLOAD).unwrap_or(u32::MAX),
            labels: BTreeMap::new(),
            cpu_overcommit: default_cpu_overcommit(),
            mem_overcommit: default_mem_overcommit(),
            load_threshold: None,
        }
    }
}

/// CONFIGURE (COMMAND 9): replace the cluster configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configure {
    /// The new configuration.
    pub config: ClusterConfig,
}

// === node reports ===

/// A network interface of a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Address in text form.
    pub ip: String,
    /// MAC address, colon separated.
    #[serde(default)]
    pub mac: String,
}

/// READY (STATUS 1), and FULL / MAINTENANCE when they carry a report: a node's capacity. The
/// scheduler's placement input. `Default` gives a nil node with zero capacity, handy for
/// building one field by field.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// The launcher's UUID.
    pub node_uuid: Uuid,
    /// Memory the node offers, MiB.
    pub mem_total_mb: u64,
    /// Memory not in use, MiB.
    pub mem_available_mb: u64,
    /// Disk of the state directory, MiB.
    pub disk_total_mb: u64,
    /// Free disk of the state directory, MiB.
    pub disk_available_mb: u64,
    /// CPUs online (of this NUMA node when the launcher runs per NUMA node).
    pub cpus_online: u32,
    /// Host name.
    pub hostname: String,
    /// One-minute load average.
    pub load: f64,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Machine architecture (`x86_64`, `aarch64` …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// CPU model name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_model: String,
    /// CPU clock, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mhz: Option<u32>,
    /// Capabilities such as `oci`, `kvm`, `cgroup-v1`, and the backends offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Operator labels (`--label k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// NUMA node this launcher serves, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// vCPUs allocated to instances on this node.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub vcpus_allocated: u32,
    /// Memory allocated to instances on this node, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_allocated_mb: Option<u64>,
    /// Number of instances on this node (any state but deleted).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub instance_count: u32,
    /// Sent with MAINTENANCE by a launcher that stops and leaves its workloads running (an
    /// upgrade, a restart): hold them this long, ms, before declaring the node lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away_grace_ms: Option<u64>,
    /// Architectures it also runs, through binfmt_misc and qemu-user (`arm`, `riscv64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_arches: Vec<String>,
    /// Single-core speed, measured at the launcher's start (about 1000 for a 2020 server core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_score: Option<u32>,
    /// PCI devices (GPUs, NICs …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci: Vec<PciDevice>,
    /// OCI root filesystems already on the node, by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Draining: it takes no new work, and what still runs at this time (Unix ms) is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_until_unix_ms: Option<u64>,
    /// The anchor tax (the EVE seed): memory each backend's own machinery takes per instance
    /// (the shim; runc beside it), MiB, as the launcher measured it. Both the scheduler and the
    /// launcher charge an instance its memory plus its backend's tax.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anchor_tax_mb: BTreeMap<String, u64>,
    /// Last-level cache ways workloads may be given for their own (ciao's "cache quality of
    /// service capacity": Intel RDT cache allocation through resctrl); 0 without.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub cache_ways: u32,
}

/// A PCI device of a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PciDevice {
    /// `vendor:device` in lower-case hex (`10de:2204`).
    pub id: String,
    /// The class code in hex (`030000`: a VGA controller).
    pub class: String,
}

impl PciDevice {
    /// Whether it matches a requirement's pattern: `vendor:device`, with `*` for any part
    /// (`10de:*`, `*:2204`), or `class=PREFIX` (`class=03`: any display controller).
    pub fn matches(&self, pattern: &str) -> bool {
        if let Some(class) = pattern.strip_prefix("class=") {
            return self.class.starts_with(&class.to_ascii_lowercase());
        }
        let (want_vendor, want_device) = pattern.split_once(':').unwrap_or((pattern, "*"));
        let (vendor, device) = self.id.split_once(':').unwrap_or((&self.id, ""));
        let part = |want: &str, have: &str| want == "*" || want.eq_ignore_ascii_case(have);
        part(want_vendor, vendor) && part(want_device, device)
    }
}

/// Architecture names that mean the same machines (`armv7` is what Debian's qemu calls `arm`).
const ARCH_ALIASES: [(&str, &str); 4] = [("armv7", "arm"), ("armhf", "arm"), ("arm64", "aarch64"), ("amd64", "x86_64")];

/// The canonical name of an architecture (`armv7` → `arm`, `amd64` → `x86_64`).
pub fn canonical_arch(arch: &str) -> &str {
    ARCH_ALIASES.iter().find(|(alias, _)| *alias == arch).map_or(arch, |(_, name)| name)
}

impl NodeReport {
    /// The memory `backend`'s machinery takes per instance here, MiB (0 when not reported).
    pub fn anchor_tax(&self, backend: &str) -> u64 {
        self.anchor_tax_mb.get(backend).copied().unwrap_or(0)
    }

    /// Whether the node runs `arch`: its own, or one of its foreign ones.
    pub fn runs_arch(&self, arch: &str) -> bool {
        let want = canonical_arch(arch);
        canonical_arch(&self.arch) == want || self.foreign_arches.iter().any(|a| canonical_arch(a) == want)
    }
}

/// Node state as named inside STATS (`status` key, text as in ciao).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum NodeState {
    Ready,
    Full,
    Offline,
    Maintenance,
    /// A state this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// Instance state as a launcher reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum InstanceState {
    Pending,
    /// Running (ciao's text).
    Active,
    Exited,
    Stopping,
    Stopped,
    #[serde(other)]
    Unknown,
}

/// One instance in a STATS report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStat {
    /// Instance.
    pub instance_uuid: Uuid,
    /// State on the node.
    pub state: InstanceState,
    /// Real memory use in MiB (cgroup usage minus inactive file, or RSS); -1 unknown.
    pub memory_usage_mb: i64,
    /// Disk use of the working directory in MiB; -1 unknown.
    pub disk_usage_mb: i64,
    /// CPU use in percent of one CPU; -1 unknown.
    pub cpu_usage: i32,
    /// Exit code once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Workload the instance belongs to (for the scheduler's memory estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_uuid: Option<Uuid>,
    /// Why it ended, once `exited` (absent from older launchers: judge by `exit_code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExitReason>,
}

/// Marks a STATS as one page of a digest: every instance the node holds, as of news number
/// `seq`, split over `pages` frames sent in order (`page` = 0 … `pages` − 1). A STATS without
/// it is a heartbeat: node figures only, its `instances` ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestPage {
    /// The number of the last INSTANCE_NEWS this digest includes (0: none yet).
    pub seq: u64,
    /// This page, from 0.
    pub page: u32,
    /// How many pages the digest has (at least 1).
    pub pages: u32,
}

/// INSTANCE_NEWS (EVENT 21): the instances whose state or usage changed since the node's
/// previous news, each as its whole current [`InstanceStat`] (so applying one twice, or a later
/// one without an earlier one, never moves an instance backwards). `seq` counts a launcher's
/// news from 1; a receiver that sees a gap asks for a digest (REPORT_REQUEST).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceNews {
    /// The launcher's UUID.
    pub node_uuid: Uuid,
    /// This news' number: one more than the previous news from this launcher process.
    pub seq: u64,
    /// The instances that changed.
    pub instances: Vec<InstanceStat>,
}

/// REPORT_REQUEST (COMMAND 17): asks a launcher (or, without `node_uuid`, every launcher) for
/// a digest now: after a controller connects, and when it sees a gap in a node's news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportRequest {
    /// The node; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uuid: Option<Uuid>,
}

/// NODE_FORGET (COMMAND 18): the operator confirms that a silent node is gone for good; the
/// scheduler declares it lost at once (NODE_LOST), even while the node-loss brake holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeForget {
    /// The node.
    pub node_uuid: Uuid,
}

/// Most instances one PLAN asks about (it is a what-if, not a launch).
pub const MAX_PLAN_COUNT: u32 = 100_000;

/// PLAN (COMMAND 19): a dry run of placing `count` instances like `start`, on the nodes as they
/// are now. Nothing is placed, queued or reserved. Answered with PLAN_ANSWER.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Chosen by the controller; the answer carries it back.
    pub request_id: u64,
    /// One instance as a launch would START it (its `instance_uuid` means nothing).
    pub start: Start,
    /// How many such instances (1 to [`MAX_PLAN_COUNT`]).
    pub count: u32,
}

/// Where a plan puts instances on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPlacement {
    /// The node.
    pub node_uuid: Uuid,
    /// Its host name, as it last reported it.
    #[serde(default)]
    pub hostname: String,
    /// How many of the instances would go there.
    pub count: u32,
}

/// PLAN_ANSWER (EVENT 22): where the instances of a PLAN would go now, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanAnswer {
    /// The PLAN's `request_id`.
    pub request_id: u64,
    /// Nodes the scheduler knows.
    pub nodes: u32,
    /// Nodes that would take one instance now.
    pub fit_now: u32,
    /// Where the instances would go, node by node, as the placement policy would choose.
    pub placed: Vec<PlanPlacement>,
    /// Instances no node would take now (they would wait in the queue).
    pub unplaced: u32,
    /// Counted over the nodes: "0 of 12 nodes fit: 7 insufficient memory, 3 load above
    /// threshold, 2 maintenance".
    pub explanation: String,
    /// Set when no node could take one even empty: the launch would fail at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never: Option<String>,
    /// What would make the rest fit, one suggestion per reason.
    #[serde(default)]
    pub advice: Vec<String>,
}

/// STATS (COMMAND 3): node figures plus every instance's usage.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The launcher's UUID.
    pub node_uuid: Uuid,
    /// The node's computed status.
    pub status: NodeState,
    /// Memory the node offers, MiB.
    pub mem_total_mb: u64,
    /// Memory not in use, MiB.
    pub mem_available_mb: u64,
    /// Disk of the state directory, MiB.
    pub disk_total_mb: u64,
    /// Free disk, MiB.
    pub disk_available_mb: u64,
    /// One-minute load average.
    pub load: f64,
    /// CPUs online.
    pub cpus_online: u32,
    /// Host name.
    pub hostname: String,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Per-instance usage (a digest page's share; empty in a heartbeat).
    #[serde(default)]
    pub instances: Vec<InstanceStat>,
    /// Which digest page this is; absent in a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestPage>,
}

impl Stats {
    /// The node's figures alone: a heartbeat's content, without a digest page's instance list.
    pub fn figures(&self) -> Self {
        Self {
            node_uuid: self.node_uuid,
            status: self.status,
            mem_total_mb: self.mem_total_mb,
            mem_available_mb: self.mem_available_mb,
            disk_total_mb: self.disk_total_mb,
            disk_available_mb: self.disk_available_mb,
            load: self.load,
            cpus_online: self.cpus_online,
            hostname: self.hostname.clone(),
            networks: self.networks.clone(),
            instances: Vec::new(),
            digest: None,
        }
    }
}

// === work ===

/// How urgently work must run (the sd-taskpacker classes).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkClass {
    /// Must run; started as soon as possible; may use overcommit.
    Workorder,
    /// Best effort, by priority and deadline.
    Batch,
}

/// Batch size classes; memory in 32 MiB chunks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SizeClass {
    Tiny,
    Small,
    Medium,
    Large,
}

/// Memory is accounted in chunks of this many MiB (sd-taskpacker's rule): every charge on a
/// node is a whole number of chunks, and batch work asks for whole chunks.
pub const MEMORY_CHUNK_MB: u64 = 32;

/// `mb` rounded up to whole [`MEMORY_CHUNK_MB`] chunks.
pub const fn in_chunks(mb: u64) -> u64 {
    mb.div_ceil(MEMORY_CHUNK_MB).saturating_mul(MEMORY_CHUNK_MB)
}

/// What an instance is charged on a node, MiB: what was granted (its request, or its
/// workload's estimate), never more than the request, rounded up to whole chunks — and still
/// never more than the request. Batch work asks for whole chunks, so its charges always are;
/// a workorder may ask for less than a chunk (workorders are overcommitted, not packed) and is
/// charged what it asks. The one rule for the scheduler's charges and a launcher's admission.
pub const fn charge_mb(granted_mb: u64, request_mb: u64) -> u64 {
    let granted = if granted_mb < request_mb { granted_mb } else { request_mb };
    let chunked = in_chunks(granted);
    if chunked < request_mb {
        chunked
    } else {
        request_mb
    }
}

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [Self; 4] = [Self::Tiny, Self::Small, Self::Medium, Self::Large];

    /// The class's name in files and answers.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
        }
    }

    /// Memory of the class in MiB (1, 4, 8 and 32 chunks).
    pub const fn mem_mb(self) -> u64 {
        match self {
            Self::Tiny => 32,
            Self::Small => 128,
            Self::Medium => 256,
            Self::Large => 1024,
        }
    }
}

/// What an instance needs from a node (ciao's `requirements`, extended).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Requirements {
    /// vCPUs (may be overcommitted).
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mb: u64,
    /// Disk for the working directory, MiB.
    #[serde(default)]
    pub disk_mb: u64,
    /// Pin to this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<Uuid>,
    /// Pin to a node with this host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Labels the node must carry with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Architecture the node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Features the node must offer (`oci`, `kvm` …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Must run on a launcher that serves a single NUMA node.
    #[serde(default, skip_serializing_if = "is_false")]
    pub numa_local: bool,
    /// PCI devices the node must have, one match each (`10de:*`, `8086:15bc`, `class=03`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci: Vec<String>,
    /// The least CPU score the node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu_score: Option<u32>,
    /// Last-level cache ways for this instance alone (a resource, like vCPUs: a node gives
    /// each way to one instance at a time).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub cache_ways: u32,
    /// What orders the nodes that fit, without excluding any.
    #[serde(default, skip_serializing_if = "Preferences::is_empty")]
    pub preferences: Preferences,
}

/// Soft placement wishes: among the nodes that fit, those that meet more of them come first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Preferences {
    /// Labels it would rather have (`zone = "b"`): one point each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A node that already holds this root filesystem (an OCI workload's `rootfs`): one point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Preferences {
    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.image.is_none()
    }

    /// How many of them `node` meets.
    pub fn score(&self, node: &NodeReport) -> u32 {
        let labels = self.labels.iter().filter(|(k, v)| node.labels.get(*k) == Some(*v)).count();
        let image = self
            .image
            .as_ref()
            .is_some_and(|i| node.images.iter().any(|have| i == have || i.starts_with(&format!("{have}/"))));
        u32::try_from(labels).unwrap_or(u32::MAX).saturating_add(u32::from(image))
    }

    /// The most points a node can score.
    pub fn most(&self) -> u32 {
        u32::try_from(self.labels.len()).unwrap_or(u32::MAX).saturating_add(u32::from(self.image.is_some()))
    }
}

/// How an instance runs on its node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Backend {
    /// A process group under cgroup limits.
    Process {
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// An OCI container run by runc or crun.
    Oci {
        /// Root filesystem directory on the node.
        rootfs: String,
        /// Program and arguments inside the container.
        args: Vec<String>,
        /// Extra environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// A root the container may write: an overlay of `rootfs` of its own, dropped at the
        /// end (`rootfs` itself is never written).
        #[serde(default, skip_serializing_if = "is_false")]
        writable_root: bool,
        /// Node directories bind-mounted into the container (the node allows them with
        /// `--volume-root`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        volumes: Vec<Volume>,
        /// Which network it is in.
        #[serde(default, skip_serializing_if = "OciNetwork::is_host")]
        network: OciNetwork,
    },
    /// A transient systemd service on the node's system manager (sd-taskpacker's
    /// `StartTransientUnit()`), with the same limits, user and output as `process`.
    Systemd {
        /// Program (absolute path) and arguments.
        argv: Vec<String>,
        /// Extra environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// A virtual machine (the EVE seed's hypervisor tasks): its device model, the node's
    /// `qemu-system-ARCH` (from its hypervisor tools), is the instance's anchor process, run
    /// like a `process` instance under the instance's limits and charged the guest's memory
    /// plus the device model's own (the anchor tax). The guest's serial console is the
    /// instance's output; it ends when the guest powers off or resets.
    Vm {
        /// The kernel to boot, a path on the node (a Linux bzImage, or a multiboot image).
        kernel: String,
        /// An initial ramdisk, a path on the node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        /// The kernel's command line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        append: Option<String>,
        /// Disk images (raw or qcow2, paths on the node) as virtio drives, in snapshot mode:
        /// the guest's writes are dropped at the end, so one image serves many instances.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        disks: Vec<String>,
        /// The guest's architecture (`x86_64`, `aarch64`, `riscv64` …): the node's own when
        /// absent; another runs under emulation (cross-architecture code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arch: Option<String>,
        /// How the guest's CPU runs.
        #[serde(default, skip_serializing_if = "VmAccel::is_auto")]
        accel: VmAccel,
    },
    /// A binary artifact run by a runtime among the node's hypervisor tools (the EVE seed's
    /// "tasks defined by volumes derived from JAR files"): the artifact is a file in a volume
    /// of the node's (under a `--volume-root`), its kind comes from its name (`.jar`: the
    /// node's `java`), and the runtime is the instance's anchor process, run like a `process`
    /// instance. The memory requested is the runtime's heap; what the runtime takes beyond it
    /// is the backend's anchor tax.
    Artifact {
        /// The artifact, an absolute path on the node.
        path: String,
        /// Arguments after the artifact.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// Extra environment (for a JAR, `JAVA_TOOL_OPTIONS` passes options to the JVM).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// No process: "runs" for a while and reports synthetic usage (scale tests).
    Sim {
        /// How long the instance runs, ms.
        duration_ms: u64,
        /// Memory use to report, MiB.
        #[serde(default)]
        mem_usage_mb: u64,
        /// Exit code to report at the end.
        #[serde(default)]
        exit_code: i32,
    },
}

/// A node directory bind-mounted into an OCI container (the EVE seed's volumes).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The directory on the node (absolute; under one of the launcher's `--volume-root`s).
    pub source: String,
    /// Where it appears in the container (absolute).
    pub destination: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// The network namespace of an OCI container (the EVE seed's choice of network).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OciNetwork {
    /// The node's own network (the default).
    #[default]
    Host,
    /// A namespace of its own with only loopback: no network.
    None,
    /// A named namespace of the node (`ip netns add NAME`), by path: `/run/netns/NAME`.
    Namespace(String),
}

impl OciNetwork {
    /// Whether it is the node's own network.
    pub fn is_host(&self) -> bool {
        *self == Self::Host
    }
}

/// How a VM's CPU runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAccel {
    /// KVM when the node has it and the guest is of its own architecture, else emulation.
    #[default]
    Auto,
    /// KVM only (the workload requires the node's `kvm` feature).
    Kvm,
    /// Emulation (TCG) always: slower, but starts at once and runs anywhere.
    Tcg,
}

impl VmAccel {
    /// Whether it is the default.
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// A launcher that takes part in live migrations of `vm` instances (`--migration-listen`)
/// offers this feature; both ends of a migration need it.
pub const MIGRATE_FEATURE: &str = "migrate";

/// A launcher offers the feature `vm:ARCH` for each guest architecture it has a device model
/// (`qemu-system-ARCH`) for; a VM workload of that architecture requires it.
pub fn vm_feature(arch: &str) -> String {
    format!("vm:{}", canonical_arch(arch))
}

/// The kinds of binary artifact the `artifact` backend runs: the file name's extension, and the
/// runtime (a program among the node's hypervisor tools) that runs it.
pub const ARTIFACT_RUNTIMES: &[(&str, &str)] = &[("jar", "java")];

/// The kind of the artifact at `path` (its extension, when a runtime is known for it).
pub fn artifact_kind(path: &str) -> Option<&'static str> {
    let ext = std::path::Path::new(path).extension()?.to_str()?;
    ARTIFACT_RUNTIMES.iter().find(|(kind, _)| ext.eq_ignore_ascii_case(kind)).map(|(kind, _)| *kind)
}

/// A launcher offers the feature `runtime:KIND` for each kind of artifact it has a runtime for;
/// an `artifact` workload of that kind requires it.
pub fn runtime_feature(kind: &str) -> String {
    format!("runtime:{kind}")
}

/// The feature a launcher offers when it allows volumes (`--volume-root`); workloads with
/// volumes require it.
pub const VOLUMES_FEATURE: &str = "volumes";

/// A launcher offers each of its scripts (`--script NAME=PATH`: acceptance tests, linters —
/// the OBS seed's "additional scripting") as the feature `script:NAME`; a workload that runs
/// one as a check requires it.
pub fn script_feature(name: &str) -> String {
    format!("script:{name}")
}

/// Whether `name` can name a script: 1-64 of a-z, 0-9, `-`, `_`, `.`.
pub fn is_script_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl Backend {
    /// The backend's name as launchers advertise it in `features`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Process { .. } => "process",
            Self::Oci { .. } => "oci",
            Self::Systemd { .. } => "systemd",
            Self::Vm { .. } => "vm",
            Self::Artifact { .. } => "artifact",
            Self::Sim { .. } => "sim",
        }
    }

    /// Why an instance of this backend cannot move live to another node; `None` when it can (a
    /// `vm` without disks).
    pub const fn migration_refusal(&self) -> Option<&'static str> {
        match self {
            Self::Vm { disks, .. } if disks.is_empty() => None,
            // The guest's writes live in a snapshot beside the source's device model.
            Self::Vm { .. } => Some("a vm with disks does not migrate live: its writes are in a snapshot on its node"),
            _ => Some("only vm instances migrate live; others are evacuated (stopped and started elsewhere)"),
        }
    }

    /// Whether an instance of this backend can move live (a `vm` without disks).
    pub const fn migrates(&self) -> bool {
        self.migration_refusal().is_none()
    }

    /// The environment its program gets, for backends that run one in an environment of the
    /// node's (`process`, `oci`, `systemd`, `artifact`); `None` for a guest or a simulation.
    pub fn env_mut(&mut self) -> Option<&mut BTreeMap<String, String>> {
        match self {
            Self::Process { env, .. }
            | Self::Systemd { env, .. }
            | Self::Oci { env, .. }
            | Self::Artifact { env, .. } => Some(env),
            Self::Vm { .. } | Self::Sim { .. } => None,
        }
    }
}

/// START (COMMAND 1): run one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The instance.
    pub instance_uuid: Uuid,
    /// Tenant the instance belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_uuid: Option<Uuid>,
    /// The tenant's name, as the controller knows it: launchers run each tenant's workloads as
    /// its own user (`--tenant-user`, or one allocated per tenant). At most
    /// [`MAX_TENANT_NAME`] bytes; launchers refuse longer names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The workload asks to run as root; only nodes that allow it (feature `root`) run it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub run_as_root: bool,
    /// Workload the instance belongs to (memory estimates are kept per workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_uuid: Option<Uuid>,
    /// Work class.
    pub class: WorkClass,
    /// Higher runs first within a class.
    #[serde(default)]
    pub priority: u32,
    /// Latest start time, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
    /// Resources and placement constraints.
    pub requirements: Requirements,
    /// How to run it.
    pub backend: Backend,
    /// True when this is a restart of an instance that ran before (maybe elsewhere).
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
    /// Kill the instance after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_time_s: Option<u64>,
    /// The task's name (its workload's; `root/child` for a child task), at most
    /// [`MAX_TASK_NAME`] bytes: names the instance's unit and working directory on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The task's version, at most [`MAX_TASK_NAME`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A root task: its instance gets a state directory on the node kept across its runs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub root_task: bool,
    /// Parameters to write to `parameters.json` in the working directory (those passed as
    /// arguments are in the backend's argv already).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamValue>,
    /// Set by the scheduler when the START is the destination's half of a live migration: the
    /// node the instance runs on now. The launcher starts it waiting for its state
    /// (MIGRATION_READY), reports it only once the migration is committed (MIGRATE_END).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_from: Option<Uuid>,
    /// Set by the scheduler when it forwards START: the chosen node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_agent_uuid: Option<Uuid>,
    /// Set by the scheduler when it forwards START: the memory it charged the node, MiB (the
    /// request, or the workload's memory estimate). The launcher admits and accounts by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_mb: Option<u64>,
    /// What the job needs on each host/target architecture combination (cross builds); the
    /// launcher applies the first that matches its own architecture ([`arch_setup`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_setups: Vec<ArchSetup>,
    /// Scripts of the node's to run, in order, after the program exits 0 (acceptance tests):
    /// the first that fails fails the instance with its exit code. Only nodes that offer them
    /// ([`script_feature`]) run it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

/// What a job needs on one combination of the node's architecture (`host`) and the one it
/// builds for or runs (`target`: the workload's `arch`, else the node's own) — the OBS seed's
/// cross-build package lists: on an i586 host building for armv7, install the cross compilers
/// and the host's `rpm-x86`; on an armv7 host, nothing extra. The instance finds the chosen
/// combination in its environment ([`ARCH_ENV`]) and applies it itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSetup {
    /// The node's architecture, or `*` for any.
    pub host: String,
    /// The target architecture; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Packages to install first (`DROVER_PACKAGES`, space-separated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Packages not to (re)install, or to remove (`DROVER_PACKAGES_SKIP`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
    /// More environment for this combination.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The environment variables an instance is told its architectures and setup in:
/// `DROVER_HOST_ARCH`, `DROVER_TARGET_ARCH`, `DROVER_PACKAGES`, `DROVER_PACKAGES_SKIP`.
pub const ARCH_ENV: [&str; 4] = ["DROVER_HOST_ARCH", "DROVER_TARGET_ARCH", "DROVER_PACKAGES", "DROVER_PACKAGES_SKIP"];

impl ArchSetup {
    /// Whether it is for a node of architecture `host` running `target`.
    pub fn applies(&self, host: &str, target: &str) -> bool {
        (self.host == "*" || canonical_arch(&self.host) == canonical_arch(host))
            && self.target.as_deref().is_none_or(|t| canonical_arch(t) == canonical_arch(target))
    }
}

/// The combination a node of architecture `host` uses for a job that wants `target` (`None`:
/// the node's own): the first of `setups` that applies, and the environment that tells the
/// instance about it (the architectures always; packages and extra variables when one applies).
pub fn arch_setup<'a>(
    setups: &'a [ArchSetup],
    host: &str,
    target: Option<&str>,
) -> (Option<&'a ArchSetup>, BTreeMap<String, String>) {
    let host = canonical_arch(host);
    let target = canonical_arch(target.unwrap_or(host));
    let chosen = setups.iter().find(|s| s.applies(host, target));
    let mut env = chosen.map(|s| s.env.clone()).unwrap_or_default();
    let [host_var, target_var, packages_var, skip_var] = ARCH_ENV;
    env.insert(host_var.to_owned(), host.to_owned());
    env.insert(target_var.to_owned(), target.to_owned());
    env.insert(packages_var.to_owned(), chosen.map(|s| s.packages.join(" ")).unwrap_or_default());
    env.insert(skip_var.to_owned(), chosen.map(|s| s.skip.join(" ")).unwrap_or_default());
    (chosen, env)
}

/// A task parameter's value (sd-taskpacker's `a{sv}`), checked against the task's schema by
/// the controller.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// true or false.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Text.
    Text(String),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// Longest task name or version a START may carry, bytes.
pub const MAX_TASK_NAME: usize = 200;

/// Longest tenant name a START may carry, bytes.
pub const MAX_TENANT_NAME: usize = 128;

/// The feature a node offers when it runs workloads as root on request (`--allow-root`).
pub const ROOT_FEATURE: &str = "root";

impl Start {
    /// The memory this instance is charged on its node, MiB: what the scheduler granted
    /// (`charge_mb`; the request when nothing was granted), by [`charge_mb`]'s rule.
    pub fn charged_mb(&self) -> u64 {
        charge_mb(self.charge_mb.unwrap_or(self.requirements.mem_mb), self.requirements.mem_mb)
    }

    /// A workorder START with the given essentials and every optional field empty; set the
    /// others by field (`Start { priority: 3, ..Start::new(…) }`).
    pub fn new(instance_uuid: Uuid, requirements: Requirements, backend: Backend) -> Self {
        Self {
            instance_uuid,
            tenant_uuid: None,
            tenant: None,
            run_as_root: false,
            workload_uuid: None,
            class: WorkClass::Workorder,
            priority: 0,
            deadline_unix_ms: None,
            requirements,
            backend,
            restart: false,
            max_run_time_s: None,
            name: None,
            version: None,
            root_task: false,
            parameters: BTreeMap::new(),
            migrate_from: None,
            workload_agent_uuid: None,
            charge_mb: None,
            arch_setups: Vec::new(),
            checks: Vec::new(),
        }
    }
}

/// STOP (COMMAND 2): stop an instance, keep its results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it runs on.
    pub workload_agent_uuid: Uuid,
    /// Time between SIGTERM and SIGKILL, ms; the launcher's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

/// DELETE (COMMAND 5): remove an instance and its results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it is on.
    pub workload_agent_uuid: Uuid,
    /// ciao's "stop" flag: remove from this node but keep the instance in the cluster (the
    /// launcher then reports InstanceStopped instead of InstanceDeleted).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop: bool,
}

/// RESTART (COMMAND 6): restart an instance on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it is on.
    pub workload_agent_uuid: Uuid,
}

/// EVACUATE (COMMAND 4): maintenance, stop everything, let it run elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evacuate {
    /// The node.
    pub workload_agent_uuid: Uuid,
    /// Stop deadline per instance, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// A graceful drain (OBS's graceful worker shutdown): no new work, running instances may
    /// finish for this long (ms), and what is left then is stopped. None: stop them now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
}

/// RESTORE (COMMAND 12): leave maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The node.
    pub workload_agent_uuid: Uuid,
}

/// LOG_FETCH (COMMAND 16): ask for the tail of an instance's `results/output.txt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFetch {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it is on.
    pub workload_agent_uuid: Uuid,
    /// At most this many bytes from the end.
    pub max_bytes: u32,
    /// Echoed in the answer so the requester can match it.
    #[serde(default)]
    pub request_id: u64,
}

// === events ===

/// INSTANCE_DELETED / INSTANCE_STOPPED / INSTANCE_STARTED: something happened to one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEvent {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it was on (ciao left this out; Drover always fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uuid: Option<Uuid>,
}

/// Why an instance's workload ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code.
    Failed,
    /// Killed by the memory limit.
    Oom,
    /// Killed by a signal or by max run time.
    Killed,
    #[serde(other)]
    Unknown,
}

/// INSTANCE_EXITED (EVENT 17): a workload ended by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceExited {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The node it ran on.
    pub node_uuid: Uuid,
    /// Exit code, when it exited rather than was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub reason: ExitReason,
}

/// INSTANCE_QUEUED (EVENT 18): a START waits in the scheduler's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceQueued {
    /// The instance.
    pub instance_uuid: Uuid,
    /// Why it waits, counted over the nodes ("0 of 12 nodes fit: …").
    pub reason: String,
    /// Position in the queue (0 = next).
    #[serde(default)]
    pub position: u32,
}

/// Kind of node in NODE_CONNECTED / NODE_DISCONNECTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum NodeType {
    ComputeNode,
    NetworkNode,
    #[serde(other)]
    Unknown,
}

/// NODE_CONNECTED (EVENT 7) / NODE_DISCONNECTED (EVENT 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The node.
    pub node_uuid: Uuid,
    /// Its kind.
    pub node_type: NodeType,
}

/// NODE_LOST (EVENT 19): a node stayed silent past TTL + grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLost {
    /// The node.
    pub node_uuid: Uuid,
    /// Instances the scheduler believed were on it.
    pub instances: Vec<Uuid>,
}

/// One SSNTP hop of a traced frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceNode {
    /// The peer.
    pub ssntp_node_uuid: Uuid,
    /// Its role.
    pub ssntp_role: Role,
    /// Sent, Unix ns.
    pub tx_timestamp: u64,
    /// Received, Unix ns.
    pub rx_timestamp: u64,
}

/// One traced frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceFrame {
    /// Label of the trace.
    pub label: String,
    /// Frame type byte.
    #[serde(rename = "type")]
    pub frame_type: u8,
    /// Operand byte.
    pub operand: u8,
    /// Start, Unix ns.
    pub start_timestamp: u64,
    /// End, Unix ns.
    pub end_timestamp: u64,
    /// Hops.
    pub nodes: Vec<TraceNode>,
}

/// TRACE_REPORT (EVENT 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// Traced frames.
    pub frames: Vec<TraceFrame>,
}

/// LOG_DATA (EVENT 20): answer to LOG_FETCH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogData {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The request this answers.
    #[serde(default)]
    pub request_id: u64,
    /// The tail of the output (lossy UTF-8).
    pub data: String,
    /// Whether earlier output was cut off.
    #[serde(default)]
    pub truncated: bool,
}

// === errors ===

/// Why something failed: ciao's reasons plus Drover's own. Sent as snake_case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Scheduler: no node fits (ciao).
    FullCloud,
    /// Launcher: this node is full (ciao); the scheduler retries elsewhere.
    FullCn,
    /// Scheduler: no compute node is connected (ciao).
    NoCn,
    /// The node is in maintenance (ciao).
    NodeMaintenance,
    /// The payload could not be decoded (ciao).
    InvalidPayload,
    /// The payload decoded but its values are unacceptable (ciao).
    InvalidData,
    /// The instance already runs here (ciao; not fatal).
    AlreadyRunning,
    /// The instance already exists here (ciao; not fatal).
    InstanceExists,
    /// The image or rootfs is unusable (ciao).
    ImageFailure,
    /// The workload could not be started (ciao).
    LaunchFailure,
    /// No such instance on the node (ciao).
    NoInstance,
    /// Scheduler: the START waited in the queue past its timeout or deadline.
    QueueTimeout,
    /// Scheduler: the queue is full.
    QueueFull,
    /// Scheduler: the named node is not connected.
    NoNode,
    /// The sender may not send this command (not the master controller, wrong role).
    NotPermitted,
    /// Launcher: the backend the workload asks for is not offered here.
    UnknownBackend,
    /// Launcher: limits were required but no cgroup controller is usable.
    NoLimits,
    /// Launcher: stopping failed.
    StopFailed,
    /// A reason this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl FailureReason {
    /// Whether retrying the same request unchanged is pointless (ciao's `IsFatal`, with
    /// `full_cn` made non-fatal because the scheduler retries it on another node).
    pub const fn is_fatal(self) -> bool {
        !matches!(self, Self::AlreadyRunning | Self::InstanceExists | Self::FullCn)
    }
}

/// START_FAILURE (ERROR 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartFailure {
    /// The node that refused, or none when the scheduler refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uuid: Option<Uuid>,
    /// The instance.
    pub instance_uuid: Uuid,
    /// Why.
    pub reason: FailureReason,
    /// Whether the START was a restart.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
    /// Human explanation, e.g. "0 of 12 nodes fit: 7 insufficient memory, 5 maintenance".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// STOP_FAILURE, RESTART_FAILURE, DELETE_FAILURE (ERROR 2, 4, 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFailure {
    /// The node that failed, or none when the scheduler answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uuid: Option<Uuid>,
    /// The instance.
    pub instance_uuid: Uuid,
    /// Why.
    pub reason: FailureReason,
    /// Human explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// How long a live migration may take, from MIGRATE to the source's MIGRATION_DONE, ms: the
/// scheduler abandons one that takes longer, and a live evacuation waits no longer.
pub const MIGRATION_TIMEOUT_MS: u64 = 600_000;

/// MIGRATE (COMMAND 20): move a running `vm` instance to another node without stopping it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migrate {
    /// The instance's START as it was placed (the destination runs the same workload).
    pub start: Start,
    /// The node it runs on, as the controller knows it.
    pub from_node: Uuid,
    /// The destination; the scheduler chooses by its placement rules when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node: Option<Uuid>,
}

/// MIGRATE_OUT (COMMAND 21): the source launcher sends the instance's state to `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateOut {
    /// The instance.
    pub instance_uuid: Uuid,
    /// The destination node (its certificate must name this UUID).
    pub to_node: Uuid,
    /// Where the destination launcher takes the state (`host:port`, mutual TLS).
    pub address: String,
}

/// MIGRATE_END (COMMAND 22): the migration is over. Committed: the destination runs the
/// instance from now and the source drops its paused copy. Abandoned: the source's copy runs
/// on and the destination drops its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateEnd {
    /// The instance.
    pub instance_uuid: Uuid,
    /// Whether the destination now holds it.
    pub committed: bool,
    /// The destination: a launcher that is not it is the source (each knows its part from
    /// this, even after a restart that made it forget).
    pub to_node: Uuid,
}

/// MIGRATION_READY (EVENT 23): the destination waits for the instance's state at `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReady {
    /// The instance.
    pub instance_uuid: Uuid,
    /// `host:port` of the destination launcher's migration listener.
    pub address: String,
}

/// MIGRATION_DONE (EVENT 24): from the source, the state was copied (`ok`) and its copy is
/// paused; from either side, the copy failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationDone {
    /// The instance.
    pub instance_uuid: Uuid,
    /// Whether the state was copied.
    pub ok: bool,
    /// What went wrong, for the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// INSTANCE_MIGRATED (EVENT 25): a migration's outcome, for the controllers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMigrated {
    /// The instance.
    pub instance_uuid: Uuid,
    /// Where it ran.
    pub from_node: Uuid,
    /// Where it was to go (absent when no destination was found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node: Option<Uuid>,
    /// Whether it runs at `to_node` now; otherwise it runs on at `from_node`.
    pub ok: bool,
    /// Why not, for the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// COMMAND_FAILURE (ERROR 17): EVACUATE, RESTORE or LOG_FETCH failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailure {
    /// Name of the command that failed (`EVACUATE`, `RESTORE`, `LOG_FETCH`).
    pub command: String,
    /// The node it was meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uuid: Option<Uuid>,
    /// Instance, for LOG_FETCH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_uuid: Option<Uuid>,
    /// Why.
    pub reason: FailureReason,
    /// Human explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// INVALID_FRAME_TYPE, CONNECTION_FAILURE, CONNECTION_ABORTED, INVALID_CONFIGURATION,
/// INVALID_PAYLOAD: a protocol-level refusal. The brief pins at least `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What went wrong, for a person.
    pub reason: String,
}

// === the message table ===

/// Who may send a message to the scheduler (see the table in `docs/ssntp.md`).
mod senders {
    use crate::Role;

    /// Anyone (CONNECT: the role is checked against the certificate in the handshake).
    pub(super) const ANYONE: Role = Role::from_bits(u32::MAX);
    /// No client: only the scheduler sends it.
    pub(super) const SCHEDULER_ONLY: Role = Role::NONE;
    /// Controllers.
    pub(super) const CONTROLLERS: Role = Role::CONTROLLER;
    /// Launchers of every kind.
    pub(super) const AGENTS: Role = Role::AGENT.union(Role::NETAGENT).union(Role::CNCIAGENT);
    /// Controllers and launchers.
    pub(super) const PEERS: Role = CONTROLLERS.union(AGENTS);
}

/// How a payload is written: one CBOR value, an optional one (empty payload for none), or
/// nothing.
mod codec {
    use bytes::Bytes;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::{empty, from_cbor, optional, to_cbor, PayloadError};
    use crate::Kind;

    pub(super) fn encode_cbor<T: Serialize>(value: &T) -> Bytes {
        to_cbor(value)
    }

    pub(super) fn decode_cbor<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, PayloadError> {
        from_cbor(kind, bytes)
    }

    pub(super) fn encode_optional<T: Serialize>(value: &Option<T>) -> Bytes {
        value.as_ref().map_or_else(Bytes::new, to_cbor)
    }

    pub(super) fn decode_optional<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<Option<T>, PayloadError> {
        optional(kind, bytes)
    }

    pub(super) fn decode_empty(kind: Kind, bytes: &[u8]) -> Result<(), PayloadError> {
        empty(kind, bytes)
    }
}

/// Builds [`Message`] from one table: each variant with its payload type and codec, the frame
/// kind it travels as, and who may send it. The enum, `kind`, `encode_payload`,
/// `decode_payload` and `allowed_senders` all come from the table, so a new message is one line
/// here (and its operand in `frame.rs`).
macro_rules! messages {
    (
        with payload { $( $(#[$meta:meta])* $variant:ident($ty:ty) via $encode:ident / $decode:ident = [$($kind:tt)+] from $senders:ident; )+ }
        without payload { $( $(#[$bmeta:meta])* $bare:ident = [$($bkind:tt)+] from $bsenders:ident; )+ }
    ) => {
        /// A decoded frame payload, one variant per frame kind.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)] // Each variant is named after its frame kind (see docs/ssntp.md).
        pub enum Message {
            $( $(#[$meta])* $variant($ty), )+
            $( $(#[$bmeta])* $bare, )+
        }

        impl Message {
            /// The frame kind this message travels as.
            pub const fn kind(&self) -> Kind {
                #[allow(unused_imports)]
                use Kind::{Command as C, Error as X, Event as E, Status as S};
                match self {
                    $( Self::$variant(_) => $($kind)+, )+
                    $( Self::$bare => $($bkind)+, )+
                }
            }

            /// The payload bytes.
            pub fn encode_payload(&self) -> Bytes {
                match self {
                    $( Self::$variant(p) => codec::$encode(p), )+
                    $( Self::$bare => Bytes::new(), )+
                }
            }

            /// Like [`Message::decode`], from a kind and payload bytes.
            ///
            /// # Errors
            /// See [`Message::decode`].
            pub fn decode_payload(kind: Kind, p: &[u8]) -> Result<Self, PayloadError> {
                #[allow(unused_imports)]
                use Kind::{Command as C, Error as X, Event as E, Status as S};
                Ok(match kind {
                    $( $($kind)+ => Self::$variant(codec::$decode(kind, p)?), )+
                    $( $($bkind)+ => {
                        codec::decode_empty(kind, p)?;
                        Self::$bare
                    } )+
                })
            }

            /// The roles that may send this message to the scheduler (see the table in
            /// `docs/ssntp.md`). The server refuses a frame from any other role.
            pub const fn allowed_senders(&self) -> Role {
                match self {
                    $( Self::$variant(_) => senders::$senders, )+
                    $( Self::$bare => senders::$bsenders, )+
                }
            }
        }
    };
}

messages! {
    with payload {
        Connect(Connect) via encode_cbor / decode_cbor = [C(Command::Connect)] from ANYONE;
        Start(Start) via encode_cbor / decode_cbor = [C(Command::Start)] from CONTROLLERS;
        Stop(Stop) via encode_cbor / decode_cbor = [C(Command::Stop)] from CONTROLLERS;
        Stats(Stats) via encode_cbor / decode_cbor = [C(Command::Stats)] from AGENTS;
        Evacuate(Evacuate) via encode_cbor / decode_cbor = [C(Command::Evacuate)] from CONTROLLERS;
        Delete(Delete) via encode_cbor / decode_cbor = [C(Command::Delete)] from CONTROLLERS;
        Restart(Restart) via encode_cbor / decode_cbor = [C(Command::Restart)] from CONTROLLERS;
        Configure(Configure) via encode_cbor / decode_cbor = [C(Command::Configure)] from CONTROLLERS;
        Restore(Restore) via encode_cbor / decode_cbor = [C(Command::Restore)] from CONTROLLERS;
        LogFetch(LogFetch) via encode_cbor / decode_cbor = [C(Command::LogFetch)] from CONTROLLERS;
        ReportRequest(ReportRequest) via encode_cbor / decode_cbor = [C(Command::ReportRequest)] from CONTROLLERS;
        NodeForget(NodeForget) via encode_cbor / decode_cbor = [C(Command::NodeForget)] from CONTROLLERS;
        Plan(Plan) via encode_cbor / decode_cbor = [C(Command::Plan)] from CONTROLLERS;
        Migrate(Migrate) via encode_cbor / decode_cbor = [C(Command::Migrate)] from CONTROLLERS;
        MigrateOut(MigrateOut) via encode_cbor / decode_cbor = [C(Command::MigrateOut)] from SCHEDULER_ONLY;
        MigrateEnd(MigrateEnd) via encode_cbor / decode_cbor = [C(Command::MigrateEnd)] from SCHEDULER_ONLY;

        Connected(Connected) via encode_cbor / decode_cbor = [S(Status::Connected)] from SCHEDULER_ONLY;
        Ready(NodeReport) via encode_cbor / decode_cbor = [S(Status::Ready)] from AGENTS;
        /// FULL may carry the same report as READY.
        Full(Option<NodeReport>) via encode_optional / decode_optional = [S(Status::Full)] from AGENTS;
        /// MAINTENANCE may carry the same report as READY.
        Maintenance(Option<NodeReport>) via encode_optional / decode_optional = [S(Status::Maintenance)] from AGENTS;

        InvalidFrameType(ErrorReport) via encode_cbor / decode_cbor = [X(ErrorCode::InvalidFrameType)] from PEERS;
        StartFailure(StartFailure) via encode_cbor / decode_cbor = [X(ErrorCode::StartFailure)] from PEERS;
        StopFailure(InstanceFailure) via encode_cbor / decode_cbor = [X(ErrorCode::StopFailure)] from PEERS;
        ConnectionFailure(ErrorReport) via encode_cbor / decode_cbor = [X(ErrorCode::ConnectionFailure)] from PEERS;
        RestartFailure(InstanceFailure) via encode_cbor / decode_cbor = [X(ErrorCode::RestartFailure)] from PEERS;
        DeleteFailure(InstanceFailure) via encode_cbor / decode_cbor = [X(ErrorCode::DeleteFailure)] from PEERS;
        ConnectionAborted(ErrorReport) via encode_cbor / decode_cbor = [X(ErrorCode::ConnectionAborted)] from PEERS;
        InvalidConfiguration(ErrorReport) via encode_cbor / decode_cbor = [X(ErrorCode::InvalidConfiguration)] from PEERS;
        InvalidPayload(ErrorReport) via encode_cbor / decode_cbor = [X(ErrorCode::InvalidPayload)] from PEERS;
        CommandFailure(CommandFailure) via encode_cbor / decode_cbor = [X(ErrorCode::CommandFailure)] from PEERS;

        InstanceDeleted(InstanceEvent) via encode_cbor / decode_cbor = [E(Event::InstanceDeleted)] from AGENTS;
        TraceReport(TraceReport) via encode_cbor / decode_cbor = [E(Event::TraceReport)] from PEERS;
        NodeConnected(NodeEvent) via encode_cbor / decode_cbor = [E(Event::NodeConnected)] from SCHEDULER_ONLY;
        NodeDisconnected(NodeEvent) via encode_cbor / decode_cbor = [E(Event::NodeDisconnected)] from SCHEDULER_ONLY;
        InstanceStopped(InstanceEvent) via encode_cbor / decode_cbor = [E(Event::InstanceStopped)] from AGENTS;
        InstanceStarted(InstanceEvent) via encode_cbor / decode_cbor = [E(Event::InstanceStarted)] from AGENTS;
        InstanceExited(InstanceExited) via encode_cbor / decode_cbor = [E(Event::InstanceExited)] from AGENTS;
        InstanceQueued(InstanceQueued) via encode_cbor / decode_cbor = [E(Event::InstanceQueued)] from SCHEDULER_ONLY;
        NodeLost(NodeLost) via encode_cbor / decode_cbor = [E(Event::NodeLost)] from SCHEDULER_ONLY;
        LogData(LogData) via encode_cbor / decode_cbor = [E(Event::LogData)] from AGENTS;
        InstanceNews(InstanceNews) via encode_cbor / decode_cbor = [E(Event::InstanceNews)] from AGENTS;
        PlanAnswer(PlanAnswer) via encode_cbor / decode_cbor = [E(Event::PlanAnswer)] from SCHEDULER_ONLY;
        MigrationReady(MigrationReady) via encode_cbor / decode_cbor = [E(Event::MigrationReady)] from AGENTS;
        MigrationDone(MigrationDone) via encode_cbor / decode_cbor = [E(Event::MigrationDone)] from AGENTS;
        InstanceMigrated(InstanceMigrated) via encode_cbor / decode_cbor = [E(Event::InstanceMigrated)] from SCHEDULER_ONLY;
    }
    without payload {
        Offline = [S(Status::Offline)] from AGENTS;
    }
}

fn to_cbor<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail, and every payload type serialises (no maps with
    // non-string keys, no unsupported types); a failure here is a bug in this file.
    ciborium::into_writer(value, &mut out).expect("payload serialises to CBOR");
    Bytes::from(out)
}

/// Decodes `bytes` as exactly one CBOR value of type `T`.
fn from_cbor<T: serde::de::DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, PayloadError> {
    let mut rest = bytes;
    let value = ciborium::from_reader(&mut rest).map_err(|e| PayloadError { kind, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(PayloadError { kind, reason: format!("{} bytes after the payload", rest.len()) });
    }
    Ok(value)
}

fn optional<T: serde::de::DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<Option<T>, PayloadError> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        from_cbor(kind, bytes).map(Some)
    }
}

fn empty(kind: Kind, bytes: &[u8]) -> Result<(), PayloadError> {
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(PayloadError { kind, reason: "expected an empty payload".into() })
    }
}

impl Message {
    /// The message as a frame from `origin`.
    pub fn to_frame(&self, origin: Uuid) -> Frame {
        Frame { kind: self.kind(), origin, payload: self.encode_payload() }
    }

    /// Decodes the payload of `frame` as the type its kind names.
    ///
    /// # Errors
    /// The payload is not one CBOR value of that type, lacks a required key, or is non-empty
    /// where the kind carries none.
    pub fn decode(frame: &Frame) -> Result<Self, PayloadError> {
        Self::decode_payload(frame.kind, &frame.payload)
    }
}

#[cfg(test)]
mod charge_tests {
    use super::*;

    #[test]
    fn charges_are_whole_chunks_and_never_above_the_request() {
        // A batch request (whole chunks) with an estimate below it: the estimate in chunks.
        assert_eq!(charge_mb(45, 128), 64);
        assert_eq!(charge_mb(64, 128), 64);
        assert_eq!(charge_mb(65, 128), 96);
        // Never above the request, whatever was granted.
        assert_eq!(charge_mb(500, 128), 128);
        // A workorder asking for less than a chunk, or for a part of one, is charged what it asks.
        assert_eq!((charge_mb(4, 4), charge_mb(100, 100), charge_mb(90, 100)), (4, 100, 96));
        assert_eq!(SizeClass::ALL.map(SizeClass::mem_mb), [32, 128, 256, 1024]);
        assert!(SizeClass::ALL.iter().all(|c| c.mem_mb() % MEMORY_CHUNK_MB == 0));
    }
}

#[cfg(test)]
mod arch_setup_tests {
    use super::*;

    fn setup(host: &str, target: Option<&str>, packages: &[&str]) -> ArchSetup {
        ArchSetup {
            host: host.into(),
            target: target.map(Into::into),
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
            ..ArchSetup::default()
        }
    }

    #[test]
    fn each_host_and_target_combination_gets_its_own_package_list() {
        // The OBS seed's example: an i586 host building for armv7 adds cross compilers and the
        // host's rpm; an armv7 host builds natively and adds nothing.
        let setups = [
            setup("i586", Some("armv7"), &["cross-arm-gcc", "rpm-x86", "bash-x86"]),
            setup("armv7", None, &[]),
            setup("*", None, &["qemu-user-static"]),
        ];
        let (chosen, env) = arch_setup(&setups, "i586", Some("armv7"));
        assert_eq!(chosen, Some(&setups[0]));
        assert_eq!(env["DROVER_PACKAGES"], "cross-arm-gcc rpm-x86 bash-x86");
        assert_eq!((env["DROVER_HOST_ARCH"].as_str(), env["DROVER_TARGET_ARCH"].as_str()), ("i586", "arm"));
        let (chosen, env) = arch_setup(&setups, "arm", Some("armhf"));
        assert_eq!(chosen, Some(&setups[1]), "aliases name the same machines");
        assert_eq!(env["DROVER_PACKAGES"], "");
        let (chosen, env) = arch_setup(&setups, "x86_64", Some("arm"));
        assert_eq!(chosen, Some(&setups[2]), "the first that applies; `*` is any host");
        assert_eq!(env["DROVER_TARGET_ARCH"], "arm");
        let (chosen, env) = arch_setup(&setups[..2], "x86_64", None);
        assert_eq!(chosen, None, "none applies");
        assert_eq!(
            (env["DROVER_HOST_ARCH"].as_str(), env["DROVER_TARGET_ARCH"].as_str(), env["DROVER_PACKAGES"].as_str()),
            ("x86_64", "x86_64", ""),
            "no target: the node's own"
        );
    }
}
