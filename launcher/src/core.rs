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
//! - the reports (status and STATS), when they go (on the timer, on connect, and at once when the
//!   status changes) and the connection they may go on.
//!
//! Machine figures come in as [`Input::Sample`] and instance usage as [`Input::Usage`], both
//! sampled by the shell on its report timer, never per START: a burst of STARTs costs no probe.

use std::collections::HashMap;
use std::time::Duration;

use drover_model::{NodeStatus, Now, Overcommit};
use ssntp::payload::{
    CommandFailure, FailureReason, InstanceEvent, InstanceExited, InstanceFailure, InstanceStat, InstanceState,
    LogFetch, Message, NodeReport, NodeState, Start, StartFailure, Stats,
};
use ssntp::Uuid;

use crate::admission::{self, Figures, Limits, StatusMachine};
use crate::executor::{Adopted, Event, Exit, InstanceUsage};
use crate::state::NodeFlags;

/// Time between SIGTERM and SIGKILL when a STOP or EVACUATE names none.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

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
    /// The report timer fired.
    ReportDue,
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
    /// Send a status or STATS report on this connection only (see [`Core`]'s `session`).
    Report {
        /// The connection it belongs to.
        session: u64,
        /// The frame.
        message: Message,
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
}

/// Where an instance is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Admitted; the workload is starting or runs.
    Running,
    /// Ended (how) and whether the end was delivered.
    Ended { code: Option<i32>, reason: ssntp::payload::ExitReason, delivered: bool },
}

#[derive(Debug, Clone)]
struct Entry {
    vcpus: u32,
    charged_mb: u64,
    workload: Option<Uuid>,
    restart: bool,
    stop_requested: bool,
    phase: Phase,
    usage: InstanceUsage,
}

