//! The scheduler's pure core (`drover-scheduler-core`): no IO, no tokio, no clap; the
//! `drover-scheduler` binary is the shell around it.
//!
//! [`Hub::handle`] takes the current time and one [`Input`] (a peer connected or disconnected, a
//! checked frame arrived) and returns the [`Output`]s it causes; [`Hub::tick`] does what time
//! alone causes (queue timeouts, node loss). No IO, no ambient clock, no randomness: every rule
//! is a unit or property test.
//!
//! # Layout
//! - [`nodes`]: the node table, capacity with overcommit, charges and reservations, fit checks.
//! - [`placement`]: the policies (spread, bin-pack, ciao's first fit) and explanations.
//! - [`queue`]: STARTs waiting for room, in class/priority/deadline/arrival order.
//! - [`estimate`]: real versus requested memory per workload.
//! - `migrate`: live migration of `vm` instances: the destination chosen and charged while the
//!   state is copied, the outcome committed or abandoned.
//!
//! Rules in brief: only the master controller commands (the first connected; the next is
//! promoted when it leaves); a START is placed at once, or queued with its reason, or refused
//! (`queue_full`, `queue_timeout`); a launcher's `full_cn` is retried on another node; commands
//! for a node that is not connected are answered with an error; EVACUATE closes a node to new
//! work at once; a node silent for TTL + grace is declared lost (NODE_LOST with its instances),
//! unless most nodes went silent together (the brake) or the scheduler started less than the
//! failover grace ago.

#![forbid(unsafe_code)]

pub mod estimate;
mod migrate;
pub mod nodes;
pub mod placement;
pub mod queue;

use drover_model::NodeStatus;
pub use drover_model::Now;
use drover_model::Overcommit;
use ssntp::payload::{
    ClusterConfig, CommandFailure, FailureReason, InstanceEvent, InstanceFailure, InstanceQueued, Message, NodeEvent,
    NodeLost, NodeReport, NodeType, ReportRequest, Start, StartFailure,
};
use ssntp::{Frame, Role, Uuid};

use self::estimate::Estimator;
pub use self::migrate::MIGRATION_TIMEOUT_MS;
use self::nodes::{Need, Node, NodeTable, Placed};
pub use self::placement::Policy;
use self::queue::{Queue, QueueKey, Queued};

/// How many queued STARTs one event may place (bounds the work per event).
const DRAIN_LIMIT: usize = 256;

/// How often, at most, a node's heartbeat (a STATS without a digest page) goes on to the
/// controllers while its status stays the same, ms. Controllers need a change of status at
/// once and the figures only to show them; a thousand nodes reporting every second would
/// otherwise cost every controller a thousand frames a second.
pub const HEARTBEAT_FORWARD_MS: u64 = 5_000;

/// How many queued STARTs, from the head, have their reason recomputed every tick.
pub const REEXPLAIN_LIMIT: usize = 64;

/// Longest a stopping launcher may ask its workloads to be held (`away_grace_ms`), ms.
pub const MAX_AWAY_GRACE_MS: u64 = 24 * 3600 * 1000;

/// Most nodes a controller can make this scheduler expect (nodes it never saw connect): a
/// bound on what a controller's REPORT_REQUESTs can make it remember.
pub const MAX_EXPECTED_NODES: usize = 65_536;

/// How long a lost, disconnected node (and an unused estimate) is remembered, ms.
pub const FORGET_AFTER_MS: u64 = 3_600_000;
/// How many queued STARTs one event may look at, from the head of the queue.
const LOOK_LIMIT: usize = 4096;

/// The scheduler's knobs (the command line's, validated).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Placement policy.
    pub policy: Policy,
    /// vCPUs and memory offered per CPU and MiB of a node (sent to launchers, which admit by
    /// the same rule).
    pub overcommit: Overcommit,
    /// Load average per online CPU above which a node takes no new work.
    pub load_threshold: f64,
    /// How long a START may wait in the queue, ms.
    pub queue_timeout_ms: u64,
    /// Most STARTs in the queue.
    pub queue_max: usize,
    /// A node silent this long is suspect, ms.
    pub node_ttl_ms: u64,
    /// A suspect node is declared lost after this much more, ms.
    pub node_grace_ms: u64,
    /// After the scheduler starts, no node is declared lost for this long, ms.
    pub failover_grace_ms: u64,
    /// Charge memory estimates instead of requests.
    pub estimate: bool,
    /// Fraction of nodes silent at once that engages the brake.
    pub brake_fraction: f64,
    /// Fewest silent nodes that engage the brake.
    pub brake_min_nodes: usize,
    /// Most STARTs a node may have placed and not yet confirmed; more wait (backpressure).
    pub start_window: usize,
    /// Queue work no known node could ever take (nodes that can are expected to join), instead
    /// of refusing it at once with `full_cloud`.
    pub wait_for_capacity: bool,
    /// Strong workers for big jobs: a START charged at least this much memory (MiB) goes to the
    /// fastest node that fits (highest CPU score), before the policy's order; the others still
    /// take it when no fast one fits.
    pub strong_workers_mb: Option<u64>,
    /// Reservations for big jobs: a START charged at least this much memory (MiB) that no node
    /// fits now gets a node of its own that could hold it (the one with the most free memory):
    /// that node takes no other work until enough of its own has ended, then this START. Big
    /// jobs are otherwise starved by small ones that take every bit of room freed.
    pub reserve_big_mb: Option<u64>,
    /// As `reserve_big_mb`, for a START asking at least this much disk (MiB): the OBS seed's
    /// huge jobs that need large disk space.
    pub reserve_big_disk_mb: Option<u64>,
    /// As `reserve_big_mb`, for a START asking at least this many vCPUs.
    pub reserve_big_vcpus: Option<u32>,
    /// Most nodes reserved at once (the rest of the cluster keeps taking small work).
    pub reserve_max: usize,
}

impl Config {
    /// Whether a START of `need` is big enough for a node of its own (`reserve_big_*`), and
    /// in what: disk first (the node with the most free disk is the least to wait for), else
    /// memory or vCPUs (the most free memory).
    fn big(&self, need: &Need<'_>) -> Option<BigBy> {
        if self.reserve_big_disk_mb.is_some_and(|least| need.requirements.disk_mb >= least) {
            Some(BigBy::Disk)
        } else if self.reserve_big_mb.is_some_and(|least| need.charge_mb >= least)
            || self.reserve_big_vcpus.is_some_and(|least| need.vcpus >= least)
        {
            Some(BigBy::Memory)
        } else {
            None
        }
    }

