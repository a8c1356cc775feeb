//! The controller's service core: user intent and cluster reports in, SSNTP commands out, with
//! every change committed to the [`Store`] before anything is sent.
//!
//! - [`Service::tick`] sends a START for every instance whose time has come. The instance is
//!   committed as `starting` first, so a controller that crashes before or after sending never
//!   sends a START for that copy again on its own; [`Service::reconnected`] re-sends the STARTs
//!   that got no answer, and a duplicate is refused by the scheduler or launcher and read as
//!   "it runs" — at most one running copy per desired instance.
//! - [`Service::report`] turns a frame from the cluster into the instance's next state and the
//!   commands it needs (a STOP for an instance the user stopped while it was starting). A
//!   report from a node other than the one the instance runs on is about a stale copy: a start
//!   there is stopped, an end there changes nothing.
//! - [`Service::reconcile`] compares a node's STATS with the store: an instance still waiting
//!   for its start report that runs there is running there (the report was lost); a copy the
//!   store does not want there is stopped; an instance the store believes runs there but the node has not
//!   reported for the grace is lost; an end the controller missed (it was down) is applied.
//! - User actions check the tenant: another tenant's instance is "not found", never "forbidden",
//!   so tenants cannot probe each other's UUIDs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use ssntp::payload::{Delete, ExitReason, InstanceState, Message, Start, Stats, Stop, WorkClass};
use ssntp::Uuid;

use crate::lifecycle::{Action, Input, Lifecycle, State};
use crate::store::{InstanceRecord, Store, StoreError, StoredWorkload};
use crate::workload::{Format, SpecError, Workload};

/// Why a user request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The workload file is invalid (HTTP 400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such workload or instance for this tenant (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// A request that cannot be honoured as asked (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most instances one launch may create.
pub const MAX_LAUNCH: usize = 100_000;

/// Most STARTs one tick sends (the rest go at the next tick): bounds one transaction and the
/// burst on the scheduler connection.
pub const MAX_STARTS_PER_TICK: usize = 2_000;

/// A batch still running: what is left and how the rest ended.
#[derive(Debug, Default)]
struct OpenBatch {
    tenant: String,
    workload: String,
    left: usize,
    exited: usize,
    failed: usize,
}

/// The service.
#[derive(Debug)]
pub struct Service {
    store: Store,
    /// Instances a node's STATS did not list, since when (Unix ms); in memory, since a
    /// restarted controller simply waits one grace again.
    missing: Mutex<HashMap<Uuid, u64>>,
    batches: Mutex<HashMap<Uuid, OpenBatch>>,
}

impl Service {
    /// A service over `store`.
    ///
    /// # Errors
    /// The store.
    pub fn new(store: Store) -> Result<Self, ServiceError> {
        let mut batches: HashMap<Uuid, OpenBatch> = HashMap::new();
        for record in store.instances(None)? {
            if let Some(batch) = record.batch {
                let open = batches.entry(batch).or_default();
                open.tenant.clone_from(&record.tenant);
                open.workload.clone_from(&record.workload);
                match record.life.state {
                    State::Exited { .. } => open.exited += 1,
                    ref s if s.is_final() => open.failed += 1,
                    _ => open.left += 1,
                }
            }
        }
        batches.retain(|_, b| b.left > 0);
        Ok(Self { store, missing: Mutex::new(HashMap::new()), batches: Mutex::new(batches) })
    }

    /// The store (reads for the API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks and saves a workload file; returns its name. `create` refuses to replace one.
    ///
    /// # Errors
    /// An invalid file, an existing workload when `create`, or the store.
    pub fn put_workload(
        &self,
        tenant: &str,
        source: &str,
        format: Format,
        create: bool,
    ) -> Result<String, ServiceError> {
        let parsed = crate::workload::parse(source, format)?;
        let existing = self.store.workload(tenant, &parsed.name)?;
        if create && existing.is_some() {
            return Err(ServiceError::Conflict(format!("workload {} exists; replace it with PUT", parsed.name)));
        }
        let uuid = existing.map_or_else(Uuid::new_v4, |w| w.uuid);
        let stored =
            StoredWorkload { tenant: tenant.to_owned(), uuid, source: source.to_owned(), toml: format == Format::Toml };
        self.store.put_workload(&parsed.name, &stored)?;
        Ok(parsed.name)
    }

