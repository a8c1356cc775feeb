//! The launcher's decisions, pure: [`Core::handle`] takes the time and one [`Input`] (a frame
//! from the scheduler, a workload event, a machine sample, a timer) and returns the
//! [`Effect`]s for the shell to carry out (frames to send, workloads to run or stop, flags to
//! save). No tokio, no clock, no files.
//!
//! The core keeps the node's facts, each decided here once:
//! - the instance table: what runs here, what each was charged, which stops were asked for,
//!   which ends were delivered;
//! - admission ([`crate::admission::admit`]) against the last machine sample and the table;
//! - the node status (READY, FULL with hysteresis, MAINTENANCE) and the maintenance flag;
//! - the reports and the connection they may go on (see `docs/ssntp.md`, "Reports"):
//!   - a heartbeat (status and a STATS of node figures only) on the report timer, on connect and
//!     at once when the status changes;
//!   - INSTANCE_NEWS: the instances that changed (started, ended, usage moved), batched on the
//!     news timer or when [`NEWS_BATCH`] have piled up, numbered;
//!   - a digest (STATS pages listing every instance) on connect and on REPORT_REQUEST. Ended
//!     instances leave the digests [`Config::ended_retention_ms`] after their end was delivered,
//!     so a node's reports stay small whatever it has run.
//!
//! Machine figures come in as [`Input::Sample`] and instance usage as [`Input::Usage`], both
//! sampled by the shell on its report timer, never per START: a burst of STARTs costs no probe.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use drover_model::{NodeStatus, Now, Overcommit};
use ssntp::payload::{
    CommandFailure, DigestPage, ExitReason, FailureReason, InstanceEvent, InstanceExited, InstanceFailure,
    InstanceNews, InstanceStat, InstanceState, LogFetch, Message, MigrateOut, MigrationDone, NodeReport, NodeState,
    Start, StartFailure, Stats,
};
use ssntp::Uuid;

use crate::admission::{self, Figures, Limits, StatusMachine};
use crate::executor::{Adopted, Event, Exit, InstanceUsage};
use crate::state::NodeFlags;

/// Time between SIGTERM and SIGKILL when a STOP or EVACUATE names none.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Most instances in one INSTANCE_NEWS. A burst of this many changes goes at once rather than
/// on the news timer (the scheduler's start window waits for the confirmations).
pub const NEWS_BATCH: usize = 64;

/// Most instances in one digest page (about 150 bytes each: a page stays near 300 KiB, far
/// below the payload limit).
pub const DIGEST_PAGE: usize = 2048;

/// How long an ended instance stays in the digests after its end was delivered: time for a
/// controller that missed the end (its link dropped) to read it from a digest.
pub const ENDED_RETENTION: Duration = Duration::from_secs(600);

/// What the core is told.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one input at a time, moved in and consumed, never stored
pub enum Input {
    /// The instances found on disk at start-up.
    Adopted(Vec<Adopted>),
    /// Connected to a scheduler: its overcommit, and the connection's number.
    Connected {
        /// The connection (reports go on this one only).
        session: u64,
        /// The scheduler's overcommit, from the cluster configuration.
        overcommit: Overcommit,
    },
    /// The connection is gone.
    Disconnected,
    /// A frame from the scheduler.
    Command(Message),
    /// The executor could not start an admitted workload.
    RunRefused {
        /// The instance.
        instance: Uuid,
        /// Why, for the wire.
        reason: FailureReason,
        /// Why, for the operator.
        detail: String,
    },
    /// A workload event from the executor.
    Workload(Event),
    /// An end was delivered to the scheduler.
    EndDelivered(Uuid),
    /// The machine's figures, freshly probed (without this launcher's allocations).
    Sample(Box<NodeReport>),
    /// Every instance's use of the node, freshly sampled.
    Usage(Vec<(Uuid, InstanceUsage)>),
    /// The shell's part of a live migration: the incoming copy waits at `address`
    /// (MIGRATION_READY), or the copy ended (MIGRATION_DONE).
    Migration(Message),
    /// The report timer fired: a heartbeat.
    ReportDue,
    /// The news timer fired: send the instances that changed.
    NewsDue,
    /// The launcher exits draining: no new work from now, and say MAINTENANCE with the
    /// deadline; the workloads may finish until then (the shell then sends `ShuttingDown`).
    ExitDraining {
        /// How long they may run on, ms.
        drain_ms: u64,
    },
    /// The launcher is exiting: say MAINTENANCE, and stop the workloads when `drain`.
    ShuttingDown {
        /// Stop every workload before exiting.
        drain: bool,
    },
}