    /// Whether any kind of START gets a node reserved.
    const fn reserves(&self) -> bool {
        self.reserve_big_mb.is_some() || self.reserve_big_disk_mb.is_some() || self.reserve_big_vcpus.is_some()
    }
}

/// What makes a START big, for choosing the node to reserve for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BigBy {
    Disk,
    Memory,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::Spread,
            overcommit: Overcommit::default(),
            load_threshold: 4.0,
            queue_timeout_ms: 300_000,
            queue_max: 100_000,
            node_ttl_ms: 10_000,
            node_grace_ms: 10_000,
            failover_grace_ms: 300_000,
            estimate: false,
            brake_fraction: 0.55,
            brake_min_nodes: 3,
            start_window: 256,
            wait_for_capacity: false,
            strong_workers_mb: None,
            reserve_big_mb: None,
            reserve_big_disk_mb: None,
            reserve_big_vcpus: None,
            reserve_max: 1,
        }
    }
}

/// Something that happened at the shell.
#[derive(Debug)]
// A decoded message is ~320 bytes and moved once; boxing it would allocate per frame.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// A peer finished the handshake.
    Connected {
        /// Its connection.
        conn_id: u64,
        /// Its UUID.
        uuid: Uuid,
        /// Its role.
        role: Role,
        /// A controller's leadership term (see [`ssntp::payload::Connect::term`]).
        term: Option<u64>,
    },
    /// A peer's connection ended.
    Disconnected {
        /// The connection that ended (a stale one is ignored if the peer already reconnected).
        conn_id: u64,
        /// The peer.
        uuid: Uuid,
    },
    /// A peer sent a checked frame.
    Message {
        /// The peer.
        from: Uuid,
        /// Its role.
        role: Role,
        /// The raw frame, forwarded unchanged where possible (`None` in tests that only care
        /// about decisions).
        frame: Option<Frame>,
        /// The decoded payload.
        message: Message,
    },
}

/// What goes out: a message the hub decided, for the shell to encode, or a peer's frame passed
/// on as it came.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A message the hub decided (a START it placed, a refusal, an event), in the name of
    /// `origin` (the scheduler, or the controller a START came from).
    Message {
        /// Whose name the frame carries.
        origin: Uuid,
        /// The message.
        message: Box<Message>,
    },
    /// A peer's frame forwarded unchanged: never decoded twice or re-encoded on the way.
    Forward(Frame),
}

impl Payload {
    /// The frame to write.
    pub fn into_frame(self) -> Frame {
        match self {
            Self::Message { origin, message } => message.to_frame(origin),
            Self::Forward(frame) => frame,
        }
    }
}

/// What the shell must do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send to one peer.
    To {
        /// The peer.
        peer: Uuid,
        /// What to send.
        payload: Payload,
    },
    /// Send to every connected controller.
    ToControllers(Payload),
    /// Replace the cluster configuration (CONFIGURE).
    Configure(ClusterConfig),
    /// Something an operator should read in the log.
    Warn(String),
}

/// Figures for the heartbeat line and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Nodes by state: ready, full, maintenance, not ready, disconnected, lost.
    pub ready: usize,
    /// Reported FULL.
    pub full: usize,
    /// Evacuated or reported MAINTENANCE.
    pub maintenance: usize,
    /// Connected but not (yet) READY.
    pub not_ready: usize,
    /// Disconnected, not yet lost.
    pub disconnected: usize,
    /// Declared lost.
    pub lost: usize,
    /// STARTs waiting.
    pub queued: usize,
    /// Nodes reserved for a big START (`Config::reserve_big_mb`).
    pub reserved: usize,
    /// Live migrations under way.
    pub migrating: usize,
    /// Longest current wait, ms.
    pub oldest_wait_ms: u64,
    /// STARTs placed since the scheduler started.
    pub placements: u64,
    /// Memory charged below requests thanks to estimates, MiB.
    pub reclaimed_mb: u64,
    /// Whether the node-loss brake is engaged.
    pub brake: bool,
    /// STARTs refused since start (queue full, timeout, not permitted …).
    pub refused: u64,
}

/// The core state.
#[derive(Debug)]
pub struct Hub {
    uuid: Uuid,
    cfg: Config,
    started_ms: u64,
    /// Controllers (UUID, connection, term): the first is the master, the others backups.
    controllers: Vec<(Uuid, u64, Option<u64>)>,
    nodes: NodeTable,
    queue: Queue,
    estimator: Estimator,
    mru: Option<Uuid>,
    placements: u64,
    refused: u64,
    brake: bool,
    /// Big queued STARTs and the node reserved for each.
    reservations: std::collections::BTreeMap<Uuid, Uuid>,
}