    /// Deletes a workload that has no live instance.
    ///
    /// # Errors
    /// Unknown workload, live instances, or the store.
    pub fn delete_workload(&self, tenant: &str, name: &str) -> Result<(), ServiceError> {
        if self.store.workload(tenant, name)?.is_none() {
            return Err(ServiceError::NotFound(format!("workload {name}")));
        }
        let live = self
            .store
            .instances(Some(tenant))?
            .into_iter()
            .filter(|r| r.workload == name && !r.life.state.is_final())
            .count();
        if live > 0 {
            return Err(ServiceError::Conflict(format!(
                "workload {name} has {live} live instances; stop or cancel them first"
            )));
        }
        self.store.delete_workload(tenant, name)?;
        Ok(())
    }

    /// Creates `count` instances of a workload, all pending; they are durable when this returns.
    ///
    /// # Errors
    /// Unknown workload, a count of 0 or over [`MAX_LAUNCH`], or the store.
    pub fn launch(&self, tenant: &str, workload: &str, count: usize, now_ms: u64) -> Result<Vec<Uuid>, ServiceError> {
        self.create(tenant, workload, count, now_ms, None, |_| None).map(|(ids, _, _)| ids)
    }

    /// Creates the instances: pending, or already failed when `refuse` gives a reason for the
    /// workload, so that refused work is never due and no START of it can leave.
    fn create(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        now_ms: u64,
        batch: Option<Uuid>,
        refuse: impl FnOnce(&Workload) -> Option<String>,
    ) -> Result<(Vec<Uuid>, Workload, bool), ServiceError> {
        if count == 0 || count > MAX_LAUNCH {
            return Err(ServiceError::Invalid(format!("count must be 1 to {MAX_LAUNCH}, got {count}")));
        }
        let stored = self
            .store
            .workload(tenant, workload)?
            .ok_or_else(|| ServiceError::NotFound(format!("workload {workload}")))?;
        let parsed = stored.parsed()?;
        if batch.is_some() && parsed.class != WorkClass::Batch {
            return Err(ServiceError::Invalid(format!(
                "workload {workload} is of class workorder; batch submit takes class = \"batch\" workloads"
            )));
        }
        let mut life = Lifecycle::new(parsed.restart, now_ms);
        let why = refuse(&parsed).unwrap_or_default();
        let refused = !why.is_empty();
        if refused {
            life.state = State::Failed { reason: why.clone() };
        }
        let ids = self.store.create_instances(tenant, workload, count, &life, &why, batch)?;
        Ok((ids, parsed, refused))
    }

    /// Creates a batch of `count` instances of a batch-class workload; returns the batch id, the
    /// instances and the workload. Work needing more memory than `largest_node_mb` (the largest
    /// node known, if any) is created already failed, with the reason, and its batch fails.
    ///
    /// # Errors
    /// As [`Service::launch`], or a workload that is not of class batch.
    pub fn submit_batch(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        largest_node_mb: Option<u64>,
        now_ms: u64,
    ) -> Result<(Uuid, Vec<Uuid>, Workload), ServiceError> {
        let batch = Uuid::new_v4();
        let too_large = |w: &Workload| {
            let need = w.requirements.mem_mb.max(1);
            let largest = largest_node_mb.filter(|l| *l < need)?;
            Some(format!("needs {need} MiB; the largest node offers {largest} MiB"))
        };
        let (ids, parsed, refused) = self.create(tenant, workload, count, now_ms, Some(batch), too_large)?;
        let open =
            OpenBatch { tenant: tenant.to_owned(), workload: workload.to_owned(), left: count, ..Default::default() };
        self.batches.lock().expect("batches lock").insert(batch, open);
        self.store.note(tenant, None, format!("batch {batch} of {count} × {workload} submitted"))?;
        if refused {
            let records =
                ids.iter().filter_map(|id| self.store.instance(*id).transpose()).collect::<Result<Vec<_>, _>>()?;
            self.batch_progress(&records, &ids.iter().copied().collect())?;
        }
        Ok((batch, ids, parsed))
    }