/// What the shell does.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send on whatever connection is up; dropped if none.
    Send(Message),
    /// Send a report (status, STATS, INSTANCE_NEWS) on this connection only (see [`Core`]'s
    /// `session`). When it carries ends, the shell waits for room and, once it is queued, tells
    /// the executor and the core ([`Input::EndDelivered`]) of each; otherwise it is dropped
    /// when the queue is full (the next one says the same).
    Report {
        /// The connection it belongs to.
        session: u64,
        /// The frame.
        message: Message,
        /// Instances whose end this frame delivers.
        ends: Vec<Uuid>,
    },
    /// Send an instance's end; on delivery the shell tells the executor and the core
    /// ([`Input::EndDelivered`]).
    SendEnd {
        /// The instance.
        instance: Uuid,
        /// INSTANCE_EXITED, INSTANCE_STOPPED or START_FAILURE.
        message: Message,
    },
    /// Start the workload (the executor's refusal comes back as [`Input::RunRefused`]).
    Run(Box<Start>),
    /// Stop a workload.
    Stop {
        /// The instance.
        instance: Uuid,
        /// SIGKILL after this.
        grace: Duration,
    },
    /// Remove an instance and its results.
    Delete(Uuid),
    /// Answer a LOG_FETCH from the instance's output.
    Tail(LogFetch),
    /// Persist the node flags.
    SaveFlags(NodeFlags),
    /// Send a `vm` instance's state to another node (live migration); MIGRATION_DONE follows
    /// as [`Input::Migration`].
    MigrateOut(MigrateOut),
    /// Resume the paused guest of an incoming instance whose migration was committed.
    Resume(Uuid),
    /// Cancel an outgoing migration and resume the guest if it was paused.
    CancelMigration(Uuid),
}

/// An instance's part in a live migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationRole {
    /// The destination's copy, waiting for its state: not reported until committed.
    Incoming,
    /// The source's copy, sending its state: reported as usual (it still runs here).
    Outgoing,
    /// A copy that is no longer the instance (the source's once committed, the destination's
    /// once abandoned): stopped, its end reported like any stop (the controller and the
    /// scheduler know the instance is elsewhere and only note that this copy is gone), then
    /// removed with its files.
    Leaving,
}

/// Where an instance is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Admitted; the workload is starting or runs.
    Running,
    /// Ended (how, when on the monotonic clock) and whether the end was delivered.
    Ended { code: Option<i32>, reason: ExitReason, delivered: bool, at_ms: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    vcpus: u32,
    /// Last-level cache ways of its own.
    cache_ways: u32,
    /// Its memory and its backend's anchor tax when it was admitted, MiB.
    charged_mb: u64,
    /// Its backend (`process`, `oci` …), for the anchor tax.
    backend: &'static str,
    workload: Option<Uuid>,
    restart: bool,
    stop_requested: bool,
    /// The workload was seen running (not only admitted).
    started: bool,
    /// It ended before it ran; its end travels as START_FAILURE, never in news or digests.
    failed_start: bool,
    phase: Phase,
    usage: InstanceUsage,
    /// The usage last sent: news carries usage only when it moved enough.
    reported_usage: InstanceUsage,
    /// Its part in a live migration under way.
    migration: Option<MigrationRole>,
}

impl Entry {
    fn of(start: &Start, tax_mb: u64) -> Self {
        Self {
            vcpus: start.requirements.vcpus,
            cache_ways: start.requirements.cache_ways,
            charged_mb: start.charged_mb() + tax_mb,
            backend: start.backend.name(),
            workload: start.workload_uuid,
            restart: start.restart,
            stop_requested: false,
            started: false,
            failed_start: false,
            phase: Phase::Running,
            usage: InstanceUsage::default(),
            reported_usage: InstanceUsage::default(),
            migration: start.migrate_from.map(|_| MigrationRole::Incoming),
        }
    }

    /// Whether nothing about it is reported: a failed start (its end travels as START_FAILURE),
    /// or an incoming copy not yet committed (see [`MigrationRole`]).
    fn unreported(&self) -> bool {
        self.failed_start || self.migration == Some(MigrationRole::Incoming)
    }

    /// Whether a digest at `now_ms` lists it: not a failed start, and not an end delivered
    /// longer than `retention_ms` ago.
    fn listed(&self, now_ms: u64, retention_ms: u64) -> bool {
        !self.unreported()
            && match self.phase {
                Phase::Running | Phase::Ended { delivered: false, .. } => true,
                Phase::Ended { delivered: true, at_ms, .. } => now_ms.saturating_sub(at_ms) < retention_ms,
            }
    }

    fn running(&self) -> bool {
        self.phase == Phase::Running
    }
}

/// The instance table, with what its running instances add up to kept as it changes: admission
/// and the status look at the totals on every START and event, so they cost the same whatever
/// the number of instances. Only [`InstanceTable::insert`], [`InstanceTable::remove`] and
/// [`InstanceTable::end`] change whether an instance runs.
#[derive(Debug, Default)]
struct InstanceTable {
    entries: HashMap<Uuid, Entry>,
    running: usize,
    vcpus: u32,
    charged_mb: u64,
    cache_ways: u32,
}

impl InstanceTable {
    fn count(&mut self, e: &Entry, sign: bool) {
        if !e.running() {
            return;
        }
        if sign {
            self.running += 1;
            self.vcpus = self.vcpus.saturating_add(e.vcpus);
            self.charged_mb = self.charged_mb.saturating_add(e.charged_mb);
            self.cache_ways = self.cache_ways.saturating_add(e.cache_ways);
        } else {
            self.running -= 1;
            self.vcpus = self.vcpus.saturating_sub(e.vcpus);
            self.charged_mb = self.charged_mb.saturating_sub(e.charged_mb);
            self.cache_ways = self.cache_ways.saturating_sub(e.cache_ways);
        }
    }

    fn insert(&mut self, id: Uuid, entry: Entry) {
        self.count(&entry, true);
        if let Some(old) = self.entries.insert(id, entry) {
            self.count(&old, false);
        }
    }

    fn remove(&mut self, id: &Uuid) -> Option<Entry> {
        let old = self.entries.remove(id)?;
        self.count(&old, false);
        Some(old)
    }