impl Hub {
    /// An empty hub for the scheduler with this UUID, started at `now`.
    pub fn new(uuid: Uuid, cfg: Config, now: Now) -> Self {
        let queue = Queue::new(cfg.queue_max);
        Self {
            uuid,
            cfg,
            started_ms: now.mono_ms,
            controllers: Vec::new(),
            nodes: NodeTable::default(),
            queue,
            estimator: Estimator::default(),
            mru: None,
            placements: 0,
            refused: 0,
            brake: false,
            reservations: std::collections::BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Controllers, master first.
    pub fn controllers(&self) -> Vec<Uuid> {
        self.controllers.iter().map(|(u, ..)| *u).collect()
    }

    /// Every known node in UUID order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// A node.
    pub fn node(&self, uuid: &Uuid) -> Option<&Node> {
        self.nodes.get(uuid)
    }

    /// The node that got the last START.
    pub fn most_recently_used(&self) -> Option<Uuid> {
        self.mru
    }

    /// The node an instance is on, as far as the scheduler knows.
    pub fn node_of(&self, instance: &Uuid) -> Option<Uuid> {
        self.nodes.location(instance).map(|l| l.node)
    }

    /// Whether an instance waits in the queue.
    pub fn is_queued(&self, instance: &Uuid) -> bool {
        self.queue.contains(*instance)
    }

    /// Whether the node table's indexes are consistent (for tests).
    pub fn indexes_consistent(&self) -> bool {
        self.nodes.check_indexes(&self.cfg)
    }

    /// The memory estimates.
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// Figures for the heartbeat and metrics.
    pub fn summary(&self, now: Now) -> Summary {
        let mut s = Summary {
            queued: self.queue.len(),
            reserved: self.reservations.len(),
            migrating: self.nodes.migrations().count(),
            oldest_wait_ms: self.queue.oldest_wait_ms(now.mono_ms),
            placements: self.placements,
            brake: self.brake,
            refused: self.refused,
            ..Summary::default()
        };
        for node in self.nodes.iter() {
            match () {
                () if node.lost => s.lost += 1,
                () if node.conn_id.is_none() => s.disconnected += 1,
                () if node.maintenance || node.status == NodeStatus::Maintenance => s.maintenance += 1,
                () if node.status == NodeStatus::Ready => s.ready += 1,
                () if node.status == NodeStatus::Full => s.full += 1,
                () => s.not_ready += 1,
            }
            s.reclaimed_mb += node.instances.reclaimed_mb();
        }
        s
    }

    /// A message in the scheduler's own name.
    fn own(&self, message: Message) -> Payload {
        Payload::Message { origin: self.uuid, message: Box::new(message) }
    }

    /// The master is the controller elected last (the highest term), else the first connected:
    /// a deposed leader may still be connected here, cut off from etcd only, and must command
    /// nothing more.
    fn choose_master(&mut self) {
        let newest = self.controllers.iter().enumerate().max_by_key(|(i, c)| (c.2, std::cmp::Reverse(*i)));
        if let Some(i) = newest.map(|(i, _)| i).filter(|i| *i > 0) {
            let master = self.controllers.remove(i);
            self.controllers.insert(0, master);
        }
    }

    fn is_master(&self, uuid: Uuid) -> bool {
        self.controllers.first().is_some_and(|(u, ..)| *u == uuid)
    }

    /// Applies one input.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Output> {
        match input {
            Input::Connected { conn_id, uuid, role, term } => self.connected(now, conn_id, uuid, role, term),
            Input::Disconnected { conn_id, uuid } => self.disconnected(now, conn_id, uuid),
            Input::Message { from, role, frame, message } => {
                let frame = match frame {
                    Some(frame) => Payload::Forward(frame),
                    None => Payload::Message { origin: from, message: Box::new(message.clone()) },
                };
                if role.contains(Role::CONTROLLER) {
                    self.command(now, from, frame, message)
                } else {
                    self.report(now, from, frame, message)
                }
            }
        }
    }

    /// What time alone causes: queue timeouts, queued work placed after changes, node loss.
    pub fn tick(&mut self, now: Now) -> Vec<Output> {
        let mut out = Vec::new();
        for expired in self.queue.expire(now.mono_ms) {
            let waited = (now.mono_ms - expired.since_ms) / 1000;
            let need = self.need(&expired.start);
            let why = placement::explain(&self.nodes, &need, &self.cfg);
            let detail = format!("waited {waited} s in the queue; {why}");
            out.extend(self.refuse_start(expired.from, &expired.start, FailureReason::QueueTimeout, detail));
        }
        self.estimator.settle(now.mono_ms);
        self.liveness(now, &mut out);
        self.check_migrations(now, &mut out);
        self.drain(&mut out);
        self.reserve(&mut out);
        self.explain_again(&mut out);
        out
    }

    /// The reasons the first [`REEXPLAIN_LIMIT`] queued STARTs wait, recomputed: nodes came,
    /// went, filled or emptied since they were queued. A reason that changed goes to the
    /// controllers (INSTANCE_QUEUED), so WHY never keeps one that stopped being true.
    fn explain_again(&mut self, out: &mut Vec<Output>) {
        let heads: Vec<(QueueKey, Uuid, String)> = self
            .queue
            .iter()
            .take(REEXPLAIN_LIMIT)
            .map(|(k, q)| (*k, q.start.instance_uuid, placement::explain(&self.nodes, &self.need(&q.start), &self.cfg)))
            .collect();
        for (position, (key, instance_uuid, reason)) in heads.into_iter().enumerate() {
            if self.queue.set_reason(&key, &reason) {
                let event =
                    InstanceQueued { instance_uuid, reason, position: u32::try_from(position).unwrap_or(u32::MAX) };
                out.push(Output::ToControllers(self.own(Message::InstanceQueued(event))));
            }
        }
    }

    // === peers ===

    fn connected(&mut self, now: Now, conn_id: u64, uuid: Uuid, role: Role, term: Option<u64>) -> Vec<Output> {
        if role.contains(Role::CONTROLLER) {
            match self.controllers.iter_mut().find(|(u, ..)| *u == uuid) {
                Some(entry) => *entry = (uuid, conn_id, term),
                None => self.controllers.push((uuid, conn_id, term)),
            }
            // It learns what each node is from the node's next report.
            let ids: Vec<Uuid> = self.nodes.iter().map(|n| n.uuid).collect();
            for id in ids {
                self.nodes.update(&id, &self.cfg, |n| n.report_forwarded = None);
            }
            self.choose_master();
            return Vec::new();
        }
        let cfg = &self.cfg;
        let mut node = match self.nodes.remove(&uuid, cfg) {
            // A lost node's instances were handed to the controller to restart elsewhere; what
            // still runs there is a stale copy for the controller to reconcile from STATS.
            Some(old) if !old.lost => Node {
                conn_id: Some(conn_id),
                status: NodeStatus::Connected,
                last_seen_ms: now.mono_ms,
                heartbeat_forwarded: None,
                report_forwarded: None,
                expected: false,
                suspect: false,
                away_until_ms: None,
                ..old
            },
            Some(old) => {
                // What it reported while lost is stale too: it starts afresh.
                self.nodes.forget_all_on(uuid, cfg);
                Node { maintenance: old.maintenance, ..Node::new(uuid, conn_id, now.mono_ms) }
            }
            None => Node::new(uuid, conn_id, now.mono_ms),
        };
        node.report.node_uuid = uuid;
        self.nodes.insert(node, &self.cfg);
        let node_type = if role.contains(Role::AGENT) { NodeType::ComputeNode } else { NodeType::NetworkNode };
        vec![Output::ToControllers(self.own(Message::NodeConnected(NodeEvent { node_uuid: uuid, node_type })))]
    }

    fn disconnected(&mut self, now: Now, conn_id: u64, uuid: Uuid) -> Vec<Output> {
        // Master promotion: removing the first entry makes the next one master.
        self.controllers.retain(|(u, c, _)| !(*u == uuid && *c == conn_id));
        self.choose_master();
        let current = self.nodes.get(&uuid).is_some_and(|n| n.conn_id == Some(conn_id));
        if !current {
            return Vec::new();
        }
        self.nodes.update(&uuid, &self.cfg, |n| {
            n.conn_id = None;
            n.last_seen_ms = now.mono_ms;
        });
        if self.mru == Some(uuid) {
            self.mru = None;
        }
        let event = NodeEvent { node_uuid: uuid, node_type: NodeType::ComputeNode };
        vec![Output::ToControllers(self.own(Message::NodeDisconnected(event)))]
    }

    // === from launchers ===

    fn report(&mut self, now: Now, from: Uuid, frame: Payload, message: Message) -> Vec<Output> {
        let mut out = Vec::new();
        let was_lost = self.nodes.update(&from, &self.cfg, |n| {
            n.last_seen_ms = now.mono_ms;
            n.suspect = false;
            std::mem::replace(&mut n.lost, false)
        });
        if was_lost == Some(true) {
            // A node declared lost that speaks again on its connection (it was frozen or cut
            // off) is back. Declaring it lost already handed its instances to the controller,
            // so what it still runs is a stale copy for the controller to stop from its STATS.
            out.push(Output::Warn(format!("node {from} declared lost earlier is reporting again")));
            // Its digest tells the controllers which stale copies to stop.
            let request = Message::ReportRequest(ReportRequest { node_uuid: Some(from) });
            out.push(Output::To { peer: from, payload: self.own(request) });
        }
        if self.incoming_report(from, &message, &mut out) {
            self.drain_on(from, &mut out);
            return out;
        }
        if let Message::Ready(report) | Message::Full(Some(report)) | Message::Maintenance(Some(report)) = &message {
            if self.report_changed(from, report) {
                out.push(Output::ToControllers(frame.clone()));
            }
        }
        match message {
            Message::Ready(report) => self.status(from, NodeStatus::Ready, Some(report)),
            Message::Full(report) => self.status(from, NodeStatus::Full, report),
            Message::Maintenance(report) => {
                let away = report.as_ref().and_then(|r| r.away_grace_ms).map(|g| g.min(MAX_AWAY_GRACE_MS));
                if let Some(grace) = away {
                    let until = now.mono_ms.saturating_add(grace);
                    self.nodes.update(&from, &self.cfg, |n| n.away_until_ms = Some(until));
                    out.push(Output::Warn(format!(
                        "node {from} is stopping with its workloads left running: held {} s before it counts as lost",
                        grace / 1000
                    )));
                }
                self.status(from, NodeStatus::Maintenance, report);
            }
            Message::Offline => self.status(from, NodeStatus::Offline, None),
            Message::Stats(stats) => {
                self.stats(now, from, &stats.instances);
                if stats.digest.is_some() || self.heartbeat_due(now, from, stats.status) {
                    out.push(Output::ToControllers(frame));
                }
            }
            // The batch goes on as it came, not re-encoded per instance.
            Message::InstanceNews(news) => {
                self.stats(now, from, &news.instances);
                out.push(Output::ToControllers(frame));
            }
            Message::InstanceStarted(e) => {
                self.nodes.confirm(from, e.instance_uuid, &self.cfg);
                out.push(Output::ToControllers(frame));
            }
            Message::InstanceExited(ref e) => {
                self.gone(from, e.instance_uuid);
                out.push(Output::ToControllers(frame));
            }
            Message::InstanceStopped(ref e) | Message::InstanceDeleted(ref e) => {
                self.gone(from, e.instance_uuid);
                out.push(Output::ToControllers(frame));
            }
            // The launcher has it already (a START sent twice): it is there, confirmed.
            Message::StartFailure(f)
                if matches!(f.reason, FailureReason::AlreadyRunning | FailureReason::InstanceExists) =>
            {
                self.nodes.confirm(from, f.instance_uuid, &self.cfg);
                out.push(Output::ToControllers(frame));
            }
            Message::StartFailure(f) => {
                match self.gone(from, f.instance_uuid) {
                    Some((start, sender)) if f.reason == FailureReason::FullCn => {
                        // The node knew better than its last report: believe it, try elsewhere.
                        // Both sides fit by the same rule, so this is rare enough to tell.
                        out.push(Output::Warn(format!(
                            "node {from} refused the START of {} for want of room ({}); placing it elsewhere",
                            f.instance_uuid, f.detail
                        )));
                        self.status(from, NodeStatus::Full, None);
                        out.extend(self.place_or_queue(now, sender, start, Some(from)));
                    }
                    _ => out.push(Output::ToControllers(frame)),
                }
            }
            Message::MigrationReady(r) => out.extend(self.migration_ready(from, r.instance_uuid, r.address)),
            Message::MigrationDone(d) => out.extend(self.migration_done(from, d)),
            // Other launcher events and errors: every controller (ciao's role rule).
            _ => out.push(Output::ToControllers(frame)),
        }
        // An instance that left or a node that fell silent may break a migration.
        if self.nodes.migrations().next().is_some() {
            self.check_migrations(now, &mut out);
        }
        // A report or a departed instance can only make room on this node.
        self.drain_on(from, &mut out);
        out
    }

    /// Whether what node `from` says it is (host, size, labels, features, architecture, NUMA
    /// node, CPU, capabilities, a drain) changed since the controllers last heard it; if so, it counts as heard. Its
    /// changing figures (load, free memory) travel in heartbeats instead.
    fn report_changed(&mut self, from: Uuid, report: &NodeReport) -> bool {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&report.hostname, report.cpus_online, report.mem_total_mb, report.disk_total_mb).hash(&mut h);
        (&report.labels, &report.features, &report.arch, report.numa_node).hash(&mut h);
        (&report.cpu_model, report.cpu_mhz, report.away_grace_ms).hash(&mut h);
        (&report.foreign_arches, report.cpu_score, &report.pci, &report.images, report.draining_until_unix_ms)
            .hash(&mut h);
        let print = h.finish();
        self.nodes.update(&from, &self.cfg, |n| n.report_forwarded.replace(print) != Some(print)).unwrap_or(false)
    }