    /// The STARTs due at `now_ms`, each committed as sent before it is returned.
    ///
    /// # Errors
    /// The store.
    pub fn tick(&self, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let due = self.store.due(now_ms, MAX_STARTS_PER_TICK);
        let mut sends = Vec::new();
        let (records, _) = self.store.update_instances(&due, |r| {
            for action in r.life.handle(now_ms, Input::Tick) {
                if let Action::SendStart { restart } = action {
                    sends.push((r.uuid, restart));
                }
            }
        })?;
        let by_id: HashMap<Uuid, &InstanceRecord> = records.iter().map(|r| (r.uuid, r)).collect();
        let mut workloads: HashMap<(String, String), (StoredWorkload, Workload)> = HashMap::new();
        let mut out = Vec::with_capacity(sends.len());
        for (id, restart) in sends {
            let record = by_id[&id];
            let key = (record.tenant.clone(), record.workload.clone());
            if !workloads.contains_key(&key) {
                match self.store.workload(&record.tenant, &record.workload)? {
                    Some(stored) => {
                        let parsed = stored.parsed()?;
                        workloads.insert(key.clone(), (stored, parsed));
                    }
                    None => {
                        // The workload went away under a pending instance: it cannot start.
                        self.store.update_instance(id, |r| {
                            r.life.state = State::Failed { reason: "its workload was deleted".into() };
                        })?;
                        continue;
                    }
                }
            }
            let (stored, w) = &workloads[&key];
            out.push(start_message(id, stored, w, restart));
        }
        Ok(out)
    }

    /// After the scheduler connection came back: STARTs that got no answer are sent again at
    /// the next tick.
    ///
    /// # Errors
    /// The store.
    pub fn reconnected(&self, now_ms: u64) -> Result<(), ServiceError> {
        let waiting: Vec<Uuid> = self
            .store
            .instances(None)?
            .into_iter()
            .filter(|r| matches!(r.life.state, State::Starting | State::Queued { .. }))
            .map(|r| r.uuid)
            .collect();
        self.store.update_instances(&waiting, |r| {
            r.life.handle(now_ms, Input::Resend);
        })?;
        Ok(())
    }

    /// Applies a frame from the cluster; returns the commands it calls for.
    ///
    /// # Errors
    /// The store.
    pub fn report(&self, origin: Uuid, message: &Message, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        self.report_many(&[(origin, message.clone())], now_ms)
    }

    /// Applies frames from the cluster in order, the instance changes of consecutive frames in
    /// one transaction (one fsync for a burst of reports); returns the commands they call for.
    ///
    /// # Errors
    /// The store.
    pub fn report_many(&self, frames: &[(Uuid, Message)], now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (origin, message) in frames {
            if let Message::Stats(stats) = message {
                out.extend(self.apply_changes(std::mem::take(&mut changes), now_ms)?);
                out.extend(self.reconcile(stats, now_ms, RECONCILE_GRACE_MS)?);
                continue;
            }
            let (more, commands) = self.changes_for(*origin, message)?;
            changes.extend(more);
            out.extend(commands);
        }
        out.extend(self.apply_changes(changes, now_ms)?);
        Ok(out)
    }

    /// The instance changes a frame (other than STATS) asks for, and commands to send at once.
    fn changes_for(&self, origin: Uuid, message: &Message) -> Result<(Vec<Change>, Vec<Message>), ServiceError> {
        // Which node a report about one instance comes from.
        let from_node = match message {
            Message::InstanceStarted(e) | Message::InstanceStopped(e) => {
                Some((e.instance_uuid, e.node_uuid.unwrap_or(origin)))
            }
            Message::InstanceExited(e) => Some((e.instance_uuid, e.node_uuid)),
            _ => None,
        };
        if let Some((instance, node)) = from_node {
            if let Some(State::Running { node: running_on }) = self.store.instance(instance)?.map(|r| r.life.state) {
                if running_on != node {
                    // A stale copy (its node was lost and came back, or a resent START raced).
                    let commands = match message {
                        Message::InstanceStarted(_) => vec![stop(instance, node)],
                        _ => Vec::new(),
                    };
                    return Ok((Vec::new(), commands));
                }
            }
        }
        let (inputs, why): (Vec<(Uuid, Input)>, String) = match message {
            Message::InstanceQueued(q) => {
                (vec![(q.instance_uuid, Input::Queued { reason: q.reason.clone() })], q.reason.clone())
            }
            Message::StartFailure(f) => {
                let input = Input::StartFailed { reason: f.reason, detail: f.detail.clone(), node: f.node_uuid };
                (vec![(f.instance_uuid, input)], format!("start failed: {:?}: {}", f.reason, f.detail))
            }
            Message::InstanceStarted(e) => {
                (vec![(e.instance_uuid, Input::Started { node: e.node_uuid.unwrap_or(origin) })], String::new())
            }
            Message::InstanceExited(e) => {
                let why =
                    format!("exited: {:?}{}", e.reason, e.exit_code.map_or(String::new(), |c| format!(", code {c}")));
                (vec![(e.instance_uuid, Input::Exited { code: e.exit_code, reason: e.reason })], why)
            }
            Message::InstanceStopped(e) => {
                // A stop the user did not ask for was the node's: an evacuation.
                let user = self.store.instance(e.instance_uuid)?.is_some_and(|r| r.life.stop_requested);
                (
                    vec![(e.instance_uuid, Input::Stopped { evacuated: !user })],
                    if user { "stopped".into() } else { "evacuated".into() },
                )
            }
            Message::NodeLost(l) => (
                l.instances.iter().map(|i| (*i, Input::NodeLost)).collect(),
                format!("node {} lost", l.node_uuid.short()),
            ),
            _ => return Ok((Vec::new(), Vec::new())),
        };
        Ok((inputs.into_iter().map(|(id, input)| (id, input, why.clone())).collect(), Vec::new()))
    }

