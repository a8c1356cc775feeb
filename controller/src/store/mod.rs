//! The controller's durable state: workloads, instances with their life, and an event log with
//! a monotonic revision.
//!
//! [`Store`] is what the service uses. It keeps, beside a [`StoreBackend`], two indexes in
//! memory, rebuilt on open: the instances waiting for a START and when they may have it (so a
//! tick looks at those, not at every instance), and the running instances by node (so a node's
//! STATS is checked against what should run there). It also decides the wording of every event,
//! once, for all backends.
//!
//! Backends (each change is one atomic write that appends its events and bumps the revision,
//! returning only once durable):
//! - [`redb`]: a redb file, fsync per commit — the default, and what `drover up` uses; survives
//!   `kill -9` of the controller.
//! - [`etcd`]: under a key prefix of an etcd cluster, each change one transaction fenced by
//!   the leader election — for controllers that fail over (`--store etcd`).
//! - [`memory`]: in memory, for tests of the service without a disk.

pub mod etcd;
pub mod memory;
pub mod redb;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use drover_model::InstanceStatus;
use serde::{Deserialize, Serialize};
use ssntp::payload::ParamValue;
use ssntp::Uuid;

use crate::lifecycle::{Lifecycle, State};
use crate::workload::Workload;

/// The store failed (disk, corruption) — not the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// One change to the event log, before the store gives it a revision and a time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventDraft {
    /// Tenant it concerns.
    pub tenant: String,
    /// Instance, if it is about one.
    pub instance: Option<Uuid>,
    /// What happened, for people.
    pub what: String,
    /// The same, as fields.
    pub detail: EventDetail,
}

impl From<(String, Option<Uuid>, String)> for EventDraft {
    fn from((tenant, instance, what): (String, Option<Uuid>, String)) -> Self {
        Self { tenant, instance, what, detail: EventDetail::default() }
    }
}

impl EventDraft {
    /// The event, numbered `revision`, stamped `at_unix_ms`.
    pub fn into_event(self, revision: u64, at_unix_ms: u64) -> Event {
        Event {
            revision,
            at_unix_ms,
            tenant: self.tenant,
            instance: self.instance,
            what: self.what,
            detail: self.detail,
        }
    }
}

/// An instance event's facts as fields (absent when they do not apply).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventDetail {
    /// The instance's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The node it runs or ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// The state it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state it is in now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why, in the cluster's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exit code of its last run, once it ended with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The batch it belongs to (batch events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
    /// What kind of event, when it is one a program waits for: `batch_complete`,
    /// `batch_failed` (sd-taskpacker's BatchComplete and BatchFailed, one per instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Estimated slots remaining per size class when it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<String, u64>>,
    /// The instance's parameters (batch events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, ParamValue>>,
}

/// Where the records live. Every method that changes something is one atomic write that appends
/// `events` in order (revisions one apart, never reused) and returns only once it is durable.
pub trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// The latest revision (0 when empty).
    ///
    /// # Errors
    /// Storage errors.
    fn revision(&self) -> Result<u64, StoreError>;

    /// Sets the workload stored under `key` (`<tenant>/<name>`); returns the revision.
    ///
    /// # Errors
    /// Storage errors.
    fn put_workload(&self, key: &str, workload: &StoredWorkload, event: EventDraft) -> Result<u64, StoreError>;

    /// The workload under `key`.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn workload(&self, key: &str) -> Result<Option<StoredWorkload>, StoreError>;

    /// Every workload with its key, in key order.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn workloads(&self) -> Result<Vec<(String, StoredWorkload)>, StoreError>;

    /// Removes the workload under `key`; the event is written only if there was one.
    ///
    /// # Errors
    /// Storage errors.
    fn delete_workload(&self, key: &str, event: EventDraft) -> Result<bool, StoreError>;

    /// Adds new instance records.
    ///
    /// # Errors
    /// Storage errors.
    fn insert_instances(&self, records: &[InstanceRecord], events: Vec<EventDraft>) -> Result<u64, StoreError>;

    /// An instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError>;

    /// Every instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;

    /// At most `limit` instances whose UUID text is at least `start`, in UUID text order (a
    /// page, or the instances a prefix names).
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn instances_from(&self, start: &str, limit: usize) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Reads, changes and writes the instances in one atomic write; `change` says what the
    /// event of each is. Unknown UUIDs are skipped. Returns the records as written and the last
    /// revision.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn update_instances(
        &self,
        uuids: &[Uuid],
        change: &mut dyn FnMut(&mut InstanceRecord) -> EventDraft,
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError>;

    /// Removes an instance record; the event is written only if there was one.
    ///
    /// # Errors
    /// Storage errors.
    fn delete_instance(&self, uuid: Uuid, event: EventDraft) -> Result<bool, StoreError>;

    /// Appends an event alone; returns its revision.
    ///
    /// # Errors
    /// Storage errors.
    fn note(&self, event: EventDraft) -> Result<u64, StoreError>;

    /// Events after `revision`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
}