    /// Whether a heartbeat of `from` with `status` goes on to the controllers now (see
    /// [`HEARTBEAT_FORWARD_MS`]); if so, it counts as sent.
    fn heartbeat_due(&mut self, now: Now, from: Uuid, status: ssntp::payload::NodeState) -> bool {
        self.nodes
            .update(&from, &self.cfg, |n| {
                let due = n
                    .heartbeat_forwarded
                    .is_none_or(|(at, last)| last != status || now.mono_ms.saturating_sub(at) >= HEARTBEAT_FORWARD_MS);
                if due {
                    n.heartbeat_forwarded = Some((now.mono_ms, status));
                }
                due
            })
            .unwrap_or(true)
    }

    fn status(&mut self, from: Uuid, status: NodeStatus, report: Option<NodeReport>) {
        self.nodes.update(&from, &self.cfg, |n| {
            n.status = status;
            if let Some(mut report) = report {
                report.node_uuid = from;
                n.report = report;
            }
        });
    }

    fn stats(&mut self, now: Now, from: Uuid, stats: &[ssntp::payload::InstanceStat]) {
        self.nodes.apply_stats(from, stats, &self.cfg, &mut self.estimator, now.mono_ms);
    }

    /// Forgets an instance that left a node; returns its START and sender if the scheduler
    /// placed it (for a retry elsewhere).
    fn gone(&mut self, node: Uuid, instance: Uuid) -> Option<(Start, Uuid)> {
        self.nodes.forget(node, instance, &self.cfg)
    }