    /// Applies inputs with one explanation to instances in one transaction.
    fn apply(&self, inputs: Vec<(Uuid, Input)>, why: &str, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        self.apply_changes(inputs.into_iter().map(|(id, input)| (id, input, why.to_owned())).collect(), now_ms)
    }

    /// Applies changes in one transaction, each instance's in the order given; returns the
    /// STOPs they call for.
    fn apply_changes(&self, changes: Vec<Change>, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut order = Vec::new();
        let mut by_id: HashMap<Uuid, Vec<(Input, String)>> = HashMap::new();
        for (id, input, why) in changes {
            by_id
                .entry(id)
                .or_insert_with(|| {
                    order.push(id);
                    Vec::new()
                })
                .push((input, why));
        }
        let mut out = Vec::new();
        let mut ended = HashSet::new();
        let (records, _) = self.store.update_instances(&order, |r| {
            let was_final = r.life.state.is_final();
            for (input, why) in by_id.remove(&r.uuid).unwrap_or_default() {
                for action in r.life.handle(now_ms, input) {
                    if let Action::SendStop { node } = action {
                        out.push(stop(r.uuid, node));
                    }
                }
                if let State::Running { node } = r.life.state {
                    r.node = Some(node);
                }
                if !why.is_empty() {
                    r.why = why;
                }
            }
            if !was_final && r.life.state.is_final() {
                ended.insert(r.uuid);
            }
        })?;
        self.batch_progress(&records, &ended)?;
        Ok(out)
    }

    /// Counts instances of open batches that just ended; a batch whose last instance ended is
    /// an event.
    fn batch_progress(&self, records: &[InstanceRecord], ended: &HashSet<Uuid>) -> Result<(), ServiceError> {
        let mut finished = Vec::new();
        {
            let mut batches = self.batches.lock().expect("batches lock");
            for record in records.iter().filter(|r| ended.contains(&r.uuid)) {
                let Some(batch_id) = record.batch else { continue };
                let Some(batch) = batches.get_mut(&batch_id) else { continue };
                batch.left = batch.left.saturating_sub(1);
                if matches!(record.life.state, State::Exited { .. }) {
                    batch.exited += 1;
                } else {
                    batch.failed += 1;
                }
                if batch.left == 0 {
                    if let Some(b) = batches.remove(&batch_id) {
                        finished.push((batch_id, b));
                    }
                }
            }
        }
        for (id, b) in finished {
            let verdict = if b.failed == 0 { "completed" } else { "failed" };
            self.store.note(
                &b.tenant,
                None,
                format!("batch {id} of {} {verdict}: {} exited, {} failed or stopped", b.workload, b.exited, b.failed),
            )?;
        }
        Ok(())
    }