    /// Marks an instance ended at `at_ms`; returns it, if it is here.
    fn end(&mut self, id: &Uuid, code: Option<i32>, reason: ExitReason, at_ms: u64) -> Option<&Entry> {
        let mut entry = self.entries.remove(id)?;
        self.count(&entry, false);
        entry.phase = Phase::Ended { code, reason, delivered: false, at_ms };
        Some(self.entries.entry(*id).or_insert(entry))
    }

    /// An entry to change in anything but whether it runs.
    fn get_mut(&mut self, id: &Uuid) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    fn get(&self, id: &Uuid) -> Option<&Entry> {
        self.entries.get(id)
    }

    fn contains_key(&self, id: &Uuid) -> bool {
        self.entries.contains_key(id)
    }

    fn iter(&self) -> impl Iterator<Item = (&Uuid, &Entry)> {
        self.entries.iter()
    }
}

/// The node's fixed facts, from the command line and the machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's UUID.
    pub node: Uuid,
    /// Reserves, slots and the FULL dwell.
    pub limits: Limits,
    /// Backends offered here.
    pub backends: Vec<String>,
    /// The cgroup feature (`cgroup-v1`, `cgroup-v2`) when workloads can be limited here.
    pub limits_feature: Option<String>,
    /// How long a delivered end stays in the digests ([`ENDED_RETENTION`]).
    pub ended_retention_ms: u64,
    /// How long the scheduler is asked to hold this node's workloads when it exits leaving
    /// them running (`--maintenance-grace`), ms.
    pub away_grace_ms: u64,
}

/// The launcher's state and rules.
#[derive(Debug)]
pub struct Core {
    config: Config,
    flags: NodeFlags,
    status: StatusMachine,
    overcommit: Overcommit,
    /// The connection whose Connected this core handled. The client reconnects on its own
    /// while the shell may still carry out commands of the old connection; a report on the new
    /// connection before those are done would leave out instances about to start, and a
    /// controller reconciling after a scheduler restart would start them a second time
    /// elsewhere. So reports name their connection and go on it only.
    session: Option<u64>,
    /// The status last reported on this connection.
    reported_status: Option<NodeStatus>,
    /// The last machine sample (no allocations in it).
    sample: NodeReport,
    table: InstanceTable,
    /// Ends of instances whose records were unreadable, to report once connected.
    orphans: Vec<Exit>,
    /// The number of the last INSTANCE_NEWS made (0: none yet); digests carry it.
    news_seq: u64,
    /// Instances changed since the last news or digest.
    changed: HashSet<Uuid>,
    /// The launcher exits draining (`--drain-on-exit --drain-deadline`): no new work, and what
    /// runs may finish until this time, Unix ms. Not persisted: the next launcher takes work.
    exit_drain_until: Option<u64>,
    /// What each backend's machinery takes per instance, MiB (measured; see
    /// [`admission::measured_anchor_tax`]).
    anchor_tax: std::collections::BTreeMap<String, u64>,
    /// Instances in a migration (incoming or outgoing) and since when (monotonic ms): one the
    /// scheduler never ends (it restarted) is ended here ([`MIGRATION_GIVE_UP_MS`]).
    migrating: std::collections::BTreeMap<Uuid, u64>,
}

/// How long a copy may wait in a migration for MIGRATE_END before the launcher ends it itself
/// (an incoming copy stopped, an outgoing one resumed): past the scheduler's own limit, so this
/// only matters when the scheduler forgot the migration (it restarted).
pub const MIGRATION_GIVE_UP_MS: u64 = ssntp::payload::MIGRATION_TIMEOUT_MS + 60_000;

impl Core {
    /// A core for a node with `flags` as persisted.
    pub fn new(config: Config, flags: NodeFlags) -> Self {
        let config_backends = config.backends.clone();
        let sample = NodeReport { node_uuid: config.node, ..NodeReport::default() };
        Self {
            config,
            flags,
            status: StatusMachine::default(),
            overcommit: Overcommit::default(),
            session: None,
            reported_status: None,
            sample,
            table: InstanceTable::default(),
            orphans: Vec::new(),
            news_seq: 0,
            changed: HashSet::new(),
            exit_drain_until: None,
            anchor_tax: admission::initial_anchor_tax(&config_backends),
            migrating: std::collections::BTreeMap::new(),
        }
    }

    /// The anchor tax of a START's backend here, MiB.
    fn tax_of(&self, start: &Start) -> u64 {
        self.anchor_tax.get(start.backend.name()).copied().unwrap_or(0)
    }

    /// Whether the node takes no new work: in maintenance, or exiting with a drain.
    fn closed(&self) -> bool {
        self.flags.maintenance || self.exit_drain_until.is_some()
    }

    /// Whether a session with the scheduler is up (what is sent now goes somewhere).
    pub fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// Instances whose workloads start or run.
    pub fn running(&self) -> usize {
        self.table.running
    }

    /// Whether the node is in maintenance.
    pub fn maintenance(&self) -> bool {
        self.flags.maintenance
    }

    /// Whether the node drains (a graceful evacuation, or an exit with a drain deadline).
    pub fn draining(&self) -> bool {
        self.flags.drain_until_unix_ms.is_some() || self.exit_drain_until.is_some()
    }