/// A workload as stored (the parsed file is kept with its source for `drover workload show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWorkload {
    /// Tenant owning it.
    pub tenant: String,
    /// The workload's identity (for START's `workload_uuid` and memory estimates).
    pub uuid: Uuid,
    /// The file as submitted.
    pub source: String,
    /// Whether `source` is TOML (else JSON).
    pub toml: bool,
    /// The task file it came from (`build.workorder`): `source` is then that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_file: Option<String>,
}

impl StoredWorkload {
    /// The parsed workload.
    ///
    /// # Errors
    /// The stored source no longer parses (a newer controller changed the format).
    pub fn parsed(&self) -> Result<Workload, crate::workload::SpecError> {
        if let Some(file) = &self.unit_file {
            return drover_api::unit::parse_unit(file, &self.source);
        }
        let format = if self.toml { crate::workload::Format::Toml } else { crate::workload::Format::Json };
        crate::workload::parse(&self.source, format)
    }
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance.
    pub uuid: Uuid,
    /// Tenant owning it.
    pub tenant: String,
    /// Workload name.
    pub workload: String,
    /// Its life.
    pub life: Lifecycle,
    /// Node it runs or ran on.
    pub node: Option<Uuid>,
    /// Latest explanation from the cluster ("0 of 3 nodes fit: …", "exited: oom").
    pub why: String,
    /// The batch submission it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
    /// When it was created, Unix ms (0 for records written before it was kept).
    #[serde(default)]
    pub created_unix_ms: u64,
    /// Its parameters, checked against its workload's schema.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
    /// Where it stands among tasks, when its workload is a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskFacts>,
}

/// An instance of a task: its place in its root's tree and its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFacts {
    /// Its name under its root: `build`, `build/graph`, `build/graph/massif`.
    pub name: String,
    /// The instance that asked for it (none for a root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// Its root instance (none: it is a root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Uuid>,
    /// The secret half of its credential (`<instance>.<secret>`), for asking for children.
    pub secret: String,
    /// (Roots only.) Decommissioned: no further task of this root runs.
    #[serde(default)]
    pub decommissioned: bool,
}

impl TaskFacts {
    /// The root of the instance `id` whose facts these are.
    pub fn root_of(&self, id: Uuid) -> Uuid {
        self.root.unwrap_or(id)
    }
}

/// What new instances carry besides their workload: parameters and, for tasks, their place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewInstances {
    /// Checked parameters.
    pub params: BTreeMap<String, ParamValue>,
    /// For instances of a task: their name, parent and root (a secret is drawn for each).
    pub task: Option<(String, Option<Uuid>, Option<Uuid>)>,
}

/// Something that changed, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Monotonic, never reused, survives restarts.
    pub revision: u64,
    /// Tenant it concerns.
    pub tenant: String,
    /// Instance, if it is about one.
    pub instance: Option<Uuid>,
    /// What happened, for people.
    pub what: String,
    /// When the store wrote it, Unix ms (0 for events written before it was kept).
    #[serde(default)]
    pub at_unix_ms: u64,
    /// The same as fields.
    #[serde(default, flatten)]
    pub detail: EventDetail,
}

/// The store the service uses: a backend, and the in-memory indexes over it.
#[derive(Debug)]
pub struct Store {
    backend: Box<dyn StoreBackend>,
    pending: Mutex<BTreeMap<Uuid, u64>>,
    running: Mutex<RunningIndex>,
    counts: Mutex<CountIndex>,
}

/// How many instances each tenant has in each state, kept as records change: `status` answers
/// without reading a record.
#[derive(Debug, Default)]
struct CountIndex {
    /// (tenant, state) of each key number.
    keys: Vec<(String, InstanceStatus)>,
    /// Tenant → state → key number (looked up without building a key per record).
    numbers: HashMap<String, HashMap<InstanceStatus, u16>>,
    of: HashMap<Uuid, u16>,
    counts: Vec<usize>,
}

impl CountIndex {
    fn set(&mut self, instance: Uuid, now: Option<(&str, InstanceStatus)>) {
        let number = now.map(|(tenant, state)| {
            if let Some(n) = self.numbers.get(tenant).and_then(|states| states.get(&state)) {
                return *n;
            }
            let n = u16::try_from(self.keys.len()).unwrap_or(u16::MAX);
            self.keys.push((tenant.to_owned(), state));
            self.numbers.entry(tenant.to_owned()).or_default().insert(state, n);
            self.counts.push(0);
            n
        });
        let old = match number {
            Some(n) => self.of.insert(instance, n),
            None => self.of.remove(&instance),
        };
        if let Some(old) = old {
            self.counts[usize::from(old)] -= 1;
        }
        if let Some(n) = number {
            self.counts[usize::from(n)] += 1;
        }
    }