    // === from controllers ===

    fn command(&mut self, now: Now, from: Uuid, frame: Payload, message: Message) -> Vec<Output> {
        if let Message::Plan(plan) = &message {
            // A dry run changes nothing: any controller may ask.
            return vec![Output::To { peer: from, payload: self.own(Message::PlanAnswer(self.plan(plan))) }];
        }
        if !self.is_master(from) && !matches!(message, Message::TraceReport(_)) {
            let detail = "only the master controller may command; this controller is a backup".to_owned();
            return self.refuse(from, &message, FailureReason::NotPermitted, detail);
        }
        let message = match message {
            Message::Migrate(m) => return self.migrate(now, from, m),
            other => other,
        };
        if let Message::Stop(stop) = &message {
            // A STOP of work still in the queue takes it out: it never runs (a user's cancel
            // of queued work must not place it first and stop it after).
            if self.queue.remove_instance(stop.instance_uuid).is_some() {
                let stopped = InstanceEvent { instance_uuid: stop.instance_uuid, node_uuid: None };
                let mut out = vec![Output::ToControllers(self.own(Message::InstanceStopped(stopped)))];
                self.release(stop.instance_uuid, &mut out);
                return out;
            }
        }
        let target = match &message {
            Message::Start(start) => {
                return self.place_or_queue(now, from, start.clone(), None);
            }
            // A STOP that names no node (the controller sent the START and has not heard
            // where it went) goes where the scheduler placed it.
            Message::Stop(m) if m.workload_agent_uuid.is_nil() => {
                let placed_on = self.nodes.iter().find(|n| n.instances.get(&m.instance_uuid).is_some()).map(|n| n.uuid);
                match placed_on {
                    Some(node) => node,
                    None => {
                        let detail = "no START of it is queued or placed here".to_owned();
                        return self.refuse(from, &message, FailureReason::NoInstance, detail);
                    }
                }
            }
            Message::Configure(c) => return vec![Output::Configure(c.config.clone())],
            Message::NodeForget(f) => return self.forget_node(now, from, f.node_uuid, &message),
            Message::TraceReport(_) => return vec![Output::ToControllers(frame)],
            Message::Stop(m) => m.workload_agent_uuid,
            Message::Delete(m) => m.workload_agent_uuid,
            Message::Restart(m) => m.workload_agent_uuid,
            Message::Evacuate(m) => m.workload_agent_uuid,
            Message::Restore(m) => m.workload_agent_uuid,
            Message::LogFetch(m) => m.workload_agent_uuid,
            Message::ReportRequest(r) => match r.node_uuid {
                Some(node) => match self.nodes.get(&node) {
                    Some(n) if n.conn_id.is_some() => node,
                    // The controller missed the announcement (it was away): again, to it.
                    Some(n) if n.lost => {
                        let lost = NodeLost { node_uuid: node, instances: Vec::new() };
                        return vec![Output::To { peer: from, payload: self.own(Message::NodeLost(lost)) }];
                    }
                    Some(_) => {
                        let detail = format!("node {node} is not connected (declared lost if it stays away)");
                        return self.refuse(from, &message, FailureReason::NoNode, detail);
                    }
                    None => return self.expect_node(now, from, node, &message),
                },
                None => {
                    let mut connected: Vec<Uuid> =
                        self.nodes.iter().filter(|n| n.conn_id.is_some()).map(|n| n.uuid).collect();
                    connected.sort_unstable();
                    return connected.into_iter().map(|peer| Output::To { peer, payload: frame.clone() }).collect();
                }
            },
            // Errors a controller reports go to the other controllers.
            _ => return vec![Output::ToControllers(frame)],
        };
        let connected = self.nodes.get(&target).is_some_and(|n| n.conn_id.is_some());
        if !connected {
            return self.refuse(from, &message, FailureReason::NoNode, format!("node {target} is not connected"));
        }
        match message {
            // No new work from now on; the launcher stops its instances and reports them.
            Message::Evacuate(_) => {
                self.nodes.update(&target, &self.cfg, |n| n.maintenance = true);
            }
            Message::Restore(_) => {
                self.nodes.update(&target, &self.cfg, |n| n.maintenance = false);
            }
            _ => {}
        }
        let mut out = vec![Output::To { peer: target, payload: frame }];
        self.drain_on(target, &mut out); // RESTORE reopens the node
        out
    }

    /// The answer to PLAN: the placement rules on the nodes as they are, nothing changed.
    fn plan(&self, plan: &ssntp::payload::Plan) -> ssntp::payload::PlanAnswer {
        let need = self.need(&plan.start);
        let count = plan.count.clamp(1, ssntp::payload::MAX_PLAN_COUNT);
        let planned = placement::plan(&self.nodes, &need, &self.cfg, count);
        let hostname = |id: &Uuid| self.nodes.get(id).map(|n| n.report.hostname.clone()).unwrap_or_default();
        ssntp::payload::PlanAnswer {
            request_id: plan.request_id,
            nodes: u32::try_from(self.nodes.len()).unwrap_or(u32::MAX),
            fit_now: u32::try_from(planned.fit_now).unwrap_or(u32::MAX),
            placed: planned
                .placed
                .iter()
                .map(|(node, count)| ssntp::payload::PlanPlacement {
                    node_uuid: *node,
                    hostname: hostname(node),
                    count: *count,
                })
                .collect(),
            unplaced: planned.unplaced,
            explanation: planned.explanation,
            never: planned.never,
            advice: planned.advice,
        }
    }