    /// Decides what to do about `input` at `now`.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Adopted(found) => self.adopt(now, found),
            Input::Connected { session, overcommit } => {
                self.overcommit = overcommit;
                self.session = Some(session);
                self.reported_status = None;
                self.report(now, &mut out);
                self.resend_ends(&mut out);
                self.digest(now, &mut out);
            }
            Input::Disconnected => self.session = None,
            Input::Command(Message::ReportRequest(_)) => self.digest(now, &mut out),
            Input::Command(message) => {
                if let Some(answer) = self.command(now, message, &mut out) {
                    out.push(Effect::Send(answer));
                }
                self.report_if_changed(now, &mut out);
            }
            Input::RunRefused { instance, reason, detail } => {
                let restart = self.table.remove(&instance).is_some_and(|e| e.restart);
                let failure = StartFailure {
                    node_uuid: Some(self.config.node),
                    instance_uuid: instance,
                    reason,
                    restart,
                    detail,
                };
                out.push(Effect::Send(Message::StartFailure(failure)));
                self.report_if_changed(now, &mut out);
            }
            Input::Workload(event) => {
                self.workload(now, event, &mut out);
                if self.changed.len() >= NEWS_BATCH {
                    self.news(&mut out);
                }
                self.report_if_changed(now, &mut out);
            }
            Input::EndDelivered(instance) => {
                if let Some(Phase::Ended { delivered, .. }) = self.table.get_mut(&instance).map(|e| &mut e.phase) {
                    *delivered = true;
                }
                if self.table.get(&instance).is_some_and(|e| e.migration == Some(MigrationRole::Leaving)) {
                    // Its end is known; the instance's files are at its other node.
                    self.drop_copy(instance, &mut out);
                }
                self.orphans.retain(|o| o.instance != instance);
            }
            Input::Sample(report) => self.sample = *report,
            Input::Migration(message) => self.migration_news(message, &mut out),
            Input::Usage(usage) => {
                let samples: Vec<(&'static str, i64)> = usage
                    .iter()
                    .filter_map(|(id, u)| {
                        self.table.get(id).filter(|e| e.running()).map(|e| (e.backend, u.machinery_kb))
                    })
                    .collect();
                self.anchor_tax = admission::measured_anchor_tax(&self.anchor_tax, samples);
                for (id, u) in usage {
                    if let Some(e) = self.table.get_mut(&id) {
                        e.usage = u;
                        if e.running() && e.started && moved(e.reported_usage, u) {
                            self.changed.insert(id);
                        }
                    }
                }
            }
            Input::ReportDue => {
                self.drain_due(now, &mut out);
                self.migrations_due(now, &mut out);
                self.report(now, &mut out);
            }
            Input::NewsDue => self.news(&mut out),
            Input::ExitDraining { drain_ms } => {
                self.exit_drain_until = Some(now.unix_ms.saturating_add(drain_ms));
                out.push(Effect::Send(Message::Maintenance(Some(self.node_report()))));
            }
            Input::ShuttingDown { drain } => {
                // Stop taking work and say so; the workloads stay for the next launcher unless
                // asked to drain.
                let mut r = self.node_report();
                if !drain {
                    // They run on: the scheduler holds them for the next launcher.
                    r.away_grace_ms = Some(self.config.away_grace_ms);
                }
                out.push(Effect::Send(Message::Maintenance(Some(r))));
                if drain {
                    self.stop_all(STOP_GRACE, &mut out);
                }
            }
        }
        out
    }

    fn adopt(&mut self, now: Now, found: Vec<Adopted>) {
        for a in found {
            match a {
                Adopted::Known { start, stop_requested, exit, exit_reported } => {
                    let tax = self.tax_of(&start);
                    let mut entry = Entry::of(&start, tax);
                    // A migration does not survive a restart: the copy is reported as this
                    // node's, and the scheduler's MIGRATE_END (if one comes) says what it is.
                    entry.migration = None;
                    entry.stop_requested = stop_requested;
                    entry.started = true;
                    if let Some(exit) = exit {
                        entry.phase = Phase::Ended {
                            code: exit.code,
                            reason: exit.reason,
                            delivered: exit_reported,
                            at_ms: now.mono_ms,
                        };
                    }
                    self.table.insert(start.instance_uuid, entry);
                }
                Adopted::Unreadable(exit) => self.orphans.push(exit),
            }
        }
    }

    /// Handles one frame; returns the answer, if any.
    fn command(&mut self, now: Now, message: Message, out: &mut Vec<Effect>) -> Option<Message> {
        let node = self.config.node;
        let failure =
            |instance_uuid, reason, detail| InstanceFailure { node_uuid: Some(node), instance_uuid, reason, detail };
        Some(match message {
            Message::Start(mut start) => match self.admit(&start) {
                Ok(replaces) => {
                    admission::add_parallelism(&mut start, self.sample.cpus_online, self.sample.load);
                    admission::add_arch_setup(&mut start);
                    if replaces {
                        out.push(Effect::Delete(start.instance_uuid));
                        self.changed.remove(&start.instance_uuid);
                    }
                    let tax = self.tax_of(&start);
                    self.table.insert(start.instance_uuid, Entry::of(&start, tax));
                    if start.migrate_from.is_some() {
                        self.migrating.insert(start.instance_uuid, now.mono_ms);
                    }
                    out.push(Effect::Run(Box::new(start)));
                    return None; // INSTANCE_STARTED follows once the workload runs
                }
                Err((reason, detail)) => Message::StartFailure(StartFailure {
                    node_uuid: Some(node),
                    instance_uuid: start.instance_uuid,
                    reason,
                    restart: start.restart,
                    detail,
                }),
            },
            Message::Stop(stop) => {
                let grace = stop.grace_ms.map_or(STOP_GRACE, Duration::from_millis);
                let Some(entry) = self.table.get_mut(&stop.instance_uuid) else {
                    let detail = format!("no instance {} here", stop.instance_uuid);
                    return Some(Message::StopFailure(failure(stop.instance_uuid, FailureReason::NoInstance, detail)));
                };
                if entry.running() {
                    entry.stop_requested = true;
                    out.push(Effect::Stop { instance: stop.instance_uuid, grace });
                }
                return None; // INSTANCE_STOPPED follows the end
            }
            Message::Delete(delete) => {
                self.changed.remove(&delete.instance_uuid);
                if self.table.remove(&delete.instance_uuid).is_none() {
                    let detail = format!("no instance {} here", delete.instance_uuid);
                    return Some(Message::DeleteFailure(failure(
                        delete.instance_uuid,
                        FailureReason::NoInstance,
                        detail,
                    )));
                }
                out.push(Effect::Delete(delete.instance_uuid));
                Message::InstanceDeleted(InstanceEvent { instance_uuid: delete.instance_uuid, node_uuid: Some(node) })
            }
            Message::LogFetch(fetch) => {
                if !self.table.contains_key(&fetch.instance_uuid) {
                    return Some(Message::CommandFailure(CommandFailure {
                        command: "LOG_FETCH".into(),
                        node_uuid: Some(node),
                        instance_uuid: Some(fetch.instance_uuid),
                        reason: FailureReason::NoInstance,
                        detail: format!("no instance {} here", fetch.instance_uuid),
                    }));
                }
                out.push(Effect::Tail(fetch));
                return None;
            }
            Message::Restart(r) => Message::RestartFailure(failure(
                r.instance_uuid,
                FailureReason::InvalidData,
                "RESTART is not supported by this launcher build".into(),
            )),
            Message::Evacuate(evacuate) => {
                // Saved first: a launcher restarted mid-evacuation stays in maintenance.
                self.flags.maintenance = true;
                let grace = evacuate.deadline_ms.map_or(STOP_GRACE, Duration::from_millis);
                match evacuate.drain_ms {
                    // Running work may finish until the deadline; the tick stops the rest.
                    Some(drain) if self.running() > 0 => {
                        self.flags.drain_until_unix_ms = Some(now.unix_ms.saturating_add(drain));
                        out.push(Effect::SaveFlags(self.flags.clone()));
                    }
                    _ => {
                        self.flags.drain_until_unix_ms = None;
                        out.push(Effect::SaveFlags(self.flags.clone()));
                        self.stop_all(grace, out);
                    }
                }
                return None; // MAINTENANCE and one INSTANCE_STOPPED per instance follow
            }
            Message::MigrateOut(o) => return self.migrate_out(now, o, out),
            Message::MigrateEnd(end) => {
                let incoming = end.to_node == self.config.node;
                self.migrate_end(end.instance_uuid, end.committed, incoming, out);
                return None;
            }
            Message::Restore(_) => {
                self.flags.maintenance = false;
                self.flags.drain_until_unix_ms = None;
                out.push(Effect::SaveFlags(self.flags.clone()));
                return None; // READY follows
            }
            _ => return None,
        })
    }

    /// MIGRATE_OUT: a running, started `vm` instance not already migrating sends its state.
    fn migrate_out(&mut self, now: Now, o: MigrateOut, out: &mut Vec<Effect>) -> Option<Message> {
        let id = o.instance_uuid;
        let refusal = match self.table.get_mut(&id) {
            None => Some(format!("no instance {id} here")),
            Some(e) if e.backend != "vm" => Some(format!("instance {id} is not a vm")),
            Some(e) if !e.running() || !e.started || e.stop_requested => Some(format!("instance {id} is not running")),
            Some(e) if e.migration.is_some() => Some(format!("instance {id} is migrating already")),
            Some(e) => {
                e.migration = Some(MigrationRole::Outgoing);
                None
            }
        };
        match refusal {
            Some(detail) => Some(Message::MigrationDone(MigrationDone { instance_uuid: id, ok: false, detail })),
            None => {
                self.migrating.insert(id, now.mono_ms);
                out.push(Effect::MigrateOut(o));
                None
            }
        }
    }

    /// MIGRATE_END: the copy here becomes the instance, stays it, or leaves. Its part is
    /// whether this node is the destination (`incoming`): a launcher restarted meanwhile has
    /// forgotten it.
    fn migrate_end(&mut self, id: Uuid, committed: bool, incoming: bool, out: &mut Vec<Effect>) {
        self.migrating.remove(&id);
        let Some(e) = self.table.get_mut(&id) else { return };
        let role = match e.migration {
            Some(MigrationRole::Leaving) => MigrationRole::Leaving,
            _ if incoming => MigrationRole::Incoming,
            _ => MigrationRole::Outgoing,
        };
        match (role, committed) {
            (MigrationRole::Incoming, true) => {
                e.migration = None;
                self.changed.insert(id);
                out.push(Effect::Resume(id));
            }
            (MigrationRole::Outgoing, false) => {
                e.migration = None;
                out.push(Effect::CancelMigration(id));
            }
            (MigrationRole::Incoming, false) | (MigrationRole::Outgoing, true) => {
                e.migration = Some(MigrationRole::Leaving);
                match e.phase {
                    Phase::Running => {
                        e.stop_requested = true;
                        out.push(Effect::Stop { instance: id, grace: Duration::ZERO });
                    }
                    // It ended already (a STOP raced the end) and its end went: gone now.
                    Phase::Ended { delivered: true, .. } => self.drop_copy(id, out),
                    Phase::Ended { delivered: false, .. } => {}
                }
            }
            (MigrationRole::Leaving, _) => {}
        }
    }

    /// Forgets a copy that is not (or no longer) the instance, and removes its files.
    fn drop_copy(&mut self, id: Uuid, out: &mut Vec<Effect>) {
        self.table.remove(&id);
        self.migrating.remove(&id);
        self.changed.remove(&id);
        out.push(Effect::Delete(id));
    }

    /// Ends, as abandoned, the migrations the scheduler left without an end for longer than
    /// [`MIGRATION_GIVE_UP_MS`] (it restarted and forgot them).
    fn migrations_due(&mut self, now: Now, out: &mut Vec<Effect>) {
        let due: Vec<Uuid> = self
            .migrating
            .iter()
            .filter(|(_, since)| now.mono_ms.saturating_sub(**since) >= MIGRATION_GIVE_UP_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match self.table.get(&id).and_then(|e| e.migration) {
                Some(MigrationRole::Incoming) => self.migrate_end(id, false, true, out),
                Some(MigrationRole::Outgoing) => self.migrate_end(id, false, false, out),
                _ => {
                    self.migrating.remove(&id);
                }
            }
        }
    }

    /// What the shell's migration work says: sent on to the scheduler while the migration is
    /// still this node's to report.
    fn migration_news(&mut self, message: Message, out: &mut Vec<Effect>) {
        let role = |id: &Uuid| self.table.get(id).and_then(|e| e.migration);
        let current = match &message {
            Message::MigrationReady(r) => role(&r.instance_uuid) == Some(MigrationRole::Incoming),
            Message::MigrationDone(d) => {
                matches!(role(&d.instance_uuid), Some(MigrationRole::Incoming | MigrationRole::Outgoing))
            }
            _ => false,
        };
        if current {
            out.push(Effect::Send(message));
        }
    }

    /// Whether a START may run here; `Ok(true)` when it replaces an ended copy (a restart).
    fn admit(&self, start: &Start) -> Result<bool, (FailureReason, String)> {
        admission::admit(
            &self.config.limits,
            &self.figures(),
            self.overcommit,
            self.closed(),
            start,
            &self.config.backends,
            self.config.limits_feature.is_some(),
            self.tax_of(start),
        )?;
        match self.table.get(&start.instance_uuid) {
            None => Ok(false),
            // A restart of a copy that ended here: the new run replaces it (ciao's restart).
            Some(e) if start.restart && !e.running() => Ok(true),
            // A copy that moved away not long ago: its files go once its end is reported.
            Some(e) if e.migration == Some(MigrationRole::Leaving) => Err((
                FailureReason::InstanceExists,
                format!("the previous copy of instance {} here is still being removed; try again", start.instance_uuid),
            )),
            Some(e) => {
                let reason = if e.running() { FailureReason::AlreadyRunning } else { FailureReason::InstanceExists };
                Err((reason, format!("instance {} is already on this node", start.instance_uuid)))
            }
        }
    }

    /// A drain whose deadline has come stops what still runs; one with nothing left running is
    /// over (the node stays in maintenance until RESTORE).
    fn drain_due(&mut self, now: Now, out: &mut Vec<Effect>) {
        let Some(until) = self.flags.drain_until_unix_ms else { return };
        let running = self.running();
        if running == 0 || now.unix_ms >= until {
            self.flags.drain_until_unix_ms = None;
            out.push(Effect::SaveFlags(self.flags.clone()));
            if running > 0 {
                self.stop_all(STOP_GRACE, out);
            }
        }
    }

    fn stop_all(&mut self, grace: Duration, out: &mut Vec<Effect>) {
        let mut running: Vec<Uuid> = self.table.iter().filter(|(_, e)| e.running()).map(|(id, _)| *id).collect();
        running.sort_unstable();
        for id in running {
            if let Some(e) = self.table.get_mut(&id) {
                e.stop_requested = true;
            }
            out.push(Effect::Stop { instance: id, grace });
        }
    }

    /// A workload event: starts and ends become news; a failed start is its own START_FAILURE
    /// (it carries the reason).
    fn workload(&mut self, now: Now, event: Event, out: &mut Vec<Effect>) {
        let node = self.config.node;
        match event {
            Event::Started { instance, .. } => {
                if let Some(e) = self.table.get_mut(&instance) {
                    if e.running() && !e.started {
                        e.started = true;
                        if !e.unreported() {
                            self.changed.insert(instance);
                        }
                    }
                }
            }
            Event::StartFailed { instance, detail } => {
                let code = Some(crate::shim::CANNOT_RUN);
                if self.table.end(&instance, code, ExitReason::Failed, now.mono_ms).is_none() {
                    return;
                }
                if let Some(e) = self.table.get_mut(&instance) {
                    e.failed_start = true;
                }
                self.changed.remove(&instance);
                let failure = StartFailure {
                    node_uuid: Some(node),
                    instance_uuid: instance,
                    reason: FailureReason::LaunchFailure,
                    restart: false,
                    detail,
                };
                out.push(Effect::SendEnd { instance, message: Message::StartFailure(failure) });
            }
            Event::Exited(exit)
                if self.table.get(&exit.instance).is_some_and(|e| e.migration == Some(MigrationRole::Incoming)) =>
            {
                // An incoming copy whose migration was still under way: it failed, and the
                // copy is gone without a word (the instance runs on at its source).
                self.drop_copy(exit.instance, out);
                let detail = format!("the incoming device model ended (code {:?})", exit.code);
                let done = MigrationDone { instance_uuid: exit.instance, ok: false, detail };
                out.push(Effect::Send(Message::MigrationDone(done)));
            }
            Event::Exited(exit) => {
                if self.table.end(&exit.instance, exit.code, exit.reason, now.mono_ms).is_some() {
                    self.changed.insert(exit.instance);
                }
            }
        }
    }

    /// Ends that travel on their own, not yet delivered (after a reconnect or a restart):
    /// failed starts and the instances whose records were unreadable. The rest are in the
    /// digest.
    fn resend_ends(&self, out: &mut Vec<Effect>) {
        let node = self.config.node;
        let mut ends: Vec<(Uuid, Message)> = self
            .table
            .iter()
            .filter_map(|(id, e)| match e.phase {
                Phase::Ended { delivered: false, .. } if e.failed_start => {
                    let failure = StartFailure {
                        node_uuid: Some(node),
                        instance_uuid: *id,
                        reason: FailureReason::LaunchFailure,
                        restart: false,
                        detail: "the workload could not be started".into(),
                    };
                    Some((*id, Message::StartFailure(failure)))
                }
                _ => None,
            })
            .collect();
        ends.extend(self.orphans.iter().map(|o| (o.instance, end_message(node, o, false))));
        ends.sort_unstable_by_key(|(id, _)| *id);
        out.extend(ends.into_iter().map(|(instance, message)| Effect::SendEnd { instance, message }));
    }

    /// vCPUs and memory charged to the running instances: what the scheduler granted in their
    /// STARTs (the request, or a memory estimate below it).
    fn allocated(&self) -> (u32, u64) {
        (self.table.vcpus, self.table.charged_mb)
    }

    /// The figures admission and status work from. The sample's memory figures have the
    /// reserve taken off; admission wants the raw ones.
    fn figures(&self) -> Figures {
        let (vcpus, mem) = self.allocated();
        let reserve = self.config.limits.mem_reserve_mb;
        Figures {
            cpus_online: self.sample.cpus_online,
            mem_total_mb: self.sample.mem_total_mb + reserve,
            mem_available_mb: self.sample.mem_available_mb + reserve,
            disk_available_mb: self.sample.disk_available_mb,
            vcpus_allocated: u64::from(vcpus),
            mem_allocated_mb: mem,
            instances: self.running(),
            cache_ways: self.sample.cache_ways,
            cache_ways_allocated: self.table.cache_ways,
        }
    }

    /// The node report: the last sample with this launcher's allocations.
    fn node_report(&self) -> NodeReport {
        let mut r = self.sample.clone();
        let (vcpus, mem) = self.allocated();
        r.vcpus_allocated = vcpus;
        r.mem_allocated_mb = Some(mem);
        r.instance_count = u32::try_from(self.running()).unwrap_or(u32::MAX);
        r.draining_until_unix_ms = self.flags.drain_until_unix_ms.or(self.exit_drain_until);
        r.anchor_tax_mb = self.anchor_tax.clone();
        if let Some(feature) = &self.config.limits_feature {
            r.features.push(feature.clone());
            r.features.push(admission::LIMITS_FEATURE.to_owned());
        }
        r
    }

    /// The node's status now (the status machine moves on).
    fn status_now(&mut self, now: Now) -> NodeStatus {
        let figures = self.figures();
        let closed = self.closed();
        self.status.update(now.mono_ms, &self.config.limits, &figures, self.overcommit, closed)
    }

    /// Reports at once only when the status changed since the last report on this connection:
    /// instance news travels in its own events, and a report per event made a launch cost a
    /// full STATS per instance (quadratic per node). The timer reports the rest.
    fn report_if_changed(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.session.is_none() {
            return;
        }
        let state = self.status_now(now);
        if self.reported_status != Some(state) {
            self.send_report(state, out);
        }
    }

    /// The heartbeat: the status (READY, FULL or MAINTENANCE) and a STATS of node figures, on
    /// the current connection only; news that waits goes with it.
    fn report(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.session.is_none() {
            return;
        }
        let state = self.status_now(now);
        self.send_report(state, out);
        self.news(out);
    }

    fn send_report(&mut self, state: NodeStatus, out: &mut Vec<Effect>) {
        let Some(session) = self.session else { return };
        self.reported_status = Some(state);
        let r = self.node_report();
        let status = match state {
            NodeStatus::Full => Message::Full(Some(r)),
            NodeStatus::Maintenance => Message::Maintenance(Some(r)),
            // The machine gives only READY, FULL and MAINTENANCE.
            _ => Message::Ready(r),
        };
        out.push(Effect::Report { session, message: status, ends: Vec::new() });
        let stats = self.stats(state, Vec::new(), None);
        out.push(Effect::Report { session, message: Message::Stats(stats), ends: Vec::new() });
    }

    /// A STATS with the node's figures, and `instances` when it is a digest page.
    fn stats(&self, state: NodeStatus, instances: Vec<InstanceStat>, digest: Option<DigestPage>) -> Stats {
        let r = &self.sample;
        let status = match state {
            NodeStatus::Full => NodeState::Full,
            NodeStatus::Maintenance => NodeState::Maintenance,
            _ => NodeState::Ready,
        };
        Stats {
            node_uuid: self.config.node,
            status,
            mem_total_mb: r.mem_total_mb,
            mem_available_mb: r.mem_available_mb,
            disk_total_mb: r.disk_total_mb,
            disk_available_mb: r.disk_available_mb,
            load: r.load,
            cpus_online: r.cpus_online,
            hostname: r.hostname.clone(),
            networks: r.networks.clone(),
            instances,
            digest,
        }
    }

    /// INSTANCE_NEWS for what changed, in frames of at most [`NEWS_BATCH`]; kept for the next
    /// connection's digest when there is none.
    fn news(&mut self, out: &mut Vec<Effect>) {
        let Some(session) = self.session else { return };
        if self.changed.is_empty() {
            return;
        }
        let mut ids: Vec<Uuid> = self.changed.drain().collect();
        ids.sort_unstable();
        for chunk in ids.chunks(NEWS_BATCH) {
            let (instances, ends) = self.listing(chunk);
            if instances.is_empty() {
                continue;
            }
            self.news_seq += 1;
            let news = InstanceNews { node_uuid: self.config.node, seq: self.news_seq, instances };
            out.push(Effect::Report { session, message: Message::InstanceNews(news), ends });
        }
    }

    /// Every listed instance, in STATS pages of at most [`DIGEST_PAGE`], as of the last news.
    fn digest(&mut self, now: Now, out: &mut Vec<Effect>) {
        let Some(session) = self.session else { return };
        self.changed.clear();
        let retention = self.config.ended_retention_ms;
        let mut ids: Vec<Uuid> =
            self.table.iter().filter(|(_, e)| e.listed(now.mono_ms, retention)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let state = self.reported_status.unwrap_or(NodeStatus::Ready);
        // A node with nothing to list still sends one (empty) page: the digest is its truth.
        let chunks: Vec<&[Uuid]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(DIGEST_PAGE).collect() };
        let pages = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        for (page, chunk) in (0..).zip(chunks) {
            let (instances, ends) = self.listing(chunk);
            let digest = DigestPage { seq: self.news_seq, page, pages };
            let stats = self.stats(state, instances, Some(digest));
            out.push(Effect::Report { session, message: Message::Stats(stats), ends });
        }
    }

    /// The stats of `ids` still here (usage marked as sent), and those whose end they deliver.
    fn listing(&mut self, ids: &[Uuid]) -> (Vec<InstanceStat>, Vec<Uuid>) {
        let mut instances = Vec::with_capacity(ids.len());
        let mut ends = Vec::new();
        for id in ids {
            let Some(e) = self.table.get_mut(id) else { continue };
            if e.unreported() {
                continue;
            }
            e.reported_usage = e.usage;
            if matches!(e.phase, Phase::Ended { delivered: false, .. }) {
                ends.push(*id);
            }
            instances.push(instance_stat(*id, e));
        }
        (instances, ends)
    }
}