    /// Compares a node's STATS with the store (see the module text); returns the STOPs for
    /// copies that should not run there. `grace_ms`: how long an instance may go unreported
    /// before it counts as lost.
    ///
    /// # Errors
    /// The store.
    pub fn reconcile(&self, stats: &Stats, now_ms: u64, grace_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let node = stats.node_uuid;
        let mut out = Vec::new();
        let mut inputs = Vec::new();
        let mut reported = HashSet::with_capacity(stats.instances.len());
        // What the store believes runs here, from the in-memory index: the common case (the
        // node reports what the store expects) needs no read of the store.
        let on_node: HashSet<Uuid> = self.store.running_on(node).into_iter().collect();
        for stat in &stats.instances {
            let id = stat.instance_uuid;
            reported.insert(id);
            let here = on_node.contains(&id);
            match stat.state {
                InstanceState::Active | InstanceState::Pending if !here => {
                    let record = self.store.instance(id)?;
                    let waiting =
                        record.as_ref().is_some_and(|r| matches!(r.life.state, State::Starting | State::Queued { .. }));
                    let unwanted = record.as_ref().is_none_or(|r| {
                        r.life.state.is_final()
                            || matches!(r.life.state, State::Running { node: other } if other != node)
                    });
                    if waiting {
                        // It runs, and the start report was lost (the controller was down, or a
                        // repeated START was refused as a duplicate): this is the copy.
                        inputs.push((id, Input::Started { node }));
                    } else if unwanted {
                        out.push(stop(id, node));
                    }
                }
                // An end the controller missed (it was down, or the event was lost).
                InstanceState::Exited if here => {
                    let reason = if stat.exit_code == Some(0) { ExitReason::Completed } else { ExitReason::Failed };
                    inputs.push((id, Input::Exited { code: stat.exit_code, reason }));
                }
                InstanceState::Stopped if here => {
                    let user = self.store.instance(id)?.is_some_and(|r| r.life.stop_requested);
                    inputs.push((id, Input::Stopped { evacuated: !user }));
                }
                _ => {}
            }
        }
        let mut missing = self.missing.lock().expect("missing lock");
        let mut lost = Vec::new();
        for id in on_node {
            if reported.contains(&id) {
                missing.remove(&id);
                continue;
            }
            let since = *missing.entry(id).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= grace_ms {
                missing.remove(&id);
                lost.push((id, Input::NodeLost));
            }
        }
        drop(missing);
        out.extend(self.apply(inputs, "", now_ms)?);
        out.extend(self.apply(
            lost,
            &format!("not reported by node {} for {} s", node.short(), grace_ms / 1000),
            now_ms,
        )?);
        Ok(out)
    }

    /// Marks instances failed at once (a batch refused before any START went out).
    ///
    /// # Errors
    /// The store.
    pub fn fail(&self, ids: &[Uuid], why: &str) -> Result<(), ServiceError> {
        let mut ended = HashSet::new();
        let (records, _) = self.store.update_instances(ids, |r| {
            if !r.life.state.is_final() {
                r.life.state = State::Failed { reason: why.to_owned() };
                why.clone_into(&mut r.why);
                ended.insert(r.uuid);
            }
        })?;
        self.batch_progress(&records, &ended)
    }

    /// A user's stop, cancel or start of an instance of `tenant`.
    ///
    /// # Errors
    /// Not this tenant's instance (reported as not found), a start of an instance that is not
    /// stopped or ended, or the store.
    pub fn user(&self, tenant: &str, instance: Uuid, input: Input, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let record = self.owned(tenant, instance)?;
        let state = &record.life.state;
        match input {
            Input::Start if !state.is_final() => {
                return Err(ServiceError::Conflict(format!("instance {instance} is {}, not stopped", state.name())));
            }
            Input::Start if *state == State::Canceled => {
                return Err(ServiceError::Conflict(format!("instance {instance} was canceled for good")));
            }
            Input::Stop if state.is_final() => {
                return Err(ServiceError::Conflict(format!("instance {instance} is already {}", state.name())));
            }
            _ => {}
        }
        let why = match input {
            Input::Stop => "stop requested",
            Input::Cancel => "cancel requested",
            Input::Start => "start requested",
            _ => "",
        };
        self.apply(vec![(instance, input)], why, now_ms)
    }

    /// Deletes an ended instance: its record goes and its node is told to remove its files.
    ///
    /// # Errors
    /// Not this tenant's, still live (409), or the store.
    pub fn delete(&self, tenant: &str, instance: Uuid) -> Result<Vec<Message>, ServiceError> {
        let record = self.owned(tenant, instance)?;
        if !record.life.state.is_final() {
            return Err(ServiceError::Conflict(format!(
                "instance {instance} is {}; stop or cancel it first",
                record.life.state.name()
            )));
        }
        self.store.delete_instance(instance)?;
        Ok(record
            .node
            .map(|node| Message::Delete(Delete { instance_uuid: instance, workload_agent_uuid: node, stop: false }))
            .into_iter()
            .collect())
    }

    /// An instance of `tenant` (`admin` sees all); another tenant's is "not found".
    ///
    /// # Errors
    /// Not found, or the store.
    pub fn owned(&self, tenant: &str, instance: Uuid) -> Result<InstanceRecord, ServiceError> {
        match self.store.instance(instance)? {
            Some(r) if r.tenant == tenant || tenant == ADMIN => Ok(r),
            _ => Err(ServiceError::NotFound(format!("instance {instance}"))),
        }
    }

    /// How many instances are in each state.
    ///
    /// # Errors
    /// The store.
    pub fn counts(&self, tenant: Option<&str>) -> Result<BTreeMap<&'static str, usize>, ServiceError> {
        let mut counts = BTreeMap::new();
        for r in self.store.instances(tenant)? {
            *counts.entry(r.life.state.name()).or_default() += 1;
        }
        Ok(counts)
    }
}