    fn need<'a>(&self, start: &'a Start) -> Need<'a> {
        let request = start.requirements.mem_mb;
        let granted = if self.cfg.estimate { self.estimator.charge(start.workload_uuid, request) } else { request };
        // In whole chunks, as the launcher admits (`Start::charged_mb`).
        let charge = ssntp::payload::charge_mb(granted, request);
        Need {
            requirements: &start.requirements,
            backend: start.backend.name(),
            vcpus: start.requirements.vcpus,
            charge_mb: charge,
            instance: Some(start.instance_uuid),
        }
    }

    /// Places a START now if a node fits, else queues it (or refuses it when the queue is full).
    /// `not_on` excludes a node that just refused it.
    fn place_or_queue(&mut self, now: Now, from: Uuid, start: Start, not_on: Option<Uuid>) -> Vec<Output> {
        let id = start.instance_uuid;
        if let Some(location) = self.nodes.location(&id) {
            let node = location.node;
            let unconfirmed = location.unconfirmed.is_some();
            if unconfirmed && self.nodes.get(&node).is_some_and(|n| n.conn_id.is_some()) {
                // A repeated START of one placed and not yet confirmed: the first may have been
                // lost with a connection. The node gets it again; a launcher that has it answers
                // `already_running`, which confirms it.
                let mut forwarded = start;
                forwarded.workload_agent_uuid = Some(node);
                forwarded.charge_mb = self.nodes.get(&node).and_then(|n| n.instances.get(&id)).map(|p| p.charge_mb);
                let payload = Payload::Message { origin: from, message: Box::new(Message::Start(forwarded)) };
                return vec![Output::To { peer: node, payload }];
            }
            // Named with its node, so the controller knows where it is (and reconciles from
            // that node's reports).
            let detail = format!("instance {id} is already placed on node {node}");
            return self.refuse_start_on(from, &start, Some(node), FailureReason::InstanceExists, detail);
        }
        if let Some(queued) = self.queue.get(id) {
            // A repeated START (a controller that restarted or reconnected) changes nothing,
            // but is answered, so the sender learns where its instance is and why, as of now.
            let need = self.need(&queued.start);
            let reason = placement::explain(&self.nodes, &need, &self.cfg);
            if let Some(key) = self.queue.key_of(id) {
                self.queue.set_reason(&key, &reason);
            }
            let event = InstanceQueued { instance_uuid: id, reason, position: 0 };
            return vec![Output::To { peer: from, payload: self.own(Message::InstanceQueued(event)) }];
        }
        if self.cfg.estimate {
            if let Some(w) = start.workload_uuid {
                self.estimator.register(w, start.requirements.mem_mb, now.mono_ms);
            }
        }
        if let Some(out) = self.try_place(from, &start, not_on) {
            return vec![out];
        }
        let need = self.need(&start);
        if !self.cfg.wait_for_capacity {
            // Waiting would only end in a queue timeout: say why now.
            if let Some(why) = placement::never_fits(&self.nodes, &need, &self.cfg) {
                return self.refuse_start(from, &start, FailureReason::FullCloud, why);
            }
        }
        let reason = placement::explain(&self.nodes, &need, &self.cfg);
        let deadline_ms =
            start.deadline_unix_ms.map_or(u64::MAX, |d| now.mono_ms.saturating_add(d.saturating_sub(now.unix_ms)));
        let expires_ms = now.mono_ms.saturating_add(self.cfg.queue_timeout_ms).min(deadline_ms);
        if self.queue.is_full() {
            let detail = format!("the queue holds {} STARTs already; {reason}", self.cfg.queue_max);
            return self.refuse_start(from, &start, FailureReason::QueueFull, detail);
        }
        let big = self.cfg.big(&need).is_some();
        let queued = Queued { start, from, since_ms: now.mono_ms, expires_ms, reason: reason.clone() };
        let position = self.queue.push(queued).expect("the queue has room");
        let event = InstanceQueued { instance_uuid: id, reason, position: u32::try_from(position).unwrap_or(u32::MAX) };
        let mut out = vec![Output::ToControllers(self.own(Message::InstanceQueued(event)))];
        if big {
            self.reserve(&mut out);
        }
        out
    }

    /// Places a START if a node fits; returns the forwarded START.
    fn try_place(&mut self, from: Uuid, start: &Start, not_on: Option<Uuid>) -> Option<Output> {
        let need = self.need(start);
        let node = placement::choose(&self.nodes, &need, &self.cfg, self.mru, not_on)?;
        Some(self.place_on(node, from, start))
    }

    /// What a START costs `node`: its charge and the node's anchor tax for its backend.
    fn placed_for(&self, node: Uuid, start: &Start) -> Placed {
        let need = self.need(start);
        let tax_mb = self.nodes.get(&node).map_or(0, |n| n.report.anchor_tax(need.backend));
        Placed {
            vcpus: need.vcpus,
            request_mb: start.requirements.mem_mb,
            charge_mb: need.charge_mb,
            tax_mb,
            cache_ways: start.requirements.cache_ways,
            disk_mb: start.requirements.disk_mb,
            workload: start.workload_uuid,
            confirmed: false,
        }
    }

    /// Records a START on `node` (which fits it) and returns the forwarded START.
    fn place_on(&mut self, node: Uuid, from: Uuid, start: &Start) -> Output {
        let need = self.need(start);
        let placed = self.placed_for(node, start);
        self.nodes.place(node, placed, start, from, &self.cfg);
        self.mru = Some(node);
        self.placements += 1;
        let mut forwarded = start.clone();
        forwarded.workload_agent_uuid = Some(node);
        forwarded.charge_mb = Some(need.charge_mb);
        Output::To {
            peer: node,
            payload: Payload::Message { origin: from, message: Box::new(Message::Start(forwarded)) },
        }
    }

    /// Tries queued STARTs in order on any node (the tick's sweep).
    fn drain(&mut self, out: &mut Vec<Output>) {
        if self.queue.is_empty() || !self.nodes.any_open() {
            return;
        }
        self.drain_where(out, |_, _| true);
    }

    /// Places queued STARTs, in queue order, on `node` (something there changed: it reported,
    /// an instance left it, or it was restored), while it stays open. Costs one fit check per
    /// queued START looked at, whatever the cluster's size; other nodes drain on their own
    /// events and on the tick.
    fn drain_on(&mut self, node: Uuid, out: &mut Vec<Output>) {
        if self.queue.is_empty() {
            return;
        }
        if let Some(holder) = self.nodes.get(&node).and_then(|n| n.reserved_for) {
            // Only its big START, once it fits; then the rest of the room goes to the queue.
            if !self.place_reserved(holder, node, out) {
                return;
            }
        }
        let keys: Vec<QueueKey> = self.queue.iter().take(LOOK_LIMIT).map(|(k, _)| *k).collect();
        let mut placed = 0;
        for key in keys {
            if placed >= DRAIN_LIMIT || !self.nodes.get(&node).is_some_and(|n| n.is_open(&self.cfg)) {
                break; // full, busy or gone: the rest waits for the next change
            }
            let Some(queued) = self.queue.get_by_key(&key) else { continue };
            let need = self.need(&queued.start);
            if self.nodes.get(&node).is_some_and(|n| n.check(&need, &self.cfg).is_ok()) {
                let queued = self.queue.remove(&key).expect("looked up just now");
                out.push(self.place_on(node, queued.from, &queued.start));
                self.release(queued.start.instance_uuid, out);
                placed += 1;
            }
        }
    }

    /// Places, in queue order, up to [`DRAIN_LIMIT`] queued STARTs among the first
    /// [`LOOK_LIMIT`] for which `worth_trying` holds and a node fits.
    fn drain_where(&mut self, out: &mut Vec<Output>, worth_trying: impl Fn(&Self, &Start) -> bool) {
        let candidates: Vec<_> = self
            .queue
            .iter()
            .take(LOOK_LIMIT)
            .filter(|(_, q)| worth_trying(self, &q.start))
            .take(DRAIN_LIMIT)
            .map(|(k, q)| (*k, q.from, q.start.clone()))
            .collect();
        for (key, from, start) in candidates {
            if let Some(forward) = self.try_place(from, &start, None) {
                self.queue.remove(&key);
                out.push(forward);
                self.release(start.instance_uuid, out);
            }
        }
    }

    // === reservations for big jobs ===

    /// Keeps the reservations true (`Config::reserve_big_mb`): drops those whose START left
    /// the queue or whose node can no longer be used, places the big STARTs that now fit their
    /// node, and reserves a node for each big START at the head of the queue that has none,
    /// up to `reserve_max` nodes: the node that could hold it with the most free memory now
    /// (the least to wait for).
    fn reserve(&mut self, out: &mut Vec<Output>) {
        let stale: Vec<Uuid> = self
            .reservations
            .iter()
            .filter(|(instance, node)| {
                let usable = self.nodes.get(node).is_some_and(|n| n.in_service() && n.reserved_for == Some(**instance));
                !usable || !self.queue.contains(**instance)
            })
            .map(|(instance, _)| *instance)
            .collect();
        for instance in stale {
            self.release(instance, out);
        }
        let held: Vec<(Uuid, Uuid)> = self.reservations.iter().map(|(i, n)| (*i, *n)).collect();
        for (instance, node) in held {
            self.place_reserved(instance, node, out);
        }
        if !self.cfg.reserves() {
            return;
        }
        let waiting: Vec<Start> = self
            .queue
            .iter()
            .take(LOOK_LIMIT)
            .filter(|(_, q)| !self.reservations.contains_key(&q.start.instance_uuid))
            .map(|(_, q)| q.start.clone())
            .collect();
        for start in waiting {
            if self.reservations.len() >= self.cfg.reserve_max {
                break;
            }
            let need = self.need(&start);
            let Some(by) = self.cfg.big(&need) else { continue };
            let best = self
                .nodes
                .iter()
                .filter(|n| n.may_reserve() && n.could_ever_fit(&need, &self.cfg).is_ok())
                .max_by_key(|n| {
                    let free = if by == BigBy::Disk { n.disk_free() } else { n.mem_free(&self.cfg) };
                    (free, n.uuid)
                })
                .map(|n| n.uuid);
            if let Some(node) = best {
                self.nodes.update(&node, &self.cfg, |n| n.reserved_for = Some(start.instance_uuid));
                self.reservations.insert(start.instance_uuid, node);
                self.place_reserved(start.instance_uuid, node, out);
            }
        }
    }

    /// Places big START `instance` on `node`, reserved for it, if it fits there now, and ends
    /// the reservation. Returns whether the node is free of it (placed, or not reserved).
    fn place_reserved(&mut self, instance: Uuid, node: Uuid, out: &mut Vec<Output>) -> bool {
        let Some(key) = self.queue.key_of(instance) else {
            self.release(instance, out);
            return true;
        };
        let Some(queued) = self.queue.get_by_key(&key) else { return false };
        let need = self.need(&queued.start);
        if self.nodes.get(&node).is_none_or(|n| n.check(&need, &self.cfg).is_err()) {
            return false;
        }
        let queued = self.queue.remove(&key).expect("looked up just now");
        out.push(self.place_on(node, queued.from, &queued.start));
        self.release(instance, out);
        true
    }

    /// Ends `instance`'s reservation, if it has one; its node takes work again.
    fn release(&mut self, instance: Uuid, out: &mut Vec<Output>) {
        let Some(node) = self.reservations.remove(&instance) else { return };
        let _ = self.nodes.update(&node, &self.cfg, |n| {
            if n.reserved_for == Some(instance) {
                n.reserved_for = None;
            }
        });
        self.drain_on(node, out);
    }

    // === liveness ===

    /// A controller asks about a node this scheduler has never seen (it restarted, or forgot a
    /// node lost long ago): the controller believes work runs there. The node is expected from
    /// now on: it is declared lost like any silent node (TTL + grace, after the failover grace),
    /// unless it connects.
    fn expect_node(&mut self, now: Now, from: Uuid, node: Uuid, message: &Message) -> Vec<Output> {
        let expected = self.nodes.iter().filter(|n| n.expected).count();
        if expected < MAX_EXPECTED_NODES && !node.is_nil() {
            let placeholder = Node {
                conn_id: None,
                status: NodeStatus::Disconnected,
                expected: true,
                ..Node::new(node, 0, now.mono_ms)
            };
            self.nodes.insert(placeholder, &self.cfg);
        }
        let detail =
            format!("node {node} has not connected to this scheduler (expected: declared lost if it stays away)");
        self.refuse(from, message, FailureReason::NoNode, detail)
    }

    fn liveness(&mut self, now: Now, out: &mut Vec<Output>) {
        let ttl = self.cfg.node_ttl_ms;
        // A connected node silent for the TTL takes no new work until it speaks again.
        let newly_suspect: Vec<Uuid> = self
            .nodes
            .iter()
            .filter(|n| !n.lost && !n.suspect && n.conn_id.is_some())
            .filter(|n| now.mono_ms.saturating_sub(n.last_seen_ms) >= ttl)
            .map(|n| n.uuid)
            .collect();
        for uuid in newly_suspect {
            self.nodes.update(&uuid, &self.cfg, |n| n.suspect = true);
            out.push(Output::Warn(format!("node {uuid} connected but silent for {} s: no new work", ttl / 1000)));
        }
        // A node away for announced maintenance is neither silent nor lost until its grace ends.
        let away = |n: &Node| n.away_until_ms.is_some_and(|until| now.mono_ms < until);
        let active: Vec<&Node> = self.nodes.iter().filter(|n| !n.lost && !away(n)).collect();
        let silent = active.iter().filter(|n| now.mono_ms.saturating_sub(n.last_seen_ms) >= ttl).count();
        #[allow(clippy::cast_precision_loss)] // node counts are far below 2^52
        let brake =
            silent >= self.cfg.brake_min_nodes && silent as f64 >= self.cfg.brake_fraction * active.len() as f64;
        if brake != self.brake {
            self.brake = brake;
            out.push(Output::Warn(if brake {
                format!(
                    "{silent} of {} nodes went silent together: holding back NODE_LOST (this scheduler is probably the one \
                     cut off; if those nodes are really gone, `drover node forget NODE` declares each one lost)",
                    active.len()
                )
            } else {
                "node-loss brake released".to_owned()
            }));
        }
        if brake || now.mono_ms < self.started_ms.saturating_add(self.cfg.failover_grace_ms) {
            return;
        }
        let limit = ttl + self.cfg.node_grace_ms;
        let lost: Vec<Uuid> =
            active.iter().filter(|n| now.mono_ms.saturating_sub(n.last_seen_ms) >= limit).map(|n| n.uuid).collect();
        for uuid in lost {
            out.extend(self.declare_lost(uuid, &format!("silent for {} s", limit / 1000)));
        }
        self.prune(now);
    }

    /// Declares `uuid` lost: its instances go to the controllers (NODE_LOST) to be restarted
    /// elsewhere per their policy.
    fn declare_lost(&mut self, uuid: Uuid, why: &str) -> Vec<Output> {
        self.nodes.update(&uuid, &self.cfg, |n| n.lost = true);
        let instances = self.nodes.forget_all_on(uuid, &self.cfg);
        if self.mru == Some(uuid) {
            self.mru = None;
        }
        vec![
            Output::Warn(format!("node {uuid} {why}: declared lost with {} instances", instances.len())),
            Output::ToControllers(self.own(Message::NodeLost(NodeLost { node_uuid: uuid, instances }))),
        ]
    }

    /// NODE_FORGET: the operator says a silent node is gone for good (the way out of a brake
    /// that holds because most nodes really died). Declared lost at once; refused for a node
    /// that still reports, which is evacuated instead.
    fn forget_node(&mut self, now: Now, from: Uuid, uuid: Uuid, message: &Message) -> Vec<Output> {
        let Some(node) = self.nodes.get(&uuid) else {
            return self.refuse(from, message, FailureReason::NoNode, format!("node {uuid} is not known here"));
        };
        let silent_ms = now.mono_ms.saturating_sub(node.last_seen_ms);
        if node.lost {
            // Said before; said again to whoever asks, so its instances are accounted for.
            let lost = NodeLost { node_uuid: uuid, instances: Vec::new() };
            return vec![Output::ToControllers(self.own(Message::NodeLost(lost)))];
        }
        if node.conn_id.is_some() && silent_ms < self.cfg.node_ttl_ms {
            let detail = format!(
                "node {uuid} reported {} s ago; a node that is up is evacuated (drover node evacuate), not forgotten",
                silent_ms / 1000
            );
            return self.refuse(from, message, FailureReason::NotPermitted, detail);
        }
        self.declare_lost(uuid, &format!("forgotten by the operator after {} s of silence", silent_ms / 1000))
    }

    /// Memory follows live state: a node lost and gone for [`FORGET_AFTER_MS`] is forgotten (it
    /// starts afresh if it ever comes back), and so is the estimate of a workload not seen for
    /// as long.
    fn prune(&mut self, now: Now) {
        let gone: Vec<Uuid> = self
            .nodes
            .iter()
            .filter(|n| n.lost && n.conn_id.is_none() && now.mono_ms.saturating_sub(n.last_seen_ms) >= FORGET_AFTER_MS)
            .map(|n| n.uuid)
            .collect();
        for uuid in gone {
            self.nodes.forget_all_on(uuid, &self.cfg);
            self.nodes.remove(&uuid, &self.cfg);
        }
        self.estimator.prune(now.mono_ms, FORGET_AFTER_MS);
    }

    // === refusals ===

    fn refuse_start(&mut self, to: Uuid, start: &Start, reason: FailureReason, detail: String) -> Vec<Output> {
        self.refuse_start_on(to, start, None, reason, detail)
    }

    /// A START refused, naming the node it concerns (one where the instance already is).
    fn refuse_start_on(
        &mut self,
        to: Uuid,
        start: &Start,
        node: Option<Uuid>,
        reason: FailureReason,
        detail: String,
    ) -> Vec<Output> {
        self.refused += 1;
        let failure = StartFailure {
            node_uuid: node,
            instance_uuid: start.instance_uuid,
            reason,
            restart: start.restart,
            detail,
        };
        vec![Output::To { peer: to, payload: self.own(Message::StartFailure(failure)) }]
    }

    /// The failure matching a refused command, sent back to its sender.
    fn refuse(&mut self, to: Uuid, message: &Message, reason: FailureReason, detail: String) -> Vec<Output> {
        let instance_failure =
            |instance_uuid, node_uuid| InstanceFailure { node_uuid, instance_uuid, reason, detail: detail.clone() };
        let command_failure = |node_uuid, instance_uuid| CommandFailure {
            command: message.kind().to_string(),
            node_uuid,
            instance_uuid,
            reason,
            detail: detail.clone(),
        };
        let failure = match message {
            Message::Start(s) => return self.refuse_start(to, s, reason, detail.clone()),
            Message::Stop(m) => Message::StopFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid))),
            Message::Delete(m) => {
                Message::DeleteFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid)))
            }
            Message::Restart(m) => {
                Message::RestartFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid)))
            }
            Message::Evacuate(m) => Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), None)),
            Message::Restore(m) => Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), None)),
            Message::NodeForget(m) => Message::CommandFailure(command_failure(Some(m.node_uuid), None)),
            Message::LogFetch(m) => {
                Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), Some(m.instance_uuid)))
            }
            _ => Message::CommandFailure(command_failure(None, None)),
        };
        vec![Output::To { peer: to, payload: self.own(failure) }]
    }
}

#[cfg(test)]
mod tests;