/// Whether usage moved enough to be news: memory by 16 MiB and a tenth, CPU by ten points,
/// disk by 64 MiB, or a figure became known. Small wobbles wait for the next digest.
fn moved(before: InstanceUsage, now: InstanceUsage) -> bool {
    let far = |a: i64, b: i64, floor: i64| (a < 0) != (b < 0) || (a - b).abs() >= floor.max(a.abs().max(b.abs()) / 10);
    far(before.memory_mb, now.memory_mb, 16)
        || far(i64::from(before.cpu_percent), i64::from(now.cpu_percent), 10)
        || far(before.disk_mb, now.disk_mb, 64)
}

fn instance_stat(id: Uuid, e: &Entry) -> InstanceStat {
    let (state, exit_code, reason) = match e.phase {
        Phase::Running if e.started => (InstanceState::Active, None, None),
        Phase::Running => (InstanceState::Pending, None, None),
        Phase::Ended { code, reason, .. } if e.stop_requested => (InstanceState::Stopped, code, Some(reason)),
        Phase::Ended { code, reason, .. } => (InstanceState::Exited, code, Some(reason)),
    };
    let running = e.running();
    InstanceStat {
        instance_uuid: id,
        state,
        memory_usage_mb: if running { e.usage.memory_mb } else { -1 },
        disk_usage_mb: e.usage.disk_mb,
        cpu_usage: if running { e.usage.cpu_percent } else { -1 },
        exit_code,
        workload_uuid: e.workload,
        reason,
    }
}

/// INSTANCE_STOPPED for an end that followed a stop request, INSTANCE_EXITED otherwise.
fn end_message(node: Uuid, exit: &Exit, stopped: bool) -> Message {
    if stopped {
        Message::InstanceStopped(InstanceEvent { instance_uuid: exit.instance, node_uuid: Some(node) })
    } else {
        Message::InstanceExited(InstanceExited {
            instance_uuid: exit.instance,
            node_uuid: node,
            exit_code: exit.code,
            reason: exit.reason,
        })
    }
}

#[cfg(test)]
mod tests;