    /// The state of an instance, if the store has it.
    fn state_of(&self, instance: Uuid) -> Option<InstanceStatus> {
        self.of.get(&instance).map(|n| self.keys[usize::from(*n)].1)
    }

    /// The instances in any of `states`, from memory (a million entries take milliseconds).
    fn in_states(&self, states: &[InstanceStatus]) -> Vec<Uuid> {
        let wanted: Vec<bool> = self.keys.iter().map(|(_, state)| states.contains(state)).collect();
        if !wanted.contains(&true) {
            return Vec::new();
        }
        self.of.iter().filter(|(_, n)| wanted[usize::from(**n)]).map(|(id, _)| *id).collect()
    }

    fn by_state(&self, tenant: Option<&str>) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for ((t, state), count) in self.keys.iter().zip(&self.counts) {
            if *count > 0 && tenant.is_none_or(|tenant| tenant == t) {
                *out.entry(state.name()).or_default() += count;
            }
        }
        out
    }
}

/// A page of instances and where the next one starts.
#[derive(Debug, Default)]
pub struct InstancePage {
    /// The instances, in UUID order.
    pub records: Vec<InstanceRecord>,
    /// Give this as `after` for the next page; `None` when there is no more.
    pub next_after: Option<Uuid>,
}
/// Which instances the store believes run where, both ways: a node's digest and an instance's
/// report each look up what they need without a scan.
#[derive(Debug, Default)]
struct RunningIndex {
    node_of: HashMap<Uuid, Uuid>,
    on_node: HashMap<Uuid, HashSet<Uuid>>,
}

impl RunningIndex {
    fn set(&mut self, instance: Uuid, node: Option<Uuid>) {
        let old = match node {
            Some(node) => self.node_of.insert(instance, node),
            None => self.node_of.remove(&instance),
        };
        if old == node {
            return;
        }
        if let Some(old) = old {
            if let Some(set) = self.on_node.get_mut(&old) {
                set.remove(&instance);
                if set.is_empty() {
                    self.on_node.remove(&old);
                }
            }
        }
        if let Some(node) = node {
            self.on_node.entry(node).or_default().insert(instance);
        }
    }
}