impl Entry {
    fn of(start: &Start) -> Self {
        Self {
            vcpus: start.requirements.vcpus,
            charged_mb: start.charged_mb(),
            workload: start.workload_uuid,
            restart: start.restart,
            stop_requested: false,
            phase: Phase::Running,
            usage: InstanceUsage::default(),
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
        } else {
            self.running -= 1;
            self.vcpus = self.vcpus.saturating_sub(e.vcpus);
            self.charged_mb = self.charged_mb.saturating_sub(e.charged_mb);
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

    /// Marks an instance ended; returns it, if it is here.
    fn end(&mut self, id: &Uuid, code: Option<i32>, reason: ssntp::payload::ExitReason) -> Option<&Entry> {
        let mut entry = self.entries.remove(id)?;
        self.count(&entry, false);
        entry.phase = Phase::Ended { code, reason, delivered: false };
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
}

impl Core {
    /// A core for a node with `flags` as persisted.
    pub fn new(config: Config, flags: NodeFlags) -> Self {
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
        }
    }

    /// Instances whose workloads start or run.
    pub fn running(&self) -> usize {
        self.table.running
    }

    /// Whether the node is in maintenance.
    pub fn maintenance(&self) -> bool {
        self.flags.maintenance
    }

    /// Decides what to do about `input` at `now`.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Adopted(found) => self.adopt(found),
            Input::Connected { session, overcommit } => {
                self.overcommit = overcommit;
                self.session = Some(session);
                self.reported_status = None;
                self.report(now, &mut out);
                self.resend_ends(&mut out);
            }
            Input::Disconnected => self.session = None,
            Input::Command(message) => {
                if let Some(answer) = self.command(message, &mut out) {
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
                self.workload(event, &mut out);
                self.report_if_changed(now, &mut out);
            }
            Input::EndDelivered(instance) => {
                if let Some(Phase::Ended { delivered, .. }) = self.table.get_mut(&instance).map(|e| &mut e.phase) {
                    *delivered = true;
                }
                self.orphans.retain(|o| o.instance != instance);
            }
            Input::Sample(report) => self.sample = *report,
            Input::Usage(usage) => {
                for (id, u) in usage {
                    if let Some(e) = self.table.get_mut(&id) {
                        e.usage = u;
                    }
                }
            }
            Input::ReportDue => self.report(now, &mut out),
            Input::ShuttingDown { drain } => {
                // Stop taking work and say so; the workloads stay for the next launcher unless
                // asked to drain.
                let r = self.node_report();
                out.push(Effect::Send(Message::Maintenance(Some(r))));
                if drain {
                    self.stop_all(STOP_GRACE, &mut out);
                }
            }
        }
        out
    }

    fn adopt(&mut self, found: Vec<Adopted>) {
        for a in found {
            match a {
                Adopted::Known { start, stop_requested, exit, exit_reported } => {
                    let mut entry = Entry::of(&start);
                    entry.stop_requested = stop_requested;
                    if let Some(exit) = exit {
                        entry.phase = Phase::Ended { code: exit.code, reason: exit.reason, delivered: exit_reported };
                    }
                    self.table.insert(start.instance_uuid, entry);
                }
                Adopted::Unreadable(exit) => self.orphans.push(exit),
            }
        }
    }

    /// Handles one frame; returns the answer, if any.
    fn command(&mut self, message: Message, out: &mut Vec<Effect>) -> Option<Message> {
        let node = self.config.node;
        let failure =
            |instance_uuid, reason, detail| InstanceFailure { node_uuid: Some(node), instance_uuid, reason, detail };
        Some(match message {
            Message::Start(start) => match self.admit(&start) {
                Ok(replaces) => {
                    if replaces {
                        out.push(Effect::Delete(start.instance_uuid));
                    }
                    self.table.insert(start.instance_uuid, Entry::of(&start));
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
                out.push(Effect::SaveFlags(self.flags.clone()));
                let grace = evacuate.deadline_ms.map_or(STOP_GRACE, Duration::from_millis);
                self.stop_all(grace, out);
                return None; // MAINTENANCE and one INSTANCE_STOPPED per instance follow
            }
            Message::Restore(_) => {
                self.flags.maintenance = false;
                out.push(Effect::SaveFlags(self.flags.clone()));
                return None; // READY follows
            }
            _ => return None,
        })
    }

    /// Whether a START may run here; `Ok(true)` when it replaces an ended copy (a restart).
    fn admit(&self, start: &Start) -> Result<bool, (FailureReason, String)> {
        admission::admit(
            &self.config.limits,
            &self.figures(),
            self.overcommit,
            self.flags.maintenance,
            start,
            &self.config.backends,
            self.config.limits_feature.is_some(),
        )?;
        match self.table.get(&start.instance_uuid) {
            None => Ok(false),
            // A restart of a copy that ended here: the new run replaces it (ciao's restart).
            Some(e) if start.restart && !e.running() => Ok(true),
            Some(e) => {
                let reason = if e.running() { FailureReason::AlreadyRunning } else { FailureReason::InstanceExists };
                Err((reason, format!("instance {} is already on this node", start.instance_uuid)))
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

    fn workload(&mut self, event: Event, out: &mut Vec<Effect>) {
        let node = self.config.node;
        match event {
            Event::Started { instance, .. } => {
                let started = InstanceEvent { instance_uuid: instance, node_uuid: Some(node) };
                out.push(Effect::Send(Message::InstanceStarted(started)));
            }
            Event::StartFailed { instance, detail } => {
                let code = Some(crate::shim::CANNOT_RUN);
                if self.table.end(&instance, code, ssntp::payload::ExitReason::Failed).is_none() {
                    return;
                }
                let failure = StartFailure {
                    node_uuid: Some(node),
                    instance_uuid: instance,
                    reason: FailureReason::LaunchFailure,
                    restart: false,
                    detail,
                };
                out.push(Effect::SendEnd { instance, message: Message::StartFailure(failure) });
            }
            Event::Exited(exit) => {
                let Some(e) = self.table.end(&exit.instance, exit.code, exit.reason) else { return };
                let message = end_message(node, &exit, e.stop_requested);
                out.push(Effect::SendEnd { instance: exit.instance, message });
            }
        }
    }

    /// Every end not yet delivered (after a reconnect or a restart).
    fn resend_ends(&self, out: &mut Vec<Effect>) {
        let node = self.config.node;
        let mut ends: Vec<(Uuid, Message)> = self
            .table
            .iter()
            .filter_map(|(id, e)| match e.phase {
                Phase::Ended { code, reason, delivered: false } => {
                    Some((*id, end_message(node, &Exit { instance: *id, code, reason }, e.stop_requested)))
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
        }
    }

    /// The node report: the last sample with this launcher's allocations.
    fn node_report(&self) -> NodeReport {
        let mut r = self.sample.clone();
        let (vcpus, mem) = self.allocated();
        r.vcpus_allocated = vcpus;
        r.mem_allocated_mb = Some(mem);
        r.instance_count = u32::try_from(self.running()).unwrap_or(u32::MAX);
        if let Some(feature) = &self.config.limits_feature {
            r.features.push(feature.clone());
            r.features.push(admission::LIMITS_FEATURE.to_owned());
        }
        r
    }

    /// The node's status now (the status machine moves on).
    fn status_now(&mut self, now: Now) -> NodeStatus {
        let figures = self.figures();
        self.status.update(now.mono_ms, &self.config.limits, &figures, self.overcommit, self.flags.maintenance)
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

    /// The status (READY, FULL or MAINTENANCE) and STATS, on the current connection only.
    fn report(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.session.is_none() {
            return;
        }
        let state = self.status_now(now);
        self.send_report(state, out);
    }

    fn send_report(&mut self, state: NodeStatus, out: &mut Vec<Effect>) {
        let Some(session) = self.session else { return };
        self.reported_status = Some(state);
        let r = self.node_report();
        let (status, wire_state) = match state {
            NodeStatus::Full => (Message::Full(Some(r.clone())), NodeState::Full),
            NodeStatus::Maintenance => (Message::Maintenance(Some(r.clone())), NodeState::Maintenance),
            // The machine gives only READY, FULL and MAINTENANCE.
            _ => (Message::Ready(r.clone()), NodeState::Ready),
        };
        out.push(Effect::Report { session, message: status });
        let mut instances: Vec<InstanceStat> = self.table.iter().map(|(id, e)| instance_stat(*id, e)).collect();
        instances.sort_unstable_by_key(|s| s.instance_uuid);
        let stats = Stats {
            node_uuid: self.config.node,
            status: wire_state,
            mem_total_mb: r.mem_total_mb,
            mem_available_mb: r.mem_available_mb,
            disk_total_mb: r.disk_total_mb,
            disk_available_mb: r.disk_available_mb,
            load: r.load,
            cpus_online: r.cpus_online,
            hostname: r.hostname,
            networks: r.networks,
            instances,
        };
        out.push(Effect::Report { session, message: Message::Stats(stats) });
    }
}

fn instance_stat(id: Uuid, e: &Entry) -> InstanceStat {
    let (state, exit_code) = match e.phase {
        Phase::Running => (InstanceState::Active, None),
        Phase::Ended { code, .. } if e.stop_requested => (InstanceState::Stopped, code),
        Phase::Ended { code, .. } => (InstanceState::Exited, code),
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