/// One change to one instance: the input and the explanation to keep.
type Change = (Uuid, Input, String);

/// The tenant that may act for all.
pub const ADMIN: &str = "admin";

/// How long an instance the store believes runs on a node may be missing from that node's
/// STATS before it counts as lost (several report intervals: a START and the first STATS race).
pub const RECONCILE_GRACE_MS: u64 = 10_000;

fn start_message(id: Uuid, stored: &StoredWorkload, w: &Workload, restart: bool) -> Message {
    let mut start = Start::new(id, w.requirements.clone(), w.backend.clone());
    start.workload_uuid = Some(stored.uuid);
    start.class = w.class;
    start.priority = w.priority;
    start.deadline_unix_ms = w.deadline_unix_ms;
    start.max_run_time_s = w.max_run_time_s;
    start.restart = restart;
    Message::Start(start)
}

fn stop(instance: Uuid, node: Uuid) -> Message {
    Message::Stop(Stop { instance_uuid: instance, workload_agent_uuid: node, grace_ms: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::State;
    use ssntp::payload::{
        ExitReason, FailureReason, InstanceEvent, InstanceExited, InstanceQueued, NodeLost, StartFailure,
    };

    const WORKLOAD: &str = r#"
name = "job"
size = "tiny"
[backend]
type = "process"
argv = ["/bin/false"]
[restart]
policy = "on-failure"
attempts = 1
backoff = "1s"
"#;

    fn node() -> Uuid {
        Uuid::from_bytes([7; 16])
    }

    fn starts(messages: &[Message]) -> Vec<(Uuid, bool)> {
        messages
            .iter()
            .filter_map(|m| if let Message::Start(s) = m { Some((s.instance_uuid, s.restart)) } else { None })
            .collect()
    }

    /// A service on a redb file (for tests that reopen it, as a restarted controller would).
    fn service(dir: &std::path::Path) -> Service {
        Service::new(Store::open(&dir.join("c.redb")).unwrap()).unwrap()
    }

    /// A service on the in-memory store: no disk.
    fn memory_service() -> Service {
        Service::new(Store::in_memory()).unwrap()
    }

    #[test]
    fn launch_start_fail_restart_and_give_up() {
        let s = memory_service();
        assert_eq!(s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap(), "job");
        let ids = s.launch("acme", "job", 2, 0).unwrap();
        let sent = s.tick(0).unwrap();
        assert_eq!(starts(&sent).len(), 2);
        let Message::Start(first) = &sent[0] else { unreachable!() };
        assert_eq!(first.requirements.mem_mb, 32, "tiny");
        assert!(first.workload_uuid.is_some());
        assert!(s.tick(0).unwrap().is_empty(), "nothing twice");
        let id = ids[0];
        s.report(
            node(),
            &Message::InstanceQueued(InstanceQueued {
                instance_uuid: id,
                reason: "0 of 1 nodes fit: 1 load above threshold".into(),
                position: 0,
            }),
            1,
        )
        .unwrap();
        assert_eq!(
            s.store().instance(id).unwrap().unwrap().why,
            "0 of 1 nodes fit: 1 load above threshold",
            "drover ps says why it waits"
        );
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 2)
            .unwrap();
        assert_eq!(s.store().instance(id).unwrap().unwrap().node, Some(node()));
        let exited = |_at: u64| {
            Message::InstanceExited(InstanceExited {
                instance_uuid: id,
                node_uuid: node(),
                exit_code: Some(1),
                reason: ExitReason::Failed,
            })
        };
        s.report(node(), &exited(3), 3).unwrap();
        assert!(s.tick(500).unwrap().is_empty(), "backoff");
        assert_eq!(starts(&s.tick(1003).unwrap()), vec![(id, true)], "restarted once, marked as a restart");
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 1004)
            .unwrap();
        s.report(node(), &exited(1005), 1005).unwrap();
        let record = s.store().instance(id).unwrap().unwrap();
        assert!(matches!(record.life.state, State::Failed { .. }), "attempts used up: {:?}", record.life.state);
        assert!(record.why.contains("code 1"), "{}", record.why);
    }

    #[test]
    fn a_crash_after_commit_resends_once_and_a_duplicate_means_running() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = service(dir.path());
            s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
            let id = s.launch("acme", "job", 1, 0).unwrap()[0];
            let _lost_in_the_crash = s.tick(0).unwrap();
            id
        };
        let s = service(dir.path());
        assert!(s.tick(10).unwrap().is_empty(), "a restarted controller does not start it again by itself");
        s.reconnected(10).unwrap();
        assert_eq!(starts(&s.tick(10).unwrap()), vec![(id, true)], "sent again after reconnecting");
        let dup = StartFailure {
            node_uuid: Some(node()),
            instance_uuid: id,
            reason: FailureReason::AlreadyRunning,
            restart: true,
            detail: String::new(),
        };
        s.report(node(), &Message::StartFailure(dup), 11).unwrap();
        assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Running { node: node() });
        assert!(s.tick(5000).unwrap().is_empty(), "exactly one copy");
    }

    #[test]
    fn node_loss_evacuation_user_stop_and_tenant_isolation() {
        let s = memory_service();
        s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
        let ids = s.launch("acme", "job", 2, 0).unwrap();
        s.tick(0).unwrap();
        for id in &ids {
            s.report(
                node(),
                &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }),
                1,
            )
            .unwrap();
        }
        // Tenant isolation: another tenant cannot stop it, and learns nothing about it.
        assert!(matches!(s.user("other", ids[0], Input::Stop, 2), Err(ServiceError::NotFound(_))));
        // The user stops one: a STOP goes to its node; its stop is final.
        let out = s.user("acme", ids[0], Input::Stop, 2).unwrap();
        assert!(matches!(&out[..], [Message::Stop(stop)] if stop.workload_agent_uuid == node()));
        s.report(
            node(),
            &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }),
            3,
        )
        .unwrap();
        assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Stopped);
        // The other is evacuated (a stop nobody asked for): started again elsewhere.
        s.report(
            node(),
            &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }),
            4,
        )
        .unwrap();
        assert_eq!(starts(&s.tick(4).unwrap()), vec![(ids[1], true)]);
        s.report(
            node(),
            &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }),
            5,
        )
        .unwrap();
        // Its node is lost: restarted per policy.
        s.report(node(), &Message::NodeLost(NodeLost { node_uuid: node(), instances: vec![ids[1]] }), 6).unwrap();
        assert!(matches!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Pending { .. }));
        assert!(matches!(s.launch("acme", "nope", 1, 0), Err(ServiceError::NotFound(_))));
        assert!(matches!(s.launch("acme", "job", 0, 0), Err(ServiceError::Invalid(_))));
        assert!(matches!(s.put_workload("acme", "name = 1", Format::Toml, false), Err(ServiceError::Spec(_))));
    }

    fn stats(node: Uuid, instances: &[(Uuid, InstanceState, Option<i32>)]) -> Stats {
        Stats {
            node_uuid: node,
            status: ssntp::payload::NodeState::Ready,
            mem_total_mb: 1024,
            mem_available_mb: 1024,
            disk_total_mb: 0,
            disk_available_mb: 0,
            load: 0.0,
            cpus_online: 1,
            hostname: "n".into(),
            networks: vec![],
            instances: instances
                .iter()
                .map(|(id, state, exit_code)| ssntp::payload::InstanceStat {
                    instance_uuid: *id,
                    state: *state,
                    memory_usage_mb: -1,
                    disk_usage_mb: -1,
                    cpu_usage: -1,
                    exit_code: *exit_code,
                    workload_uuid: None,
                })
                .collect(),
        }
    }

    #[test]
    fn stats_reconcile_stale_copies_missed_exits_and_silent_instances() {
        let s = memory_service();
        s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
        let ids = s.launch("acme", "job", 3, 0).unwrap();
        s.tick(0).unwrap();
        let other = Uuid::from_bytes([8; 16]);
        for id in &ids {
            s.report(
                node(),
                &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }),
                1,
            )
            .unwrap();
        }
        // A node that came back runs a copy of ids[0] (which runs on node()) and something unknown.
        let stranger = Uuid::new_v4();
        let out = s
            .reconcile(
                &stats(other, &[(ids[0], InstanceState::Active, None), (stranger, InstanceState::Active, None)]),
                2,
                10_000,
            )
            .unwrap();
        let stopped: Vec<(Uuid, Uuid)> = out
            .iter()
            .filter_map(
                |m| if let Message::Stop(s) = m { Some((s.instance_uuid, s.workload_agent_uuid)) } else { None },
            )
            .collect();
        assert_eq!(stopped, vec![(ids[0], other), (stranger, other)]);
        // Its stale copy's stop report does not touch the real one.
        s.report(other, &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(other) }), 3)
            .unwrap();
        assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Running { node: node() });
        // node() reports ids[0] running, ids[1] exited (the event was missed), ids[2] not at all.
        let report = stats(node(), &[(ids[0], InstanceState::Active, None), (ids[1], InstanceState::Exited, Some(0))]);
        assert!(s.reconcile(&report, 4, 10_000).unwrap().is_empty());
        assert_eq!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Exited { code: Some(0) });
        assert_eq!(s.store().instance(ids[2]).unwrap().unwrap().life.state, State::Running { node: node() }, "grace");
        s.reconcile(&report, 10_004, 10_000).unwrap();
        let lost = s.store().instance(ids[2]).unwrap().unwrap();
        assert!(matches!(lost.life.state, State::Pending { .. }), "restarted per policy: {:?}", lost.life.state);
        assert!(lost.why.contains("not reported"), "{}", lost.why);
        assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Running { node: node() });
    }

    #[test]
    fn a_batch_larger_than_any_node_is_created_failed_and_never_sent() {
        let s = memory_service();
        let batch = WORKLOAD.replace("size = \"tiny\"", "class = \"batch\"\n[resources]\nmem_mb = 4096");
        s.put_workload("acme", &batch, Format::Toml, false).unwrap();
        let (id, ids, _) = s.submit_batch("acme", "job", 3, Some(1024), 0).unwrap();
        assert!(s.tick(0).unwrap().is_empty(), "no START for refused work");
        for i in &ids {
            let r = s.store().instance(*i).unwrap().unwrap();
            assert!(matches!(r.life.state, State::Failed { .. }), "{:?}", r.life.state);
            assert!(r.why.contains("the largest node offers 1024 MiB"), "{}", r.why);
        }
        let events = s.store().events_after(0, 1000).unwrap();
        assert!(events.iter().any(|e| e.what.contains(&format!("batch {id} of job failed"))));
        // Work that fits is created pending.
        let (_, ids, _) = s.submit_batch("acme", "job", 1, Some(8192), 0).unwrap();
        assert_eq!(s.tick(0).unwrap().len(), 1);
        assert!(!s.store().instance(ids[0]).unwrap().unwrap().life.state.is_final());
    }

    #[test]
    fn batches_end_with_an_event_and_conflicts_are_refused() {
        let s = memory_service();
        s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
        assert!(matches!(s.submit_batch("acme", "job", 2, None, 0), Err(ServiceError::Invalid(_))), "workorder class");
        assert!(matches!(s.put_workload("acme", WORKLOAD, Format::Toml, true), Err(ServiceError::Conflict(_))));
        let batch =
            WORKLOAD.replace("size = \"tiny\"", "size = \"tiny\"\nclass = \"batch\"").replace("on-failure", "never");
        s.put_workload("acme", &batch, Format::Toml, false).unwrap();
        let (id, ids, _) = s.submit_batch("acme", "job", 2, None, 0).unwrap();
        assert!(matches!(s.delete_workload("acme", "job"), Err(ServiceError::Conflict(_))), "live instances");
        assert!(matches!(s.delete("acme", ids[0]), Err(ServiceError::Conflict(_))), "live instance");
        s.tick(0).unwrap();
        for (i, instance) in ids.iter().enumerate() {
            s.report(
                node(),
                &Message::InstanceStarted(InstanceEvent { instance_uuid: *instance, node_uuid: Some(node()) }),
                1,
            )
            .unwrap();
            let exited = InstanceExited {
                instance_uuid: *instance,
                node_uuid: node(),
                exit_code: Some(i32::try_from(i).unwrap()),
                reason: if i == 0 { ExitReason::Completed } else { ExitReason::Failed },
            };
            s.report(node(), &Message::InstanceExited(exited), 2).unwrap();
        }
        let events = s.store().events_after(0, 1000).unwrap();
        let last = &events.last().unwrap().what;
        assert!(last.contains(&format!("batch {id}")) && last.contains("1 exited, 1 failed"), "{last}");
        assert!(matches!(s.user("acme", ids[0], Input::Stop, 3), Err(ServiceError::Conflict(_))));
        assert!(matches!(&s.delete("acme", ids[0]).unwrap()[..], [Message::Delete(_)]));
        assert!(s.store().instance(ids[0]).unwrap().is_none());
    }

    #[test]
    fn an_instance_whose_start_report_was_lost_is_found_running_by_stats() {
        let s = memory_service();
        s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
        let id = s.launch("acme", "job", 1, 0).unwrap()[0];
        s.tick(0).unwrap();
        assert!(s.reconcile(&stats(node(), &[(id, InstanceState::Active, None)]), 1, 10_000).unwrap().is_empty());
        assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Running { node: node() });
        assert_eq!(s.store().running_on(node()), vec![id]);
    }
}