impl Store {
    /// Opens (or creates) a redb store at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, redb::DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) a redb store at `path` that keeps at most `cache_bytes` of its pages
    /// in memory (the rest is read from the file, usually from the kernel's page cache).
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb database.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::over(Box::new(redb::RedbBackend::open(path, cache_bytes)?))
    }

    /// An empty store in memory (tests).
    pub fn in_memory() -> Self {
        Self::over(Box::new(memory::MemoryBackend::default())).expect("an empty memory store reads")
    }

    /// The store over `backend`, its indexes built from what it holds.
    ///
    /// # Errors
    /// The backend's records cannot be read.
    pub fn over(backend: Box<dyn StoreBackend>) -> Result<Self, StoreError> {
        let store = Self {
            backend,
            pending: Mutex::new(BTreeMap::new()),
            running: Mutex::new(RunningIndex::default()),
            counts: Mutex::new(CountIndex::default()),
        };
        let records = store.backend.instances()?;
        store.index(&records);
        Ok(store)
    }

    /// Keeps the indexes in step with records just committed.
    fn index<'a>(&self, records: impl IntoIterator<Item = &'a InstanceRecord>) {
        let mut pending = self.pending.lock().expect("pending index lock");
        let mut running = self.running.lock().expect("running index lock");
        let mut counts = self.counts.lock().expect("counts index lock");
        for record in records {
            counts.set(record.uuid, Some((&record.tenant, record.life.state.status())));
            if let State::Pending { not_before_ms } = record.life.state {
                pending.insert(record.uuid, not_before_ms);
            } else {
                pending.remove(&record.uuid);
            }
            let node = match record.life.state {
                State::Running { node } => Some(node),
                _ => None,
            };
            running.set(record.uuid, node);
        }
    }

    /// Instances the store believes run on `node`.
    pub fn running_on(&self, node: Uuid) -> HashSet<Uuid> {
        let running = self.running.lock().expect("running index lock");
        running.on_node.get(&node).cloned().unwrap_or_default()
    }

    /// How many instances the store believes run on `node`.
    pub fn running_count(&self, node: Uuid) -> usize {
        self.running.lock().expect("running index lock").on_node.get(&node).map_or(0, HashSet::len)
    }

    /// The node the store believes `instance` runs on.
    pub fn node_of(&self, instance: Uuid) -> Option<Uuid> {
        self.running.lock().expect("running index lock").node_of.get(&instance).copied()
    }

    /// The nodes the store believes run at least one instance.
    pub fn nodes_running(&self) -> BTreeSet<Uuid> {
        self.running.lock().expect("running index lock").on_node.keys().copied().collect()
    }

    /// Instances waiting for a START whose time has come at `now_ms`, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<Uuid> {
        let pending = self.pending.lock().expect("pending index lock");
        pending.iter().filter(|(_, at)| **at <= now_ms).map(|(id, _)| *id).take(limit).collect()
    }

    /// How many instances wait for a START (due or in backoff).
    pub fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending index lock").len()
    }

    /// The latest revision (0 for an empty store).
    ///
    /// # Errors
    /// Storage errors.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.backend.revision()
    }

    /// Creates or replaces a workload; returns the revision.
    ///
    /// # Errors
    /// Storage errors.
    pub fn put_workload(&self, name: &str, workload: &StoredWorkload) -> Result<u64, StoreError> {
        let key = format!("{}/{name}", workload.tenant);
        self.backend.put_workload(
            &key,
            workload,
            (workload.tenant.clone(), None, format!("workload {name} saved")).into(),
        )
    }

    /// A workload of a tenant.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn workload(&self, tenant: &str, name: &str) -> Result<Option<StoredWorkload>, StoreError> {
        self.backend.workload(&format!("{tenant}/{name}"))
    }

    /// Creates `count` instances of a workload, all in `life`'s state (pending, or failed when
    /// refused before they were created) with `why`, in one write; returns their UUIDs once
    /// they are durable.
    ///
    /// # Errors
    /// Storage errors.
    pub fn create_instances(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        life: &Lifecycle,
        why: &str,
        batch: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.create_instances_with(tenant, workload, count, life, why, batch, &NewInstances::default())
    }

    /// As [`Store::create_instances`], with parameters and a place among tasks.
    ///
    /// # Errors
    /// The backend's.
    #[allow(clippy::too_many_arguments)]
    pub fn create_instances_with(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        life: &Lifecycle,
        why: &str,
        batch: Option<Uuid>,
        extra: &NewInstances,
    ) -> Result<Vec<Uuid>, StoreError> {
        let created_unix_ms = drover_model::unix_ms_now();
        let records: Vec<InstanceRecord> = (0..count)
            .map(|_| InstanceRecord {
                uuid: Uuid::new_v4(),
                tenant: tenant.to_owned(),
                workload: workload.to_owned(),
                life: life.clone(),
                node: None,
                why: why.to_owned(),
                batch,
                created_unix_ms,
                params: extra.params.clone(),
                task: extra.task.as_ref().map(|(name, parent, root)| TaskFacts {
                    name: name.clone(),
                    parent: *parent,
                    root: *root,
                    // 122 random bits from the operating system's generator (getrandom).
                    secret: Uuid::new_v4().to_string().replace('-', ""),
                    decommissioned: false,
                }),
            })
            .collect();
        let events = records
            .iter()
            .map(|r| EventDraft {
                tenant: tenant.to_owned(),
                instance: Some(r.uuid),
                what: format!("instance of {workload} created"),
                detail: EventDetail {
                    workload: Some(workload.to_owned()),
                    to: Some(r.life.state.name().to_owned()),
                    ..EventDetail::default()
                },
            })
            .collect();
        self.backend.insert_instances(&records, events)?;
        self.index(&records);
        Ok(records.into_iter().map(|r| r.uuid).collect())
    }

    /// An instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        self.backend.instance(uuid)
    }

    /// Every instance (of one tenant, or all).
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instances(&self, tenant: Option<&str>) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut all = self.backend.instances()?;
        all.retain(|r| tenant.is_none_or(|t| t == r.tenant));
        Ok(all)
    }

    /// At most `limit` instances after `after` (from the first when `None`) that `keep`
    /// accepts, in UUID order. Reads only as far as it must: the first page of an unfiltered
    /// list reads `limit` records whatever the store holds.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instances_page(
        &self,
        after: Option<Uuid>,
        limit: usize,
        keep: impl Fn(&InstanceRecord) -> bool,
    ) -> Result<InstancePage, StoreError> {
        let limit = limit.max(1);
        let chunk = limit.clamp(64, 4096);
        // Keys are UUID text: the smallest key above `after` is `after` followed by NUL.
        let mut start = after.map_or_else(String::new, |a| format!("{a}\0"));
        let mut records = Vec::new();
        loop {
            let batch = self.backend.instances_from(&start, chunk)?;
            let done = batch.len() < chunk;
            if let Some(last) = batch.last() {
                start = format!("{}\0", last.uuid);
            }
            for record in batch {
                if !keep(&record) {
                    continue;
                }
                if records.len() == limit {
                    let next_after = records.last().map(|r: &InstanceRecord| r.uuid);
                    return Ok(InstancePage { records, next_after });
                }
                records.push(record);
            }
            if done {
                return Ok(InstancePage { records, next_after: None });
            }
        }
    }

    /// The instances whose UUID text starts with `prefix` (at most `limit`).
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instances_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<InstanceRecord>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let mut found = self.backend.instances_from(&prefix, limit)?;
        found.retain(|r| r.uuid.to_string().starts_with(&prefix));
        Ok(found)
    }

    /// How many instances of a tenant (or of all) are in each state, from the index.
    pub fn counts(&self, tenant: Option<&str>) -> BTreeMap<&'static str, usize> {
        self.counts.lock().expect("counts index lock").by_state(tenant)
    }

    /// The state of an instance, from the counts index: no record is read. `None` for an
    /// instance the store does not have.
    pub fn state_of(&self, instance: Uuid) -> Option<InstanceStatus> {
        self.counts.lock().expect("counts index lock").state_of(instance)
    }

    /// The instances in any of `states`, in no order, from the counts index: no record is read.
    pub fn instances_in_states(&self, states: &[InstanceStatus]) -> Vec<Uuid> {
        self.counts.lock().expect("counts index lock").in_states(states)
    }

    /// Changes an instance in one write; the event says what became of it. Returns the
    /// revision, or `None` for an unknown instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn update_instance(
        &self,
        uuid: Uuid,
        change: impl FnOnce(&mut InstanceRecord),
    ) -> Result<Option<u64>, StoreError> {
        let mut change = Some(change);
        let (found, revision) = self.update_instances(&[uuid], |r| {
            if let Some(change) = change.take() {
                change(r);
            }
        })?;
        Ok((!found.is_empty()).then_some(revision))
    }

    /// Changes many instances in one write (one fsync), an event each; unknown UUIDs are
    /// skipped. Returns the records as written and the last revision.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn update_instances(
        &self,
        uuids: &[Uuid],
        mut change: impl FnMut(&mut InstanceRecord),
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        self.update_instances_stepwise(uuids, |r| {
            change(r);
            Vec::new()
        })
    }

    /// Like [`Store::update_instances`], where `change` returns the states the instance passed
    /// through on the way (several reports applied at once): the event names every step, so a
    /// start and an end in one batch still read `starting → running → exited`.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn update_instances_stepwise(
        &self,
        uuids: &[Uuid],
        mut change: impl FnMut(&mut InstanceRecord) -> Vec<&'static str>,
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        if uuids.is_empty() {
            return Ok((Vec::new(), self.revision()?));
        }
        let (records, revision) = self.backend.update_instances(uuids, &mut |record| {
            let before = record.life.state.name();
            let mut path = vec![before];
            path.extend(change(record));
            path.push(record.life.state.name());
            path.dedup();
            let now = record.life.state.name();
            let what =
                if path.len() == 1 { format!("instance {before}") } else { format!("instance {}", path.join(" → ")) };
            // "running → exited: exited: Completed" said the state twice.
            let why = record.why.strip_prefix(&format!("{now}: ")).unwrap_or(&record.why);
            let what = if why.is_empty() { what } else { format!("{what}: {why}") };
            EventDraft {
                tenant: record.tenant.clone(),
                instance: Some(record.uuid),
                what,
                detail: EventDetail {
                    workload: Some(record.workload.clone()),
                    node: record.node,
                    from: (before != now).then(|| before.to_owned()),
                    to: Some(now.to_owned()),
                    reason: (!record.why.is_empty()).then(|| record.why.clone()),
                    exit_code: record.life.exit_code,
                    ..EventDetail::default()
                },
            }
        })?;
        self.index(&records);
        Ok((records, revision))
    }

    /// Deletes an instance record (its history stays in the event log).
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_instance(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let Some(record) = self.backend.instance(uuid)? else { return Ok(false) };
        let removed =
            self.backend.delete_instance(uuid, (record.tenant, Some(uuid), "instance deleted".to_owned()).into())?;
        self.pending.lock().expect("pending index lock").remove(&uuid);
        self.running.lock().expect("running index lock").set(uuid, None);
        self.counts.lock().expect("counts index lock").set(uuid, None);
        Ok(removed)
    }

    /// Every workload of a tenant (or of all), by name.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn workloads(&self, tenant: Option<&str>) -> Result<Vec<(String, StoredWorkload)>, StoreError> {
        Ok(self
            .backend
            .workloads()?
            .into_iter()
            .filter(|(_, w)| tenant.is_none_or(|t| t == w.tenant))
            .map(|(key, w)| (key.split_once('/').map_or(key.as_str(), |(_, n)| n).to_owned(), w))
            .collect())
    }

    /// Deletes a workload; returns whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_workload(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let key = format!("{tenant}/{name}");
        self.backend.delete_workload(&key, (tenant.to_owned(), None, format!("workload {name} deleted")).into())
    }

    /// Appends an event that changes no record (a batch finished); returns its revision.
    ///
    /// # Errors
    /// Storage errors.
    pub fn note(&self, tenant: &str, instance: Option<Uuid>, what: String) -> Result<u64, StoreError> {
        self.backend.note((tenant.to_owned(), instance, what).into())
    }

    /// Appends an event with fields.
    ///
    /// # Errors
    /// Storage errors.
    pub fn note_detail(
        &self,
        tenant: &str,
        instance: Option<Uuid>,
        what: String,
        detail: EventDetail,
    ) -> Result<u64, StoreError> {
        self.backend.note(EventDraft { tenant: tenant.to_owned(), instance, what, detail })
    }

    /// Events after `revision`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.backend.events_after(revision, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Restart, RestartPolicy, State};

    const RESTART: Restart = Restart { policy: RestartPolicy::OnFailure, attempts: 3, backoff_ms: 1000 };

    fn workload() -> StoredWorkload {
        let source = r#"{"name": "web", "size": "tiny", "backend": {"type": "process", "argv": ["true"]}}"#;
        StoredWorkload {
            tenant: "acme".into(),
            uuid: Uuid::new_v4(),
            source: source.into(),
            toml: false,
            unit_file: None,
        }
    }

    /// What every backend must do, through the store the service uses.
    fn reads_back_what_it_wrote(store: &Store) {
        assert_eq!(store.revision().unwrap(), 0);
        let r1 = store.put_workload("web", &workload()).unwrap();
        assert_eq!(r1, 1);
        assert_eq!(store.workload("acme", "web").unwrap().unwrap().parsed().unwrap().name, "web");
        assert_eq!(store.workload("other", "web").unwrap(), None, "tenants are separate");
        assert_eq!(store.workloads(Some("acme")).unwrap()[0].0, "web");
        let ids = store.create_instances("acme", "web", 3, &Lifecycle::new(RESTART, 0), "", None).unwrap();
        assert_eq!(store.due(0, 10).len(), 3, "new instances are pending");
        let node = Uuid::new_v4();
        let (records, r2) = store.update_instances(&ids[..2], |r| r.life.state = State::Running { node }).unwrap();
        assert_eq!((records.len(), r2), (2, 6), "one event per instance changed");
        assert_eq!(store.running_on(node).len(), 2);
        assert_eq!(store.nodes_running().into_iter().collect::<Vec<_>>(), vec![node]);
        assert_eq!(store.update_instance(Uuid::new_v4(), |_| {}).unwrap(), None);
        assert!(store.delete_instance(ids[0]).unwrap());
        assert!(!store.delete_instance(ids[0]).unwrap(), "gone already: no event");
        assert_eq!(store.running_on(node), [ids[1]].into());
        assert_eq!((store.node_of(ids[1]), store.node_of(ids[0]), store.running_count(node)), (Some(node), None, 1));
        assert!(store.delete_workload("acme", "web").unwrap());
        assert!(!store.delete_workload("acme", "web").unwrap());
        let last = store.note("acme", None, "batch done".into()).unwrap();
        let events = store.events_after(0, 100).unwrap();
        assert_eq!(events.len() as u64, last);
        assert!(events.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        let what: Vec<&str> = events.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(what[0], "workload web saved");
        assert!(what[4].starts_with("instance pending → running"), "{what:?}");
        assert_eq!(what[what.len() - 3..], ["instance deleted", "workload web deleted", "batch done"]);
        assert_eq!(store.events_after(last - 1, 10).unwrap().len(), 1, "cursor");
    }

    #[test]
    fn the_redb_and_memory_backends_behave_alike() {
        reads_back_what_it_wrote(&Store::in_memory());
        let dir = tempfile::tempdir().unwrap();
        reads_back_what_it_wrote(&Store::open(&dir.path().join("c.redb")).unwrap());
        pages_prefixes_and_counts(&Store::in_memory());
        pages_prefixes_and_counts(&Store::open(&dir.path().join("p.redb")).unwrap());
    }

    #[test]
    fn the_etcd_backend_behaves_like_the_others_within_etcds_default_limits() {
        let Some(etcd) = testutil::etcd::EtcdCluster::start("the_etcd_backend_behaves_like_the_others", 1, &[]) else {
            return;
        };
        let open = |prefix: &str| {
            let mut config = etcd::EtcdConfig::new(etcd.endpoints());
            config.prefix = prefix.into();
            config.max_txn_ops = 16; // a launch spans several transactions
            Store::over(Box::new(etcd::EtcdBackend::open(config).unwrap())).unwrap()
        };
        reads_back_what_it_wrote(&open("/t1"));
        pages_prefixes_and_counts(&open("/t2"));
        // 100 instances in one call: written in transactions of 16 operations, every record with
        // its event, revisions one apart, and all there when read again by another store.
        let store = open("/t3");
        let ids = store.create_instances("acme", "web", 100, &Lifecycle::new(RESTART, 0), "", None).unwrap();
        store.update_instances(&ids, |r| r.why = "looked at".into()).unwrap();
        let again = open("/t3");
        assert_eq!(again.instances(None).unwrap().len(), 100);
        assert!(again.instances(None).unwrap().iter().all(|r| r.why == "looked at"));
        let events = again.events_after(0, 1000).unwrap();
        assert_eq!(events.len(), 200);
        assert!(events.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        assert_eq!(again.revision().unwrap(), 200);
    }

    #[test]
    fn the_etcd_store_keeps_only_the_latest_events_it_is_told_to() {
        let Some(etcd) = testutil::etcd::EtcdCluster::start("the_etcd_store_keeps_only_the_latest", 1, &[]) else {
            return;
        };
        let mut config = etcd::EtcdConfig::new(etcd.endpoints());
        config.retain_events = 10;
        let store = Store::over(Box::new(etcd::EtcdBackend::open(config).unwrap())).unwrap();
        for i in 0..1030 {
            store.note("acme", None, format!("note {i}")).unwrap();
        }
        // Old events go every 1,024 revisions, in the write that crosses the mark.
        let events = store.events_after(0, 5000).unwrap();
        assert_eq!(events.first().map(|e| e.revision), Some(1015), "the ten before revision 1,024 and all after");
        assert_eq!(events.last().map(|e| e.revision), Some(1030));
        assert!(events.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        assert_eq!(store.revision().unwrap(), 1030, "the counter is untouched");
    }

    #[test]
    fn the_etcd_store_speaks_tls_to_members_with_a_drover_cert_server_certificate() {
        let pki = testutil::Pki::new();
        let stem = pki.issue_named(ssntp::Role::SERVER, "etcd", &["127.0.0.1", "localhost"], &[]);
        let tls = testutil::etcd::ServerTls {
            cert: pki.cert(&stem),
            key: ssntp::tls::default_key_for(&pki.cert(&stem)),
            ca: pki.ca(),
        };
        let Some(etcd) = testutil::etcd::EtcdCluster::start_with("the_etcd_store_speaks_tls", 1, &[], Some(tls)) else {
            return;
        };
        let mut config = etcd::EtcdConfig::new(etcd.endpoints());
        config.tls = Some(drover_etcd::Tls { ca_pem: std::fs::read(pki.ca()).unwrap(), identity: None });
        let store = Store::over(Box::new(etcd::EtcdBackend::open(config.clone()).unwrap())).unwrap();
        reads_back_what_it_wrote(&store);
        // Without TLS the same member is not reached.
        config.tls = None;
        config.timeout = std::time::Duration::from_secs(2);
        assert!(etcd::EtcdBackend::open(config).is_err(), "plain HTTP to a TLS member fails");
    }

    #[test]
    fn a_fenced_etcd_store_refuses_writes_once_its_leader_key_is_gone_or_another_writes() {
        let Some(etcd) = testutil::etcd::EtcdCluster::start("a_fenced_etcd_store_refuses_writes", 1, &[]) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = drover_etcd::Client::new(&etcd.endpoints(), None, std::time::Duration::from_secs(5)).unwrap();
        let key = b"/f/leader".to_vec();
        let won = rt.block_on(client.txn(&drover_etcd::Txn {
            compare: vec![drover_etcd::Compare::CreateRevision(key.clone(), 0)],
            success: vec![drover_etcd::Op::put(key.clone(), "me")],
            failure: vec![],
        }));
        let won = won.unwrap();
        assert!(won.succeeded);
        let config = || {
            let mut c = etcd::EtcdConfig::new(etcd.endpoints());
            c.prefix = "/f".into();
            c
        };
        let leader = etcd::EtcdBackend::open(config()).unwrap();
        leader.set_fence(Some(etcd::Fence { key: "/f/leader".into(), create_revision: won.revision }));
        let store = Store::over(Box::new(leader)).unwrap();
        store.put_workload("web", &workload()).unwrap();
        // Another controller writing (it thinks it leads) moves the counter: the first is refused.
        let intruder = Store::over(Box::new(etcd::EtcdBackend::open(config()).unwrap())).unwrap();
        intruder.note("acme", None, "i lead too".into()).unwrap();
        let refused = store.note("acme", None, "still me?".into()).unwrap_err();
        assert!(refused.0.contains("not the leader"), "{refused}");
        // Reopened (a new term) but with the leader key gone: refused by the fence.
        let again = etcd::EtcdBackend::open(config()).unwrap();
        again.set_fence(Some(etcd::Fence { key: "/f/leader".into(), create_revision: won.revision }));
        rt.block_on(client.txn(&drover_etcd::Txn {
            success: vec![drover_etcd::Op::Delete { key, end: None }],
            ..drover_etcd::Txn::default()
        }))
        .unwrap();
        let store = Store::over(Box::new(again)).unwrap();
        let refused = store.note("acme", None, "after my key went".into()).unwrap_err();
        assert!(refused.0.contains("no longer the leader"), "{refused}");
        let events = intruder.events_after(0, 10).unwrap();
        assert_eq!(events.iter().map(|e| e.what.as_str()).collect::<Vec<_>>(), ["workload web saved", "i lead too"]);
    }

    fn pages_prefixes_and_counts(store: &Store) {
        let life = Lifecycle::new(RESTART, 0);
        let mut ids = store.create_instances("acme", "web", 10, &life, "", None).unwrap();
        ids.extend(store.create_instances("other", "web", 5, &life, "", None).unwrap());
        ids.sort_by_key(ToString::to_string);
        // Pages of four: every instance once, in order, then no cursor.
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = store.instances_page(after, 4, |_| true).unwrap();
            assert!(page.records.len() <= 4);
            seen.extend(page.records.iter().map(|r| r.uuid));
            pages += 1;
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!((seen, pages), (ids.clone(), 4));
        // A filter reads on until the page is full.
        let acme = store.instances_page(None, 100, |r| r.tenant == "acme").unwrap();
        assert_eq!((acme.records.len(), acme.next_after), (10, None));
        let exactly = store.instances_page(None, 10, |r| r.tenant == "acme").unwrap();
        assert_eq!(exactly.next_after, None, "no cursor when nothing more matches");
        // A prefix finds its instance; the empty prefix finds the first ones.
        let first = ids[0].to_string();
        let found = store.instances_with_prefix(&first[..8].to_uppercase(), 2).unwrap();
        assert!(found.iter().any(|r| r.uuid == ids[0]));
        assert!(found.iter().all(|r| r.uuid.to_string().starts_with(&first[..8])));
        // Counts follow every change, per tenant and in all.
        assert_eq!(store.counts(Some("acme")).get("pending"), Some(&10));
        assert_eq!(store.counts(None).get("pending"), Some(&15));
        let node = Uuid::new_v4();
        store.update_instances(&ids[..3], |r| r.life.state = State::Running { node }).unwrap();
        store.delete_instance(ids[14]).unwrap();
        let all = store.counts(None);
        assert_eq!((all.get("running"), all.get("pending")), (Some(&3), Some(&11)));
    }

    #[test]
    fn everything_written_is_there_after_reopening_and_revisions_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.redb");
        let (ids, last) = {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.revision().unwrap(), 0);
            let r1 = store.put_workload("web", &workload()).unwrap();
            let ids = store.create_instances("acme", "web", 3, &Lifecycle::new(RESTART, 0), "", None).unwrap();
            let r2 = store.update_instance(ids[0], |r| r.life.state = State::Starting).unwrap().unwrap();
            assert!(r2 > r1);
            assert_eq!(store.update_instance(Uuid::new_v4(), |_| {}).unwrap(), None);
            (ids, r2)
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.revision().unwrap(), last);
        assert_eq!(store.workload("acme", "web").unwrap().unwrap().parsed().unwrap().name, "web");
        assert_eq!(store.workload("other", "web").unwrap(), None, "tenants are separate");
        assert_eq!(store.instances(Some("acme")).unwrap().len(), 3);
        assert!(store.instances(Some("other")).unwrap().is_empty());
        assert_eq!(store.instance(ids[0]).unwrap().unwrap().life.state, State::Starting);
        let next = store.update_instance(ids[1], |r| r.why = "queued".into()).unwrap().unwrap();
        assert!(next > last, "revisions grow across restarts");
        let events = store.events_after(0, 100).unwrap();
        assert_eq!(events.len() as u64, next);
        assert!(events.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        assert!(events.last().unwrap().what.contains("instance pending"));
        assert_eq!(store.events_after(next - 1, 10).unwrap().len(), 1, "cursor");
    }
}
